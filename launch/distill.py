"""Distil a student from a teacher (logit, on-policy GKD, or sequence-level from search).

  python launch/distill.py --config=experiments/student.py --workdir=workdirs/student
  python launch/distill.py --config=experiments/distill_search.py --workdir=workdirs/distill_search
  (--search_data_only builds the search data set first, e.g. while the student trains)

  python launch/distill.py --compare=teacher,student=workdirs/student/model  # accuracy per k
  python launch/distill.py --budget=teacher=teacher,student=student  # majority@N vs teacher

Kill it at any time (SIGTERM saves a checkpoint first); the same command resumes.
"""

import logging

import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ttc_jax.models.io import load_model
from ttc_jax.tasks import get_task
from ttc_jax.train.distill import (
    accuracy_table,
    budget_comparison,
    compare_models,
    search_data_only,
    train_distill,
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, config.json")
_FRESH = flags.DEFINE_bool("fresh", False, "refuse to resume: error if workdir has checkpoints")
_DATA_ONLY = flags.DEFINE_bool("search_data_only", False,
                               "sequence mode: only build round 0's search data set")
_COMPARE = flags.DEFINE_list("compare", None, "instead of training: greedy accuracy per k of "
                              "name=model pairs (shipped name or exported folder)")
_BUDGET = flags.DEFINE_string("budget", None, "instead of training: teacher=...,student=... "
                              "compare the student's majority@N with one teacher greedy "
                              "pass at their FLOPs")
_PROBLEMS = flags.DEFINE_integer("problems_per_k", 100, "held-out problems per k (--compare)")


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
    logging.getLogger("ttc_jax").setLevel(logging.INFO)
    if _COMPARE.value:
        pairs = dict(p.split("=", 1) if "=" in p else (p, p) for p in _COMPARE.value)
        res = compare_models(pairs, get_task("arithmetic"), problems_per_k=_PROBLEMS.value)
        print(accuracy_table(res))
        for name, acc in res.items():
            print(f"RESULT greedy_acc_mean[{name}]={np.mean(list(acc.values())):.4f}")
        return
    if _BUDGET.value:
        pairs = dict(p.split("=", 1) for p in _BUDGET.value.split(","))
        rows = budget_comparison(load_model(pairs["teacher"]), load_model(pairs["student"]),
                                 get_task("arithmetic"), problems_per_k=_PROBLEMS.value)
        print(accuracy_table({r["name"]: r["acc"] for r in rows}))
        for r in rows:
            print(f"{r['name']}: {r['policy_flops'] / 1e6:.1f} MFLOPs per problem, "
                  f"mean accuracy {r['mean']:.3f}")
            print(f"RESULT budget[{r['name']}]={r['mean']:.4f}")
        return
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required (or use --compare)")
    cfg = _CONFIG.value
    if cfg.get("kind") != "distill":
        raise app.UsageError(f"config kind={cfg.get('kind')!r}; launch/distill.py runs "
                             f"kind='distill' configs (use launch/train.py for the others)")
    if _DATA_ONLY.value:
        search_data_only(cfg, _WORKDIR.value)
    else:
        train_distill(cfg, _WORKDIR.value, resume=not _FRESH.value)


if __name__ == "__main__":
    app.run(main)
