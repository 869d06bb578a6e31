"""Multi-host flags shared by the launch scripts (import this module only from them).

  --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0

None of them is needed on a TPU VM (the slice is detected) or on one host.
"""

from __future__ import annotations

from absl import flags

from ttc_jax.parallel.multihost import initialize

_COORD = flags.DEFINE_string("coordinator_address", None,
                             "multi-host: host:port of process 0 (not needed on TPU VMs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's id")


def init_from_flags() -> bool:
    """``ttc_jax.parallel.initialize`` with the flags (call first in ``main``)."""
    return initialize(_COORD.value, _NPROC.value, _PID.value)
