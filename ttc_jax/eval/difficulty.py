"""Problem difficulty, two ways (Snell et al. 2024, section 3.2).

* Oracle: pass@1 of a problem, estimated from its N_max sampled candidates, then levels
  by quantile (quintiles by default) over a split's problems. Level 0 is the easiest.
  It uses the ground truth, so it is an upper bound, not usable at test time.
* Predicted: the PRM's mean (aggregated) score over the first ``probes`` candidates -
  no ground truth, so usable at test time. Bin edges are fitted on the validation split
  only (:func:`fit_edges`) and applied to any split (:func:`assign_bins`). Bin 0 holds
  the highest PRM scores (predicted easiest).

Both read the sweep's per-candidate ``samples`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttc_jax.eval.sweep import SAMPLES


def samples_by_uid(rows: Sequence[dict], split: str, seed: int = 0) -> dict[str, dict]:
    """{uid: the per-candidate row} of one split and sampling seed."""
    out = {r["uid"]: r for r in rows
           if r["method"] == SAMPLES and r["split"] == split and r["seed"] == seed}
    if not out:
        raise ValueError(f"no '{SAMPLES}' rows for split={split!r} seed={seed}; the sweep "
                         f"needs a sampling method (e.g. weighted_best_of_n) on that split")
    return out


def pass_at_1(sample_row: dict) -> float:
    """Fraction of the problem's candidates that are right."""
    return float(np.mean(sample_row["correct_list"]))


def quantile_levels(values: dict[str, float], num_levels: int = 5, *,
                    descending: bool = True) -> dict[str, int]:
    """Levels 0..num_levels-1 by rank: equal-size groups (the last ones one larger when
    the count does not divide). ``descending``: the largest values get level 0. Ties
    are ordered by uid, so the levels are deterministic."""
    if num_levels < 1:
        raise ValueError(f"num_levels={num_levels} must be >= 1")
    if len(values) < num_levels:
        raise ValueError(f"{len(values)} problems cannot fill {num_levels} levels; use "
                         f"fewer levels or more problems")
    sign = -1.0 if descending else 1.0
    order = sorted(values, key=lambda u: (sign * values[u], u))
    bounds = np.linspace(0, len(order), num_levels + 1).round().astype(int)
    return {u: int(np.searchsorted(bounds, i, side="right") - 1)
            for i, u in enumerate(order)}


def oracle_levels(rows: Sequence[dict], split: str, num_levels: int = 5,
                  seed: int = 0) -> dict[str, int]:
    """{uid: level}: pass@1 quantiles (level 0 = highest pass@1 = easiest)."""
    samples = samples_by_uid(rows, split, seed)
    return quantile_levels({u: pass_at_1(r) for u, r in samples.items()}, num_levels)


def prm_probe_score(sample_row: dict, probes: int) -> float:
    """Mean aggregated PRM score of the first ``probes`` candidates (no ground truth)."""
    if probes < 1 or probes > len(sample_row["scores"]):
        raise ValueError(f"probes={probes} must be in 1..{len(sample_row['scores'])} (the "
                         f"candidates sampled per problem)")
    return float(np.mean(sample_row["scores"][:probes]))


def probe_flops(sample_row: dict, probes: int, skip: int = 0) -> float:
    """FLOPs of probe candidates ``skip..probes-1`` (policy and PRM; a method that already
    samples the first ``skip`` candidates reuses them) plus, when ``skip == 0``, the
    prefills."""
    if skip >= probes:
        return 0.0
    f = sum(sample_row["policy_flops_list"][skip:probes]) + \
        sum(sample_row["prm_flops_list"][skip:probes])
    if skip == 0:
        f += sample_row["policy_prefill_flops"] + sample_row["prm_prefill_flops"]
    return float(f)


def predicted_scores(rows: Sequence[dict], split: str, probes: int = 4,
                     seed: int = 0) -> dict[str, float]:
    return {u: prm_probe_score(r, probes) for u, r in samples_by_uid(rows, split, seed).items()}


def fit_edges(val_scores: Sequence[float], num_bins: int = 5) -> np.ndarray:
    """Descending bin edges [num_bins - 1] from validation probe scores (quantiles)."""
    s = np.asarray(list(val_scores), np.float64)
    if s.size < num_bins:
        raise ValueError(f"{s.size} validation problems cannot fit {num_bins} bins")
    return np.quantile(s, 1.0 - np.arange(1, num_bins) / num_bins)


def assign_bins(scores: dict[str, float], edges: np.ndarray) -> dict[str, int]:
    """{uid: bin}: bin 0 = score above the first (highest) edge = predicted easiest."""
    return {u: int(np.sum(s < np.asarray(edges))) for u, s in scores.items()}
