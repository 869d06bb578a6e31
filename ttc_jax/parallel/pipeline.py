"""Pipeline parallelism: a GPipe schedule over the ``stage`` mesh axis.

The stacked decoder layers [L, ...] are split along ``stage`` into S stages of L/S
consecutive layers (the ``layers -> stage`` rule places them so). The batch is split into
M microbatches; iteration i of a ``lax.scan`` over M + S - 1 iterations runs microbatch
``i - s`` on stage s, then every stage hands its activations to the next with
``lax.ppermute`` (a collective-permute). Stage 0 reads microbatches from the input; the
last stage's outputs are summed over ``stage`` (only it contributes) so every stage ends
with the whole result. S - 1 iterations of every stage are bubble: the expected idle
fraction is (S - 1) / (M + S - 1).

The schedule is written with ``jax.shard_map`` over ``stage`` and ``data``
(partial-manual mode): each data shard pipelines its own rows, and the ``model`` axis
stays automatic, so tensor parallelism inside a stage is the compiler's (GSPMD), exactly
as without a pipeline. (Leaving ``data`` automatic as well crashed XLA's SPMD
partitioner on the KV-cache scatter when data and model were both > 1.)

It serves every call mode of the model: the training pass (value and gradient: the scan,
``ppermute`` and ``psum`` all transpose), and prefill / decode with a KV cache
[L, B, K, S, H] of which each stage holds its own layers' slice [L/S, B, ...]; the
microbatch of an iteration reads and writes its rows of that slice (bubble iterations
write nothing).

Microbatch m holds batch rows ``{j*M + m}`` (a strided split), so a batch already split
along ``data`` in contiguous blocks stays split the same way inside each microbatch.

The number of microbatches defaults to the largest divisor of the rows per data shard
that is at most 2·S; set it with
``with pipeline_microbatches(M):`` around the first call (it is read when jit traces).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ttc_jax.parallel.rules import current_mesh, mesh_size

STAGE = "stage"
DATA = "data"

_MICROBATCHES: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "ttc_pipeline_microbatches", default=None)


@contextlib.contextmanager
def pipeline_microbatches(m: int):
    """Number of microbatches M used by pipelined calls traced inside this block."""
    if m < 1:
        raise ValueError(f"pipeline microbatches={m} must be >= 1")
    token = _MICROBATCHES.set(int(m))
    try:
        yield
    finally:
        _MICROBATCHES.reset(token)


def num_stages(mesh=None) -> int:
    """Stages S of the current mesh (1 without a mesh or a ``stage`` axis)."""
    return mesh_size(STAGE, mesh)


def pipeline_active(mesh=None) -> bool:
    """True when the current mesh (``jax.set_mesh``) has ``stage`` > 1 and the code is
    not already inside a manual ``stage`` region."""
    mesh = current_mesh() if mesh is None else mesh
    if mesh is None or num_stages(mesh) == 1:
        return False
    return STAGE not in set(getattr(mesh, "manual_axes", ()))


def choose_microbatches(batch: int, stages: int) -> int:
    """M for ``batch`` rows (per data shard): the override of
    :func:`pipeline_microbatches` if set, else the largest divisor of ``batch`` that is
    at most 2·stages."""
    m = _MICROBATCHES.get()
    if m is not None:
        return m
    return max(d for d in range(1, min(batch, 2 * stages) + 1) if batch % d == 0)


def bubble_fraction(microbatches: int, stages: int) -> float:
    """The GPipe bubble (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


def _split(a: jax.Array, m: int) -> jax.Array:
    """[B, ...] -> [B/M, M, ...]: microbatch j is a[:, j] (rows j, j+M, j+2M, ...)."""
    return a.reshape((a.shape[0] // m, m) + a.shape[1:])


def _take(a: jax.Array, j, axis: int = 1) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(a, j, axis=axis, keepdims=False)


StackFn = Callable  # (layer_state, x, rope, mask, kv | None, slots | None) -> (x, kv | None)


def pipeline(stack_fn: StackFn, layer_state, x: jax.Array, rope, mask: jax.Array,
             kv: tuple[jax.Array, jax.Array] | None = None, slots: jax.Array | None = None,
             *, microbatches: int | None = None):
    """Runs ``stack_fn`` over the stacked layers as a GPipe pipeline on the current mesh.

    Args:
      stack_fn: runs a slice of the stack: (layer_state [L', ...], x [b, T, D], rope,
        mask [b, T, S'], kv ([L', b, K, S, H] pair or None), slots [b, T] or None) ->
        (x, kv).
      layer_state: the stacked layer params, leading axis L (split along ``stage``).
      x: [B, T, D] activations; rope: (sin, cos) each [B, T, 1, H/2]; mask: [B, T, S'].
      kv: the KV cache (k, v) each [L, B, K, S, H], or None (full-sequence pass).
      slots: [B, T] cache write slots (with ``kv``).
      microbatches: M (default :func:`choose_microbatches`).
    Returns:
      (x [B, T, D], kv or None), equal to running the layers one after another.
    """
    mesh = current_mesh()
    s_count = num_stages(mesh)
    n_layers = jax.tree.leaves(layer_state)[0].shape[0]
    if n_layers % s_count:
        raise ValueError(f"layers={n_layers} (model.num_layers) is not divisible by "
                         f"mesh.stage={s_count}; make model.num_layers a multiple of "
                         f"{s_count} or change mesh.stage")
    # Rows are independent, so the data axis is manual too: each data shard runs its own
    # pipeline on its rows (no collectives over data in the forward pass; shard_map's
    # transpose sums the parameter gradients over data). A batch that does not divide
    # by ``data`` is replicated over it instead.
    b = x.shape[0]
    n_data = mesh_size(DATA, mesh)
    split_data = n_data > 1 and b % n_data == 0
    local_b = b // n_data if split_data else b
    m_count = microbatches or choose_microbatches(local_b, s_count)
    if local_b % m_count:
        raise ValueError(f"{local_b} rows per data shard are not divisible by {m_count} "
                         f"pipeline microbatches; pick a divisor of {local_b}")
    cached = kv is not None

    def per_stage(layer_state, x, rope, mask, kv, slots):
        stage = jax.lax.axis_index(STAGE)
        xs = _split(x, m_count)  # [b, M, T, D]
        ropes = jax.tree.map(lambda a: _split(a, m_count), rope)
        masks = _split(mask, m_count)
        slotss = None if slots is None else _split(slots, m_count)
        if cached:  # local layers' cache [L/S, B, ...] -> [L/S, b, M, ...]
            kv = tuple(c.reshape((c.shape[0], c.shape[1] // m_count, m_count) + c.shape[2:])
                       for c in kv)
        recv0 = jax.lax.pcast(xs[:, 0] * 0, (STAGE,), to="varying")  # [b, T, D]
        shift = [(i, i + 1) for i in range(s_count - 1)]

        def body(carry, i):
            recv, kv = carry
            j = i - stage  # this stage's microbatch
            valid = (j >= 0) & (j < m_count)
            jc = jnp.clip(j, 0, m_count - 1)
            inp = jnp.where(stage == 0, _take(xs, jc), recv)
            r = jax.tree.map(lambda a: _take(a, jc), ropes)
            kv_j = None
            if cached:
                kv_j = tuple(_take(c, jc, axis=2) for c in kv)
            out, kv_new = stack_fn(layer_state, inp, r, _take(masks, jc), kv_j,
                                   None if slotss is None else _take(slotss, jc))
            if cached:
                kv = tuple(jax.lax.dynamic_update_index_in_dim(
                    c, jnp.where(valid, cn, co), jc, axis=2)
                    for c, cn, co in zip(kv, kv_new, kv_j))
            send = jax.lax.ppermute(out, STAGE, shift)
            return (send, kv), out

        (_, kv), outs = jax.lax.scan(body, (recv0, kv), jnp.arange(m_count + s_count - 1))
        outs = outs[s_count - 1:]  # [M, b, T, D]: microbatch j left the last stage at j+S-1
        outs = jnp.where(stage == s_count - 1, outs, jnp.zeros_like(outs))
        y = jax.lax.psum(outs, STAGE)
        y = jnp.swapaxes(y, 0, 1).reshape(x.shape)  # [b, M, ...] -> [B, ...]
        if cached:
            kv = tuple(c.reshape((c.shape[0], x.shape[0]) + c.shape[3:]) for c in kv)
        return y, kv

    rows = P(DATA) if split_data else P()
    kv_spec = P(STAGE, DATA if split_data else None) if cached else None
    fn = jax.shard_map(
        per_stage, mesh=mesh, axis_names={STAGE, DATA} if n_data > 1 else {STAGE},
        in_specs=(P(STAGE), rows, rows, rows, kv_spec, rows), out_specs=(rows, kv_spec))
    return fn(layer_state, x, rope, mask, kv, slots)
