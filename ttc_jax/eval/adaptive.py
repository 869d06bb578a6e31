"""Adaptive allocation: sample one candidate at a time and stop as soon as the vote is
decisive (beyond the references).

Rule (``StopRule``): after at least ``min_n`` candidates, stop when the leading answer's
(PRM-weighted, or plain) vote reaches ``threshold`` and holds at least ``share`` of the
total vote; never go past ``max_n``. With weights in [0, 1], ``threshold`` is "this much
PRM-certified agreement" (e.g. 0.8: one candidate the PRM scores >= 0.8, or two at 0.4).
The answer is the vote's winner over the candidates drawn. Compute is the prompt
prefill plus each drawn candidate's policy and PRM FLOPs, read from the sweep's
per-candidate ``samples`` rows (the i-th drawn candidate is the i-th sampled one, so
this replays exactly what a sequential sampler would have done).

:func:`fit_rule` picks the cheapest rule on validation problems whose accuracy is at least
the fixed reference's (weighted best-of-N at N=16); :func:`evaluate_rule` applies it to
the test split.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from ttc_jax.eval.difficulty import samples_by_uid
from ttc_jax.eval.sweep import choose


@dataclasses.dataclass(frozen=True)
class StopRule:
    share: float
    min_n: int
    max_n: int
    weighted: bool = True
    threshold: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share={self.share} must be in [0, 1]")
        if self.threshold < 0.0:
            raise ValueError(f"threshold={self.threshold} must be >= 0")
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"need 1 <= min_n={self.min_n} <= max_n={self.max_n}")


def run_rule(sample_row: dict, rule: StopRule) -> tuple[int | None, int, float]:
    """(answer, candidates drawn, FLOPs) of the adaptive sampler on one problem."""
    answers, scores = sample_row["answers"], sample_row["scores"]
    if rule.max_n > len(answers):
        raise ValueError(f"max_n={rule.max_n} but only {len(answers)} candidates were "
                         f"sampled per problem; lower max_n or sweep a larger N")
    totals: dict[int, float] = {}
    n = 0
    for n in range(1, rule.max_n + 1):
        a = answers[n - 1]
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (scores[n - 1] if rule.weighted else 1.0)
        if n >= rule.min_n and totals:
            mass, top = sum(totals.values()), max(totals.values())
            if mass > 0 and top >= rule.share * mass and top >= rule.threshold:
                break
    method = "weighted_best_of_n" if rule.weighted else "majority"
    answer = choose(method, answers[:n], scores[:n])
    flops = (sample_row["policy_prefill_flops"] + sum(sample_row["policy_flops_list"][:n]))
    if rule.weighted:
        flops += sample_row["prm_prefill_flops"] + sum(sample_row["prm_flops_list"][:n])
    return answer, n, float(flops)


def evaluate_rule(rows: Sequence[dict], rule: StopRule, split: str = "test",
                  seed: int = 0) -> dict:
    """Accuracy, mean FLOPs and mean candidates of the rule over a split."""
    ok, fl, ns = [], [], []
    for r in samples_by_uid(rows, split, seed).values():
        a, n, f = run_rule(r, rule)
        ok.append(a is not None and a == r["reference"])
        fl.append(f)
        ns.append(n)
    return {"acc": float(np.mean(ok)), "flops": float(np.mean(fl)),
            "mean_n": float(np.mean(ns)), "problems": len(ok)}


def reference(rows: Sequence[dict], n: int = 16, split: str = "test", seed: int = 0,
              method: str = "weighted_best_of_n") -> dict:
    """Accuracy and mean FLOPs of the fixed method at N=n over a split."""
    sel = [r for r in rows if r["split"] == split and r["seed"] == seed
           and r["method"] == method and r["n"] == n]
    if not sel:
        raise ValueError(f"no {method}@{n} rows on split={split!r}; sweep N={n}")
    return {"acc": float(np.mean([r["correct"] for r in sel])),
            "flops": float(np.mean([r["flops"] for r in sel])), "problems": len(sel)}


SHARES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
THRESHOLDS = (0.0, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0)


def fit_rule(val_rows: Sequence[dict], *, ref_n: int = 16,
             max_ns: Sequence[int] = (16, 32, 64), shares: Sequence[float] = SHARES,
             thresholds: Sequence[float] = THRESHOLDS, min_ns: Sequence[int] = (1, 2, 4),
             weighted: bool = True, split: str = "val", seed: int = 0) -> StopRule:
    """The cheapest rule on validation whose accuracy >= weighted BoN@ref_n's there (the
    most accurate rule if none reaches it). Rules that never stop before ``max_n``
    (share 0 and threshold 0 with min_n = max_n aside) are part of the grid."""
    target = reference(val_rows, ref_n, split, seed)["acc"]
    have = len(next(iter(samples_by_uid(val_rows, split, seed).values()))["answers"])
    best, fallback = None, None
    for max_n, share, thr, min_n in itertools.product(max_ns, shares, thresholds, min_ns):
        if max_n > have or min_n > max_n:
            continue
        rule = StopRule(float(share), int(min_n), int(max_n), weighted, float(thr))
        r = evaluate_rule(val_rows, rule, split, seed)
        if r["acc"] >= target and (best is None or r["flops"] < best[0]):
            best = (r["flops"], rule)
        if fallback is None or (r["acc"], -r["flops"]) > fallback[0]:
            fallback = ((r["acc"], -r["flops"]), rule)
    return best[1] if best is not None else fallback[1]
