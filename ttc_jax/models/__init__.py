"""Models: the Llama-style decoder, its KV cache, and the process reward model."""

from ttc_jax.models.cache import KVCache
from ttc_jax.models.transformer import Transformer, apply_rope, attend, init_model

__all__ = ["KVCache", "Transformer", "apply_rope", "attend", "init_model"]
