"""Models: the Llama-style decoder, its KV caches (contiguous and paged), the process reward
model, export/load."""

from ttc_jax.models.cache import CacheLayout, KVCache
from ttc_jax.models.io import load_model, save_model
from ttc_jax.models.paged import PagedKVCache
from ttc_jax.models.prm import ProcessRewardModel, init_prm
from ttc_jax.models.transformer import Transformer, apply_rope, attend, init_model

__all__ = ["CacheLayout", "KVCache", "PagedKVCache", "ProcessRewardModel", "Transformer",
           "apply_rope", "attend", "init_model", "init_prm", "load_model", "save_model"]
