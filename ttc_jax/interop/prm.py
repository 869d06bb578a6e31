"""Hugging Face process reward models behind our PRM contract.

Search drives a PRM through ``prm.extend(tokens [B, C], cache, num_new) -> (score logits
[B, C], cache)`` (``search.step.score_new``): first once with the POLICY's prompt, then
block by block with the policy's solution tokens; it reads ``sigmoid(logit)`` at every
step delimiter and at the last non-eos token. HF PRMs expect their own text format, so
an adapter rewrites the token stream on the fly, inside jit, with static shapes:

* the prompt call (every row's cache empty) strips the policy's fixed chat prefix and
  suffix around the problem and writes the PRM's own ``prefix + problem + suffix``;
* in solution blocks each step delimiter is replaced by ``read + after`` template
  tokens; the score of the step is read at the last ``read`` token; eos is dropped;
* the last real token of a block also gets a "peek" score: ``read`` is run after it on
  a throw-away copy of the cache, so a step cut short (or the final step before eos) has
  a score while the committed stream continues the open step.

Two families:

* :class:`TokenProbPRM` (RLHFlow Llama3.1-8B-PRM style): the conversation is user turns
  (the problem and the first step, then one step per turn) each answered by an
  assistant ``+``; ``read`` = ``<|eot_id|>`` + assistant header, ``after`` = ``+`` +
  ``<|eot_id|>`` + user header; the score logit is ``logit(+) - logit(-)`` of the LM at
  the read position, so ``sigmoid`` gives P(+) against P(-).
* :class:`ClassifierPRM` (Qwen2.5-Math-PRM style): ``read`` = ``<extra_0>``, no
  ``after``; a two-class head (Linear, ReLU, Linear) on the trunk's hidden state;
  the score logit is ``l1 - l0`` (``sigmoid`` = softmax probability of the positive class).

Both keep their own KV cache, widened on the prompt call to ``cache_len`` slots (the
templates add tokens per step), and are incremental: each block is scored once.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.interop.hf import (
    check_unused,
    fill_params,
    read_hf_config,
    read_tensor,
    transformer_values,
)
from ttc_jax.interop.safetensors import SafetensorsCheckpoint
from ttc_jax.interop.tokenizer import render_chat
from ttc_jax.models.cache import KVCache
from ttc_jax.models.transformer import Transformer

Ids = tuple[int, ...]


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, W, ...], idx [B, C] -> [B, C, ...] (indices clipped into range)."""
    idx = jnp.clip(idx, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


class ChatPRMAdapter(nnx.Module):
    """The shared token-stream rewriting (see the module docstring).

    Args:
      lm: the trunk (a Transformer).
      policy_prefix, policy_suffix: ids the policy prompt has before and after the problem.
      prm_prefix, prm_suffix: ids the PRM wants before and after the problem.
      read, after: ids written in place of each step delimiter (the score is read at the
        last ``read`` token).
      delimiter_id, eos_ids: the policy's step delimiter and end-of-solution ids.
      cache_len: the PRM cache capacity (the cache handed in is widened to it).
    """

    def __init__(self, lm: Transformer, *, policy_prefix: Ids, policy_suffix: Ids,
                 prm_prefix: Ids, prm_suffix: Ids, read: Ids, after: Ids, delimiter_id: int,
                 eos_ids: Ids, cache_len: int | None = None):
        if not read:
            raise ValueError("read template is empty; the score needs a read position")
        self.lm = lm
        self.cfg: ModelConfig = lm.cfg
        self.policy_prefix, self.policy_suffix = tuple(policy_prefix), tuple(policy_suffix)
        self.prm_prefix, self.prm_suffix = tuple(prm_prefix), tuple(prm_suffix)
        self.read, self.after = tuple(read), tuple(after)
        self.delimiter_id = int(delimiter_id)
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.cache_len = cache_len or lm.cfg.max_seq_len

    # -- the score head (subclasses) --------------------------------------------------------

    def score_from_hidden(self, h: jax.Array) -> jax.Array:
        """[..., D] final hidden states -> [...] float32 score logits."""
        raise NotImplementedError

    # -- pieces -----------------------------------------------------------------------------

    def _widen(self, cache: KVCache) -> KVCache:
        extra = self.cache_len - cache.capacity
        if extra <= 0:
            return cache
        pad = ((0, 0), (0, 0), (0, 0), (0, extra), (0, 0))
        return cache.replace(k=jnp.pad(cache.k, pad), v=jnp.pad(cache.v, pad))

    def _prompt(self, tokens, cache, num_new):
        """Policy prompt rows -> the PRM's prompt, written to the cache."""
        b, w = tokens.shape
        pp, ps, qp, qs = (len(self.policy_prefix), len(self.policy_suffix),
                          len(self.prm_prefix), len(self.prm_suffix))
        width = max(w - pp - ps + qp + qs, 1)
        plen = jnp.maximum(num_new - pp - ps, 0)  # [B] problem tokens
        j = jnp.arange(width)[None, :]  # [1, W']
        src = _gather_rows(tokens, jnp.broadcast_to(pp + j - qp, (b, width)))
        tmpl = jnp.asarray(self.prm_prefix + self.prm_suffix + (0,), jnp.int32)
        in_suffix = (j >= qp + plen[:, None])
        tmpl_idx = jnp.where(j < qp, j, qp + j - qp - plen[:, None])
        out = jnp.where((j < qp) | in_suffix, tmpl[jnp.clip(tmpl_idx, 0, qp + qs)], src)
        _, cache = self.lm.extend_hidden(out, cache, plen + qp + qs)
        return jnp.zeros((b, w), jnp.float32), cache

    def _steps(self, tokens, cache, num_new):
        """Solution tokens -> delimiters expanded to read+after, eos dropped; scores."""
        b, c = tokens.shape
        a, rb = len(self.read), len(self.read) + len(self.after)
        valid = jnp.arange(c)[None, :] < num_new[:, None]  # [B, C]
        is_delim = valid & (tokens == self.delimiter_id)
        is_eos = valid & jnp.isin(tokens, jnp.asarray(self.eos_ids, jnp.int32))
        count = jnp.where(is_delim, rb, jnp.where(valid & ~is_eos, 1, 0))  # [B, C]
        end = jnp.cumsum(count, axis=1)  # exclusive end of each token's span
        start = end - count
        total = end[:, -1]  # [B]
        wx = c * max(rb, 1)
        j = jnp.arange(wx)[None, :, None]  # [1, Wx, 1]
        # the source token of output slot j: the one whose span [start, end) holds j
        src = jnp.sum(end[:, None, :] <= j, axis=2)  # [B, Wx]
        within = jnp.arange(wx)[None, :] - _gather_rows(start, src)  # [B, Wx]
        tmpl = jnp.asarray(self.read + self.after, jnp.int32)
        out = jnp.where(_gather_rows(is_delim, src), tmpl[jnp.clip(within, 0, rb - 1)],
                        _gather_rows(tokens, src))
        h, cache = self.lm.extend_hidden(out, cache, total)  # [B, Wx, D]
        at_read = _gather_rows(h, start + a - 1)  # [B, C, D]
        scores = jnp.where(is_delim, self.score_from_hidden(at_read), 0.0)
        # peek: the last real (non-eos) token, if not a delimiter, scored as a step end
        pos = jnp.arange(c)[None, :]
        real = valid & ~is_eos
        last = jnp.max(jnp.where(real, pos, -1), axis=1)  # [B]
        last_tok = jnp.take_along_axis(tokens, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
        peek = (last >= 0) & (last_tok != self.delimiter_id)
        read = jnp.broadcast_to(jnp.asarray(self.read, jnp.int32), (b, a))
        hp, _ = self.lm.extend_hidden(read, cache, jnp.where(peek, a, 0))
        peek_score = self.score_from_hidden(hp[:, a - 1])  # [B]
        scores = jnp.where(peek[:, None] & (pos == last[:, None]), peek_score[:, None], scores)
        return scores, cache

    def extend(self, tokens: jax.Array, cache: KVCache,
               num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """The PRM contract: score logits [B, C] of the new tokens, the updated cache."""
        b, c = tokens.shape
        num_new = jnp.full((b,), c, jnp.int32) if num_new is None else num_new
        num_new = num_new.astype(jnp.int32)
        cache = self._widen(cache)
        return jax.lax.cond(jnp.all(cache.lengths == 0), self._prompt, self._steps,
                            tokens, cache, num_new)


class TokenProbPRM(ChatPRMAdapter):
    """An LM judging each step with a "+" / "-" token (RLHFlow Llama3.1-8B-PRM style)."""

    def __init__(self, lm: Transformer, *, plus_id: int, minus_id: int, **kwargs):
        super().__init__(lm, **kwargs)
        self.plus_id, self.minus_id = int(plus_id), int(minus_id)

    def score_from_hidden(self, h):
        if self.cfg.tie_embeddings:
            w = self.lm.embed[...][jnp.asarray([self.plus_id, self.minus_id])]  # [2, D]
        else:
            w = self.lm.lm_head[...][:, jnp.asarray([self.plus_id, self.minus_id])].T
        two = jnp.einsum("...D,ND->...N", h.astype(jnp.float32), w.astype(jnp.float32))
        return two[..., 0] - two[..., 1]  # logit(+) - logit(-): softmax over the two


class ClassifierPRM(ChatPRMAdapter):
    """A trunk plus a two-class head read at ``<extra_0>`` (Qwen2.5-Math-PRM style).

    Head: ``l = W2 relu(W1 h + b1) + b2`` with W1 [D, D], W2 [D, 2] (our layout).
    """

    def __init__(self, lm: Transformer, **kwargs):
        super().__init__(lm, **kwargs)
        d, pd = lm.cfg.d_model, lm.cfg.jnp_param_dtype
        z = lambda *s: nnx.Param(jnp.zeros(s, pd), out_sharding=(None,) * len(s),
                                 eager_sharding=False)
        self.w1, self.b1, self.w2, self.b2 = z(d, d), z(d), z(d, 2), z(2)

    def score_from_hidden(self, h):
        h = h.astype(jnp.float32)
        x = jax.nn.relu(h @ self.w1[...].astype(jnp.float32) + self.b1[...].astype(jnp.float32))
        two = x @ self.w2[...].astype(jnp.float32) + self.b2[...].astype(jnp.float32)
        return two[..., 1] - two[..., 0]


# -- templates from a tokenizer -------------------------------------------------------------

def chat_split(tokenizer, fmt: str, system: str | None, marker: str = "\x00PROBLEM\x00"):
    """(prefix ids, suffix ids) of a one-turn chat prompt around the user text."""
    text = render_chat(fmt, system=system, user=marker)
    head, tail = text.split(marker)
    return tuple(tokenizer.encode(head)), tuple(tokenizer.encode(tail))


def _policy_ids(tokenizer, policy_format: str, policy_system: str | None) -> dict:
    if tokenizer.step_delimiter_id is None:
        raise ValueError("the policy tokenizer has no single-token step delimiter; the PRM "
                         "reads scores at step delimiters")
    pp, ps = chat_split(tokenizer, policy_format, policy_system)
    return dict(policy_prefix=pp, policy_suffix=ps, delimiter_id=tokenizer.step_delimiter_id,
                eos_ids=tuple(getattr(tokenizer, "eos_ids", (tokenizer.eos_id,))))


def token_prob_prm_kwargs(tokenizer, *, policy_format: str = "llama3",
                          policy_system: str | None = None,
                          first_step_separator: str = " ") -> dict:
    """TokenProbPRM arguments for a Llama-3-format "+"/"-" PRM sharing the policy's
    tokenizer (Llama-3.2 policy, Llama-3.1 PRM)."""
    enc = tokenizer.encode
    return dict(
        _policy_ids(tokenizer, policy_format, policy_system),
        prm_prefix=tuple(enc("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")),
        prm_suffix=tuple(enc(first_step_separator)) if first_step_separator else (),
        read=tuple(enc("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")),
        after=tuple(enc("+<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")),
        plus_id=enc("+")[0], minus_id=enc("-")[0])


QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def classifier_prm_kwargs(tokenizer, *, policy_format: str = "qwen",
                          policy_system: str | None = None,
                          prm_system: str = QWEN_PRM_SYSTEM) -> dict:
    """ClassifierPRM arguments for a Qwen2.5-Math-PRM sharing the policy's tokenizer."""
    sep = tokenizer.token_to_id("<extra_0>")
    if sep is None:
        raise ValueError("the tokenizer has no <extra_0> token; is it a Qwen2.5-Math-PRM's?")
    qp, qs = chat_split(tokenizer, "qwen", prm_system)
    return dict(_policy_ids(tokenizer, policy_format, policy_system), prm_prefix=qp,
                prm_suffix=qs, read=(sep,), after=())


# -- loading --------------------------------------------------------------------------------

def load_token_prob_prm(path: str | Path, *, dtype: str = "float32", cache_len: int = 4096,
                        mesh=None, **adapter_kwargs) -> TokenProbPRM:
    """An RLHFlow-style PRM from a local Llama checkpoint folder; ``adapter_kwargs`` from
    :func:`token_prob_prm_kwargs` (or given id by id)."""
    from ttc_jax.interop.hf import load_hf_model

    lm = load_hf_model(path, dtype=dtype, max_seq_len=cache_len, mesh=mesh)
    return TokenProbPRM(lm, cache_len=cache_len, **adapter_kwargs)


CLASSIFIER_ARCHITECTURES = ("Qwen2ForProcessRewardModel",)


def load_classifier_prm(path: str | Path, *, dtype: str = "float32", cache_len: int = 4096,
                        mesh=None, **adapter_kwargs) -> ClassifierPRM:
    """A Qwen2.5-Math-PRM from a local folder (``model.*`` trunk + ``score.0``/``score.2``
    head); ``adapter_kwargs`` from :func:`classifier_prm_kwargs`."""
    cfg, _ = read_hf_config(path, dtype=dtype, max_seq_len=cache_len,
                            architectures=CLASSIFIER_ARCHITECTURES, tie_embeddings=True)
    ckpt = SafetensorsCheckpoint(path)
    values, used = transformer_values(ckpt, cfg)
    d = cfg.d_model
    head = {("w1",): ("score.0.weight", (d, d), lambda w: w.T),
            ("b1",): ("score.0.bias", (d,), lambda b: b),
            ("w2",): ("score.2.weight", (2, d), lambda w: w.T),
            ("b2",): ("score.2.bias", (2,), lambda b: b)}
    check_unused(ckpt, used | {v[0] for v in head.values()})

    def all_values(key):
        if key[0] == "lm":
            return values(key[1:])
        name, shape, fn = head[key]
        return fn(read_tensor(ckpt, name, shape, cfg))

    abstract = nnx.eval_shape(lambda: ClassifierPRM(
        Transformer(cfg, rngs=nnx.Rngs(0)), cache_len=cache_len, **adapter_kwargs))
    return fill_params(abstract, all_values, dtype=cfg.jnp_param_dtype, mesh=mesh)
