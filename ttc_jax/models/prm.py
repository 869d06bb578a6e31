"""The process reward model: the decoder trunk plus a scalar step-score head.

The head gives a logit at every position. How a step's score is read from them is the
``pooling``:

* ``"last"``: the logit at the step's last token (its delimiter).
* ``"step_min"``: the minimum logit over the step's tokens (a running minimum that
  restarts after each delimiter). A wrong result digit is then caught where it is
  written — the position just after the trunk predicted it, one attention hop away —
  instead of at the delimiter. Trained against prefix labels through the running minimum
  over steps (``ttc_jax.train.trainer.prm_loss``), so ``min`` aggregation over steps is
  the model's estimate that the solution is still right.

With ``token_logprob=True`` the head also sees, at each position, the trunk's own
log-probability of that position's token (predicted at the position before, through the
kept LM head): a learned scale times it is added to the logit. A trunk that can do the
task then flags a wrong result digit by its low probability, and ``step_min`` pooling
carries that to the step's score (a token-probability verifier, as in PRMs that read the
probability of a judgement token).

``sigmoid(score)`` estimates the probability that the solution is still correct after
that step. The PRM keeps the language-model head, so it can start from a policy
checkpoint (the trunk already knows the task) and is scored incrementally with its own
KV cache; the running minimum is carried across calls in ``KVCache.carry``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.models.cache import KVCache
from ttc_jax.models.transformer import Transformer

POOLINGS = ("last", "step_min")


def segment_running_min(values: jax.Array, tokens: jax.Array, delimiter_id: int,
                        carry: jax.Array, num_new: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Running minimum of ``values`` [B, T] that restarts after every delimiter token.

    ``carry`` [B] is the running minimum before the block (+inf: a step starts here).
    Returns (pooled [B, T], the carry after each row's ``num_new`` valid tokens).
    """
    b, t = values.shape
    restart = jnp.concatenate([jnp.zeros((b, 1), bool), tokens[:, :-1] == delimiter_id], 1)
    values = values.at[:, 0].set(jnp.minimum(carry, values[:, 0]))

    def combine(a, c):
        (va, ra), (vc, rc) = a, c
        return jnp.where(rc, vc, jnp.minimum(va, vc)), ra | rc

    pooled, _ = jax.lax.associative_scan(combine, (values, restart), axis=1)
    last = jnp.clip(num_new - 1, 0, t - 1)[:, None]
    last_tok = jnp.take_along_axis(tokens, last, axis=1)[:, 0]
    last_val = jnp.take_along_axis(pooled, last, axis=1)[:, 0]
    new_carry = jnp.where(last_tok == delimiter_id, jnp.inf, last_val)
    return pooled, jnp.where(num_new > 0, new_carry, carry)


class ProcessRewardModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, pooling: str = "last",
                 step_delimiter_id: int | None = None, token_logprob: bool = False):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; choose one of {list(POOLINGS)}")
        if pooling == "step_min" and step_delimiter_id is None:
            raise ValueError("pooling='step_min' needs step_delimiter_id (the tokenizer's)")
        self.cfg = cfg
        self.pooling = pooling
        self.step_delimiter_id = step_delimiter_id
        self.token_logprob = token_logprob
        self.lm = Transformer(cfg, rngs=rngs)
        self.score_w = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype),
                                 out_sharding=("embed",), eager_sharding=False)
        self.score_b = nnx.Param(jnp.zeros((), cfg.jnp_param_dtype), out_sharding=(),
                                 eager_sharding=False)
        if token_logprob:
            self.score_lp = nnx.Param(jnp.ones((), cfg.jnp_param_dtype), out_sharding=(),
                                      eager_sharding=False)

    @property
    def init_kwargs(self) -> dict:
        """Constructor arguments besides the ModelConfig (stored with exported models)."""
        return {"pooling": self.pooling, "step_delimiter_id": self.step_delimiter_id,
                "token_logprob": self.token_logprob}

    def _head(self, h: jax.Array, tokens: jax.Array,
              prev_logp: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """h: [B, T, D] -> ([B, T] float32 per-position score logits, [B, T, V] log-probs
        predicted at each position, or None). ``prev_logp`` [B, V]: the prediction before
        the first token (zeros: no information)."""
        w = self.score_w[...].astype(jnp.float32)
        out = jnp.einsum("BTD,D->BT", h.astype(jnp.float32), w) + self.score_b[...].astype(
            jnp.float32)
        if not self.token_logprob:
            return out, None
        logp = jax.nn.log_softmax(self.lm.logits_from_hidden(h), axis=-1)  # [B, T, V]
        if prev_logp is None:
            prev_logp = jnp.zeros((h.shape[0], logp.shape[-1]), jnp.float32)
        before = jnp.concatenate([prev_logp[:, None], logp[:, :-1]], axis=1)  # [B, T, V]
        tok_lp = jnp.take_along_axis(before, tokens[..., None], axis=-1)[..., 0]  # [B, T]
        return out + self.score_lp[...].astype(jnp.float32) * tok_lp, logp

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: [B, T] right-padded -> [B, T] step-score logits (read at step ends)."""
        logits, _ = self._head(self.lm.hidden(tokens), tokens)
        if self.pooling == "last":
            return logits
        b, t = tokens.shape
        pooled, _ = segment_running_min(logits, tokens, self.step_delimiter_id,
                                        jnp.full((b,), jnp.inf), jnp.full((b,), t))
        return pooled

    def extend(self, tokens: jax.Array, cache: KVCache,
               num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Incremental scoring: score logits [B, T] of the new tokens, updated cache."""
        b, t = tokens.shape
        num_new = jnp.full((b,), t, jnp.int32) if num_new is None else num_new
        h, new_cache = self.lm.extend_hidden(tokens, cache, num_new)
        logits, logp = self._head(h, tokens, cache.logp)
        if logp is not None:
            last = jnp.clip(num_new - 1, 0, t - 1)[:, None, None]
            after = jnp.take_along_axis(logp, last, axis=1)[:, 0]  # [B, V]
            old = jnp.zeros_like(after) if cache.logp is None else cache.logp
            new_cache = new_cache.replace(logp=jnp.where((num_new > 0)[:, None], after, old))
        if self.pooling == "last":
            return logits, new_cache
        pooled, carry = segment_running_min(logits, tokens, self.step_delimiter_id,
                                            cache.carry, num_new)
        return pooled, new_cache.replace(carry=carry)


def init_prm(cfg: ModelConfig, seed: int = 0, **kwargs) -> ProcessRewardModel:
    return ProcessRewardModel(cfg, rngs=nnx.Rngs(params=seed), **kwargs)
