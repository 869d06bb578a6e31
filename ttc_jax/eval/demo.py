"""The main job (``make demo``): a small sweep of every search method on the shipped
policy and PRM, the accuracy x N x method table with FLOPs, compute-optimal selection and
adaptive allocation, and the plots - all under ``runs/demo/``.

It is :func:`ttc_jax.eval.sweep.run_sweep` followed by :func:`ttc_jax.eval.report.report`
with the ``demo`` variant of ``experiments/sweep.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import time
from pathlib import Path

from ttc_jax.eval.report import report
from ttc_jax.eval.sweep import SweepConfig, run_sweep


def run_demo(cfg: SweepConfig, out_dir: str | Path = "runs/demo", *, fresh: bool = True,
             progress: bool = True, printer=print) -> dict:
    """Runs the sweep into ``out_dir/rows.jsonl`` (from scratch unless ``fresh=False``),
    prints the tables and writes the PNGs; returns the report dict (with 'rows')."""
    t0 = time.time()
    out_dir = Path(out_dir)
    rows_path = out_dir / "rows.jsonl"
    if fresh and rows_path.exists():
        rows_path.unlink()
    printer(f"policy {cfg.policy}, PRM {cfg.prm}; methods {', '.join(cfg.methods)}; "
            f"N in {list(cfg.ns)}; beam width {list(cfg.beam_widths)}; difficulties "
            f"{list(cfg.difficulties)}; {cfg.problems_per_k} test and "
            f"{cfg.val_problems_per_k} validation problems per difficulty")
    rows = run_sweep(cfg, rows_path, progress=progress)
    out = report(rows, out_dir, printer=printer)
    printer(f"\nrows: {rows_path} ({len(rows)} rows, one per problem x config)")
    printer(f"plots: {out_dir}/*.png; summary: {out_dir / 'summary.json'}")
    printer(f"demo finished in {time.time() - t0:.0f} s")
    out["rows"] = rows
    return out
