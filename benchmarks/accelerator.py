"""The one prepared benchmark for a lent accelerator (GPU or TPU): real model shapes,
random init (no weights, no network), one device. Run it on a lent machine with

  XLA_PYTHON_CLIENT_MEM_FRACTION=.9 PYTHONUNBUFFERED=1 python benchmarks/accelerator.py --size=real

(sized to finish in under 8 minutes on an H200 or on one chip of a TPU v5e-8; written
without an accelerator, so the real size has only been traced and lowered, on a CPU).
``--size=tiny`` runs toy shapes on a CPU in seconds (what the test does);
``--only=decode,prm,prefill,beam`` picks sections. Four sections:

1. decode: a Llama-3.2-1B-shaped policy (hidden 2048, 16 layers, 32/8 heads, head_dim 64,
   MLP 8192, vocab 128256, tied embeddings, bf16) decodes R=64 rows one token per step
   from a KV cache of 3072 slots that is already ~2944 full (one jitted fori_loop of
   ``Transformer.extend``, greedy next token). tokens/s, and the fraction of the device's
   peak HBM bandwidth it reaches: (param bytes + KV bytes cached attention reads, i.e. the
   ``bucket_sizes`` bucket it reads, per step) / step time / peak.
2. prm: an 8B-shaped PRM (Llama-3.1-8B: hidden 4096, 32 layers, 32/8 heads, head_dim 128,
   MLP 14336, vocab 128256, bf16) scores R=64 rows in blocks of C=64 new tokens
   (``ProcessRewardModel.extend`` into its cache after a 256-token prompt), as the search
   scores each step. If the 8B model (~16 GB) and its caches do not fit the device, fewer
   layers are used, and the output says so.
3. prefill: B x T = 8 x 1024 tokens through the 1B policy into a fresh KV cache. MFU =
   ``ModelConfig.flops_per_token`` (causal attention: token t attends to t+1 positions,
   the logits of every token counted) / time / the device's peak bf16 FLOP/s.
4. beam: one MATH-shaped beam search, ``search(method='beam')``, N=64, M=4, the 1B
   policy and that PRM, a 256-token prompt, max_new_tokens=512, max_step_tokens=64, over
   a synthetic 128256-token vocabulary (every 48th token ends a step). Compile time
   (XLA tracing + lowering + compiling, from jax.monitoring) and wall time (median of the
   later calls) are reported separately. ``--beam_prm=1b`` uses a PRM of the
   policy's shape instead (a shorter compile). On the 2-core development CPU the real
   beam search traced and lowered in ~17 s (5.5 MB of HLO) and XLA-compiled, for the
   CPU, in ~5 minutes under load; an accelerator's compile has not been measured yet.

Peaks come from a table by ``jax.devices()[0].device_kind`` (H100/H200, A100, TPU
v4/v5e/v5p/v6e; dense bf16, spec sheets) or ``--peak_tflops`` / ``--peak_hbm_gbs``; on an
unknown device (a CPU) the fractions are ``nan`` and only FLOP/s and bytes/s are printed.
On a TPU slice only the first chip is used. Every timed figure is the median of several
calls after a warm-up call (the compile); each call ends in ``jax.block_until_ready``.

  RESULT accel_decode_tokens_per_s=<tokens/s>
  RESULT accel_decode_hbm_fraction=<fraction of peak HBM bandwidth, nan if unknown>
  RESULT accel_prm_score_tokens_per_s=<tokens/s>
  RESULT accel_beam64_wall_s=<seconds>
  RESULT accel_beam64_compile_s=<seconds>
  RESULT accel_prefill_mfu=<fraction of peak bf16 FLOP/s, nan if unknown>
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig, RopeScaling, SearchConfig
from ttc_jax.models.cache import KVCache
from ttc_jax.models.prm import ProcessRewardModel
from ttc_jax.models.transformer import Transformer, bucket_sizes, hoist_layers
from ttc_jax.search.api import search
from ttc_jax.search.tokens import SearchTokens

SECTIONS = ("decode", "prm", "prefill", "beam")  # beam (the longest compile) last
GB = 1e9

# device_kind (lower case) substring -> (dense bf16 FLOP/s, HBM bytes/s), first match wins.
PEAKS = (
    ("h200", 989e12, 4.8e12),
    ("h100 pcie", 756e12, 2.0e12),
    ("h100 nvl", 835e12, 3.9e12),
    ("h100", 989e12, 3.35e12),  # SXM
    ("a100-sxm4-80gb", 312e12, 2.039e12),
    ("a100 80gb", 312e12, 1.935e12),  # PCIe
    ("a100", 312e12, 1.555e12),  # 40 GB
    ("tpu v4", 275e12, 1.2e12),
    ("tpu v5 lite", 197e12, 819e9),
    ("tpu v5e", 197e12, 819e9),
    ("tpu v5p", 459e12, 2.765e12),
    ("tpu v5", 459e12, 2.765e12),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918e12, 1.64e12),
    ("tpu v6e", 918e12, 1.64e12),
)


def _llama(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(rope_theta=500_000.0, norm_eps=1e-5, dtype="bfloat16",
                                 param_dtype="bfloat16"), **kw})


@dataclasses.dataclass(frozen=True)
class Size:
    policy: ModelConfig
    prm: ModelConfig
    rows: int  # decode rows R
    decode_capacity: int
    decode_start: int  # cache length when decoding starts
    decode_steps: int
    score_rows: int
    score_prompt: int  # PRM cache length before the first block
    score_block: int  # C
    score_blocks: int
    beam_n: int
    beam_m: int
    beam_prompt: int
    beam_new: int
    beam_step: int
    beam_steps: int
    delimiter_every: int  # every k-th synthetic token ends a step
    prefill_b: int
    prefill_t: int
    reps: int


REAL = Size(
    policy=_llama(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32,
                  num_kv_heads=8, head_dim=64, mlp_dim=8192, max_seq_len=4096,
                  rope_scaling=RopeScaling(factor=32.0)),
    prm=_llama(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
               head_dim=128, mlp_dim=14336, max_seq_len=4096, tie_embeddings=False,
               rope_scaling=RopeScaling(factor=8.0)),
    rows=64, decode_capacity=3072, decode_start=2944, decode_steps=96,
    score_rows=64, score_prompt=256, score_block=64, score_blocks=8,
    beam_n=64, beam_m=4, beam_prompt=256, beam_new=512, beam_step=64, beam_steps=40,
    delimiter_every=48, prefill_b=8, prefill_t=1024, reps=5)

TINY = Size(
    policy=_llama(vocab_size=512, d_model=64, num_layers=1, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=128, max_seq_len=256),
    prm=_llama(vocab_size=512, d_model=64, num_layers=1, num_heads=4, num_kv_heads=2,
               head_dim=16, mlp_dim=128, max_seq_len=256, tie_embeddings=False),
    rows=8, decode_capacity=192, decode_start=128, decode_steps=32,
    score_rows=8, score_prompt=32, score_block=16, score_blocks=4,
    beam_n=8, beam_m=2, beam_prompt=32, beam_new=48, beam_step=16, beam_steps=4,
    delimiter_every=12, prefill_b=2, prefill_t=64, reps=3)


# -- device -------------------------------------------------------------------------------

def device_peaks(kind: str, flops: float = 0.0, hbm: float = 0.0):
    """(peak bf16 FLOP/s, peak HBM bytes/s), nan where unknown; flags override."""
    k = kind.lower()
    row = next((r for r in PEAKS if r[0] in k), None)
    peak_f = flops or (row[1] if row else math.nan)
    peak_b = hbm or (row[2] if row else math.nan)
    return peak_f, peak_b


def free_bytes() -> float | None:
    """Device memory the benchmark may still take (0.9 of the limit, less what is in
    use), or None when the backend does not say (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if not stats or "bytes_limit" not in stats:
        return None
    return 0.9 * stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def itemsize(cfg: ModelConfig) -> int:
    return jnp.dtype(cfg.jnp_param_dtype).itemsize


def layer_params(cfg: ModelConfig) -> int:
    d, h = cfg.d_model, cfg.head_dim
    return d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * cfg.mlp_dim + 2 * d


def kv_bytes(cfg: ModelConfig, rows: int, slots: int, layers: int | None = None) -> int:
    layers = cfg.num_layers if layers is None else layers
    return 2 * layers * rows * cfg.num_kv_heads * slots * cfg.head_dim * jnp.dtype(
        cfg.jnp_dtype).itemsize


def jit_init(make):
    """A module built inside one jit (params made on device, in their dtype, without
    eager float32 temporaries)."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.split(make())[1])()
    return nnx.merge(graphdef, state)


class Models:
    """The policy and the PRM, each built once and shared by the sections."""

    def __init__(self, size: Size, beam_prm: str = "8b"):
        self.size, self.beam_prm = size, beam_prm
        self._policy = self._prm = self._small_prm = None
        self.prm_note = ""

    def policy(self) -> Transformer:
        if self._policy is None:
            cfg = self.size.policy
            self._policy = jit_init(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
        return self._policy

    def prm_cfg(self) -> ModelConfig:
        """The PRM's config: all layers when they fit beside the policy with the beam
        search's caches (both caches twice: beam reordering copies them), else fewer."""
        s, cfg = self.size, self.size.prm
        budget = free_bytes()
        if budget is None:
            return cfg
        if self._policy is None:  # the policy will be resident too
            budget -= self.size.policy.num_params() * itemsize(self.size.policy)
        cap = s.beam_prompt + s.beam_new
        rows = max(s.beam_n, s.score_rows)
        per_layer = layer_params(cfg) * itemsize(cfg) + 2 * kv_bytes(cfg, rows, cap, 1)
        fixed = ((cfg.num_params() - cfg.num_layers * layer_params(cfg)) * itemsize(cfg)
                 + 2 * kv_bytes(s.policy, s.beam_n, cap) + 2 * GB)
        fit = int((budget - fixed) // per_layer)
        if fit >= cfg.num_layers:
            return cfg
        fit = max(fit, 1)
        self.prm_note = (f"8B-shaped PRM does not fit beside the policy and caches "
                         f"({budget / GB:.1f} GB free): {fit} of {cfg.num_layers} layers")
        return dataclasses.replace(cfg, num_layers=fit)

    def prm(self) -> ProcessRewardModel:
        if self._prm is None:
            cfg = self.prm_cfg()
            self._prm = jit_init(lambda: ProcessRewardModel(cfg, rngs=nnx.Rngs(params=1)))
            self._prm.score_w[...] = (0.1 * jax.random.normal(
                jax.random.key(2), (cfg.d_model,))).astype(cfg.jnp_param_dtype)
        return self._prm


def fresh_cache(cfg: ModelConfig, rows: int, slots: int) -> KVCache:
    """A cache whose k and v are distinct buffers (``KVCache.init`` shares one zeros
    array, which cannot be donated twice)."""
    cache = KVCache.init(cfg, rows, slots)
    return cache.replace(v=jnp.zeros_like(cache.k))


    def small_prm(self) -> ProcessRewardModel:
        """A PRM of the policy's shape (``--beam_prm=1b``)."""
        if self._small_prm is None:
            cfg = self.size.policy
            self._small_prm = jit_init(lambda: ProcessRewardModel(cfg, rngs=nnx.Rngs(params=1)))
            self._small_prm.score_w[...] = (0.1 * jax.random.normal(
                jax.random.key(2), (cfg.d_model,))).astype(cfg.jnp_param_dtype)
        return self._small_prm


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compile_seconds(fn):
    """Runs fn once; -> (its result, seconds spent tracing, lowering and compiling)."""
    spent = []
    events = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def listen(event, duration, **_):
        if event in events:
            spent.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            unregister(listen)
    return out, sum(spent), first


def count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def fraction(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


# -- sections -----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "start", "steps"),
                   donate_argnames="cache")
def _decode(graphdef, params, cache, *, start, steps):
    model = nnx.merge(graphdef, params).hoist_layers()
    cache = cache.replace(lengths=jnp.full_like(cache.lengths, start))
    tok = jnp.ones((cache.batch,), jnp.int32)

    def body(_, carry):
        tok, cache = carry
        logits, cache = model.extend(tok[:, None], cache)
        return jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32), cache

    return jax.lax.fori_loop(0, steps, body, (tok, cache))


def bench_decode(models: Models, size: Size, peaks) -> dict:
    cfg, r = size.policy, size.rows
    graphdef, params = nnx.split(models.policy())
    held = {"cache": fresh_cache(cfg, r, size.decode_capacity)}
    run_kw = dict(graphdef=graphdef, start=size.decode_start, steps=size.decode_steps)

    def run():
        tok, held["cache"] = _decode(params=params, cache=held["cache"], **run_kw)
        return tok

    _, compile_s, _ = compile_seconds(run)
    t = median_time(run, size.reps)
    del held["cache"]
    steps = size.decode_steps
    sizes = np.asarray(bucket_sizes(size.decode_capacity))
    bounds = size.decode_start + 1 + np.arange(steps)  # slots read: up to length + 1
    slots = sizes[np.minimum(np.searchsorted(sizes, bounds), len(sizes) - 1)]
    kv_read = sum(kv_bytes(cfg, r, int(s)) for s in slots) / steps
    kv_valid = sum(kv_bytes(cfg, r, int(b)) for b in bounds) / steps
    param_b = cfg.num_params() * itemsize(cfg)
    step_s = t / steps
    bw = (param_b + kv_read) / step_s
    frac = bw / peaks[1]
    tps = r * steps / t
    print(f"[decode] {count(cfg.num_params())} policy, R={r} rows x {steps} steps, cache "
          f"{size.decode_start}->{size.decode_start + steps} of {size.decode_capacity} slots, "
          f"compile {compile_s:.1f} s, median of {size.reps}")
    print(f"{'step time':>26}: {step_s * 1e3:9.3f} ms   {tps:12,.0f} tokens/s")
    print(f"{'bytes read per step':>26}: params {param_b / 1e6:9.1f} MB + KV "
          f"{kv_read / 1e6:9.1f} MB (the bucket read; {kv_valid / 1e6:.1f} MB valid)")
    print(f"{'achieved bandwidth':>26}: {bw / GB:9.1f} GB/s  of peak "
          f"{peaks[1] / GB:7.0f} GB/s = {fraction(frac)}")
    return {"accel_decode_tokens_per_s": f"{tps:.0f}", "accel_decode_hbm_fraction": fraction(frac)}


@functools.partial(jax.jit, static_argnames=("graphdef", "start"), donate_argnames="cache")
def _score(graphdef, params, cache, blocks, *, start):
    prm = nnx.merge(graphdef, params)
    hoist_layers(prm)
    cache = cache.replace(lengths=jnp.full_like(cache.lengths, start))

    def body(carry, toks):
        cache, acc = carry
        logits, cache = prm.extend(toks, cache)
        return (cache, acc + jax.nn.sigmoid(logits[:, -1]).sum()), None

    (cache, acc), _ = jax.lax.scan(body, (cache, jnp.zeros((), jnp.float32)), blocks)
    return acc, cache


def bench_prm(models: Models, size: Size, peaks) -> dict:
    prm = models.prm()
    cfg = prm.cfg
    r, c, k = size.score_rows, size.score_block, size.score_blocks
    graphdef, params = nnx.split(prm)
    blocks = jax.random.randint(jax.random.key(3), (k, r, c), 0, cfg.vocab_size, jnp.int32)
    held = {"cache": fresh_cache(cfg, r, size.score_prompt + k * c)}

    def run():
        acc, held["cache"] = _score(graphdef, params, held["cache"], blocks,
                                    start=size.score_prompt)
        return acc

    _, compile_s, _ = compile_seconds(run)
    t = median_time(run, size.reps)
    del held["cache"]
    tokens = r * c * k
    ctx = size.score_prompt + k * c / 2  # mean context a scored token attends to
    flops = tokens * cfg.flops_per_token(int(ctx))
    flops -= tokens * 2 * cfg.vocab_size * cfg.d_model  # the score head reads no logits
    note = models.prm_note or f"all {cfg.num_layers} layers"
    print(f"[prm] {count(cfg.num_params())} PRM ({note}), R={r} rows x {k} blocks of "
          f"C={c} after a {size.score_prompt}-token prompt, compile {compile_s:.1f} s, median "
          f"of {size.reps}")
    print(f"{'incremental scoring':>26}: {t * 1e3:9.2f} ms   {tokens / t:12,.0f} tokens/s")
    print(f"{'achieved':>26}: {flops / t / 1e12:9.1f} TFLOP/s of peak "
          f"{peaks[0] / 1e12:.0f} = MFU {fraction(flops / t / peaks[0])}")
    return {"accel_prm_score_tokens_per_s": f"{tokens / t:.0f}"}


def synthetic_spec(vocab_size: int, delimiter_every: int) -> SearchTokens:
    """A MATH-like spec over a made-up vocabulary: every k-th token ends a step (".\\n\\n"),
    a ``\\boxed{`` token and a ``}`` token, eos/bos/pad among the last ids."""
    vocab = [b" t%d" % i for i in range(vocab_size)]
    for i in range(7, vocab_size, delimiter_every):
        vocab[i] = b".\n\n"
    vocab[5], vocab[6] = b"\\boxed{", b"}"
    eos, bos, pad = vocab_size - 3, vocab_size - 2, vocab_size - 1
    for i in (eos, bos, pad):
        vocab[i] = b""
    return SearchTokens.build(vocab=vocab, pad_id=pad, bos_id=bos, eos_ids=(eos,),
                              answer_prefix=(11, 12), answer="boxed", vocab_size=vocab_size)


def bench_beam(models: Models, size: Size, peaks) -> dict:
    policy = models.policy()
    prm = models.prm() if models.beam_prm == "8b" else models.small_prm()
    spec = synthetic_spec(size.policy.vocab_size, size.delimiter_every)
    cfg = SearchConfig(method="beam", n=size.beam_n, beam_width=size.beam_m,
                       max_steps=size.beam_steps, max_step_tokens=size.beam_step,
                       max_new_tokens=size.beam_new, aggregation="last")
    rng = np.random.default_rng(0)
    prompt = rng.integers(16, spec.eos_id - 8, size.beam_prompt).astype(np.int32)
    prompt[0] = spec.bos_id
    prompts, lens = jnp.asarray(prompt[None]), jnp.asarray([size.beam_prompt], jnp.int32)

    def run():
        return search(policy, prm, prompts, lens, cfg, spec)

    res, compile_s, first = compile_seconds(run)
    reps = max(2, size.reps - 2)
    t = median_time(run, reps)
    toks = float(np.asarray(res.compute.policy_tokens).sum())
    steps = int(np.asarray(res.num_steps).max())
    print(f"[beam] search(method='beam') N={cfg.n} M={cfg.beam_width}, policy "
          f"{count(size.policy.num_params())} + PRM {count(prm.cfg.num_params())} "
          f"({prm.cfg.num_layers} layers), prompt {size.beam_prompt}, max_new_tokens "
          f"{cfg.max_new_tokens}, max_step_tokens {cfg.max_step_tokens}, median of {reps}")
    print(f"{'compile (trace+lower+XLA)':>26}: {compile_s:9.2f} s   (first call {first:.2f} s)")
    print(f"{'wall per search':>26}: {t:9.3f} s   {toks:8.0f} policy tokens, up to {steps} "
          f"scored steps per row, {toks / t:10,.0f} policy tokens/s")
    return {"accel_beam64_wall_s": f"{t:.3f}", "accel_beam64_compile_s": f"{compile_s:.2f}"}


@functools.partial(jax.jit, static_argnames="graphdef")
def _prefill(graphdef, params, tokens):
    model = nnx.merge(graphdef, params)
    b, t = tokens.shape
    logits, cache = model.extend(tokens, KVCache.init(model.cfg, b, t))
    return jnp.max(logits, axis=-1), cache.k, cache.v  # every position's logits are made


def bench_prefill(models: Models, size: Size, peaks) -> dict:
    cfg, b, t = size.policy, size.prefill_b, size.prefill_t
    graphdef, params = nnx.split(models.policy())
    tokens = jax.random.randint(jax.random.key(4), (b, t), 0, cfg.vocab_size, jnp.int32)
    run = functools.partial(_prefill, graphdef, params, tokens)
    _, compile_s, _ = compile_seconds(run)
    sec = median_time(run, 2 * size.reps)
    # Token i attends to i+1 positions: flops_per_token is linear in the context length.
    base, per_ctx = cfg.flops_per_token(0), cfg.flops_per_token(1) - cfg.flops_per_token(0)
    flops = b * (t * base + per_ctx * t * (t + 1) // 2)
    flops_full = b * t * cfg.flops_per_token(t)  # what masked full attention computes
    achieved = flops / sec
    mfu = achieved / peaks[0]
    print(f"[prefill] {count(cfg.num_params())} policy, B x T = {b} x {t} tokens into a "
          f"fresh cache, compile {compile_s:.1f} s, median of {2 * size.reps}")
    print(f"{'prefill':>26}: {sec * 1e3:9.2f} ms   {b * t / sec:12,.0f} tokens/s")
    print(f"{'achieved (causal FLOPs)':>26}: {achieved / 1e12:9.2f} TFLOP/s of peak "
          f"{peaks[0] / 1e12:.0f} = MFU {fraction(mfu)}  (counting the full masked T x T "
          f"attention: {flops_full / sec / 1e12:.2f} TFLOP/s)")
    return {"accel_prefill_mfu": fraction(mfu)}


BENCHES = {"decode": bench_decode, "prm": bench_prm, "prefill": bench_prefill,
           "beam": bench_beam}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--beam_prm", choices=("8b", "1b"), default="8b",
                    help="the beam search's PRM: the 8B-shaped one (default) or one of the "
                         "policy's 1B shape (a shorter compile)")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (0: the size's)")
    ap.add_argument("--peak_tflops", type=float, default=0.0,
                    help="peak bf16 TFLOP/s (overrides the device_kind table)")
    ap.add_argument("--peak_hbm_gbs", type=float, default=0.0,
                    help="peak HBM GB/s (overrides the device_kind table)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    size = REAL if args.size == "real" else TINY
    if args.reps:
        size = dataclasses.replace(size, reps=args.reps)
    dev = jax.devices()[0]
    peaks = device_peaks(dev.device_kind, args.peak_tflops * 1e12, args.peak_hbm_gbs * GB)
    free = free_bytes()
    print(f"device {dev.device_kind!r} ({dev.platform}, {jax.device_count()} devices, using 1), "
          f"jax {jax.__version__}, size={args.size}; peak bf16 "
          f"{peaks[0] / 1e12:.0f} TFLOP/s, HBM {peaks[1] / GB:.0f} GB/s"
          + ("" if free is None else f", {free / GB:.1f} GB free"))
    if math.isnan(peaks[0]) or math.isnan(peaks[1]):
        print(f"  no peak known for device_kind {dev.device_kind!r}: fractions print as nan "
              f"(pass --peak_tflops / --peak_hbm_gbs)")
    models = Models(size, args.beam_prm)
    results, t_all = {}, time.perf_counter()
    for name in SECTIONS:
        if name in only:
            t0 = time.perf_counter()
            results.update(BENCHES[name](models, size, peaks))
            gc.collect()
            print(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    for k, v in results.items():
        print(f"RESULT {k}={v}")


if __name__ == "__main__":
    main()
