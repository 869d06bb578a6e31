"""The one token loop: advance the running rows one token at a time under a stop rule.

``sample`` (``decode.sampler.decode``) and search's step kernel (``search.step.generate``)
are this loop with their own ``pick`` (how a row's next token is chosen from its logits)
and ``observe`` (what a token changes besides the buffer, and whether its row stops).
Speculative decoding (``decode.speculative``) is its multi-token sibling, with the same
state core: up to gamma + 1 tokens per target call; token-level beam search
(``decode.beam``) reorders rows between tokens instead of stopping them.

The state core is any struct with ``cache`` (a ``KVCache`` or ``PagedKVCache``),
``logits [R, V]`` (the prediction after each row's last token), ``tokens [R, T]`` and
``num_tokens [R]`` (``DecodeState`` and ``SearchState`` both are one).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Pick = Callable  # (state, t) -> (tok [R] int32, extra | None)
Observe = Callable  # (state, tok, extra, running, full, t) -> (state, stop [R] bool)


def advance(model, s, running: jax.Array, *, pick: Pick, observe: Observe, cap):
    """Extends every running row by one token per iteration, at most ``cap`` iterations.

    Each iteration: ``tok, extra = pick(s, t)``; the running rows' tokens are written at
    ``num_tokens`` and fed through ``model.extend`` (stopped rows are masked: their cache,
    buffers and logits do not change); then ``observe(s, tok, extra, running, full, t)``
    (``s`` already holds the token, the cache and the new logits; ``full``: rows whose
    buffer is now full) returns the state and the rows that stop. A row also stops when
    its buffer is full.

    Returns (state, the rows still running).
    """
    r, width = s.tokens.shape
    rows = jnp.arange(r)

    def cond(c):
        t, _, run = c
        return (t < cap) & jnp.any(run)

    def body(c):
        t, s, run = c
        tok, extra = pick(s, t)
        slot = jnp.where(run, s.num_tokens, width)  # stopped rows write out of bounds
        num_tokens = s.num_tokens + run
        logits, cache = model.extend(tok[:, None], s.cache, run.astype(jnp.int32))
        s = s.replace(cache=cache, tokens=s.tokens.at[rows, slot].set(tok, mode="drop"),
                      num_tokens=num_tokens,
                      logits=jnp.where(run[:, None], logits[:, 0], s.logits))
        full = run & (num_tokens >= width)
        s, stop = observe(s, tok, extra, run, full, t)
        return t + 1, s, run & ~stop & ~full

    _, s, running = jax.lax.while_loop(cond, body, (jnp.int32(0), s, running))
    return s, running
