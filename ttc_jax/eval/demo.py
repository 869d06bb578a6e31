"""The main job (``make demo``): sample N solutions per held-out problem with the shipped
policy and report, per difficulty, greedy accuracy, majority voting, PRM-weighted voting
(when a PRM is shipped) and oracle@N (any sample right) — the headroom search exploits."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ttc_jax.decode import Temperature
from ttc_jax.eval.generate import greedy_accuracy, sample_solutions
from ttc_jax.eval.prm_quality import aggregate_np, score_samples, vote
from ttc_jax.models.io import load_model, resolve
from ttc_jax.tasks import get_task


def run_demo(*, policy: str = "policy_small", prm: str | None = "prm",
             difficulties: Sequence[int] = tuple(range(1, 9)), problems_per_k: int = 20,
             n: int = 16, temperature: float = 1.0, seed: int = 0,
             out: str | Path | None = None) -> dict[str, dict[int, float]]:
    t0 = time.time()
    task = get_task("arithmetic")
    pol = load_model(policy, kind="policy")
    verifier = None
    if prm:
        try:
            verifier = load_model(resolve(prm), kind="prm")
        except FileNotFoundError:
            print(f"(no PRM named {prm!r}; reporting without PRM-weighted voting)")
    ks = list(difficulties)
    print(f"policy {policy}: {pol.cfg.num_params():,} params; "
          f"{problems_per_k} held-out problems per k, N={n} samples at T={temperature}")
    greedy = greedy_accuracy(pol, task, ks, problems_per_k, seed=seed)
    problems = task.sample_problems("test", ks, problems_per_k, seed)
    samples = sample_solutions(pol, task, problems, n=n, rng=jax.random.key(seed),
                               strategy=Temperature(temperature))
    correct = samples.correct(task)
    scores = score_samples(verifier, task, samples) if verifier is not None else None
    table: dict[str, dict[int, list[float]]] = {}
    for i, p in enumerate(problems):
        answers = [task.extract_answer(t) for t in samples.texts[i]]
        row = {"pass@1": correct[i].mean(), f"majority@{n}": vote(answers) == p.answer,
               f"oracle@{n}": correct[i].any()}
        if scores is not None:
            agg = [aggregate_np(s, "min") for s in scores[i]]
            row[f"prm_weighted@{n}"] = vote(answers, agg) == p.answer
            row[f"prm_best_of_{n}"] = bool(correct[i, int(np.argmax(agg))])
        for name, v in row.items():
            table.setdefault(name, {}).setdefault(p.difficulty, []).append(float(v))
    result = {"greedy": greedy}
    result.update({name: {k: float(np.mean(v)) for k, v in by_k.items()}
                   for name, by_k in table.items()})
    header = f"{'method':>18} | " + " ".join(f"k={k:<3}" for k in ks) + " | mean"
    print(header)
    print("-" * len(header))
    for name, by_k in result.items():
        vals = [by_k[k] for k in ks]
        print(f"{name:>18} | " + " ".join(f"{v:5.2f}" for v in vals) + f" | {np.mean(vals):.3f}")
    print(f"({time.time() - t0:.0f} s)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
