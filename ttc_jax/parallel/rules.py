"""The ONE logical-axis rules table, and the helpers that place things by it.

Modules name the axes of their parameters logically (``nnx.Param(..., out_sharding=
('embed', 'heads', 'head_dim'))``); this table maps each logical name to a mesh axis:

  ============  ==========  ==========================================================
  logical       mesh axis   what splits
  ============  ==========  ==========================================================
  batch         data        examples in training, problems x N candidates in search
  heads         model       query heads (q column-parallel, o row-parallel)
  kv_heads      model       key/value heads (k, v column-parallel; the KV cache)
  mlp           model       SwiGLU hidden units (gate, up column-parallel; down row-)
  vocab         model       embedding rows and the logits
  layers        stage       the stacked decoder blocks (pipeline stages)
  embed         -           replicated (the residual stream)
  head_dim      -           replicated
  length        -           replicated
  ============  ==========  ==========================================================

Placement helpers: :func:`shard_model` (an nnx model, in place), :func:`shard_tree`
(any pytree holding ``nnx.Variable``s, e.g. a TrainState with optimizer moments; plain
arrays are replicated), :func:`param_shardings`, :func:`cache_sharding` /
:func:`shard_cache`, :func:`logical_constraint` for activations inside jit. Users scope a
mesh with ``jax.set_mesh(mesh)``; the pipeline dispatch reads it from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", "stage"),
    ("embed", None),
    ("head_dim", None),
    ("length", None),
)
_RULES = dict(RULES)

# Which config field sets the size of a logical axis (for error messages).
_FIELD = {"heads": "model.num_heads", "kv_heads": "model.num_kv_heads",
          "mlp": "model.mlp_dim", "vocab": "model.vocab_size", "layers": "model.num_layers",
          "batch": "the batch size (problems x n in search)"}


def mesh_axis(name: str | None) -> str | None:
    """The mesh axis of one logical name (None: replicated)."""
    if name is None:
        return None
    if name not in _RULES:
        raise ValueError(f"logical axis {name!r} has no rule; known names: {sorted(_RULES)}")
    return _RULES[name]


def logical_to_spec(names: Sequence[str | None]) -> PartitionSpec:
    """Logical axis names (one per array dim) -> PartitionSpec over the mesh axes."""
    return PartitionSpec(*(mesh_axis(n) for n in names))


def _axis_size(mesh, axis: str | None) -> int:
    return 1 if axis is None else int(dict(mesh.shape).get(axis, 1))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_divisible(shape: Sequence[int], names: Sequence[str | None], mesh,
                    what: str = "array") -> None:
    """Raises a ValueError naming the axis and what to change when a dimension does not
    divide by its mesh axis."""
    if len(shape) != len(names):
        raise ValueError(f"{what}: {len(names)} logical names {tuple(names)} for a "
                         f"{len(shape)}-d array of shape {tuple(shape)}")
    for dim, name in zip(shape, names):
        axis = mesh_axis(name)
        k = _axis_size(mesh, axis)
        if dim % k:
            field = _FIELD.get(name, f"the {name!r} dimension")
            ok = [d for d in _divisors(dim) if d <= k * dim]
            raise ValueError(
                f"{what}: {name}={dim} ({field}) is not divisible by mesh.{axis}={k}; make "
                f"{field} a multiple of {k}, or use mesh.{axis} in {ok}")


def _names_of(v: nnx.Variable) -> tuple | None:
    names = v.get_metadata().get("out_sharding")
    return None if names is None else tuple(names)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def tree_shardings(tree, mesh: Mesh):
    """A tree of NamedShardings shaped like ``tree``: each ``nnx.Variable`` with logical
    names is placed by the rules (its dims checked for divisibility), every other array
    is replicated."""
    def one(path, x):
        if _is_var(x):
            names = _names_of(x)
            if names is None:
                return x.replace(value=NamedSharding(mesh, PartitionSpec()))
            check_divisible(x.shape, names, mesh, what=_path_str(path))
            return x.replace(value=NamedSharding(mesh, logical_to_spec(names)))
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def check_model(cfg, mesh) -> None:
    """Checks a ModelConfig against the mesh, in the order heads, kv_heads, mlp, vocab,
    layers (the first that does not divide raises)."""
    for name, field in (("heads", "num_heads"), ("kv_heads", "num_kv_heads"),
                        ("mlp", "mlp_dim"), ("vocab", "vocab_size"), ("layers", "num_layers")):
        check_divisible((getattr(cfg, field),), (name,), mesh, what="model")


def param_shardings(model: nnx.Module, mesh: Mesh) -> nnx.State:
    """The NamedSharding of every parameter of ``model`` (an nnx.State of them)."""
    if getattr(model, "cfg", None) is not None and hasattr(model.cfg, "num_kv_heads"):
        check_model(model.cfg, mesh)
    return tree_shardings(nnx.state(model), mesh)


def shard_tree(tree, mesh: Mesh):
    """Places ``tree`` (params, optimizer state, a whole TrainState) by the rules."""
    return jax.device_put(tree, tree_shardings(tree, mesh))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places every parameter of ``model`` on ``mesh`` by the rules (in place) and returns
    the model. Raises if heads, kv_heads, mlp, vocab or layers do not divide by their
    axis."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(model, mesh)))
    return model


def cache_sharding(mesh: Mesh, cache=None):
    """Shardings of a ``KVCache``: k, v [L, B, K, S, H] on (stage, data, model, -, -);
    lengths and carry [B] on data; logp [B, V] (when present) on (data, model). A
    ``PagedKVCache``: its pool's groups on data, heads on model (``paged_sharding_specs``).

    With ``cache`` given, returns a KVCache of NamedShardings (after checking that its
    dims divide); without, a dict of PartitionSpecs by field name.
    """
    specs = {"k": ("layers", "batch", "kv_heads", "length", "head_dim"),
             "lengths": ("batch",), "carry": ("batch",), "logp": ("batch", "vocab")}
    specs["v"] = specs["k"]
    if cache is None:
        return {k: logical_to_spec(v) for k, v in specs.items()}
    if hasattr(cache, "pages"):  # a PagedKVCache
        from ttc_jax.models.paged import paged_sharding_specs

        specs = paged_sharding_specs()
    out = {}
    for field, names in specs.items():
        x = getattr(cache, field)
        if x is None:  # logp of a cache that carries none
            continue
        check_divisible(x.shape, names, mesh, what=f"KVCache.{field}")
        out[field] = NamedSharding(mesh, logical_to_spec(names))
    return cache.replace(**out)


def shard_cache(cache, mesh: Mesh):
    """Places a KVCache by :func:`cache_sharding`."""
    return jax.device_put(cache, cache_sharding(mesh, cache))


def current_mesh():
    """The mesh set by ``jax.set_mesh`` (abstract inside jit), or None when there is none."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def mesh_size(axis: str, mesh=None) -> int:
    """Size of ``axis`` on ``mesh`` (default: the current mesh; 1 when absent)."""
    mesh = current_mesh() if mesh is None else mesh
    return 1 if mesh is None else _axis_size(mesh, axis)


def logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names under the current mesh; a no-op
    without a mesh, and dims that do not divide by their axis are left unconstrained."""
    mesh = current_mesh()
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return x
    manual = set(getattr(mesh, "manual_axes", ()))
    axes = []
    for dim, name in zip(x.shape, names):
        axis = mesh_axis(name)
        if axis is not None and (axis in manual or dim % _axis_size(mesh, axis)):
            axis = None
        axes.append(axis)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*axes))
