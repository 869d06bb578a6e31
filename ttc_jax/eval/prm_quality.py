"""How good is a PRM at telling right solutions from wrong ones of the same problem?

Metrics, per difficulty, on n policy samples per held-out problem:
  * pairwise_acc: over problems with both right and wrong samples, the fraction of
    (right, wrong) pairs where the right one scores higher (ties count one half);
  * majority: accuracy of majority voting over the n answers;
  * weighted_bon: accuracy of PRM-weighted voting (sum of scores per distinct answer);
  * bon: accuracy of the single highest-scoring sample; oracle: any sample right.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.decode import Temperature
from ttc_jax.eval.generate import Samples, sample_solutions
from ttc_jax.tasks import Task
from ttc_jax.train import data

AGGREGATIONS = ("last", "min", "prod", "mean")


def aggregate_np(step_scores: Sequence[float], how: str) -> float:
    """Step probabilities -> one solution score (plain numpy reference)."""
    s = np.asarray(step_scores, np.float64)
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {list(AGGREGATIONS)}")
    if s.size == 0:
        return 0.0
    return float({"last": s[-1], "min": s.min(), "prod": s.prod(), "mean": s.mean()}[how])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prm_probs(graphdef, params, tokens):
    return jax.nn.sigmoid(nnx.merge(graphdef, params)(tokens))


def score_samples(prm, task: Task, samples: Samples, *, batch_size: int = 64,
                  multiple: int = 32) -> list[list[list[float]]]:
    """Step scores (probabilities) of every sample: [P][n][steps]."""
    tok = task.tokenizer
    seqs, ends, where = [], [], []
    for i, p in enumerate(samples.problems):
        for j, text in enumerate(samples.texts[i]):
            ids, plen = data.encode_example(task, p, text, add_eos=bool(samples.ended[i, j]))
            seqs.append(ids)
            ends.append(data.step_end_positions(ids, plen, tok.step_delimiter_ids,
                                                 tok.eos_ids))
            where.append((i, j))
    width = data.round_up(max(len(s) for s in seqs), multiple)
    graphdef, params = nnx.split(prm)
    out: list[list[list[float]]] = [[[] for _ in ts] for ts in samples.texts]
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        batch = np.full((batch_size, width), tok.pad_id, np.int32)
        for r, s in enumerate(chunk):
            batch[r, :len(s)] = s
        probs = np.asarray(_prm_probs(graphdef, params, jnp.asarray(batch)))
        for r in range(len(chunk)):
            i, j = where[start + r]
            out[i][j] = [float(probs[r, e]) for e in ends[start + r]]
    return out


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The answer with the largest (weighted) vote; ties go to the answer seen first.
    ``None`` answers (nothing extracted) never win."""
    totals: dict[str, float] = defaultdict(float)
    order: list[str] = []
    for a, w in zip(answers, weights if weights is not None else [1.0] * len(answers)):
        if a is None:
            continue
        if a not in totals:
            order.append(a)
        totals[a] += w
    if not order:
        return None
    return max(order, key=lambda a: (totals[a], -order.index(a)))


def prm_ranking_quality(prm, policy, task: Task, difficulties: Sequence[int],
                        n_per_difficulty: int, *, n: int = 16, seed: int = 0,
                        aggregation: str = "min", temperature: float = 1.0,
                        split: str = "test") -> dict[str, float]:
    """PRM quality on ``n`` policy samples per held-out problem (see module doc)."""
    problems = task.sample_problems(split, difficulties, n_per_difficulty, seed)
    samples = sample_solutions(policy, task, problems, n=n, rng=jax.random.key(seed),
                               strategy=Temperature(temperature))
    scores = score_samples(prm, task, samples)
    correct = samples.correct(task)
    per_k: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, p in enumerate(problems):
        agg = np.asarray([aggregate_np(s, aggregation) for s in scores[i]])
        answers = [task.extract_answer(t) for t in samples.texts[i]]
        m = per_k[p.difficulty]
        right, wrong = agg[correct[i]], agg[~correct[i]]
        if len(right) and len(wrong):
            diff = right[:, None] - wrong[None, :]
            m["pairwise"].append(float(((diff > 0) + 0.5 * (diff == 0)).mean()))
        m["majority"].append(float(vote(answers) == p.answer))
        m["weighted_bon"].append(float(vote(answers, agg) == p.answer))
        m["bon"].append(float(correct[i, int(np.argmax(agg))]))
        m["oracle"].append(float(correct[i].any()))
        m["pass1"].append(float(correct[i].mean()))
    out: dict[str, float] = {}
    for k in difficulties:
        for name, vals in per_k[k].items():
            out[f"{name}_k{k}"] = float(np.mean(vals)) if vals else float("nan")
    pair = [v for k in difficulties for v in per_k[k]["pairwise"]]
    out["pairwise_acc_mean"] = float(np.mean(pair)) if pair else float("nan")
    hard = [k for k in difficulties if k >= 3] or list(difficulties)
    for name in ("majority", "weighted_bon", "bon", "oracle", "pass1"):
        out[f"{name}_mean_k3plus"] = float(np.mean([out[f"{name}_k{k}"] for k in hard]))
    return out
