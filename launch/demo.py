"""The main job of `make demo`: a small sweep of every search method on the shipped
models; prints the accuracy x N x method table with FLOPs; JSONL and PNGs in runs/demo/.

  python launch/demo.py                                      # = make demo
  python launch/demo.py --config.sweep.problems_per_k=2 --out_dir=/tmp/demo
"""

from absl import app, flags
from ml_collections import config_flags

from ttc_jax.config import from_dict
from ttc_jax.eval.demo import run_demo
from ttc_jax.eval.sweep import SweepConfig

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/sweep.py:demo",
                                          "experiments/sweep.py[:variant]")
_OUT = flags.DEFINE_string("out_dir", "runs/demo", "where the JSONL and PNGs go")
_RESUME = flags.DEFINE_bool("resume", False, "keep rows of an earlier demo run")


def main(argv):
    del argv
    run_demo(from_dict(SweepConfig, _CONFIG.value.sweep.to_dict()), _OUT.value,
             fresh=not _RESUME.value)


if __name__ == "__main__":
    app.run(main)
