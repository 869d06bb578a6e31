"""Parallelism: the device mesh and the sharding helpers."""

from ttc_jax.parallel.mesh import MESH_AXES, batch_sharding, make_mesh, replicated, shard_batch

__all__ = ["MESH_AXES", "batch_sharding", "make_mesh", "replicated", "shard_batch"]
