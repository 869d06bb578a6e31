"""Test-time search sweep on MATH-style data with local Hugging Face checkpoints.

  python launch/search_hf.py --config=experiments/math500_llama.py \
      --config.policy=/ckpt/policy --config.prm=/ckpt/prm --config.data=/data/math500.jsonl \
      --out=results/math500_llama

Rows are appended as problems finish; rerunning the same command after an interruption
resumes (problems already in ``<out>/<method>_n<n>.jsonl`` are skipped). Bad input files
(config.json, the JSONL, safetensors) fail before any model is loaded, naming the file.
"""

from absl import app, flags
from ml_collections import config_flags

from ttc_jax.interop.math_search import run_sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/math500_llama.py")
_OUT = flags.DEFINE_string("out", "results/math500", "output folder (one JSONL per run)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    c = _CONFIG.value
    for key in ("policy", "data"):
        if not c[key]:
            raise app.UsageError(f"--config.{key}=<local path> is required")
    run_sweep(c, _OUT.value)


if __name__ == "__main__":
    app.run(main)
