"""The search state: fixed-size buffers over R = P problems x N rows, carried by every loop.

Row ``p*N + i`` is candidate i of problem p. Both models keep a KV cache per row: the
policy's holds prompt + solution so far (its ``logits`` predict the next token); the PRM's
holds the same tokens, so a new step is scored by feeding only that step
(``prm.extend``). Selection reorders every per-row field with one gather
(:meth:`SearchState.gather`); compute counters are per problem and never reordered.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from ttc_jax.config import ModelConfig
from ttc_jax.models.cache import CONTIGUOUS, CacheLayout, KVCache
from ttc_jax.search.tokens import TokenTables


def flops_line(cfg: ModelConfig, *, lm_head: bool = True) -> tuple[float, float]:
    """(base, slope): forward FLOPs of one token attending to c positions = base + slope*c.

    ``lm_head=False`` swaps the vocabulary projection for a scalar head (the PRM).
    """
    base = cfg.flops_per_token(0)
    slope = cfg.flops_per_token(1) - base
    if not lm_head:
        base = base - 2 * cfg.vocab_size * cfg.d_model + 2 * cfg.d_model
    return float(base), float(slope)


@flax.struct.dataclass
class Compute:
    """Compute spent per problem, each [P] float32.

    policy_tokens: tokens the policy generated (every row, pruned ones and lookahead
      rollouts included; the prompt is not counted). prm_tokens: solution tokens the PRM
      read. *_flops: forward FLOPs of those tokens plus the one prompt prefill per problem
      (``ModelConfig.flops_per_token`` at each token's context length).
    """

    policy_tokens: jax.Array
    policy_flops: jax.Array
    prm_tokens: jax.Array
    prm_flops: jax.Array
    kv_overflow: jax.Array | None = None

    @classmethod
    def zeros(cls, p: int, paged: bool = False) -> Compute:
        z = jnp.zeros((p,), jnp.float32)
        return cls(z, z, z, z, jnp.zeros((p,), bool) if paged else None)


@flax.struct.dataclass
class SearchState:
    """Buffers of R rows. S = T step slots (a step holds at least one token).

    Attributes:
      cache: policy KVCache over R rows; logits: [R, V] next-token logits after it.
      prm_cache: the PRM's KVCache over R rows (None when searching without a PRM).
      tokens: [R, T] generated tokens (pad past ``num_tokens``); num_tokens: [R].
      line_start: [R] position in ``tokens`` where the current line (step) began.
      step_scores: [R, S] PRM probability of each step (valid below ``num_steps``).
      step_pos: [R, S] position in ``tokens`` of each step's scored (last) token.
      num_steps: [R]; open_step: [R] bool, the last scored step was cut by the per-step cap
        (the line goes on, and its score is overwritten when the line ends).
      done: [R] bool, the row generates no more (ended, or its buffer is full).
      ended: [R] bool, the row ended on eos or a completed answer line.
      compute: per-problem counters (with paged caches also ``kv_overflow``: a row of
        the problem found its cache's page pool full, see ``note_overflow``).
      draft_cache: the draft model's KVCache over R rows (speculative step generation,
        ``search(..., draft=...)``), holding the same tokens as ``cache``; else None.
      prompt_last: [R] each row's last prompt token (with a draft), else None.
      vocab: the tokenizer's per-token tables (step ends, answer reading); not per row.
      empty_score: [R] the PRM's probability of an EMPTY step after the row's text, -1
        where there is none (the row's last real token does not end a step); written by
        ``score_new(..., empty_step=True)`` (search-and-learn rules with an HF PRM adapter:
        the reference's ``text.split("\\n\\n")`` gives a text ending in a step end a
        trailing empty step), else None.
    """

    cache: KVCache
    logits: jax.Array
    prm_cache: KVCache | None
    tokens: jax.Array
    num_tokens: jax.Array
    line_start: jax.Array
    step_scores: jax.Array
    step_pos: jax.Array
    num_steps: jax.Array
    open_step: jax.Array
    done: jax.Array
    ended: jax.Array
    compute: Compute
    draft_cache: KVCache | None = None
    prompt_last: jax.Array | None = None
    vocab: TokenTables | None = None
    empty_score: jax.Array | None = None

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def gather(self, rows: jax.Array) -> SearchState:
        """New row r is old row ``rows[r]`` ([R] int); counters stay."""
        take = lambda x: jnp.take(x, rows, axis=0)
        return SearchState(
            cache=self.cache.gather(rows), logits=take(self.logits),
            prm_cache=None if self.prm_cache is None else self.prm_cache.gather(rows),
            tokens=take(self.tokens), num_tokens=take(self.num_tokens),
            line_start=take(self.line_start), step_scores=take(self.step_scores),
            step_pos=take(self.step_pos), num_steps=take(self.num_steps),
            open_step=take(self.open_step), done=take(self.done), ended=take(self.ended),
            compute=self.compute,
            draft_cache=None if self.draft_cache is None else self.draft_cache.gather(rows),
            prompt_last=None if self.prompt_last is None else take(self.prompt_last),
            vocab=self.vocab,
            empty_score=None if self.empty_score is None else take(self.empty_score))


def _prefill_flops(lens: jax.Array, base: float, slope: float) -> jax.Array:
    """sum over t < len of base + slope*(t+1): [P] float32."""
    n = lens.astype(jnp.float32)
    return n * base + slope * n * (n + 1) / 2


def note_overflow(s: SearchState) -> SearchState:
    """Marks in ``compute.kv_overflow`` every problem one of whose rows found a paged
    cache's page pool full (its write was dropped); a no-op for contiguous caches."""
    if s.compute.kv_overflow is None:
        return s
    over = jnp.zeros((s.rows,), bool)
    for c in (s.cache, s.prm_cache, s.draft_cache):
        if c is not None and hasattr(c, "overflow"):
            over = over | c.overflow
    p = s.compute.kv_overflow.shape[0]
    return s.replace(compute=s.compute.replace(
        kv_overflow=s.compute.kv_overflow | jnp.any(over.reshape(p, -1), axis=1)))


def init_state(policy, prm, prompts: jax.Array, prompt_lens: jax.Array, *, n: int,
               capacity: int, max_new_tokens: int, draft=None,
               vocab: TokenTables | None = None,
               layout: CacheLayout = CONTIGUOUS) -> SearchState:
    """Prefills the models once per problem and broadcasts to N rows each.

    Args:
      prompts: [P, W] right-padded prompts; prompt_lens: [P] (>= 1).
      capacity: KV-cache slots (>= W + max_new_tokens).
      draft: an optional draft model for speculative step generation; its prefill
        counts as policy FLOPs.
      vocab: the tokenizer's tables (``SearchTokens.tables()``), carried unchanged.
      layout: contiguous caches, or paged ones (each problem's prompt pages shared by
        its N rows).
    """
    p, w = prompts.shape
    r, t = p * n, max_new_tokens
    cache = layout.init(policy.cfg, p, capacity, w)
    logits, cache = policy.extend(prompts, cache, prompt_lens)  # [P, W, V]
    last = jnp.take_along_axis(logits, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]
    compute = Compute.zeros(p, paged=layout.paged).replace(
        policy_flops=_prefill_flops(prompt_lens, *flops_line(policy.cfg)))
    prm_cache = None
    if prm is not None:
        prm_cap = max(capacity, getattr(prm, "cache_len", 0) or 0)
        # an adapter's prompt stream is longer than the policy's (its chat template):
        # the prefill pool holds whole rows
        prm_cache = layout.init(prm.cfg, p, capacity, prm_cap)
        _, prm_cache = getattr(prm, "prefill", prm.extend)(prompts, prm_cache, prompt_lens)
        prm_cache = layout.repeat(prm_cache, n, prm_cap - w)
        compute = compute.replace(
            prm_flops=_prefill_flops(prompt_lens, *flops_line(prm.cfg, lm_head=False)))
    draft_cache = prompt_last = None
    if draft is not None:
        draft_cache = layout.init(draft.cfg, p, capacity, w)
        _, draft_cache = draft.extend(prompts, draft_cache, prompt_lens)
        draft_cache = layout.repeat(draft_cache, n, capacity - w)
        last_tok = jnp.take_along_axis(prompts, (prompt_lens - 1)[:, None], axis=1)[:, 0]
        prompt_last = jnp.repeat(last_tok, n, axis=0)
        compute = compute.replace(policy_flops=compute.policy_flops
                                  + _prefill_flops(prompt_lens, *flops_line(draft.cfg)))
    zeros_i = jnp.zeros((r,), jnp.int32)
    false = jnp.zeros((r,), bool)
    return SearchState(
        draft_cache=draft_cache, prompt_last=prompt_last, vocab=vocab,
        cache=layout.repeat(cache, n, capacity - w), logits=jnp.repeat(last, n, axis=0),
        prm_cache=prm_cache,
        tokens=jnp.zeros((r, t), jnp.int32), num_tokens=zeros_i, line_start=zeros_i,
        step_scores=jnp.zeros((r, t), jnp.float32), step_pos=jnp.zeros((r, t), jnp.int32),
        num_steps=zeros_i, open_step=false, done=false, ended=false, compute=compute)


def per_problem(x: jax.Array, p: int) -> jax.Array:
    """[R] -> [P] sum over each problem's rows."""
    return x.reshape(p, -1).sum(axis=1)
