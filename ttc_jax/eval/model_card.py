"""Shipping trained models: export into ``ttc_jax/assets/<name>``, evaluate on the held-out
split, and write ``card.json`` (numbers) beside the weights and ``MODEL_CARD.md`` (all
shipped models) from those files. The fixed-slice greedy accuracy stored in each card is
re-measured by a test, so the card cannot drift from the files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttc_jax.eval.generate import greedy_accuracy
from ttc_jax.eval.prm_quality import prm_ranking_quality
from ttc_jax.models.io import ASSETS, load_model
from ttc_jax.tasks import get_task
from ttc_jax.train.metrics import read_metrics

KS = tuple(range(1, 9))
SLICE = {"per_k": 25, "seed": 0}  # the fixed slice the shipped-model test re-measures


def _train_summary(workdir: Path, step: int | None = None) -> dict[str, Any]:
    rows = read_metrics(workdir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r and (step is None or r["step"] <= step)]
    cfg = json.loads((workdir / "config.json").read_text())
    return {"steps": steps[-1]["step"] if steps else 0,
            "final_loss": steps[-1]["loss"] if steps else None,
            "wall_time_s": round(steps[-1]["time"] - rows[0]["time"] + steps[0].get(
                "wall_s", 0.0), 1) if steps else None,
            "seed": cfg["train"]["seed"], "config": cfg}


def ship(workdir: str | Path, name: str, *, command: str, dtype: str = "bfloat16",
         eval_problems: int = 100, policy: str = "policy_small", prm_n: int = 16,
         step: int | None = None, note: str = "") -> dict[str, Any]:
    """Copies ``workdir/model`` (or the checkpoint of ``step``) to the assets as ``name``
    (in ``dtype``), evaluates it and writes its card.json. For a PRM, ``policy`` is the
    shipped policy whose samples it ranks."""
    from ttc_jax.models.io import save_model
    from ttc_jax.train.export import restore_model

    workdir = Path(workdir)
    model = load_model(workdir / "model") if step is None else restore_model(workdir, step)[0]
    kind = "prm" if hasattr(model, "score_w") else "policy"
    dest = ASSETS / name
    if dest.exists():
        shutil.rmtree(dest)
    save_model(model, dest, kind=kind, dtype=dtype)
    model = load_model(dest)  # evaluate exactly what is shipped
    task = get_task("arithmetic")
    card: dict[str, Any] = {"name": name, "kind": kind, "command": command,
                            "params": model.cfg.num_params() + (
                                model.cfg.d_model + 1 if kind == "prm" else 0),
                            "stored_dtype": dtype, "note": note,
                            **_train_summary(workdir, step)}
    if kind == "policy":
        card["greedy_acc"] = greedy_accuracy(model, task, KS, eval_problems, seed=1)
        card["greedy_acc_eval_problems_per_k"] = eval_problems
        card["greedy_slice"] = {**SLICE, "acc": greedy_accuracy(
            model, task, KS, SLICE["per_k"], seed=SLICE["seed"])}
    else:
        pol = load_model(policy, kind="policy")
        card["ranking"] = prm_ranking_quality(model, pol, task, KS, eval_problems // 2,
                                              n=prm_n, seed=1)
        card["ranking_eval"] = {"policy": policy, "problems_per_k": eval_problems // 2,
                                "n": prm_n, "aggregation": "min"}
    (dest / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    write_model_card()
    return card


def _row(vals: Sequence[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in vals) + f" | {np.mean(vals):.3f}"


def write_model_card(path: Path | None = None) -> Path:
    """MODEL_CARD.md from every shipped model's card.json."""
    path = path or ASSETS / "MODEL_CARD.md"
    cards = [json.loads(p.read_text()) for p in sorted(ASSETS.glob("*/card.json"))]
    ks = " | ".join(f"k={k}" for k in KS)
    lines = ["# Shipped models", "",
             "Trained on this repository's 2-core CPU machine; numbers are measured on the",
             "held-out test split with the shipped (stored) weights by",
             "`ttc_jax.eval.model_card.ship`. Regenerate with `python launch/ship.py ...`.", ""]
    for c in cards:
        lines += [f"## {c['name']} ({c['kind']})", "",
                  f"- command: `{c['command']}`",
                  f"- seed {c['seed']}, {c['steps']} steps, wall time "
                  f"{(c['wall_time_s'] or 0) / 60:.1f} min, {c['params']:,} parameters, "
                  f"stored as {c['stored_dtype']}",
                  f"- final training loss {c['final_loss']:.4f}"]
        lines += [f"- {c['note']}", ""] if c.get("note") else [""]
        if c["kind"] == "policy":
            lines += [f"Greedy accuracy ({c['greedy_acc_eval_problems_per_k']} problems per k):",
                      "", f"| {ks} | mean |", "|" + "---|" * (len(KS) + 1),
                      "| " + _row([c["greedy_acc"][str(k)] for k in KS]) + " |", ""]
        else:
            r, e = c["ranking"], c["ranking_eval"]
            lines += [f"Ranking {e['n']} samples of `{e['policy']}` per problem "
                      f"({e['problems_per_k']} problems per k, step scores aggregated by "
                      f"{e['aggregation']}):", "", f"| metric | {ks} | mean |",
                      "|---|" + "---|" * (len(KS) + 1)]
            for m in ("pairwise", "pass1", "majority", "weighted_bon", "bon", "oracle"):
                vals = [r.get(f"{m}_k{k}", float("nan")) for k in KS]
                lines.append(f"| {m} | " + _row(vals) + " |")
            lines += ["", f"Pairwise ranking accuracy (all k): {r['pairwise_acc_mean']:.3f}; "
                      f"k=3..8: weighted best-of-{e['n']} {r['weighted_bon_mean_k3plus']:.3f} vs "
                      f"majority@{e['n']} {r['majority_mean_k3plus']:.3f}.", ""]
    path.write_text("\n".join(lines) + "\n")
    return path
