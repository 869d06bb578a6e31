"""Multi-host runs: ``initialize`` (jax.distributed), process-aware data and writing.

One JAX process runs per host; together they see every device of the slice and build one
global mesh over ``jax.devices()``. The rules:

* call :func:`initialize` first, before anything touches a device (launch scripts do);
* every process runs the same program on the same global shapes. Data is a pure function
  of (seed, step), so each host can build the global batch and place only the rows of
  its own devices (:func:`global_batch`), or build just its rows and hand them over with
  :func:`from_process_local` (``jax.make_array_from_process_local_data``);
* results that span hosts are gathered with :func:`to_host` (every process gets the full
  numpy array); only :func:`is_writer` (process 0) writes files.

On TPU VMs ``initialize()`` needs no arguments (the cluster is detected). Elsewhere give
the coordinator ``host:port``, the number of processes and this process's id (or set
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). On CPU the
cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

_STATE = {"initialized": False}


def on_tpu_vm() -> bool:
    """True on a Cloud TPU VM (where jax.distributed detects the cluster itself)."""
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_NAME")
                or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0")
                or os.path.exists("/dev/vfio/0"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None,
               cpu_collectives: str = "gloo") -> bool:
    """Joins this process to a multi-process JAX run; returns True when it did.

    With no arguments and no ``JAX_COORDINATOR_ADDRESS`` in the environment it does
    nothing off TPU VMs (a single-process run) and auto-detects the cluster on them.
    Call it once, before any other JAX call that touches devices.
    """
    if _STATE["initialized"]:
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        if not on_tpu_vm():
            return False
        jax.distributed.initialize()
    else:
        if None in explicit:
            raise ValueError(
                "multi-host needs all of coordinator_address (host:port of process 0), "
                f"num_processes and process_id; got {explicit}. Pass all three (e.g. "
                "--coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0) or "
                "none on a TPU VM")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} must be in [0, num_processes="
                             f"{num_processes})")
        if cpu_collectives and "cpu" in os.environ.get("JAX_PLATFORMS", ""):
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids)
    _STATE["initialized"] = True
    logger.info("process %d of %d: %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_writer() -> bool:
    """True on the one process that writes files (process 0)."""
    return jax.process_index() == 0


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays split along ``data`` (leading axis) from a batch every process holds
    whole: each process places only the shards of its own devices
    (``jax.make_array_from_callback``)."""
    n = mesh.shape["data"]
    spec = PartitionSpec("data")
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        if n > 1 and x.shape[0] % n:
            raise ValueError(f"batch[{name!r}] has {x.shape[0]} rows, not divisible by "
                             f"mesh.data={n}; pick a batch size that is a multiple of {n}")
        sharding = NamedSharding(mesh, spec if x.ndim else PartitionSpec())
        out[name] = jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx])
    return out


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` (numpy, jax, or PRNG key arrays; the same values on every
    process) as a global array replicated over ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def process_rows(global_rows: int, mesh: Mesh) -> slice:
    """The rows of a ``data``-split batch whose shards live on this process's devices
    (contiguous, as ``jax.make_array_from_process_local_data`` expects)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    idx = sharding.addressable_devices_indices_map((global_rows,))
    starts = sorted({(i[0].start or 0) for i in idx.values()})
    stops = sorted({(i[0].stop if i[0].stop is not None else global_rows)
                    for i in idx.values()})
    return slice(starts[0], stops[-1])


def from_process_local(local: Mapping[str, np.ndarray], mesh: Mesh,
                       global_rows: int) -> dict[str, jax.Array]:
    """Global arrays split along ``data`` from the rows this process holds
    (``local[name]`` has ``process_rows(global_rows, mesh)`` rows)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {name: jax.make_array_from_process_local_data(
        sharding, np.asarray(x), (global_rows,) + np.shape(x)[1:])
        for name, x in local.items()}


def to_host(tree):
    """Numpy copies of every array of ``tree``; arrays that span several processes are
    first replicated (a jitted identity with a replicated output sharding, which every
    process runs), so every process gets the whole value."""
    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if not x.sharding.is_fully_replicated:
            x = jax.jit(lambda a: a, out_shardings=NamedSharding(x.sharding.mesh,
                                                                 PartitionSpec()))(x)
        return np.asarray(x.addressable_data(0))

    return jax.tree.map(one, tree)
