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


def beam_parents_in_row_order(select_score: jax.Array, eligible: jax.Array,
                              keep: int) -> tuple[jax.Array, jax.Array]:
    """Beam search under search-and-learn rules: the top ``keep`` eligible rows survive as
    ``np.argsort(scores, kind="stable")[-keep:]`` picks them (ties at the boundary: the
    LATER row), and new row j copies survivor ``j % n_survivors`` with the survivors in
    ROW order (the reference keeps its beam list in order and repeats it to N).

    Args / returns: as :func:`beam_parents`.
    """
    p, n = select_score.shape
    key = jnp.where(eligible, select_score, -jnp.inf)
    # descending score, ties to the higher row: a stable sort of the reversed rows
    rev = jnp.argsort(-key[:, ::-1], axis=-1, stable=True)
    ranked = (n - 1 - rev[:, :keep]).astype(jnp.int32)  # [P, k]
    n_surv = jnp.minimum(jnp.sum(eligible, axis=-1), keep).astype(jnp.int32)
    taken = jnp.arange(keep)[None, :] < n_surv[:, None]  # [P, k]
    rows = jnp.arange(p)[:, None]
    survive = jnp.zeros((p, n), bool).at[rows, jnp.where(taken, ranked, n)].set(
        True, mode="drop")
    in_order = jnp.argsort(~survive, axis=-1, stable=True).astype(jnp.int32)  # survivors first
    j = jnp.arange(n, dtype=jnp.int32)[None, :]
    which = j % jnp.maximum(n_surv, 1)[:, None]
    parents = jnp.take_along_axis(in_order, which, axis=-1)
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


def dvts_parents_halting(select_score: jax.Array, active: jax.Array, stops: jax.Array,
                         m: int) -> tuple[jax.Array, jax.Array]:
    """DVTS under search-and-learn rules: each live subtree takes its best row (first
    argmax, as :func:`dvts_parents`); when that row ``stops`` the subtree (its step ended
    on eos or the token cap, or its text holds ``boxed{``) the subtree halts and keeps its
    M rows as they are, the M siblings of its last expansion, which the reference returns;
    otherwise the best row is copied to all M slots.

    Args:
      select_score, active: as :func:`dvts_parents`; stops: [P, N] bool.
    Returns:
      (parents [P, N] int32, halts [P, N] bool: the row's subtree halts now).
    """
    p, n = select_score.shape
    best = dvts_parents(select_score, active, m)
    live = jnp.repeat(jnp.any(active.reshape(p, n // m, m), axis=-1), m, axis=-1)
    halts = live & jnp.take_along_axis(stops, best, axis=-1)
    own = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :], (p, n))
    return jnp.where(halts, own, best), halts


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
    """Beam search's completed beams, [P, N, ...] each: the best N by aggregated score
    (:meth:`merge`), or under search-and-learn rules the first N in completion order
    (:meth:`append`, then :meth:`repeat_to_full`).

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

    def append(self, s: SearchState, completed: jax.Array, score: jax.Array) -> Pool:
        """search-and-learn's pool: the rows of ``s`` marked ``completed`` ([P, N]) go to
        the next free slots in row order (completion order overall); once N slots hold a
        beam, later ones are dropped (the reference keeps ``completed_beams[:n]``)."""
        p, n = completed.shape
        new = Pool(tokens=s.tokens.reshape(p, n, -1), num_tokens=s.num_tokens.reshape(p, n),
                   step_scores=s.step_scores.reshape(p, n, -1),
                   num_steps=s.num_steps.reshape(p, n), ended=s.ended.reshape(p, n),
                   score=score, valid=completed)
        count = jnp.sum(self.valid, axis=1, dtype=jnp.int32)  # [P], the slots filled so far
        slot = count[:, None] + jnp.cumsum(completed, axis=1, dtype=jnp.int32) - 1
        slot = jnp.where(completed & (slot < n), slot, n)  # out of bounds: dropped
        rows = jnp.arange(p)[:, None]
        return jax.tree.map(lambda old, x: old.at[rows, slot].set(x, mode="drop"), self, new)

    def repeat_to_full(self) -> Pool:
        """Pads a pool filled in order to N by repeating its beams: slot j holds beam
        ``j % count`` (search-and-learn's ``(completed_beams * repeats)[:n]``). A problem
        with no beam keeps its empty slots."""
        p, n = self.valid.shape
        count = jnp.sum(self.valid, axis=1, dtype=jnp.int32)  # filled slots come first
        idx = jnp.arange(n, dtype=jnp.int32)[None, :] % jnp.maximum(count, 1)[:, None]

        def take(x):
            return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)),
                                       axis=1)

        return jax.tree.map(take, self)
