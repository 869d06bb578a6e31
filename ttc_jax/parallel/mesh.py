"""The device mesh (axes ``data``, ``model``, ``stage``) and data-parallel placement."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ttc_jax.config import MeshConfig

MESH_AXES = ("data", "model", "stage")


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh of shape (data, model, stage) over ``devices`` (default: all devices).

    Axes are ``Auto``: jit propagates shardings from the inputs.
    """
    devices = list(jax.devices() if devices is None else devices)
    if cfg.size != len(devices):
        raise ValueError(
            f"mesh data*model*stage={cfg.data}*{cfg.model}*{cfg.stage}={cfg.size} but "
            f"{len(devices)} devices are available; choose a mesh whose product is "
            f"{len(devices)} (e.g. --config.mesh.data={len(devices)}), or set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={cfg.size} on CPU")
    arr = np.asarray(devices, dtype=object).reshape(cfg.data, cfg.model, cfg.stage)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along ``data``."""
    return NamedSharding(mesh, PartitionSpec("data"))


def shard_batch(batch, mesh: Mesh):
    """Places every array of a batch with its leading axis split along ``data``."""
    n = mesh.shape["data"]
    for name, x in batch.items():
        if x.shape[0] % n:
            raise ValueError(f"batch[{name!r}] has {x.shape[0]} rows, not divisible by "
                             f"mesh.data={n}; pick a batch size that is a multiple of {n}")
    return jax.device_put(dict(batch), batch_sharding(mesh))
