"""Sweep: accuracy against compute for every search method, budget and difficulty.

  nohup nice -n 10 .venv/bin/python launch/sweep.py --config=experiments/sweep.py \
      --out=runs/sweep/rows.jsonl > workdirs/sweep.log 2>&1 &  # docs/results.md (one process)
  python launch/sweep.py --config=experiments/sweep.py:local --out=/tmp/s.jsonl  # ~2 min

docs/results.md ran the two splits as two processes (--config.sweep.splits="('test',)" and
"('val',)", one JSONL each) and reported over both with --merge; see its Commands section.
  python launch/sweep.py --config=experiments/sweep.py:demo --out=runs/demo/rows.jsonl

Kill it at any time; the same command resumes where it stopped. ``sweep`` holds every
SweepConfig field (ttc_jax/eval/sweep.py).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.sweep = dict(
        policy="policy_small", prm="prm", task="arithmetic",
        methods=("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts"),
        ns=(1, 2, 4, 8, 16, 32, 64), tree_ns=(), beam_widths=(4,),
        difficulties=(1, 2, 3, 4, 5, 6, 7, 8), problems_per_k=20, val_problems_per_k=20,
        seeds=(0,), splits=("test", "val"), problem_seed=0, val_problem_seed=1,
        greedy_models=("policy_small", "teacher"), max_rows=512, aggregation="min",
        max_steps=12, max_step_tokens=16, max_new_tokens=128, temperature=1.0)
    c.plots = True  # write PNGs next to the JSONL
    if variant == "demo":  # what `make demo` runs: a few minutes on 2 CPU cores
        c.sweep.update(ns=(1, 2, 4, 8, 16), tree_ns=(4, 16), problems_per_k=4,
                       val_problems_per_k=4)
    elif variant == "local":  # a smoke run
        c.sweep.update(ns=(1, 2, 4), beam_widths=(2,), difficulties=(2, 5),
                       problems_per_k=2, val_problems_per_k=2, max_rows=64)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '', 'demo' or 'local'")
    return ml_collections.ConfigDict(c)
