"""Train-step throughput of the small policy config: 1 device vs data parallelism over 2
forced host devices, in one process, alternating.

  RESULT train_tokens_per_s=<1 device>
  RESULT train_dp2_speedup=<dp2 tokens/s / 1-device tokens/s>
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ttc_jax.config import MeshConfig, ModelConfig, TrainConfig  # noqa: E402
from ttc_jax.models import init_model  # noqa: E402
from ttc_jax.parallel import make_mesh, replicated, shard_batch  # noqa: E402
from ttc_jax.tasks import get_task  # noqa: E402
from ttc_jax.train import data  # noqa: E402
from ttc_jax.train.trainer import (  # noqa: E402
    create_state,
    lm_loss,
    make_optimizer,
    make_train_step,
)

STEPS, ROUNDS = 20, 5
MODEL = ModelConfig(vocab_size=21, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=16, mlp_dim=256, max_seq_len=192)
TRAIN = TrainConfig(batch_size=32, difficulty_min=7, difficulty_max=8, num_buckets=1)


def main():
    task = get_task("arithmetic")
    batches = [data.lm_batch(task, TRAIN, s) for s in range(STEPS)]
    width = max(b["tokens"].shape[1] for b in batches)
    batches = [b for b in batches if b["tokens"].shape[1] == width]  # one compiled shape
    tokens = sum(float(b["mask"].sum()) for b in batches)
    tx = make_optimizer(TRAIN)
    graphdef, state0 = create_state(init_model(MODEL), TRAIN, tx)
    step = make_train_step(graphdef, lm_loss, tx)
    one = jax.devices()[0]
    mesh = make_mesh(MeshConfig(data=2))
    fresh = lambda: jax.tree.map(lambda x: jnp.array(x, copy=True), state0)  # step donates
    setups = {
        "1 device": (lambda: jax.device_put(fresh(), one), lambda b: jax.device_put(b, one)),
        "dp=2": (lambda: jax.device_put(fresh(), replicated(mesh)),
                 lambda b: shard_batch(b, mesh)),
    }
    placed = {k: [put(b) for b in batches] for k, (_, put) in setups.items()}

    def run(name):
        state = setups[name][0]()
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for b in placed[name]:
            state, m = step(state, b)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    for name in setups:
        run(name)  # compile
    times = {k: [] for k in setups}
    for _ in range(ROUNDS):
        for name in setups:
            times[name].append(run(name))
    rates = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"small policy ({MODEL.num_params():,} params), batch {TRAIN.batch_size} x "
          f"{width - 1} tokens, {len(batches)} steps/round, median of {ROUNDS} rounds")
    for k, r in rates.items():
        ms = statistics.median(times[k]) / len(batches) * 1e3
        print(f"{k:>10}: {ms:7.1f} ms/step  {r:9,.0f} loss tokens/s")
    print(f"RESULT train_tokens_per_s={rates['1 device']:.0f}")
    print(f"RESULT train_dp2_speedup={rates['dp=2'] / rates['1 device']:.2f}")


if __name__ == "__main__":
    main()
