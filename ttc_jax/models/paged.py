"""The paged KV cache: a pool of fixed-size pages and a page table per row (vLLM/JetStream).

A row's position ``t`` lives in page ``pages[b, t // page_size]`` at offset
``t % page_size``. Rows that share history share pages:

* a problem's prompt is prefilled once into its own pages; ``repeat(n)`` gives its N rows
  copies of that page table, not of the keys and values;
* ``gather(rows)`` (beam / DVTS selection) copies page-table rows: children share their
  parent's pages and no key or value moves;
* a row about to write into a page another row also references first copies that one page
  (copy-on-write, in :meth:`PagedKVCache.reserve`), so only the last partial page of a
  shared history is ever copied;
* free pages are those no page-table entry references; they are found again on every
  ``reserve`` (a reference count over the tables), so pages of pruned rows come back
  without bookkeeping.

The pool is split into ``groups`` independent parts (the mesh's ``data`` axis): the rows of
group g (a contiguous block of B/G rows) only reference pages of part g, so under a mesh
each device's rows read only its own pages.

Layout: ``kv [L, G, pages, page_size, 2K*H]``: keys and values interleaved by head
(k0, v0, k1, v1, ..., each H wide) on the last axis. That is the layout of JAX's TPU kernel
``jax.experimental.pallas.ops.tpu.ragged_paged_attention`` ([pages, page_size, 2K, H]) with
the two head axes merged: a TPU tiles the two minor dims of a buffer by (8, 128), so with
one or two kv heads per chip a separate 2K axis would be padded to 8 (the pool 4-8x its
size; measured: 14.4 GiB of temporaries for 3.1 GiB of pools at N=64); merged, the minor
dims (page_size, 2K*H) tile exactly. The kernel gets one layer's pages reshaped. On other
backends :func:`attend_paged` gathers a row's pages (bucketed by how many can be valid, as
``transformer.attend_cached`` does) and calls the same ``attend``.

A full pool does not wrap or corrupt another row: the write is dropped and the row's
``overflow`` flag is set; ``ttc_jax.search.api.search`` raises on it with what to raise.
"""

from __future__ import annotations

import contextlib
import math

import flax.struct
import jax
import jax.numpy as jnp

from ttc_jax.config import ModelConfig

_KERNEL = {"impl": None}  # None: choose by backend; "jnp" or "ragged": forced
POOL_AXES = ("layers", "batch", None, None, "kv_heads")  # kv's logical axes


def constrain_pool(kv: jax.Array) -> jax.Array:
    """The pool's sharding under the current mesh: groups on ``data``, heads on ``model``
    (each device holds its rows' pages of its heads); a no-op without a mesh."""
    from ttc_jax.parallel.rules import logical_constraint

    return logical_constraint(kv, POOL_AXES)


@contextlib.contextmanager
def attention_kernel(impl: str):
    """Forces the paged attention implementation while tracing: ``"ragged"`` (JAX's TPU
    Pallas kernel ``ragged_paged_attention``; what ``launch/plan.py`` compiles for a TPU
    topology from this CPU machine) or ``"jnp"`` (the portable gather path). Outside this
    context the kernel is used when the default backend is a TPU."""
    if impl not in ("ragged", "jnp"):
        raise ValueError(f"attention kernel {impl!r} is unknown; choose 'ragged' or 'jnp'")
    old = _KERNEL["impl"]
    _KERNEL["impl"] = impl
    try:
        yield
    finally:
        _KERNEL["impl"] = old


def kernel_impl(head_dim: int) -> str:
    """"ragged" or "jnp" for a model of ``head_dim``. The kernel tiles heads by 128
    lanes, so heads narrower than that (Llama-3.2-1B's 64) take the jnp path; its
    temporaries are one layer's gathered pages (the layers run under ``scan``)."""
    impl = _KERNEL["impl"]
    if impl is None:
        impl = "ragged" if jax.default_backend() == "tpu" else "jnp"
    return impl if head_dim % 128 == 0 else "jnp"


@flax.struct.dataclass
class PagedKVCache:
    """Keys and values of every layer in pages, with a page table per row.

    Attributes:
      kv: [L, G, P, page_size, 2K*H] the page pool (keys/values interleaved by head).
      pages: [B, M] int32 page table (page index within the row's group), -1 unassigned;
        M * page_size is the capacity.
      lengths, carry, logp: as ``KVCache`` (logp None unless the native PRM writes it).
      overflow: [B] bool, a write of this row found no free page (the write was dropped).
      page_size: tokens per page (static).
    """

    kv: jax.Array
    pages: jax.Array
    lengths: jax.Array
    carry: jax.Array
    logp: jax.Array
    overflow: jax.Array
    page_size: int = flax.struct.field(pytree_node=False, default=16)

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, capacity: int | None = None, *,
             page_size: int = 16, pool_pages: int | None = None,
             groups: int = 1) -> PagedKVCache:
        """An empty cache of ``batch`` rows, ``ceil(capacity / page_size)`` table entries
        each, and ``pool_pages`` pages per group (default: every row's whole capacity)."""
        capacity = capacity or cfg.max_seq_len
        if batch % groups:
            raise ValueError(f"{batch} rows do not split into {groups} page groups; use a "
                             f"row count that the data axis divides")
        m = -(-capacity // page_size)
        pool = pool_pages if pool_pages is not None else (batch // groups) * m
        shape = (cfg.num_layers, groups, pool, page_size, 2 * cfg.num_kv_heads * cfg.head_dim)
        return cls(kv=constrain_pool(jnp.zeros(shape, cfg.jnp_dtype)),
                   pages=jnp.full((batch, m), -1, jnp.int32),
                   lengths=jnp.zeros((batch,), jnp.int32),
                   carry=jnp.full((batch,), jnp.inf, jnp.float32), logp=None,
                   overflow=jnp.zeros((batch,), bool), page_size=page_size)

    @property
    def batch(self) -> int:
        return self.pages.shape[0]

    @property
    def capacity(self) -> int:
        return self.pages.shape[1] * self.page_size

    @property
    def groups(self) -> int:
        return self.kv.shape[1]

    @property
    def pool_pages(self) -> int:
        return self.kv.shape[2]

    def repeat(self, n: int, *, pool_pages: int | None = None) -> PagedKVCache:
        """Each row repeated n times consecutively (b*n + i is copy i), sharing its pages.

        ``pool_pages`` (per group) grows the pool with free pages for the new rows' own
        tokens (default: unchanged)."""
        kv = self.kv
        if pool_pages is not None and pool_pages > kv.shape[2]:
            pad = [(0, 0)] * kv.ndim
            pad[2] = (0, pool_pages - kv.shape[2])
            kv = constrain_pool(jnp.pad(kv, pad))
        rep = lambda x: None if x is None else jnp.repeat(x, n, axis=0)
        return self.replace(kv=kv, pages=rep(self.pages), lengths=rep(self.lengths),
                            carry=rep(self.carry), logp=rep(self.logp),
                            overflow=rep(self.overflow))

    def gather(self, rows: jax.Array) -> PagedKVCache:
        """New row r is old row ``rows[r]``: page-table rows move, keys and values do not.
        ``rows`` must keep every row in its group (selection within a problem does)."""
        take = lambda x: None if x is None else jnp.take(x, rows, axis=0)
        return self.replace(pages=take(self.pages), lengths=take(self.lengths),
                            carry=take(self.carry), logp=take(self.logp),
                            overflow=take(self.overflow))

    def widen(self, capacity: int) -> PagedKVCache:
        """At least ``capacity`` slots per row (more table entries; the pool is unchanged)."""
        m = -(-capacity // self.page_size)
        if m <= self.pages.shape[1]:
            return self
        return self.replace(pages=jnp.pad(self.pages, ((0, 0), (0, m - self.pages.shape[1])),
                                          constant_values=-1))

    def reserve(self, num_new: jax.Array) -> PagedKVCache:
        """Gives every row the pages that positions [lengths, lengths + num_new) need:
        a free page for each unassigned entry, and a private copy of the page the first
        new token goes to when another row references it too (copy-on-write)."""
        g, b = self.groups, self.batch
        bg, m, ps, pool = b // g, self.pages.shape[1], self.page_size, self.pool_pages
        upto = jnp.minimum(self.lengths + num_new, m * ps)
        j = jnp.arange(m, dtype=jnp.int32)[None, :]
        first = self.lengths // ps  # the page the first new token is written to
        # entries the new tokens touch
        touched = (j >= first[:, None]) & (j * ps < upto[:, None]) & (num_new > 0)[:, None]

        def per_group(pages, touched, first):
            # pages, touched: [bg, m]; the pool itself never enters the vmap (moving its
            # group axis would copy it)
            refs = jnp.zeros((pool + 1,), jnp.int32).at[
                jnp.where(pages >= 0, pages, pool)].add(1)[:pool]
            shared = (touched & (j == first[:, None]) & (pages >= 0)
                      & (refs[jnp.maximum(pages, 0)] > 1))  # copy-on-write
            # When every row that references a page writes into it now, the first of them
            # keeps the page and only the others copy it (so a reserve never holds more
            # pages than the rows' tables end up referencing).
            want = jnp.any(shared, axis=1)  # [bg]
            pf = jnp.where(want, jnp.take_along_axis(
                pages, jnp.clip(first, 0, m - 1)[:, None], axis=1)[:, 0], pool)
            writers = jnp.zeros((pool + 1,), jnp.int32).at[pf].add(1)
            lead = jnp.full((pool + 1,), bg, jnp.int32).at[pf].min(jnp.arange(bg))
            keeps = want & (writers[pf] == refs[jnp.minimum(pf, pool - 1)]) & (
                lead[pf] == jnp.arange(bg))
            shared = shared & ~keeps[:, None]
            need = touched & ((pages < 0) | shared)
            flat = need.reshape(-1)
            rank = jnp.cumsum(flat) - 1
            most = min(pool, bg * m)
            free = jnp.nonzero(refs == 0, size=most, fill_value=pool)[0]
            got = jnp.where(flat, free[jnp.clip(rank, 0, most - 1)], pool)
            got = jnp.where(rank < most, got, pool).reshape(bg, m)
            ok = got < pool
            # each shared page gets copied into its private copy (at most one page per
            # row: the one its first new token goes to)
            at = jnp.clip(first, 0, m - 1)[:, None]
            cow = jnp.take_along_axis(shared & ok, at, axis=1)[:, 0]  # [bg]
            src = jnp.where(cow, jnp.take_along_axis(pages, at, axis=1)[:, 0], 0)
            dst = jnp.where(cow, jnp.take_along_axis(got, at, axis=1)[:, 0], pool)
            pages = jnp.where(need & ok, got, pages)
            return pages, jnp.any(need & ~ok, axis=1), src, dst

        pages, over, src, dst = jax.vmap(per_group)(
            self.pages.reshape(g, bg, m), touched.reshape(g, bg, m), first.reshape(g, bg))
        grp = jnp.broadcast_to(jnp.arange(g)[:, None], (g, bg)).reshape(-1)
        src, dst = src.reshape(-1), dst.reshape(-1)
        # [L, B, ps, 2K, H] copied pages of every layer (rows without a copy: dropped)
        kv = self.kv.at[:, grp, dst].set(self.kv[:, grp, src], mode="drop")
        return self.replace(kv=constrain_pool(kv), pages=pages.reshape(b, m),
                            overflow=self.overflow | over.reshape(b))


@flax.struct.dataclass
class PagedLayers:
    """What the layer stack carries for a paged cache: the pool and the (fixed) tables."""

    kv: jax.Array  # [L, G, P, ps, 2K*H]
    pages: jax.Array  # [B, M]
    lengths: jax.Array  # [B] before this call
    num_new: jax.Array  # [B]

    @property
    def page_size(self) -> int:
        return self.kv.shape[3]


def write_layer(c: PagedLayers, layer, k_new: jax.Array, v_new: jax.Array,
                slots: jax.Array) -> PagedLayers:
    """Writes one layer's new keys/values ([B, T, K, H]) at ``slots`` ([B, T]; slots at
    or past the capacity, and unassigned pages, are dropped)."""
    _, g, pool, ps, _ = c.kv.shape
    b, t, kh, h = k_new.shape
    m = c.pages.shape[1]
    page = jnp.take_along_axis(c.pages, jnp.clip(slots // ps, 0, m - 1), axis=1)  # [B, T]
    page = jnp.where((slots < m * ps) & (page >= 0), page, pool)
    grp = jnp.broadcast_to((jnp.arange(b) // (b // g))[:, None], (b, t))
    new = jnp.stack([k_new, v_new], axis=3).reshape(b, t, 2 * kh * h).astype(c.kv.dtype)
    kv = c.kv.at[layer, grp, page, slots % ps].set(new, mode="drop")
    return c.replace(kv=constrain_pool(kv))


def _page_buckets(m: int, page_size: int) -> tuple[int, ...]:
    from ttc_jax.models.transformer import bucket_sizes

    return tuple(sorted({-(-s // page_size) for s in bucket_sizes(m * page_size)}))


def attend_paged(q: jax.Array, c: PagedLayers, layer, mask: jax.Array,
                 bound: jax.Array) -> jax.Array:
    """Attention of q [B, T, N, H] over one layer of the paged cache (mask [B, T, S]).

    On a TPU (or inside ``attention_kernel("ragged")``) this is JAX's
    ``ragged_paged_attention`` kernel; elsewhere each row's first pages (a bucket that
    covers ``bound``) are gathered into a contiguous [B, K, S', H] view for ``attend``."""
    from ttc_jax.parallel.rules import mesh_size

    # the kernel runs per device on one page group: groups must follow the data axis
    if kernel_impl(q.shape[-1]) == "ragged" and c.kv.shape[1] == mesh_size("data"):
        return _attend_ragged(q, c, layer)
    from ttc_jax.models.transformer import attend

    _, g, _, ps, _ = c.kv.shape
    b, m = c.pages.shape
    h = q.shape[-1]
    kh = c.kv.shape[-1] // (2 * h)
    pool_l = jax.lax.dynamic_index_in_dim(c.kv, layer, 0, keepdims=False)  # [G, P, ps, 2KH]
    sizes = _page_buckets(m, ps)

    def branch(npg):
        def run(q, pool_l, pages, mask):
            idx = jnp.maximum(pages[:, :npg], 0).reshape(g, b // g, npg)
            kv = jax.vmap(lambda pl, ix: pl[ix])(pool_l, idx)  # [G, B/G, npg, ps, 2KH]
            kv = kv.reshape(b, npg * ps, kh, 2, h)
            k = kv[:, :, :, 0].transpose(0, 2, 1, 3)  # [B, K, S', H]
            v = kv[:, :, :, 1].transpose(0, 2, 1, 3)
            return attend(q, k, v, mask[:, :, :npg * ps])
        return run

    if len(sizes) == 1:
        return branch(sizes[0])(q, pool_l, c.pages, mask)
    need = -(-bound.astype(jnp.int32) // ps)
    index = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), need), len(sizes) - 1)
    return jax.lax.switch(index, [branch(s) for s in sizes], q, pool_l, c.pages, mask)


def ragged_inputs(q: jax.Array, lengths: jax.Array, num_new: jax.Array):
    """Packs padded queries [B, T, N, H] (row b's first num_new[b] are real) into the
    kernel's ragged layout: (queries [B*T, N, H], kv_lens [B], cu_q_lens [B+1], the flat
    index of each (b, t) [B, T] (B*T where t >= num_new[b]))."""
    b, t, n, h = q.shape
    cu = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(num_new).astype(jnp.int32)])
    col = jnp.arange(t, dtype=jnp.int32)[None, :]
    flat = jnp.where(col < num_new[:, None], cu[:-1, None] + col, b * t)
    packed = jnp.zeros((b * t, n, h), q.dtype).at[flat].set(q, mode="drop")
    return packed, (lengths + num_new).astype(jnp.int32), cu, flat


def _attend_ragged(q: jax.Array, c: PagedLayers, layer) -> jax.Array:
    """``ragged_paged_attention`` over one layer; under a mesh, per device (shard_map over
    data = page groups and rows, model = heads)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    from ttc_jax.parallel.rules import current_mesh

    pool_l = jax.lax.dynamic_index_in_dim(c.kv, layer, 0, keepdims=False)  # [G, P, ps, 2KH]
    h = q.shape[-1]

    def local(q, pool_l, pages, lengths, num_new):
        b, t, n, _ = q.shape
        packed, kv_lens, cu, flat = ragged_inputs(q, lengths, num_new)
        _, pool, ps, khh = pool_l.shape
        pages_l = pool_l[0].reshape(pool, ps, khh // h, h)  # the kernel's [P, ps, 2K, H]
        out = ragged_paged_attention(
            packed, pages_l, kv_lens, jnp.maximum(pages, 0), cu,
            jnp.asarray([b], jnp.int32), sm_scale=h**-0.5,
            num_kv_pages_per_block=max(1, min(pages.shape[1], 512 // ps)),
            num_queries_per_block=min(32, max(8, b * t)), vmem_limit_bytes=64 * 1024 * 1024)
        return jnp.take(out, jnp.minimum(flat, b * t - 1), axis=0)  # [B, T, N, H]

    mesh = current_mesh()
    args = (q, pool_l, c.pages, c.lengths, c.num_new)
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        if pool_l.shape[0] != 1:
            raise ValueError("the ragged kernel without a mesh needs one page group")
        return local(*args)
    from jax.sharding import PartitionSpec as P

    from ttc_jax.parallel.rules import mesh_axis

    data, model = mesh_axis("batch"), mesh_axis("kv_heads")
    specs = (P(data, None, model, None), P(data, None, None, model), P(data), P(data), P(data))
    return jax.shard_map(local, mesh=mesh, in_specs=specs,
                         out_specs=P(data, None, model, None), check_vma=False)(*args)


def paged_sharding_specs() -> dict:
    """Logical axis names of a PagedKVCache's fields (``parallel.rules.cache_sharding``)."""
    return {"kv": POOL_AXES,
            "pages": ("batch", None), "lengths": ("batch",), "carry": ("batch",),
            "logp": ("batch", "vocab"), "overflow": ("batch",)}
