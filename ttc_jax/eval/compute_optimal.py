"""Compute-optimal test-time search (Snell et al. 2024): per difficulty bin and budget,
the configuration (method, N, beam width) with the best validation accuracy that fits the
budget; evaluated on the test split and compared with every fixed method at equal FLOPs.

Budgets are FLOPs: budget ``N`` allows, in each bin, at most the mean FLOPs that the
reference method (weighted best-of-N at N candidates) spends on that bin's validation
problems. Difficulty is predicted from the PRM's mean score on ``probes`` sampled
candidates (:mod:`ttc_jax.eval.difficulty`); with ``charge_probes`` their FLOPs count
against the budget (a sampling method reuses the probes as its first candidates, a tree
search reuses the prompt prefill only). ``difficulty='oracle'`` bins by pass@1 instead
(an upper bound: it needs the ground truth of the problems it is applied to).

:func:`fit_selector` sees only validation rows; :func:`evaluate` applies the frozen
choice to test rows, whose outcomes never reach the choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ttc_jax.eval import difficulty as diff
from ttc_jax.eval.sweep import ALL_METHODS, SAMPLING_METHODS

Config = tuple[str, int, int]  # (method, n, beam_width)


def config_name(c: Config) -> str:
    return f"{method_name(c)}@{c[1]}"


def method_name(c: Config) -> str:
    """The fixed method a config belongs to (beam widths are separate methods)."""
    return c[0] + (f"/M{c[2]}" if c[2] else "")


def config_table(rows: Sequence[dict], split: str, seed: int = 0
                 ) -> dict[Config, dict[str, tuple[bool, float]]]:
    """{(method, n, M): {uid: (correct, flops)}} of one split and seed."""
    out: dict[Config, dict[str, tuple[bool, float]]] = {}
    for r in rows:
        if r["split"] == split and r["seed"] == seed and r["method"] in ALL_METHODS:
            c = (r["method"], int(r["n"]), int(r["beam_width"]))
            out.setdefault(c, {})[r["uid"]] = (bool(r["correct"]), float(r["flops"]))
    if not out:
        raise ValueError(f"no search rows for split={split!r} seed={seed}")
    most = max(len(v) for v in out.values())
    return {c: v for c, v in out.items() if len(v) == most}  # drop unfinished configs


def fixed_curves(table) -> dict[str, list[tuple[int, float, float]]]:
    """{method: [(n, mean FLOPs, accuracy)] by n} over all problems of the table."""
    out: dict[str, list] = {}
    for c, per in sorted(table.items()):
        ok = np.asarray([v[0] for v in per.values()], float)
        fl = np.asarray([v[1] for v in per.values()], float)
        out.setdefault(method_name(c), []).append((c[1], float(fl.mean()), float(ok.mean())))
    return {k: sorted(v) for k, v in out.items()}


def extra_probe_flops(sample_row: dict, c: Config, probes: int) -> float:
    """FLOPs the difficulty probes add on top of config ``c`` for this problem."""
    pol, prm = sample_row["policy_flops_list"], sample_row["prm_flops_list"]
    total = (sample_row["policy_prefill_flops"] + sample_row["prm_prefill_flops"]
             + sum(pol[:probes]) + sum(prm[:probes]))
    method, n, _ = c
    paid = sample_row["policy_prefill_flops"] + sample_row["prm_prefill_flops"]
    if method in SAMPLING_METHODS:
        k = min(n, probes)
        paid += sum(pol[:k])
        if method != "majority":
            paid += sum(prm[:k])
        else:
            paid -= sample_row["prm_prefill_flops"]
    return float(total - paid)


@dataclasses.dataclass(frozen=True)
class Selector:
    """A frozen choice: ``choice[(budget_n, bin)]`` is the config (or None: nothing fits).

    Attributes:
      difficulty: 'predicted' (PRM probe score, edges from validation) or 'oracle'.
      edges: predicted-difficulty bin edges (descending), fitted on validation.
      val_acc / val_flops: the validation accuracy and mean FLOPs of each choice.
    """

    difficulty: str
    probes: int
    num_bins: int
    charge_probes: bool
    reference: str
    budgets: tuple[int, ...]
    edges: tuple[float, ...]
    choice: dict
    val_acc: dict
    val_flops: dict


def bins_of(rows: Sequence[dict], split: str, *, difficulty: str, probes: int,
            num_bins: int, edges=None, seed: int = 0) -> dict[str, int]:
    if difficulty == "oracle":
        return diff.oracle_levels(rows, split, num_bins, seed)
    if difficulty == "predicted":
        return diff.assign_bins(diff.predicted_scores(rows, split, probes, seed), edges)
    raise ValueError(f"difficulty={difficulty!r}; use 'predicted' or 'oracle'")


def _costs(table, samples, uids, c: Config, probes: int, charge: bool):
    per = table[c]
    ok = np.asarray([per[u][0] for u in uids], float)
    fl = np.asarray([per[u][1] + (extra_probe_flops(samples[u], c, probes) if charge else 0.0)
                     for u in uids], float)
    return ok, fl


def fit_selector(val_rows: Sequence[dict], *, difficulty: str = "predicted", probes: int = 4,
                 num_bins: int = 5, charge_probes: bool = True,
                 reference: str = "weighted_best_of_n", split: str = "val",
                 seed: int = 0) -> Selector:
    """Chooses, per bin and budget, from validation rows only."""
    table = config_table(val_rows, split, seed)
    samples = diff.samples_by_uid(val_rows, split, seed)
    edges = None
    if difficulty == "predicted":
        edges = diff.fit_edges(diff.predicted_scores(val_rows, split, probes, seed).values(),
                               num_bins)
    bins = bins_of(val_rows, split, difficulty=difficulty, probes=probes, num_bins=num_bins,
                   edges=edges, seed=seed)
    budgets = sorted(n for (m, n, _) in table if m == reference)
    if not budgets:
        raise ValueError(f"the reference method {reference!r} has no rows on {split!r}")
    choice, val_acc, val_flops = {}, {}, {}
    configs = sorted(table)
    for b in range(num_bins):
        uids = sorted(u for u, x in bins.items() if x == b and all(u in table[c]
                                                                  for c in configs))
        if not uids:
            raise ValueError(f"difficulty bin {b} has no validation problems with every "
                             f"config; use fewer bins or more validation problems")
        stats = {c: _costs(table, samples, uids, c, probes, charge_probes) for c in configs}
        for n in budgets:
            limit = np.mean([table[(reference, n, 0)][u][1] for u in uids]) * (1 + 1e-9)
            best = None
            for c in configs:
                ok, fl = stats[c]
                key = (ok.mean(), -fl.mean())
                if fl.mean() <= limit and (best is None or key > best[0]):
                    best = (key, c)
            choice[(n, b)] = None if best is None else best[1]
            if best is not None:
                val_acc[(n, b)], val_flops[(n, b)] = best[0][0], -best[0][1]
    return Selector(difficulty, probes, num_bins, charge_probes, reference, tuple(budgets),
                    tuple(() if edges is None else edges.tolist()), choice, val_acc,
                    val_flops)


def evaluate(sel: Selector, rows: Sequence[dict], *, split: str = "test", seed: int = 0
             ) -> dict[int, dict]:
    """{budget n: {'acc', 'flops', 'problems', 'choice': {bin: config name}}} on ``split``
    (budgets where some bin had no feasible config are left out)."""
    table = config_table(rows, split, seed)
    samples = diff.samples_by_uid(rows, split, seed)
    bins = bins_of(rows, split, difficulty=sel.difficulty, probes=sel.probes,
                   num_bins=sel.num_bins, edges=np.asarray(sel.edges), seed=seed)
    out = {}
    for n in sel.budgets:
        picks = [sel.choice[(n, b)] for b in range(sel.num_bins)]
        if any(p is None for p in picks):
            continue
        ok, fl = [], []
        for u, b in sorted(bins.items()):
            c = picks[b]
            if u not in table.get(c, {}):
                raise ValueError(f"test problem {u} has no row for {config_name(c)}")
            ok.append(table[c][u][0])
            fl.append(table[c][u][1] + (extra_probe_flops(samples[u], c, sel.probes)
                                        if sel.charge_probes else 0.0))
        out[n] = {"acc": float(np.mean(ok)), "flops": float(np.mean(fl)),
                  "problems": len(ok),
                  "choice": {b: config_name(p) for b, p in enumerate(picks)}}
    return out


def best_fixed_within(curves, flops: float) -> tuple[str, int, float, float] | None:
    """The fixed (method, n) with the highest accuracy at mean FLOPs <= ``flops``."""
    best = None
    for meth, pts in curves.items():
        for n, f, a in pts:
            if f <= flops * (1 + 1e-9) and (best is None or (a, -f) > (best[3], -best[2])):
                best = (meth, n, f, a)
    return best


def compare(sel: Selector, rows: Sequence[dict], *, split: str = "test",
            seed: int = 0) -> dict:
    """Compute-optimal vs fixed methods on ``split``: per budget, the best fixed config at
    no more FLOPs; and the FLOPs compute-optimal needs to reach best-of-N's top accuracy."""
    res = evaluate(sel, rows, split=split, seed=seed)
    curves = fixed_curves(config_table(rows, split, seed))
    per_budget = {}
    for n, r in res.items():
        bf = best_fixed_within(curves, r["flops"])
        ref = next(p for p in curves[sel.reference] if p[0] == n)
        per_budget[n] = dict(r, best_fixed=None if bf is None else f"{bf[0]}@{bf[1]}",
                             best_fixed_acc=None if bf is None else bf[3],
                             reference_acc=ref[2], reference_flops=ref[1])
    out = {"per_budget": per_budget}
    for meth in ("best_of_n", "weighted_best_of_n"):
        if meth not in curves:
            continue
        top = max(a for _, _, a in curves[meth])
        f_top = min(f for _, f, a in curves[meth] if a == top)
        reach = [r["flops"] for r in res.values() if r["acc"] >= top]
        out[meth] = {"top_acc": top, "top_flops": f_top,
                     "co_flops": min(reach) if reach else None,
                     "ratio": f_top / min(reach) if reach else None}
    return out
