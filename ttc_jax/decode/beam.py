"""Token-level beam search in one jit call (static shapes, ``lax.while_loop``).

    out = beam_search(model, prompts, num_beams=8, max_new_tokens=64, eos_ids=(eos,))

The classic algorithm, as transformers' ``generate(num_beams=K)``: every step expands
the K live beams of a prompt over the vocabulary, keeps the 2K best continuations by
summed log-probability, moves those ending in eos (among the first K of them) to a
finished pool scored ``sum_logprob / generated_len ** length_penalty``, and continues the
K best that do not end. At the end, live beams join the pool and the best K are returned.
Beam reordering is a gather of the KV cache by parent row (``KVCache.gather``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.decode.sampler import _as_batch
from ttc_jax.models.cache import CONTIGUOUS, CacheLayout, KVCache

_NEG_INF = -1e30


@flax.struct.dataclass
class BeamOutput:
    """K best hypotheses per prompt, best first.

    Attributes:
      tokens: [B, K, T] int32 generated tokens (eos included), 0 after each end.
      lengths: [B, K] int32 generated tokens.
      scores: [B, K] float32 length-normalised summed log-probabilities.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array


@flax.struct.dataclass
class _Beams:
    """Loop state for B prompts x K beams.

    live_tokens [B, K, T], live_logp [B, K] (summed), cache over B*K rows, logits
    [B*K, V]; fin_tokens [B, K, T], fin_scores [B, K] (-1e30 = empty), fin_len [B, K].
    """

    live_tokens: jax.Array
    live_logp: jax.Array
    cache: KVCache
    logits: jax.Array
    fin_tokens: jax.Array
    fin_scores: jax.Array
    fin_len: jax.Array


def _search(model, prompts, prompt_lens, *, k, max_new_tokens, capacity, eos_ids,
            length_penalty, layout=CONTIGUOUS):
    b, w = prompts.shape
    t = max_new_tokens
    cache = layout.init(model.cfg, b, capacity, w)
    logits, cache = model.extend(prompts, cache, prompt_lens)  # [B, P, V]
    last = jnp.take_along_axis(logits, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]
    v = last.shape[-1]
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    s = _Beams(
        live_tokens=jnp.zeros((b, k, t), jnp.int32),
        # all K beams start equal: only beam 0 may expand at the first step
        live_logp=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, _NEG_INF)[None], (b, 1)),
        cache=layout.repeat(cache, k, capacity - w), logits=jnp.repeat(last, k, axis=0),
        fin_tokens=jnp.zeros((b, k, t), jnp.int32),
        fin_scores=jnp.full((b, k), _NEG_INF, jnp.float32),
        fin_len=jnp.zeros((b, k), jnp.int32))
    rows = jnp.arange(b)[:, None]

    def body(i, s: _Beams) -> _Beams:
        lp = jax.nn.log_softmax(s.logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
        cand = (s.live_logp[:, :, None] + lp).reshape(b, k * v)
        top, idx = jax.lax.top_k(cand, 2 * k)  # [B, 2K]
        parent, tok = idx // v, (idx % v).astype(jnp.int32)
        seqs = jnp.take_along_axis(s.live_tokens, parent[:, :, None], axis=1)  # [B, 2K, T]
        seqs = seqs.at[:, :, i].set(tok)
        ends = jnp.isin(tok, eos)
        # finished: eos candidates among the first K ranks
        norm = top / (jnp.float32(i + 1) ** length_penalty)
        new_fin = jnp.where(ends & (jnp.arange(2 * k) < k)[None], norm, _NEG_INF)
        all_scores = jnp.concatenate([s.fin_scores, new_fin], axis=1)  # [B, 3K]
        all_tokens = jnp.concatenate([s.fin_tokens, seqs], axis=1)
        all_len = jnp.concatenate([s.fin_len, jnp.full((b, 2 * k), i + 1, jnp.int32)], 1)
        fin_scores, fidx = jax.lax.top_k(all_scores, k)
        fin_tokens = jnp.take_along_axis(all_tokens, fidx[:, :, None], axis=1)
        fin_len = jnp.take_along_axis(all_len, fidx, axis=1)
        # live: the K best candidates that do not end
        alive = jnp.where(ends, _NEG_INF, top)
        live_logp, lidx = jax.lax.top_k(alive, k)  # [B, K]
        live_tokens = jnp.take_along_axis(seqs, lidx[:, :, None], axis=1)
        src = (rows * k + jnp.take_along_axis(parent, lidx, axis=1)).reshape(-1)  # [B*K]
        new_tok = jnp.take_along_axis(tok, lidx, axis=1).reshape(-1, 1)
        logits, cache = model.extend(new_tok, s.cache.gather(src))
        return _Beams(live_tokens=live_tokens, live_logp=live_logp, cache=cache,
                      logits=logits[:, 0], fin_tokens=fin_tokens, fin_scores=fin_scores,
                      fin_len=fin_len)

    s = jax.lax.fori_loop(0, t, body, s)
    # live beams join the finished pool at full length
    live_norm = s.live_logp / (jnp.float32(t) ** length_penalty)
    scores = jnp.concatenate([s.fin_scores, live_norm], axis=1)
    tokens = jnp.concatenate([s.fin_tokens, s.live_tokens], axis=1)
    lens = jnp.concatenate([s.fin_len, jnp.full((b, k), t, jnp.int32)], axis=1)
    best, bidx = jax.lax.top_k(scores, k)
    tokens = jnp.take_along_axis(tokens, bidx[:, :, None], axis=1)
    lens = jnp.take_along_axis(lens, bidx, axis=1)
    tokens = jnp.where(jnp.arange(t)[None, None] < lens[:, :, None], tokens, 0)
    return BeamOutput(tokens=tokens, lengths=lens, scores=best)


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "max_new_tokens", "capacity",
                                             "eos_ids", "length_penalty", "layout"))
def _beam_jit(graphdef, params, prompts, prompt_lens, *, k, max_new_tokens, capacity,
              eos_ids, length_penalty, layout=CONTIGUOUS):
    return _search(nnx.merge(graphdef, params).hoist_layers(), prompts, prompt_lens, k=k,
                   max_new_tokens=max_new_tokens, capacity=capacity, eos_ids=eos_ids,
                   length_penalty=length_penalty, layout=layout)


def beam_search(model, prompts, *, num_beams: int, max_new_tokens: int,
                eos_ids: Sequence[int] = (), length_penalty: float = 1.0,
                capacity: int | None = None, pad_id: int = 0,
                layout: CacheLayout = CONTIGUOUS) -> BeamOutput:
    """Beam search for each prompt (a list of id lists, or (tokens [B, P], lengths [B])).

    Runs exactly ``max_new_tokens`` steps (finished hypotheses wait in the pool).
    ``layout=CacheLayout(paged=True)``: beams share their parent's pages (a reorder moves
    page tables; each beam copies only the partial page it writes next).
    """
    if num_beams < 1:
        raise ValueError(f"num_beams={num_beams} must be >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    tokens, lens = _as_batch(prompts, pad_id)
    capacity = capacity or model.cfg.max_seq_len
    if tokens.shape[1] + max_new_tokens > capacity:
        raise ValueError(f"prompt width {tokens.shape[1]} + max_new_tokens={max_new_tokens} "
                         f"> cache capacity {capacity}; raise capacity or shorten")
    if num_beams * 2 > model.cfg.vocab_size:
        raise ValueError(f"num_beams={num_beams}: 2*num_beams must not exceed the vocabulary "
                         f"({model.cfg.vocab_size})")
    graphdef, params = nnx.split(model)
    return _beam_jit(graphdef, params, jnp.asarray(tokens), jnp.asarray(lens), k=num_beams,
                     max_new_tokens=max_new_tokens, capacity=capacity,
                     eos_ids=tuple(int(e) for e in eos_ids),
                     length_penalty=float(length_penalty), layout=layout)
