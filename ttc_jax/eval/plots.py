"""Matplotlib (Agg) PNGs of a sweep: accuracy against N / FLOPs per method, per difficulty
level, compute-optimal against fixed methods, small policy + search against the teacher.

Every function takes the summaries made by :mod:`ttc_jax.eval.report` (plain dicts), so
they plot any sweep, and returns the path written.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

X_FIELDS = {"n": "candidates N", "flops": "FLOPs per problem",
            "tokens": "policy tokens per problem"}
STYLES = {"majority": ("tab:gray", "o"), "best_of_n": ("tab:blue", "s"),
          "weighted_best_of_n": ("tab:green", "^"), "beam": ("tab:red", "D"),
          "dvts": ("tab:purple", "v")}


def _style(method: str):
    return STYLES.get(method.split("/")[0], ("black", "x"))


def _curves(ax, summary: dict, x: str):
    for meth, pts in summary.items():
        color, marker = _style(meth)
        ax.plot([p[_xkey(x)] for p in pts], [p["acc"] for p in pts], marker=marker,
                color=color, label=meth, linestyle="--" if "/M2" in meth else "-")
    ax.set_xscale("log", base=2 if x == "n" else 10)
    ax.set_xlabel(X_FIELDS[x])
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)


def _xkey(x: str) -> str:
    if x not in X_FIELDS:
        raise ValueError(f"x={x!r}; use one of {list(X_FIELDS)}")
    return {"n": "n", "flops": "flops", "tokens": "policy_tokens"}[x]


def _greedy(ax, greedy: dict, x: str):
    for i, (name, g) in enumerate(sorted(greedy.items())):
        xv = 1 if x == "n" else g[_xkey(x)]
        ax.scatter([xv], [g["acc"]], marker="*", s=160, zorder=5,
                   color=("gold", "black", "orange")[i % 3], label=f"{name} greedy")


def accuracy_vs_compute(summary: dict, greedy: dict, path: str | Path,
                        xs=("n", "flops"), title: str = "") -> Path:
    fig, axes = plt.subplots(1, len(xs), figsize=(6 * len(xs), 4.5), squeeze=False)
    for ax, x in zip(axes[0], xs):
        _curves(ax, summary, x)
        _greedy(ax, greedy, x)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "accuracy against compute (test split)")
    return _save(fig, path)


def per_level(level_summaries: dict, path: str | Path, x: str = "flops",
              title: str = "") -> Path:
    """One panel per difficulty level: {level name: summary}."""
    k = len(level_summaries)
    cols = min(k, 5)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, summ) in zip(axes.flat, level_summaries.items()):
        _curves(ax, summ, x)
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "accuracy against compute per difficulty level")
    return _save(fig, path)


def compute_optimal_vs_fixed(summary: dict, optimal: dict, path: str | Path,
                             greedy: dict | None = None, title: str = "") -> Path:
    """``optimal``: {label: {budget: {'acc', 'flops'}}} drawn as thick black lines."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    _curves(ax, summary, "flops")
    for (label, res), ls in zip(optimal.items(), ("-", ":", "-.")):
        pts = sorted(res.values(), key=lambda r: r["flops"])
        ax.plot([p["flops"] for p in pts], [p["acc"] for p in pts], color="black",
                linewidth=2.5, linestyle=ls, marker="o", label=label)
    if greedy:
        _greedy(ax, greedy, "flops")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "compute-optimal selection against fixed methods (test split)")
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
