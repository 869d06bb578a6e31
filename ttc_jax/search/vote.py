"""Choosing one candidate per problem: best score, majority vote, PRM-weighted vote.

All functions take per-problem candidate arrays [P, C] and run on device. Votes are
segment sums keyed by (problem, first occurrence of the answer), so ties between answers
go to the answer seen first (lowest candidate index), as ``prm_quality.vote`` does; a
missing answer (``NO_ANSWER``) never wins while any candidate has one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttc_jax.search.tokens import NO_ANSWER


def best_index(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """[P, C] scores -> [P] index of the highest valid score (ties: lowest index)."""
    if valid is not None:
        scores = jnp.where(valid, scores, -jnp.inf)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def first_occurrence(answers: jax.Array) -> jax.Array:
    """[P, C] answer ids -> [P, C] index of the first candidate with the same answer."""
    same = answers[:, :, None] == answers[:, None, :]  # [P, C, C']
    return jnp.argmax(same, axis=-1).astype(jnp.int32)  # first True along C'


def vote_totals(answers: jax.Array, weights: jax.Array,
                valid: jax.Array | None = None) -> jax.Array:
    """[P, C] -> [P, C]: total weight of each answer, stored at its first occurrence
    (0 elsewhere, and for NO_ANSWER / invalid candidates)."""
    p, c = answers.shape
    counted = answers != NO_ANSWER
    if valid is not None:
        counted = counted & valid
    # Uncounted candidates get unique keys, so a counted answer's first occurrence is counted.
    keys = jnp.where(counted, answers, -2 - jnp.arange(c, dtype=answers.dtype))
    seg = (jnp.arange(p)[:, None] * c + first_occurrence(keys)).reshape(-1)  # [P*C]
    w = jnp.where(counted, weights, 0.0).astype(jnp.float32).reshape(-1)
    totals = jax.ops.segment_sum(w, seg, num_segments=p * c).reshape(p, c)
    has = jax.ops.segment_max(counted.reshape(-1).astype(jnp.int32), seg,
                              num_segments=p * c).reshape(p, c) > 0
    return jnp.where(has, totals, -jnp.inf)


def vote(answers: jax.Array, weights: jax.Array | None = None,
         valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Majority (``weights=None``) or weighted vote.

    Returns ([P] winning answer id or NO_ANSWER, [P] index of the first candidate with it;
    0 when no candidate has an answer).
    """
    if weights is None:
        weights = jnp.ones(answers.shape, jnp.float32)
    totals = vote_totals(answers, weights, valid)  # [P, C]
    idx = jnp.argmax(totals, axis=-1).astype(jnp.int32)  # first max: earliest answer
    none = jnp.all(totals == -jnp.inf, axis=-1)
    idx = jnp.where(none, 0, idx)
    winner = jnp.take_along_axis(answers, idx[:, None], axis=-1)[:, 0]
    return jnp.where(none, NO_ANSWER, winner), idx
