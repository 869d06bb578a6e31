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


def save_classifier_prm(folder: Path, trunk, head, qcfg) -> Path:
    """A Qwen2.5-Math-PRM-style HF folder (``model.*`` trunk + ``score.*`` head) from a
    transformers Qwen2Model and a Linear-ReLU-Linear head."""
    import json

    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
    tensors.update({f"score.{k}": v.contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, str(folder / "model.safetensors"))
    raw = qcfg.to_dict()
    raw["architectures"] = ["Qwen2ForProcessRewardModel"]
    (folder / "config.json").write_text(json.dumps(raw, default=str))
    return folder
