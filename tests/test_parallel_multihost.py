"""Multi-host: two local processes with 4 CPU devices each (gloo collectives) join with
``ttc_jax.parallel.initialize`` into one 8-device (data, model, stage) = (2, 2, 2) mesh and
run a pipelined, tensor- and data-parallel search; process 0 writes the result. It must
equal the same search run by one process that has all 8 devices. Also checked:
process-aware batches and the rows each process owns."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from ttc_jax import parallel
    if nproc > 1:
        assert parallel.initialize(f"localhost:{port}", nproc, pid)
    import jax
    from ttc_jax.config import MeshConfig, ModelConfig, SearchConfig
    from ttc_jax.models import init_model
    from ttc_jax.models.prm import init_prm
    from ttc_jax.search import SearchTokens, encode_prompts, search
    from ttc_jax.tasks import get_task

    task = get_task("arithmetic")
    cfg = ModelConfig(vocab_size=24, d_model=32, num_layers=4, num_heads=4, num_kv_heads=4,
                      head_dim=8, mlp_dim=64, max_seq_len=48)
    prompts = encode_prompts(task, task.sample_problems("test", [2, 3], 1, seed=0))
    search_cfg = SearchConfig(method="best_of_n", n=4, max_step_tokens=4, max_new_tokens=12,
                              aggregation="min")
    mesh = parallel.make_mesh(MeshConfig(2, 2, 2))
    assert jax.device_count() == 8 and jax.local_device_count() == 8 // nproc
    policy = parallel.shard_model(init_model(cfg, seed=0), mesh)
    prm = parallel.shard_model(init_prm(cfg, seed=1), mesh)
    res = search(policy, prm, *prompts, search_cfg, SearchTokens.from_task(task), mesh=mesh)
    res = parallel.to_host(res)
    # Process-aware data: each process places only its rows; the global array is whole.
    batch = {"x": np.arange(16 * 3).reshape(16, 3)}
    g = parallel.global_batch(batch, mesh)["x"]
    rows = parallel.process_rows(16, mesh)
    local = parallel.from_process_local({"x": batch["x"][rows]}, mesh, 16)["x"]
    same = bool(np.array_equal(parallel.to_host(g), batch["x"])
                and np.array_equal(parallel.to_host(local), batch["x"]))
    if parallel.is_writer():
        np.savez(out, tokens=res.tokens, scores=res.scores, chosen=res.chosen,
                 answer=res.answer, processes=jax.process_count(), same=same,
                 rows=(rows.start, rows.stop))
    print("process", pid, "of", jax.process_count(), "done", flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_two_processes_form_one_mesh_and_search_like_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    multi, single = tmp_path / "multi.npz", tmp_path / "single.npz"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), "2", port, str(multi)],
                              env=_env(4), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    ref = subprocess.run([sys.executable, str(script), "0", "1", port, str(single)],
                         env=_env(8), cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
    a, b = np.load(multi), np.load(single)
    assert int(a["processes"]) == 2 and int(b["processes"]) == 1
    assert bool(a["same"]) and bool(b["same"])
    assert tuple(a["rows"]) == (0, 8) and tuple(b["rows"]) == (0, 16)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["chosen"], b["chosen"])
    np.testing.assert_array_equal(a["answer"], b["answer"])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


def test_initialize_is_a_no_op_on_one_host_and_checks_its_arguments(monkeypatch):
    from ttc_jax import parallel
    from ttc_jax.parallel import multihost

    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "TPU_WORKER_HOSTNAMES", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(multihost, "on_tpu_vm", lambda: False)
    assert parallel.initialize() is False
    assert parallel.is_writer()
    with pytest.raises(ValueError, match="needs all of coordinator_address"):
        parallel.initialize("localhost:1234")
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        parallel.initialize("localhost:1234", 2, 2)
