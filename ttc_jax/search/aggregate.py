"""PRM step scores -> one solution score, on device (last, min, prod, mean).

The plain reference is ``ttc_jax.eval.prm_quality.aggregate_np``; a row with no scored
step gets 0, as there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttc_jax.config import SEARCH_AGGREGATIONS

AGGREGATIONS = SEARCH_AGGREGATIONS


def aggregate(step_scores: jax.Array, num_steps: jax.Array, how: str,
              extra: jax.Array | None = None) -> jax.Array:
    """step_scores [..., S] probabilities (valid: the first ``num_steps`` [...]) -> [...].

    ``extra`` [...]: one more step's probability after the valid ones where it is >= 0
    (search-and-learn's empty trailing step, ``SearchState.empty_score``); -1 adds none.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {list(AGGREGATIONS)}")
    if extra is not None:
        return _aggregate_extra(step_scores, num_steps, how, extra)
    s = step_scores.astype(jnp.float32)
    mask = jnp.arange(s.shape[-1]) < num_steps[..., None]  # [..., S]
    any_step = num_steps > 0
    if how == "last":
        idx = jnp.maximum(num_steps - 1, 0)[..., None]
        out = jnp.take_along_axis(s, idx, axis=-1)[..., 0]
    elif how == "min":
        out = jnp.min(jnp.where(mask, s, jnp.inf), axis=-1)
    elif how == "prod":
        out = jnp.prod(jnp.where(mask, s, 1.0), axis=-1)
    else:  # mean
        out = jnp.sum(jnp.where(mask, s, 0.0), axis=-1) / jnp.maximum(num_steps, 1)
    return jnp.where(any_step, out, 0.0)


def _aggregate_extra(step_scores, num_steps, how, extra):
    """``aggregate`` over the valid steps plus ``extra`` where it is >= 0."""
    s = step_scores.astype(jnp.float32)
    e = extra.astype(jnp.float32)
    has = e >= 0
    mask = jnp.arange(s.shape[-1]) < num_steps[..., None]
    if how == "last":
        idx = jnp.maximum(num_steps - 1, 0)[..., None]
        out = jnp.where(has, e, jnp.take_along_axis(s, idx, axis=-1)[..., 0])
    elif how == "min":
        out = jnp.minimum(jnp.min(jnp.where(mask, s, jnp.inf), axis=-1),
                          jnp.where(has, e, jnp.inf))
    elif how == "prod":
        out = jnp.prod(jnp.where(mask, s, 1.0), axis=-1) * jnp.where(has, e, 1.0)
    else:  # mean
        n = num_steps + has
        out = (jnp.sum(jnp.where(mask, s, 0.0), axis=-1) + jnp.where(has, e, 0.0)) / (
            jnp.maximum(n, 1))
    return jnp.where((num_steps > 0) | has, out, 0.0)
