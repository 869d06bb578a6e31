"""The device mesh (axes ``data``, ``model``, ``stage``) and data-parallel placement."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ttc_jax.config import MeshConfig
from ttc_jax.parallel.multihost import global_batch

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
    shape = (cfg.data, cfg.model, cfg.stage)
    arr = np.asarray(devices, dtype=object).reshape(shape)
    if devices[0].platform == "tpu":  # follow the physical topology (ICI rings)
        try:
            arr = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError) as e:
            logging.getLogger(__name__).warning("topology-aware mesh failed (%s); using "
                                                "device order", e)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along ``data``."""
    return NamedSharding(mesh, PartitionSpec("data"))


def shard_batch(batch, mesh: Mesh):
    """Places every array of a batch with its leading axis split along ``data``.

    Every process holds the whole batch (it is a pure function of the step); each places
    only the rows of its own devices, so this works unchanged across hosts.
    """
    return global_batch(batch, mesh)
