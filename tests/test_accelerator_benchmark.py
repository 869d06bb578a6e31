"""benchmarks/accelerator.py (the prepared script for a lent GPU/TPU) at --size=tiny on
the CPU: it runs every section and prints every RESULT line, each a number (nan where a
fraction of an unknown peak cannot be computed)."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "accelerator.py"
RESULTS = ("accel_decode_tokens_per_s", "accel_decode_hbm_fraction",
           "accel_prm_score_tokens_per_s", "accel_beam64_wall_s", "accel_beam64_compile_s",
           "accel_prefill_mfu")


def _module():
    spec = importlib.util.spec_from_file_location("accelerator_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while it runs
    spec.loader.exec_module(mod)
    return mod


def test_peak_table_by_device_kind():
    peaks = _module().device_peaks
    assert peaks("NVIDIA H200") == (989e12, 4.8e12)
    assert peaks("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert peaks("NVIDIA A100-SXM4-80GB") == (312e12, 2.039e12)
    assert peaks("TPU v5 lite") == (197e12, 819e9)
    assert peaks("TPU v5p") == (459e12, 2.765e12)
    assert peaks("TPU v6 lite") == (918e12, 1.64e12)
    assert peaks("TPU v4") == (275e12, 1.2e12)
    assert all(math.isnan(x) for x in peaks("cpu"))
    assert peaks("cpu", 1e12, 2e9) == (1e12, 2e9)  # the --peak_* flags


@pytest.mark.slow
def test_tiny_run_prints_every_result():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, str(SCRIPT), "--size=tiny"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            key, _, value = line[len("RESULT "):].partition("=")
            got[key] = float(value)  # parseable ("nan" included)
    assert set(got) == set(RESULTS), out.stdout
    for key in ("accel_decode_tokens_per_s", "accel_prm_score_tokens_per_s",
                "accel_beam64_wall_s", "accel_beam64_compile_s"):
        assert got[key] > 0, (key, out.stdout)
    # The CPU has no entry in the peak table: the fractions cannot be computed.
    assert math.isnan(got["accel_decode_hbm_fraction"]) and math.isnan(got["accel_prefill_mfu"])
    assert "no peak known" in out.stdout
