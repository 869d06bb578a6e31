"""The process reward model: the decoder trunk plus a scalar step-score head.

The score of a step is read at the step's last token (its delimiter): ``sigmoid(logit)``
estimates the probability that the solution is still correct after that step. The PRM
keeps the language-model head, so it can be initialised from a policy checkpoint (the
trunk already knows the task) and scored incrementally with its own KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.models.cache import KVCache
from ttc_jax.models.transformer import Transformer


class ProcessRewardModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.lm = Transformer(cfg, rngs=rngs)
        self.score_w = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype),
                                 out_sharding=("embed",), eager_sharding=False)
        self.score_b = nnx.Param(jnp.zeros((), cfg.jnp_param_dtype), out_sharding=(),
                                 eager_sharding=False)

    def _head(self, h: jax.Array) -> jax.Array:
        """h: [B, T, D] -> [B, T] float32 step-score logits."""
        w = self.score_w[...].astype(jnp.float32)
        return jnp.einsum("BTD,D->BT", h.astype(jnp.float32), w) + self.score_b[...].astype(
            jnp.float32)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: [B, T] right-padded -> [B, T] score logits at every position."""
        return self._head(self.lm.hidden(tokens))

    def extend(self, tokens: jax.Array, cache: KVCache,
               num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Incremental scoring: score logits [B, T] of the new tokens, updated cache."""
        h, cache = self.lm.extend_hidden(tokens, cache, num_new)
        return self._head(h), cache


def init_prm(cfg: ModelConfig, seed: int = 0) -> ProcessRewardModel:
    return ProcessRewardModel(cfg, rngs=nnx.Rngs(params=seed))
