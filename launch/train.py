"""Train a policy or a PRM from an experiment config.

  python launch/train.py --config=experiments/policy_small.py --workdir=workdirs/policy_small
  python launch/train.py --config=experiments/policy_small.py --config.train.num_steps=100 ...

Kill it at any time (SIGTERM saves a checkpoint first); the same command resumes.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ttc_jax.parallel.launch_flags import init_from_flags
from ttc_jax.train.run import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, config.json")
_FRESH = flags.DEFINE_bool("fresh", False, "refuse to resume: error if workdir has checkpoints")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    init_from_flags()  # multi-host: join the other processes first
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
    logging.getLogger("ttc_jax").setLevel(logging.INFO)
    train(_CONFIG.value, _WORKDIR.value, resume=not _FRESH.value)


if __name__ == "__main__":
    app.run(main)
