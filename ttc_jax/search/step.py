"""The one step-generation kernel every strategy shares, and incremental PRM scoring.

``generate`` extends each active row token by token (``lax.while_loop``, one
``policy.extend`` of one token per iteration) until a step end (any token whose text
contains the step separator: ``s.vocab.ends_step``), any eos id, a completed answer
line, the per-step cap or a full buffer; stopped and inactive rows are masked.
With ``stop_at_delimiter=False`` and ``cap=T`` the same kernel writes whole solutions
(best-of-N, the last iteration of beam search).

``score_new`` feeds the tokens a row gained since ``start`` to the PRM's own cache in
blocks of ``width`` tokens (``prm.extend``) and records a score at every step end, the
same positions the PRM was trained on (``train.data.step_end_positions``): each
step-end token, and the last non-eos token of a line cut short. With ``empty_step=True``
(search-and-learn rules, a PRM with ``empty_step_logits``) it also records the PRM's
verdict on an empty step after a row whose last real token ends a step
(``SearchState.empty_score``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.decode.loop import advance
from ttc_jax.decode.sampling import SamplingStrategy
from ttc_jax.search.state import SearchState, flops_line, note_overflow, per_problem
from ttc_jax.search.tokens import SearchTokens

_NEG_INF = -1e30


def row_keys(problem_keys: jax.Array, n: int) -> jax.Array:
    """[P] keys -> [R] keys; row p*N + i gets fold_in(key_p, i), whatever the batch."""
    keys = jnp.repeat(problem_keys, n, axis=0)
    return jax.vmap(jax.random.fold_in)(keys, jnp.tile(jnp.arange(n), problem_keys.shape[0]))


def fold_rows(keys: jax.Array, i) -> jax.Array:
    """[R] keys -> [R] keys folded with the same counter i."""
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


def _sample(logits, keys, strategy: SamplingStrategy | None, banned: tuple[int, ...]):
    logits = logits.at[:, jnp.asarray(banned)].set(_NEG_INF)
    if strategy is None:  # greedy
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.vmap(lambda lg, k: strategy.sample(lg, k))(logits, keys).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Drafted:
    """A policy with a draft model: ``generate`` then extends rows by speculative decoding
    (``ttc_jax.decode.speculative``; the draft proposes ``gamma`` tokens per target call),
    which samples exactly the policy's distribution. Built inside the jitted search."""

    target: object
    draft: object
    gamma: int = 4

    @property
    def cfg(self):
        return self.target.cfg


def generate(policy, s: SearchState, keys: jax.Array | None, active: jax.Array, *,
             strategy: SamplingStrategy | None, spec: SearchTokens, cap,
             stop_at_delimiter) -> tuple[SearchState, jax.Array]:
    """Extends every active, not-done row by one step.

    ``policy`` may be a :class:`Drafted` pair: the step is then generated speculatively
    (same stopping rules, same distribution, up to gamma+1 tokens per target call).

    Args:
      keys: [R] per-row keys of this step (token t uses fold_in(key, t)); None for greedy.
      active: [R] bool rows allowed to generate.
      strategy: the sampler, or None for greedy (lookahead rollouts).
      cap: at most this many tokens per row in this call (int, may be traced).
      stop_at_delimiter: bool (may be traced); False writes through to eos / full buffer.
    Returns:
      (state, start [R]): ``start`` is each row's ``num_tokens`` before the step.
    """
    if isinstance(policy, Drafted):
        from ttc_jax.decode.speculative import speculative_generate_step

        s, draft_cache, start = speculative_generate_step(
            policy.target, policy.draft, s, s.draft_cache, s.prompt_last, keys, active,
            strategy=strategy, spec=spec, cap=cap, stop_at_delimiter=stop_at_delimiter,
            gamma=policy.gamma)
        return note_overflow(s.replace(draft_cache=draft_cache)), start
    width = s.tokens.shape[1]
    p = s.compute.policy_tokens.shape[0]
    base, slope = flops_line(policy.cfg)
    prefix = jnp.asarray(spec.answer_prefix, jnp.int32)
    k = len(spec.answer_prefix)
    start = s.num_tokens

    def pick(s, t):
        return _sample(s.logits, None if keys is None else fold_rows(keys, t), strategy,
                       spec.banned()), None  # [R]

    def observe(s, tok, _, running, full, t):
        ctx = s.cache.lengths  # positions the new token attended to (running rows)
        is_eos = spec.is_eos(tok)
        is_delim = s.vocab.lookup(tok)
        line = jnp.take_along_axis(
            s.tokens, jnp.clip(s.line_start[:, None] + jnp.arange(k), 0, width - 1), axis=1)
        answer_line = jnp.all(line == prefix, axis=1) & (s.line_start + k < s.num_tokens)
        ended = running & (is_eos | (is_delim & answer_line))
        f = running.astype(jnp.float32)
        compute = s.compute.replace(
            policy_tokens=s.compute.policy_tokens + per_problem(f, p),
            policy_flops=s.compute.policy_flops
            + per_problem(f * (base + slope * ctx.astype(jnp.float32)), p))
        s = s.replace(
            line_start=jnp.where(running & is_delim, s.num_tokens, s.line_start),
            done=s.done | ended | full, ended=s.ended | ended, compute=compute)
        return s, ended | (is_delim & stop_at_delimiter)

    s, _ = advance(policy, s, active & ~s.done, pick=pick, observe=observe, cap=cap)
    return note_overflow(s), start


def score_new(prm, s: SearchState, start: jax.Array, *, spec: SearchTokens,
              width: int, empty_step: bool = False) -> SearchState:
    """Scores tokens [start, num_tokens) of every row with the PRM's own cache.

    Blocks of ``width`` tokens go through ``prm.extend``; a row's step scores are written
    at every step-end token and at its last non-eos token (a line cut short: marked
    ``open_step`` so the next block's step end overwrites it).

    ``empty_step`` (static): afterwards, every row that gained tokens gets
    ``empty_score``: ``sigmoid(prm.empty_step_logits(cache))`` (the PRM's verdict on an
    empty step appended to its committed stream, on a throw-away copy of the cache) when
    its last non-eos token is a step end, else -1. Not counted in ``compute`` (like the
    adapters' peek).
    """
    r, t = s.tokens.shape
    p = s.compute.prm_tokens.shape[0]
    rows = jnp.arange(r)
    base, slope = flops_line(prm.cfg, lm_head=False)
    end = s.num_tokens  # [R]
    last_tok = jnp.take_along_axis(s.tokens, jnp.maximum(end - 1, 0)[:, None], axis=1)[:, 0]
    last_real = end - 1 - spec.is_eos(last_tok)  # last non-eos position
    n_chunks = jnp.max((end - start + width - 1) // width)
    col = jnp.arange(width, dtype=jnp.int32)[None, :]  # [1, C]

    def body(c, s):
        off = start + c * width  # [R]
        pos = off[:, None] + col  # [R, C]
        num_new = jnp.clip(end - off, 0, width)  # [R]
        valid = col < num_new[:, None]
        block = jnp.take_along_axis(s.tokens, jnp.clip(pos, 0, t - 1), axis=1)
        block = jnp.where(valid, block, spec.pad_id)  # [R, C]
        ctx = s.prm_cache.lengths[:, None] + col + 1  # [R, C]
        # after init_state's prefill (``extend_steps``: no cond on an empty cache)
        logits, prm_cache = getattr(prm, "extend_steps", prm.extend)(block, s.prm_cache,
                                                                     num_new)  # [R, C]
        probs = jax.nn.sigmoid(logits)
        is_end = valid & (s.vocab.lookup(block) | (pos == last_real[:, None]))
        base_idx = s.num_steps - s.open_step  # reuse an open step's slot
        idx = base_idx[:, None] + jnp.cumsum(is_end, axis=1) - 1  # [R, C]
        idx = jnp.where(is_end, idx, t)  # out of bounds: dropped
        step_scores = s.step_scores.at[rows[:, None], idx].set(probs, mode="drop")
        step_pos = s.step_pos.at[rows[:, None], idx].set(pos, mode="drop")
        n_end = jnp.sum(is_end, axis=1)
        last_end_tok = jnp.max(jnp.where(is_end, pos, -1), axis=1)  # [R]
        cut = ~s.vocab.lookup(jnp.take_along_axis(
            s.tokens, jnp.maximum(last_end_tok, 0)[:, None], axis=1)[:, 0])
        f = valid.astype(jnp.float32)
        compute = s.compute.replace(
            prm_tokens=s.compute.prm_tokens + per_problem(f.sum(1), p),
            prm_flops=s.compute.prm_flops
            + per_problem((f * (base + slope * ctx.astype(jnp.float32))).sum(1), p))
        return s.replace(
            prm_cache=prm_cache, step_scores=step_scores, step_pos=step_pos,
            num_steps=jnp.where(n_end > 0, base_idx + n_end, s.num_steps),
            open_step=jnp.where(n_end > 0, cut, s.open_step), compute=compute)

    s = jax.lax.fori_loop(0, n_chunks, body, s)
    if empty_step:
        real_tok = jnp.take_along_axis(s.tokens, jnp.maximum(last_real, 0)[:, None],
                                       axis=1)[:, 0]
        has = (last_real >= 0) & s.vocab.lookup(real_tok)
        prob = jax.nn.sigmoid(prm.empty_step_logits(s.prm_cache).astype(jnp.float32))
        old = (jnp.full((r,), -1.0, jnp.float32) if s.empty_score is None
               else s.empty_score)
        s = s.replace(empty_score=jnp.where(end > start, jnp.where(has, prob, -1.0), old))
    return note_overflow(s)


def step(policy, prm, s: SearchState, keys, active, *, strategy, spec: SearchTokens,
         cap, stop_at_delimiter, width: int, empty_step: bool = False) -> SearchState:
    """generate + score_new: one reasoning step (or the rest of the solution) per row."""
    s, start = generate(policy, s, keys, active, strategy=strategy, spec=spec, cap=cap,
                        stop_at_delimiter=stop_at_delimiter)
    if prm is not None:
        s = score_new(prm, s, start, spec=spec, width=width, empty_step=empty_step)
    return s
