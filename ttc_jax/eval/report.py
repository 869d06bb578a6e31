"""From sweep rows to tables, plots and ``RESULT`` lines: the accuracy x N x method table
(with FLOPs), greedy baselines, difficulty levels, compute-optimal selection against
fixed methods, adaptive allocation against weighted best-of-N, and small policy + search
against teacher greedy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ttc_jax.eval import adaptive, plots
from ttc_jax.eval import compute_optimal as co
from ttc_jax.eval.difficulty import oracle_levels
from ttc_jax.eval.sweep import ALL_METHODS, GREEDY, complete_rows

METHOD_ORDER = {m: i for i, m in enumerate(ALL_METHODS)}


def summarize(rows: Sequence[dict], split: str = "test", seed: int = 0,
              uids: set | None = None) -> dict[str, list[dict]]:
    """{method (beam width as '/M4'): [{n, acc, flops, policy_tokens, prm_tokens,
    problems}] by n}: means over the split's problems."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if (r["split"] == split and r["seed"] == seed and r["method"] in ALL_METHODS
                and (uids is None or r["uid"] in uids)):
            groups.setdefault((r["method"], r["beam_width"], r["n"]), []).append(r)
    out: dict[str, list[dict]] = {}
    for (meth, m, n), rs in sorted(groups.items(),
                                   key=lambda kv: (METHOD_ORDER[kv[0][0]], kv[0][1:])):
        out.setdefault(meth + (f"/M{m}" if m else ""), []).append({
            "n": n, "acc": float(np.mean([r["correct"] for r in rs])),
            "flops": float(np.mean([r["flops"] for r in rs])),
            "policy_tokens": float(np.mean([r["policy_tokens"] for r in rs])),
            "prm_tokens": float(np.mean([r["prm_tokens"] for r in rs])),
            "problems": len(rs)})
    return out


def greedy_summary(rows: Sequence[dict], split: str = "test") -> dict[str, dict]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == GREEDY and r["split"] == split:
            out.setdefault(r["model"], []).append(r)
    return {m: {"acc": float(np.mean([r["correct"] for r in rs])),
                "flops": float(np.mean([r["flops"] for r in rs])),
                "policy_tokens": float(np.mean([r["policy_tokens"] for r in rs])),
                "problems": len(rs)} for m, rs in out.items()}


def format_table(summary: dict[str, list[dict]]) -> str:
    """Rows = methods, columns = N; each cell 'accuracy FLOPs-per-problem'."""
    ns = sorted({p["n"] for pts in summary.values() for p in pts})
    head = f"{'method':<22}|" + "|".join(f"{'N=' + str(n):^17}" for n in ns)
    lines = [head, "-" * len(head)]
    for meth, pts in summary.items():
        by_n = {p["n"]: p for p in pts}
        cells = [f" {by_n[n]['acc']:.3f} {by_n[n]['flops']:9.3e} " if n in by_n
                 else f"{'-':^17}" for n in ns]
        lines.append(f"{meth:<22}|" + "|".join(cells))
    return "\n".join(lines)


_CELL = re.compile(r"([0-9.]+) +([0-9.e+\-]+)")


def parse_table(text: str) -> dict[str, dict[int, tuple[float, float]]]:
    """The inverse of :func:`format_table` (for tests): {method: {n: (acc, flops)}}."""
    lines = [ln for ln in text.strip().splitlines() if "|" in ln]
    ns = [int(c.strip()[2:]) for c in lines[0].split("|")[1:]]
    out = {}
    for ln in lines[1:]:
        name, *cells = ln.split("|")
        out[name.strip()] = {n: (float(m.group(1)), float(m.group(2)))
                             for n, c in zip(ns, cells) if (m := _CELL.search(c))}
    return out


def report(rows: Sequence[dict], out_dir: str | Path | None = None, *, probes: int = 4,
           num_bins: int = 5, adaptive_ref_n: int = 16, printer=print) -> dict:
    """Prints the tables and RESULT lines; writes PNGs and summary.json to ``out_dir``.
    Configs that an interrupted sweep left unfinished are left out (and named)."""
    out: dict = {}
    kept = complete_rows(rows)
    dropped = sorted({f"{r['method']}@{r['n']}" + (f"/M{r['beam_width']}" if r["beam_width"]
                                                   else "") for r in rows} -
                     {f"{r['method']}@{r['n']}" + (f"/M{r['beam_width']}" if r["beam_width"]
                                                   else "") for r in kept})
    if dropped:
        printer(f"(unfinished configs left out: {', '.join(dropped)})")
    rows = kept
    summary = summarize(rows, "test")
    greedy = greedy_summary(rows, "test")
    n_test = max((p["problems"] for pts in summary.values() for p in pts), default=0)
    printer(f"\naccuracy | mean FLOPs per problem, by method and N ({n_test} test problems)")
    printer(format_table(summary))
    for name, g in greedy.items():
        printer(f"greedy {name:<15} acc {g['acc']:.3f}  FLOPs {g['flops']:.3e}")
    out.update(summary=summary, greedy=greedy)
    pngs = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        pngs.append(plots.accuracy_vs_compute(summary, greedy, out_dir / "accuracy.png"))

    has_samples = any(r["method"] == "samples" and r["split"] == "test" for r in rows)
    sizes = [len({r["uid"] for r in rows if r["split"] == s}) for s in ("test", "val")]
    num_bins = max(1, min([num_bins] + [x // 2 for x in sizes if x]))
    if has_samples:
        levels = oracle_levels(rows, "test", num_bins)
        by_level = {f"level {lv + 1} (pass@1 quintile)": summarize(
            rows, "test", uids={u for u, x in levels.items() if x == lv})
            for lv in range(num_bins)}
        out["levels"] = by_level
        printer("\naccuracy per oracle difficulty level (1 = easiest pass@1 quintile), "
                "largest N of each method")
        printer(f"{'method':<22}|" + "|".join(f"{'L' + str(i + 1):^7}" for i in range(num_bins)))
        for meth in summary:
            accs = [by_level[k][meth][-1]["acc"] if meth in by_level[k] else float("nan")
                    for k in by_level]
            n = summary[meth][-1]["n"]
            printer(f"{meth + '@' + str(n):<22}|" + "|".join(f"{a:^7.3f}" for a in accs))
        if out_dir is not None:
            pngs.append(plots.per_level(by_level, out_dir / "accuracy_per_level.png"))

    out["findings"] = findings(summary, out.get("levels"), printer)
    has_val = any(r["split"] == "val" for r in rows) and has_samples
    if has_val:
        probes = min(probes, min(len(r["answers"]) for r in rows if r["method"] == "samples"))
        out.update(_compute_optimal(rows, summary, greedy, out_dir, pngs, probes, num_bins,
                                    printer))
        out["adaptive"] = _adaptive(rows, adaptive_ref_n, printer)
    else:
        printer("\n(no validation split: compute-optimal and adaptive allocation skipped; "
                "set val_problems_per_k > 0)")
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
        printer(f"\nwrote {', '.join(str(p) for p in pngs)} and {out_dir / 'summary.json'}")
    return out


def _compute_optimal(rows, summary, greedy, out_dir, pngs, probes, num_bins, printer):
    out = {}
    variants = {
        "compute-optimal (predicted difficulty, probes charged)":
            dict(difficulty="predicted", charge_probes=True),
        "compute-optimal (predicted difficulty, probes free)":
            dict(difficulty="predicted", charge_probes=False),
        "compute-optimal (oracle difficulty)": dict(difficulty="oracle", charge_probes=False),
    }
    curves = {}
    for label, kw in variants.items():
        sel = co.fit_selector(rows, probes=probes, num_bins=num_bins, **kw)
        cmp_ = co.compare(sel, rows)
        curves[label] = cmp_["per_budget"]
        out[label] = cmp_
        printer(f"\n{label}: chosen on val, evaluated on test")
        printer(f"{'budget':>7} | {'acc':>6} {'FLOPs':>9} | {'wBoN@N':>6} {'FLOPs':>9} | "
                f"best fixed at <= FLOPs | choice per bin (easy -> hard)")
        for n, r in cmp_["per_budget"].items():
            bf = "-" if r["best_fixed"] is None else f"{r['best_fixed']} {r['best_fixed_acc']:.3f}"
            printer(f"{'N=' + str(n):>7} | {r['acc']:6.3f} {r['flops']:9.3e} | "
                    f"{r['reference_acc']:6.3f} {r['reference_flops']:9.3e} | {bf:<22} | "
                    + ", ".join(r["choice"].values()))
        for meth in ("best_of_n", "weighted_best_of_n"):
            if meth in cmp_:
                m = cmp_[meth]
                ratio = ("never reached" if m["ratio"] is None
                         else f"reached with {m['ratio']:.2f}x fewer FLOPs")
                printer(f"  {meth}'s top accuracy {m['top_acc']:.3f} "
                        f"({m['top_flops']:.3e} FLOPs): {ratio}")
    main = out["compute-optimal (predicted difficulty, probes charged)"]
    pb = main["per_budget"]
    wins = [n for n, r in pb.items() if r["best_fixed_acc"] is None
            or r["acc"] >= r["best_fixed_acc"]]
    printer(f"RESULT co_budgets_at_or_above_best_fixed={len(wins)}/{len(pb)}")
    if pb:
        top = max(pb.values(), key=lambda r: r["acc"])
        printer(f"RESULT co_top_acc={top['acc']:.4f}")
    bon = main.get("best_of_n", {})
    printer(f"RESULT co_flops_ratio_to_bon_top={bon.get('ratio') or 0.0:.3f}")
    if "teacher" in greedy:
        t = greedy["teacher"]
        fixed = co.fixed_curves(co.config_table(rows, "test"))
        matched_co = [r for r in pb.values() if r["flops"] <= t["flops"]]
        best_co = max(matched_co, key=lambda r: r["acc"]) if matched_co else None
        bf = co.best_fixed_within(fixed, t["flops"])
        reach = [r["flops"] for r in pb.values() if r["acc"] >= t["acc"]]
        out["teacher_match"] = {
            "teacher_acc": t["acc"], "teacher_flops": t["flops"],
            "co_acc_at_teacher_flops": None if best_co is None else best_co["acc"],
            "best_fixed_at_teacher_flops": bf,
            "co_flops_to_reach_teacher": min(reach) if reach else None}
        printer(f"\nteacher greedy: acc {t['acc']:.3f} at {t['flops']:.3e} FLOPs; small "
                f"policy + compute-optimal search at <= those FLOPs: "
                f"{'n/a' if best_co is None else format(best_co['acc'], '.3f')}; best fixed "
                f"method there: {'n/a' if bf is None else f'{bf[0]}@{bf[1]} {bf[3]:.3f}'}; "
                f"FLOPs to reach the teacher: "
                f"{'not reached' if not reach else format(min(reach), '.3e')}")
        printer(f"RESULT teacher_greedy_acc={t['acc']:.4f}")
        printer(f"RESULT small_co_acc_at_teacher_flops="
                f"{float('nan') if best_co is None else best_co['acc']:.4f}")
    if out_dir is not None:
        pngs.append(plots.compute_optimal_vs_fixed(summary, curves,
                                                   out_dir / "compute_optimal.png"))
        keep = {k: v for k, v in summary.items() if k.startswith("weighted") or k == "beam/M4"}
        pngs.append(plots.compute_optimal_vs_fixed(
            keep, {"small policy + compute-optimal search": curves[next(iter(curves))]},
            out_dir / "small_vs_teacher.png", greedy=greedy,
            title="small policy + search against teacher greedy (test split)"))
    return {"compute_optimal": out}


def _adaptive(rows, ref_n, printer):
    n_max = max(len(r["answers"]) for r in rows if r["method"] == "samples")
    if ref_n > n_max:
        printer(f"\n(adaptive allocation skipped: the sweep's largest N={n_max} < {ref_n})")
        return None
    rule = adaptive.fit_rule(rows, ref_n=ref_n)
    res = adaptive.evaluate_rule(rows, rule)
    ref = adaptive.reference(rows, ref_n)
    saved = 1.0 - res["flops"] / ref["flops"]
    printer(f"\nadaptive weighted vote (rule fitted on val: leading vote >= "
            f"{rule.threshold} and >= {rule.share} of the total, min_n={rule.min_n}, "
            f"max_n={rule.max_n}): test acc {res['acc']:.3f} at "
            f"{res['flops']:.3e} FLOPs (mean {res['mean_n']:.1f} candidates) vs weighted "
            f"BoN@{ref_n} acc {ref['acc']:.3f} at {ref['flops']:.3e}: {100 * saved:.0f}% "
            f"FLOPs saved")
    printer(f"RESULT adaptive_acc={res['acc']:.4f}")
    printer(f"RESULT adaptive_flops_fraction_of_wbon{ref_n}={res['flops'] / ref['flops']:.3f}")
    return {"rule": vars(rule), "test": res, "reference": ref, "saved": saved}


def _at(summary, meth, n):
    return next((p for p in summary.get(meth, []) if p["n"] == n), None)


def findings(summary: dict, levels: dict | None, printer=print) -> dict:
    """The Hugging Face study's comparisons, as numbers from this sweep's test split."""
    out: dict = {}
    printer("\nfindings of the references, on this sweep (test split):")
    bon, wbon = summary.get("best_of_n", []), summary.get("weighted_best_of_n", [])
    if bon and wbon:
        pairs = [(p["n"], _at(summary, "weighted_best_of_n", p["n"])["acc"], p["acc"])
                 for p in bon if p["n"] > 1 and _at(summary, "weighted_best_of_n", p["n"])]
        ge = sum(w >= b for _, w, b in pairs)
        out["weighted_vs_plain_bon"] = pairs
        printer(f"  weighted BoN >= BoN at {ge}/{len(pairs)} N>1: " + ", ".join(
            f"N={n} {w:.3f} vs {b:.3f}" for n, w, b in pairs))
    beams = [m for m in summary if m.startswith("beam/")]
    for beam in beams:
        b4, b16 = _at(summary, beam, 4), _at(summary, "best_of_n", 16)
        if b4 and b16:
            out[f"{beam}@4_vs_bon@16"] = (b4["acc"], b16["acc"], b16["flops"] / b4["flops"])
            printer(f"  {beam}@4 {b4['acc']:.3f} ({b4['flops']:.2e} FLOPs) vs best_of_n@16 "
                    f"{b16['acc']:.3f} ({b16['flops']:.2e}): {b16['flops'] / b4['flops']:.1f}x "
                    f"the FLOPs for {b16['acc'] - b4['acc']:+.3f}")
            if levels:
                per = []
                for name, summ in levels.items():
                    x, y = _at(summ, beam, 4), _at(summ, "best_of_n", 4)
                    if x and y:
                        per.append(f"{name.split(' (')[0]} {x['acc'] - y['acc']:+.3f}")
                printer(f"  {beam}@4 minus best_of_n@4 per oracle level (1 = easiest): "
                        + ", ".join(per))
        dvts = beam.replace("beam/", "dvts/")
        if dvts in summary:
            common = [p["n"] for p in summary[beam] if _at(summary, dvts, p["n"])]
            diffs = [(n, _at(summary, dvts, n)["acc"], _at(summary, beam, n)["acc"])
                     for n in common]
            out[f"{dvts}_vs_{beam}"] = diffs
            printer(f"  {dvts} vs {beam}: " + ", ".join(f"N={n} {d:.3f} vs {b:.3f}"
                                                       for n, d, b in diffs))
    return out
