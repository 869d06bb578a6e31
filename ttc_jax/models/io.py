"""Exported models: ``model.json`` (kind + ModelConfig) and ``params.npz`` (flat arrays).

Training checkpoints (orbax, with optimizer state) live in a run's workdir; an exported
model is the small, self-contained file set that is shipped in ``ttc_jax/assets/`` and
loaded by name: ``load_model("policy_small")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig, from_dict, to_dict
from ttc_jax.models.prm import ProcessRewardModel
from ttc_jax.models.transformer import Transformer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
KINDS = {"policy": Transformer, "prm": ProcessRewardModel}


def _flat(tree) -> dict[str, np.ndarray]:
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        flat[key] = np.asarray(leaf)
    return flat


def save_model(model: nnx.Module, path: str | Path, *, kind: str, dtype: str | None = None,
               extra: dict | None = None) -> Path:
    """Writes ``model`` to the folder ``path``; ``dtype='bfloat16'`` halves the files
    (loaded back as the config's param dtype). Across several processes every process
    must call it (the params are gathered); process 0 writes."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {sorted(KINDS)}")
    path = Path(path)
    state = nnx.state(model, nnx.Param)
    if jax.process_count() > 1:  # multi-host: every process joins the gather, one writes
        from ttc_jax.parallel.multihost import is_writer, to_host

        state = to_host(state)
        if not is_writer():
            return path
    path.mkdir(parents=True, exist_ok=True)
    params = state.to_pure_dict()
    flat = _flat(params)
    if dtype == "bfloat16":  # npz has no bf16: store the bf16 bits as uint16
        flat = {k: np.asarray(jnp.asarray(v, jnp.bfloat16)).view(np.uint16)
                for k, v in flat.items()}
    elif dtype not in (None, "float32"):
        raise ValueError(f"dtype={dtype!r}; use None, 'float32' or 'bfloat16'")
    np.savez(path / "params.npz", **flat)
    meta = {"kind": kind, "model": to_dict(model.cfg), "stored_dtype": dtype or "float32",
            "init": dict(getattr(model, "init_kwargs", {}))}
    meta.update(extra or {})
    (path / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's name (``ttc_jax/assets/<name>``) or a folder path."""
    p = Path(name_or_path)
    if (p / "model.json").exists():
        return p
    if (ASSETS / str(name_or_path) / "model.json").exists():
        return ASSETS / str(name_or_path)
    shipped = sorted(d.name for d in ASSETS.glob("*") if (d / "model.json").exists())
    raise FileNotFoundError(f"no exported model at {p} (needs model.json and params.npz) "
                            f"and no shipped model named {str(name_or_path)!r}; shipped: "
                            f"{shipped}")


def load_model(name_or_path: str | Path, *, kind: str | None = None) -> nnx.Module:
    """Loads an exported model; ``kind`` (if given) must match the stored kind."""
    path = resolve(name_or_path)
    meta = json.loads((path / "model.json").read_text())
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{path} holds a {meta['kind']!r} model, expected {kind!r}")
    cfg = from_dict(ModelConfig, meta["model"])
    init = meta.get("init", {})
    model = nnx.eval_shape(lambda: KINDS[meta["kind"]](cfg, rngs=nnx.Rngs(0), **init))
    state = nnx.state(model, nnx.Param)
    pure = state.to_pure_dict()
    with np.load(path / "params.npz") as npz:
        stored = dict(npz)
    expected = _flat(jax.tree.map(lambda x: np.zeros((), np.float32), pure))
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ValueError(f"{path / 'params.npz'} lacks tensors {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; was it exported from a "
                         f"different architecture?")
    leaves_with_path = jax.tree_util.tree_leaves_with_path(pure)
    treedef = jax.tree.structure(pure)
    values = []
    for p, leaf in leaves_with_path:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
        arr = stored[key]
        if meta.get("stored_dtype") == "bfloat16":
            arr = arr.view(jnp.bfloat16)
        if arr.shape != leaf.shape:
            raise ValueError(f"tensor {key}: stored shape {arr.shape}, model expects "
                             f"{leaf.shape}")
        values.append(jnp.asarray(arr, cfg.jnp_param_dtype))
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, values))
    nnx.update(model, state)
    return model
