"""The main job (``make demo``): the shipped policy and PRM on held-out problems.

Per difficulty k it reports greedy accuracy and, at one budget N, every search method
(majority voting, best-of-N, PRM-weighted best-of-N, PRM beam search, DVTS — each one
jit-compiled kernel from ``ttc_jax.search``), oracle@N (any sampled candidate right: the
headroom search exploits) and the policy tokens each method spent per problem.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ttc_jax.config import SearchConfig
from ttc_jax.eval.generate import greedy_accuracy
from ttc_jax.models.io import load_model
from ttc_jax.search import search_problems
from ttc_jax.tasks import get_task

METHODS = ("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts")


def run_demo(*, policy: str = "policy_small", prm: str = "prm",
             methods: Sequence[str] = METHODS, difficulties: Sequence[int] = tuple(range(1, 9)),
             problems_per_k: int = 10, n: int = 16, beam_width: int = 4,
             aggregation: str = "min", seed: int = 0,
             out: str | Path | None = None) -> dict[str, dict[int, float]]:
    t0 = time.time()
    task = get_task("arithmetic")
    pol = load_model(policy, kind="policy")
    verifier = load_model(prm, kind="prm")
    ks = list(difficulties)
    problems = task.sample_problems("test", ks, problems_per_k, seed)
    print(f"policy {policy} ({pol.cfg.num_params():,} params), PRM {prm} "
          f"({verifier.cfg.num_params():,} params); {problems_per_k} held-out problems per "
          f"k, N={n}, beam width {beam_width}, PRM aggregation {aggregation}")
    result: dict[str, dict[int, float]] = {
        "greedy": greedy_accuracy(pol, task, ks, problems_per_k, seed=seed)}
    tokens: dict[str, float] = {"greedy": float("nan")}
    oracle: dict[int, list[float]] = {}
    for method in tqdm(methods, desc="search methods", unit="method"):
        cfg = SearchConfig(method=method, n=n, beam_width=beam_width, aggregation=aggregation,
                           seed=seed)
        rows = search_problems(pol, verifier, task, problems, cfg)
        by_k: dict[int, list[float]] = {}
        for r in rows:
            by_k.setdefault(r["difficulty"], []).append(float(r["correct"]))
            if method == "weighted_best_of_n":
                oracle.setdefault(r["difficulty"], []).append(float(r["oracle"]))
        result[f"{method}@{n}"] = {k: float(np.mean(by_k[k])) for k in ks}
        tokens[f"{method}@{n}"] = float(np.mean([r["policy_tokens"] for r in rows]))
    if oracle:
        result[f"oracle@{n}"] = {k: float(np.mean(oracle[k])) for k in ks}
    header = f"{'method':>24} | " + " ".join(f"k={k:<3}" for k in ks) + " | mean  | tokens"
    print(header)
    print("-" * len(header))
    for name, by_k in result.items():
        vals = [by_k[k] for k in ks]
        tok = tokens.get(name, float("nan"))
        tok_s = f"{tok:6.0f}" if np.isfinite(tok) else "     -"
        print(f"{name:>24} | " + " ".join(f"{v:5.2f}" for v in vals)
              + f" | {np.mean(vals):.3f} | {tok_s}")
    print(f"({time.time() - t0:.0f} s; tokens = policy tokens generated per problem)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"accuracy": result, "policy_tokens": tokens},
                                        indent=2) + "\n")
    return result
