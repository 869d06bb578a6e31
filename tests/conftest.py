"""Test set-up: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def real_vocab() -> dict[str, Path]:
    """{name: folder} of the real Llama 3 / Qwen2.5 tokenizer folders (``make vocab``);
    built into ``.cache/real_vocab`` on first use (once; a lock serialises xdist workers).
    ``$TTC_LCPP_SDIST`` may point at a local llama-cpp-python sdist instead of PyPI."""
    from ttc_jax.interop.real_vocab import build

    return build(REPO / ".cache" / "real_vocab")
