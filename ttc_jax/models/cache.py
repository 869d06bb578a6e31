"""The KV cache: fixed-size buffers with a per-row length.

Every row of a batch holds its valid tokens as a prefix of the cache (right padding), so
rows may sit at different positions: beams and candidates diverge in length. Writing new
tokens is a scatter at ``lengths[b] + t``; positions past the capacity are dropped, never
wrapped, and the caller checks capacity before decoding (see ``ttc_jax.decode``).
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp

from ttc_jax.config import ModelConfig


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer.

    Attributes:
      k: [L, B, K, S, H] keys (RoPE applied). Slots S sit next to H so attention reads
        the cache with no transpose (batch dims B, K lead the QK^T and PV products).
      v: [L, B, K, S, H] values.
      lengths: [B] int32, number of valid positions of each row (its next write position).
      carry: [B] float32 running state a model keeps across calls besides keys/values
        (the PRM's step-local running minimum; +inf when none). Moves with the rows.
      logp: [B, V] float32 log-probabilities the model predicted after each row's last
        token, or None. Only the native PRM's token-probability feature needs them (for
        the next call's first token): its first ``extend`` (the prompt, before any loop)
        creates them; every other cache carries no vocabulary-sized row buffer.
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array
    carry: jax.Array
    logp: jax.Array | None = None

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, capacity: int | None = None) -> KVCache:
        capacity = capacity or cfg.max_seq_len
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        zeros = jnp.zeros(shape, cfg.jnp_dtype)
        return cls(k=zeros, v=zeros, lengths=jnp.zeros((batch,), jnp.int32),
                   carry=jnp.full((batch,), jnp.inf, jnp.float32))

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times consecutively: rows [B] -> [B*n] (b*n + i is copy i)."""
        return KVCache(k=jnp.repeat(self.k, n, axis=1), v=jnp.repeat(self.v, n, axis=1),
                       lengths=jnp.repeat(self.lengths, n, axis=0),
                       carry=jnp.repeat(self.carry, n, axis=0),
                       logp=None if self.logp is None else jnp.repeat(self.logp, n, axis=0))

    def gather(self, rows: jax.Array) -> KVCache:
        """Reorders rows by parent index: new row r is old row ``rows[r]`` ([B'] int)."""
        return KVCache(k=jnp.take(self.k, rows, axis=1), v=jnp.take(self.v, rows, axis=1),
                       lengths=jnp.take(self.lengths, rows, axis=0),
                       carry=jnp.take(self.carry, rows, axis=0),
                       logp=None if self.logp is None else jnp.take(self.logp, rows, axis=0))


def write_positions(lengths: jax.Array, num_new: jax.Array, width: int,
                    capacity: int) -> jax.Array:
    """Cache slots for ``width`` new tokens per row: [B, T] int32.

    Token t of row b goes to ``lengths[b] + t`` when ``t < num_new[b]``; other tokens
    (padding of the new block) get ``capacity``, an out-of-bounds slot that a
    ``mode='drop'`` scatter ignores.
    """
    t = jnp.arange(width, dtype=jnp.int32)[None, :]
    pos = lengths[:, None] + t
    return jnp.where(t < num_new[:, None], pos, capacity)


def update_layer(k_cache: jax.Array, v_cache: jax.Array, layer, k_new: jax.Array,
                 v_new: jax.Array, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes one layer's new keys/values into the stacked cache, in place.

    Args:
      k_cache, v_cache: [L, B, K, S, H] (all layers: a scatter into the carried buffer
        touches only the new entries, where rebuilding a layer's slice would copy it).
      layer: the layer index (int or traced scalar).
      k_new, v_new: [B, T, K, H].
      slots: [B, T] from :func:`write_positions` (out-of-bounds slots are dropped).
    """
    rows = jnp.arange(k_cache.shape[1])[:, None]  # [B, 1]; indexed dims -> [B, T, K, H]
    k_cache = k_cache.at[layer, rows, :, slots].set(k_new.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[layer, rows, :, slots].set(v_new.astype(v_cache.dtype), mode="drop")
    return k_cache, v_cache


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """How a program lays out its KV caches: contiguous (``KVCache``, the CPU default) or
    paged (``ttc_jax.models.paged.PagedKVCache``: prompts shared by their N rows, selection
    moves page tables; the accelerator layout).

    ``init`` makes the cache a prompt batch is prefilled into; ``repeat`` broadcasts it to
    N rows per prompt, growing a paged pool by what each new row can write itself:
    ``own_slots`` positions after a prompt of any length span at most
    ``ceil(own_slots / page_size) + 1`` pages (the +1: its prompt's partial last page,
    copied on write). Every page a row references beyond its prompt's full pages is one of
    those entries, whether it owns or shares it, so the pool never runs short while each
    row writes at most ``own_slots`` positions (``overflow`` reports it if one does).

    ``pool_fraction`` < 1 sizes the pool for that fraction of those pages: it then relies
    on rows sharing history (beam search and DVTS keep N/M parents per iteration, so their
    live histories hold about 1/M of the worst case plus the current step); a pool that
    runs out is reported, never silent."""

    paged: bool = False
    page_size: int = 16
    pool_fraction: float = 1.0

    def init(self, cfg: ModelConfig, batch: int, capacity: int, prompt_width: int):
        if not self.paged:
            return KVCache.init(cfg, batch, capacity)
        from ttc_jax.models.paged import PagedKVCache
        from ttc_jax.parallel.rules import mesh_size

        data = mesh_size("data")
        groups = data if data > 1 and batch % data == 0 else 1
        per_row = -(-prompt_width // self.page_size)
        return PagedKVCache.init(cfg, batch, capacity, page_size=self.page_size,
                                 pool_pages=(batch // groups) * per_row, groups=groups)

    def repeat(self, cache, n: int, own_slots: int):
        if not self.paged:
            return cache.repeat(n)
        rows = cache.batch // cache.groups * n
        own = -(-own_slots // cache.page_size) + 1
        return cache.repeat(n, pool_pages=cache.pool_pages
                            + math.ceil(rows * own * self.pool_fraction))


CONTIGUOUS = CacheLayout()
