"""One train step on every (data, model, stage) mesh of 8 devices: compile time, step time
and bytes moved by collectives per step (from the compiled HLO); and the pipeline bubble,
measured from step times at a fixed microbatch size against (S - 1) / (M + S - 1).

  python benchmarks/parallel.py            # 8 simulated CPU devices unless devices exist

Collective bytes: every all-reduce / all-gather / reduce-scatter / collective-permute /
all-to-all of the compiled per-device program, the size of its result (f32/bf16/s32...),
times the trip count of each while loop around it (scan over layers, pipeline iterations),
per device per step. Bubble: with microbatches of fixed size, a pipelined pass of M
microbatches takes M + S - 1 iterations, so its time is t(M) = a + b*M; the fit over
M = 1, 2, 4, 8 gives the measured bubble 1 - b*M / t(M) (the time not spent on the M
useful iterations; it also holds the fixed overhead around the pipeline, embedding and
logits). On simulated CPU devices the 8 "devices" share the host's cores, so step times
compare programs, not hardware; on a GPU/TPU run the same script once.

  RESULT parallel_<mesh>_step_ms=...        RESULT parallel_<mesh>_compile_s=...
  RESULT parallel_<mesh>_collective_kib=... RESULT parallel_bubble_s<S>_m<M>=... (measured)
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8")

import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ttc_jax.config import MeshConfig, ModelConfig, TrainConfig  # noqa: E402
from ttc_jax.models import init_model  # noqa: E402
from ttc_jax.parallel import (  # noqa: E402
    bubble_fraction,
    make_mesh,
    pipeline_microbatches,
    shard_batch,
    shard_model,
    shard_tree,
)
from ttc_jax.train.trainer import (  # noqa: E402
    create_state,
    lm_loss,
    make_optimizer,
    make_train_step,
)

MODEL = ModelConfig(vocab_size=64, d_model=128, num_layers=8, num_heads=8, num_kv_heads=4,
                    head_dim=16, mlp_dim=512, max_seq_len=64)
TRAIN = TrainConfig(batch_size=16, learning_rate=1e-3, warmup_steps=0)
MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (4, 2, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4)]
BUBBLE = {(1, 1, 2): 2, (1, 1, 4): 4}  # pipeline-only meshes for the bubble fit
WIDTH, STEPS = 48, 5
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all")
_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1, "u8": 1,
          "pred": 1, "s64": 8, "u64": 8, "s16": 2, "u16": 2}


def _shape_bytes(text: str) -> int:
    """Bytes of every array type in ``text`` (e.g. 'f32[4,16]{1,0}' or a tuple of them)."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dtype in _BYTES:
            total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes per device per execution moved by each kind of collective in compiled HLO."""
    comps, current = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
        elif current is not None:
            comps[current].append(line)
    # How often each computation runs per step: loops multiply by their trip count.
    mult = defaultdict(int)
    entry = next(name for name in comps if f"ENTRY %{name}" in hlo or f"ENTRY {name}" in hlo)
    mult[entry] = 1
    order = [entry]
    for name in order:
        for line in comps.get(name, []):
            trip = 1
            if " while(" in line:
                t = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                trip = int(t.group(1)) if t else 1
            for callee in re.findall(r"(?:body|condition|to_apply|calls)=%?([\w.\-]+)", line):
                k = trip if f"body=%{callee}" in line or f"body={callee}" in line else 1
                if callee in comps and mult[callee] == 0:
                    order.append(callee)
                mult[callee] += mult[name] * k
    out = defaultdict(int)
    for name, lines in comps.items():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([\w\-]+)\(", line)
            if not m:
                continue
            kind = m.group(2).replace("-start", "")
            if kind in COLLECTIVES:
                out[kind] += _shape_bytes(m.group(1)) * max(mult[name], 0)
    return dict(out)


def _batch(rows: int):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, MODEL.vocab_size, (rows, WIDTH + 1)).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones((rows, WIDTH), np.float32)}


def bench_train(shape):
    cfg = MeshConfig(*shape)
    mesh = make_mesh(cfg, jax.devices()[:cfg.size])
    tx = make_optimizer(TRAIN)
    graphdef, state = create_state(init_model(MODEL, seed=0), TRAIN, tx)
    step = make_train_step(graphdef, lm_loss, tx)
    state = shard_tree(state, mesh)
    with jax.set_mesh(mesh):
        batch = shard_batch(_batch(TRAIN.batch_size), mesh)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(STEPS):
            t0 = time.perf_counter()
            state, m = compiled(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), collective_bytes(compiled.as_text())


def bench_bubble(shape, micro_rows: int = 4, rounds: int = 7):
    """[(M, step seconds)] for a pipelined forward pass with microbatches of fixed size
    (fastest of ``rounds``; the Ms alternate within each round so load drifts hit all)."""
    cfg = MeshConfig(*shape)
    mesh = make_mesh(cfg, jax.devices()[:cfg.size])
    graphdef, params = nnx.split(shard_model(init_model(MODEL, seed=0), mesh))
    fns = {}
    for m in (1, 2, 4, 8):
        tokens = jnp.asarray(_batch(m * micro_rows)["tokens"][:, :-1])
        fwd = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t).sum())
        with jax.set_mesh(mesh), pipeline_microbatches(m):
            fns[m] = (fwd.lower(params, tokens).compile(), tokens)
        jax.block_until_ready(fns[m][0](params, tokens))
    times = defaultdict(list)
    for _ in range(rounds):
        for m, (f, tokens) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, tokens))
            times[m].append(time.perf_counter() - t0)
    return [(m, min(ts)) for m, ts in times.items()]


def main():
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices; model d={MODEL.d_model} "
          f"L={MODEL.num_layers} N={MODEL.num_heads} K={MODEL.num_kv_heads} "
          f"F={MODEL.mlp_dim}; batch {TRAIN.batch_size} x {WIDTH} tokens")
    print(f"{'mesh (d,m,s)':>13} {'compile s':>10} {'step ms':>9} {'vs 1 dev':>9} "
          + " ".join(f"{k[:14]:>15}" for k in COLLECTIVES) + f" {'total KiB':>10}")
    results, base = {}, None
    for shape in MESHES:
        if np.prod(shape) > jax.device_count():
            continue
        compile_s, step_s, coll = bench_train(shape)
        base = base or step_s
        total = sum(coll.values())
        results[shape] = (compile_s, step_s, total)
        print(f"{str(shape):>13} {compile_s:10.2f} {step_s * 1e3:9.2f} {base / step_s:9.2f} "
              + " ".join(f"{coll.get(k, 0) / 1024:15.1f}" for k in COLLECTIVES)
              + f" {total / 1024:10.1f}")
    print("\npipeline bubble (forward pass, microbatches of 4 rows; measured = 1 - b*M/t(M) "
          "from the fit t(M) = a + b*M)")
    print(f"{'S':>3} {'M':>3} {'step ms':>9} {'measured':>9} {'(S-1)/(M+S-1)':>14}")
    bubbles = {}
    for shape, s in BUBBLE.items():
        if np.prod(shape) > jax.device_count():
            continue
        pts = bench_bubble(shape)
        ms, ts = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts])
        b, a = np.polyfit(ms, ts, 1)
        print(f"  S={s}: a={a * 1e3:.2f} ms (bubble + fixed), b={b * 1e3:.2f} ms per microbatch")
        for m, t in pts:
            measured = 1 - b * m / t
            bubbles[(s, m)] = measured
            print(f"{s:3d} {m:3d} {t * 1e3:9.2f} {measured:9.3f} {bubble_fraction(m, s):14.3f}")
    print()
    for shape, (compile_s, step_s, total) in results.items():
        name = "x".join(map(str, shape))
        print(f"RESULT parallel_{name}_compile_s={compile_s:.2f}")
        print(f"RESULT parallel_{name}_step_ms={step_s * 1e3:.2f}")
        print(f"RESULT parallel_{name}_collective_kib={total / 1024:.1f}")
    for (s, m), v in bubbles.items():
        print(f"RESULT parallel_bubble_s{s}_m{m}={v:.3f}")
        print(f"RESULT parallel_bubble_formula_s{s}_m{m}={bubble_fraction(m, s):.3f}")


if __name__ == "__main__":
    main()
