"""The jit-compiled sampler: prefill once, broadcast the cache to N rows, decode in a
``lax.while_loop`` that stops each row on a stop token or at the token budget.

    state = prefill(model, prompts, prompt_lens, n=16, capacity=S, max_new_tokens=T)
    state = decode(model, state, rng, strategy=Temperature(0.8), stop_tokens=(eos,))

``sample`` does both in one jit call. ``DecodeState`` is resumable: calling ``decode``
again continues every row that is not done (the step-level search kernels reset ``done``
for rows that stopped at a step delimiter and call it again).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.decode.loop import advance
from ttc_jax.decode.sampling import SamplingStrategy
from ttc_jax.models.cache import CONTIGUOUS, CacheLayout, KVCache
from ttc_jax.models.transformer import Transformer


@flax.struct.dataclass
class DecodeState:
    """Fixed-size buffers of a batch of R rows being decoded.

    Attributes:
      cache: KVCache over R rows; it holds the prompt and every generated token.
      logits: [R, V] float32 next-token logits (the model's prediction after the cache).
      tokens: [R, T] int32 generated tokens; entries at or past ``num_tokens`` are pad (0).
      logprobs: [R, T] float32 log-probability of each generated token under the model
        (temperature 1, no truncation); 0 past ``num_tokens``.
      num_tokens: [R] int32 tokens generated so far.
      done: [R] bool, the row has stopped (stop token or full buffer).
    """

    cache: KVCache
    logits: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    num_tokens: jax.Array
    done: jax.Array

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def gather(self, rows: jax.Array) -> DecodeState:
        """Reorders (and duplicates) rows by parent index ([R'] int)."""
        take = lambda x: jnp.take(x, rows, axis=0)
        return DecodeState(cache=self.cache.gather(rows), logits=take(self.logits),
                           tokens=take(self.tokens), logprobs=take(self.logprobs),
                           num_tokens=take(self.num_tokens), done=take(self.done))


@flax.struct.dataclass
class SampleOutput:
    """N samples for each of B prompts.

    Attributes:
      tokens: [B, N, T] int32, pad (0) after each sample's end.
      logprobs: [B, N, T] float32 model log-probs of the tokens (0 after the end).
      lengths: [B, N] int32 number of generated tokens (stop token included).
      done: [B, N] bool, True if the sample ended with a stop token, False if it ran out of
        budget.
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array


def prefill(model: Transformer, prompts: jax.Array, prompt_lens: jax.Array, *, n: int,
            capacity: int, max_new_tokens: int,
            layout: CacheLayout = CONTIGUOUS) -> DecodeState:
    """Runs the prompts once and broadcasts each cache to n rows.

    Args:
      prompts: [B, P] int32 right-padded prompt tokens.
      prompt_lens: [B] int32 number of real tokens per prompt (>= 1).
      n: rows per prompt; row b*n + i is sample i of prompt b.
      capacity: KV-cache slots S (>= P + max_new_tokens).
      max_new_tokens: T, the size of the output buffers.
      layout: contiguous caches, or paged (the n rows share their prompt's pages).
    Returns:
      A DecodeState with R = B*n rows, nothing generated yet.
    """
    b, w = prompts.shape
    cache = layout.init(model.cfg, b, capacity, w)
    logits, cache = model.extend(prompts, cache, prompt_lens)  # [B, P, V]
    last = jnp.take_along_axis(logits, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]
    r = b * n
    return DecodeState(
        cache=layout.repeat(cache, n, capacity - w),
        logits=jnp.repeat(last, n, axis=0),
        tokens=jnp.zeros((r, max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((r, max_new_tokens), jnp.float32),
        num_tokens=jnp.zeros((r,), jnp.int32),
        done=jnp.zeros((r,), bool),
    )


def decode(model: Transformer, state: DecodeState, rng: jax.Array, *,
           strategy: SamplingStrategy, stop_tokens: Sequence[int],
           max_steps: int | None = None) -> DecodeState:
    """Decodes every row that is not done until a stop token or its buffer is full.

    Each iteration samples one token per active row, appends it (and its model log-prob),
    and feeds it through the model so the cache always holds every generated token and
    ``logits`` is the prediction after it. Done rows are masked: their cache, buffers and
    logits do not change. Iteration i uses ``jax.random.fold_in(rng, i)``.

    Args:
      max_steps: at most this many iterations in this call (default: the buffer size T).
    """
    width = state.tokens.shape[1]
    max_steps = width if max_steps is None else max_steps
    stops = jnp.asarray(tuple(stop_tokens), jnp.int32)
    rows = jnp.arange(state.rows)

    def pick(s, i):
        tok = strategy.sample(s.logits, jax.random.fold_in(rng, i))  # [R]
        logp = jnp.take_along_axis(jax.nn.log_softmax(s.logits, axis=-1), tok[:, None],
                                   axis=-1)[:, 0]
        return tok, logp

    def observe(s, tok, logp, running, full, i):
        slot = jnp.where(running, s.num_tokens - 1, width)  # the token just written
        stop = running & jnp.isin(tok, stops)
        return s.replace(logprobs=s.logprobs.at[rows, slot].set(logp, mode="drop"),
                         done=s.done | stop | full), stop

    state, _ = advance(model, state, ~state.done, pick=pick, observe=observe, cap=max_steps)
    return state


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "capacity", "max_new_tokens",
                                             "strategy", "stop_tokens", "layout"))
def _sample_jit(graphdef, params, prompts, prompt_lens, rng, *, n, capacity, max_new_tokens,
                strategy, stop_tokens, layout=CONTIGUOUS):
    model = nnx.merge(graphdef, params).hoist_layers()
    state = prefill(model, prompts, prompt_lens, n=n, capacity=capacity,
                    max_new_tokens=max_new_tokens, layout=layout)
    state = decode(model, state, rng, strategy=strategy, stop_tokens=stop_tokens)
    b = prompts.shape[0]
    last = jnp.take_along_axis(state.tokens, jnp.maximum(state.num_tokens - 1, 0)[:, None],
                               axis=1)[:, 0]
    ended = (state.num_tokens > 0) & jnp.isin(last, jnp.asarray(stop_tokens, jnp.int32))
    return SampleOutput(
        tokens=state.tokens.reshape(b, n, -1),
        logprobs=state.logprobs.reshape(b, n, -1),
        lengths=state.num_tokens.reshape(b, n),
        done=ended.reshape(b, n))


def _as_batch(prompts, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(prompts, tuple) and len(prompts) == 2:
        tokens, lens = (np.asarray(p) for p in prompts)
        return tokens.astype(np.int32), lens.astype(np.int32)
    seqs = [list(p) for p in prompts]
    if not seqs:
        raise ValueError("no prompts given; pass a non-empty list of token-id lists")
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, np.asarray([len(s) for s in seqs], np.int32)


def check_request(prompts, *, n: int, max_new_tokens: int, strategy: SamplingStrategy,
                  capacity: int | None, max_seq_len: int,
                  pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Validates a sampling request before anything compiles (shared by ``sample`` and
    ``speculative_sample``). Returns (tokens [B, P], lengths [B], cache capacity)."""
    if n < 1:
        raise ValueError(f"n={n} samples per prompt must be >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not isinstance(strategy, SamplingStrategy):
        raise TypeError(f"strategy must be a SamplingStrategy (e.g. get_strategy('greedy')), "
                        f"got {strategy!r}")
    tokens, lens = _as_batch(prompts, pad_id)
    if lens.min() < 1:
        raise ValueError(f"prompt {int(lens.argmin())} is empty; every prompt needs at least "
                         f"one token (e.g. BOS)")
    capacity = capacity or max_seq_len
    need = tokens.shape[1] + max_new_tokens
    if need > capacity:
        raise ValueError(
            f"prompt longer than the cache: the longest prompt has {int(lens.max())} tokens "
            f"(padded to {tokens.shape[1]}) + max_new_tokens={max_new_tokens} = {need} > "
            f"cache capacity {capacity}; shorten the prompt, lower max_new_tokens or raise "
            f"capacity/model.max_seq_len")
    return tokens, lens, capacity


def sample(model: Transformer, prompts, *, n: int, rng: jax.Array, max_new_tokens: int,
           strategy: SamplingStrategy, stop_tokens: Sequence[int], capacity: int | None = None,
           pad_id: int = 0, layout: CacheLayout = CONTIGUOUS) -> SampleOutput:
    """Draws n samples for each prompt in one jit call.

    Args:
      model: the policy.
      prompts: a list of token-id lists (different lengths are fine), or a tuple
        ``(tokens [B, P] right-padded, lengths [B])``.
      n: samples per prompt (>= 1).
      rng: a ``jax.random.key``; same key, same samples.
      max_new_tokens: token budget per sample.
      strategy: a SamplingStrategy (e.g. ``Greedy()``, ``TopP(0.9)``).
      stop_tokens: ids that end a sample (EOS; add the step delimiter for one step).
      capacity: KV-cache slots (default: the model's max_seq_len).
      layout: ``CacheLayout(paged=True)`` for the paged cache (``models.paged``).
    """
    tokens, lens, capacity = check_request(prompts, n=n, max_new_tokens=max_new_tokens,
                                           strategy=strategy, capacity=capacity,
                                           max_seq_len=model.cfg.max_seq_len, pad_id=pad_id)
    graphdef, params = nnx.split(model)
    return _sample_jit(graphdef, params, jnp.asarray(tokens), jnp.asarray(lens), rng, n=n,
                       capacity=capacity, max_new_tokens=max_new_tokens, strategy=strategy,
                       stop_tokens=tuple(int(t) for t in stop_tokens), layout=layout)
