"""Selection rules between steps, as pure functions of per-problem scores [P, N].

Ties always go to the lowest row index (stable sorts, first argmax), so a search is a
deterministic function of its scores.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from ttc_jax.search.state import SearchState


def beam_parents(select_score: jax.Array, eligible: jax.Array,
                 keep: int) -> tuple[jax.Array, jax.Array]:
    """Beam search: the top ``keep`` = N/M eligible rows survive; new row j copies
    survivor ``j % n_survivors`` (ranked by score), so each of N/M survivors has M children.
    With fewer eligible rows, survivors share the N rows cyclically (search-and-learn
    refills to N the same way).

    Args:
      select_score: [P, N]; eligible: [P, N] bool.
    Returns:
      (parents [P, N] int32 row within the problem (identity when none survive),
       n_survivors [P] int32).
    """
    p, n = select_score.shape
    key = jnp.where(eligible, select_score, -jnp.inf)
    ranked = jnp.argsort(-key, axis=-1, stable=True)[:, :keep].astype(jnp.int32)  # [P, k]
    n_surv = jnp.minimum(jnp.sum(eligible, axis=-1), keep).astype(jnp.int32)
    j = jnp.arange(n, dtype=jnp.int32)[None, :]
    which = j % jnp.maximum(n_surv, 1)[:, None]  # [P, N]
    parents = jnp.take_along_axis(ranked, which, axis=-1)
    return jnp.where(n_surv[:, None] > 0, parents, j), n_surv


def dvts_parents(select_score: jax.Array, active: jax.Array, m: int) -> jax.Array:
    """DVTS: each subtree of M consecutive rows keeps its best row in all M slots.

    Args:
      select_score: [P, N]; active: [P, N] rows that took part (a subtree with no active
        row keeps its rows).
    Returns:
      parents [P, N] int32 row within the problem; always inside the row's own subtree.
    """
    p, n = select_score.shape
    g = n // m
    key = jnp.where(active, select_score, -jnp.inf).reshape(p, g, m)
    best = jnp.argmax(key, axis=-1).astype(jnp.int32)  # [P, G]
    own = jnp.arange(n, dtype=jnp.int32).reshape(1, g, m)
    chosen = jnp.arange(g, dtype=jnp.int32)[None, :, None] * m + best[:, :, None]
    live = jnp.any(active.reshape(p, g, m), axis=-1, keepdims=True)
    return jnp.broadcast_to(jnp.where(live, chosen, own), (p, g, m)).reshape(p, n)


def duplicates(hashes: jax.Array, lengths: jax.Array, eligible: jax.Array) -> jax.Array:
    """[P, N] bool: an eligible row whose text equals an earlier eligible row's."""
    n = hashes.shape[-1]
    same = ((hashes[:, :, None] == hashes[:, None, :])
            & (lengths[:, :, None] == lengths[:, None, :])
            & eligible[:, None, :])  # [P, N(row), N'(other)]
    earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # other < row
    return eligible & jnp.any(same & earlier[None], axis=-1)


@flax.struct.dataclass
class Pool:
    """Beam search's completed beams: the best N by aggregated score, [P, N, ...] each.

    Attributes:
      tokens [P, N, T], num_tokens [P, N], step_scores [P, N, S], num_steps [P, N],
      ended [P, N], score [P, N], valid [P, N] (slot filled).
    """

    tokens: jax.Array
    num_tokens: jax.Array
    step_scores: jax.Array
    num_steps: jax.Array
    ended: jax.Array
    score: jax.Array
    valid: jax.Array

    @classmethod
    def empty(cls, p: int, n: int, t: int, steps: int) -> Pool:
        zi = jnp.zeros((p, n), jnp.int32)
        return cls(tokens=jnp.zeros((p, n, t), jnp.int32), num_tokens=zi,
                   step_scores=jnp.zeros((p, n, steps), jnp.float32), num_steps=zi,
                   ended=jnp.zeros((p, n), bool), score=jnp.zeros((p, n), jnp.float32),
                   valid=jnp.zeros((p, n), bool))

    def merge(self, s: SearchState, completed: jax.Array, score: jax.Array) -> Pool:
        """Adds the rows of ``s`` marked ``completed`` ([P, N]) with ``score`` ([P, N]) and
        keeps the best N; ties keep earlier entries (pool first, then row order)."""
        p, n = completed.shape
        new = Pool(tokens=s.tokens.reshape(p, n, -1), num_tokens=s.num_tokens.reshape(p, n),
                   step_scores=s.step_scores.reshape(p, n, -1),
                   num_steps=s.num_steps.reshape(p, n), ended=s.ended.reshape(p, n),
                   score=score, valid=completed)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), self, new)
        key = jnp.where(both.valid, both.score, -jnp.inf)
        order = jnp.argsort(-key, axis=-1, stable=True)[:, :n]  # [P, N]

        def take(x):
            idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
            return jnp.take_along_axis(x, idx, axis=1)

        return jax.tree.map(take, both)
