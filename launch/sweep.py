"""Run (or resume) a sweep: method x N x difficulty x seed, one JSONL row per problem and
config; then print the tables and write the plots.

  python launch/sweep.py --config=experiments/sweep.py --out=runs/sweep/rows.jsonl
  python launch/sweep.py --config=experiments/sweep.py:local --out=/tmp/s.jsonl
  # two processes, one per split, then one report over both files:
  python launch/sweep.py --config=experiments/sweep.py --config.sweep.splits="('val',)" \
      --out=runs/sweep/rows_val.jsonl
  python launch/sweep.py --config=experiments/sweep.py --config.sweep.splits="('test',)" \
      --out=runs/sweep/rows_test.jsonl --merge=runs/sweep/rows_val.jsonl --plots_dir=docs

Kill it at any time; the same command resumes without duplicating or losing rows.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ttc_jax.config import from_dict
from ttc_jax.eval.report import report
from ttc_jax.eval.sweep import SweepConfig, load_rows, run_sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/sweep.py[:variant]")
_OUT = flags.DEFINE_string("out", "runs/sweep/rows.jsonl", "JSONL output (resumed if present)")
_MERGE = flags.DEFINE_list("merge", [], "other sweeps' JSONL files to include in the report")
_PLOTS = flags.DEFINE_string("plots_dir", None, "where PNGs and summary.json go (default: "
                             "next to --out)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    c = _CONFIG.value
    cfg = from_dict(SweepConfig, c.sweep.to_dict())
    rows = run_sweep(cfg, _OUT.value)
    for path in _MERGE.value:
        rows += load_rows(path)
    report(rows, (_PLOTS.value or Path(_OUT.value).parent) if c.plots else None)


if __name__ == "__main__":
    app.run(main)
