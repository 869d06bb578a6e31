"""Parallelism: one mesh (data, model, stage), the logical-axis rules, tensor parallelism
through the rules + jit, a GPipe pipeline over ``stage``, and multi-host helpers.

    mesh = make_mesh(MeshConfig(data=2, model=2, stage=2))
    model = shard_model(init_model(cfg), mesh)      # params placed by RULES
    with jax.set_mesh(mesh):                        # stage > 1: layers run pipelined
        logits = jax.jit(fn)(...)
"""

from ttc_jax.parallel.mesh import MESH_AXES, batch_sharding, make_mesh, replicated, shard_batch
from ttc_jax.parallel.multihost import (
    from_process_local,
    global_batch,
    initialize,
    is_writer,
    process_rows,
    replicate,
    to_host,
)
from ttc_jax.parallel.pipeline import (
    bubble_fraction,
    choose_microbatches,
    num_stages,
    pipeline,
    pipeline_active,
    pipeline_microbatches,
)
from ttc_jax.parallel.rules import (
    RULES,
    cache_sharding,
    check_divisible,
    current_mesh,
    logical_constraint,
    logical_to_spec,
    param_shardings,
    shard_cache,
    shard_model,
    shard_tree,
    tree_shardings,
)

__all__ = [
    "MESH_AXES", "RULES", "batch_sharding", "bubble_fraction", "cache_sharding",
    "check_divisible", "choose_microbatches", "current_mesh", "from_process_local",
    "global_batch", "initialize", "is_writer", "logical_constraint", "logical_to_spec",
    "make_mesh", "num_stages", "param_shardings", "pipeline", "pipeline_active",
    "pipeline_microbatches", "process_rows", "replicate", "replicated", "shard_batch",
    "shard_cache", "shard_model", "shard_tree", "to_host", "tree_shardings",
]
