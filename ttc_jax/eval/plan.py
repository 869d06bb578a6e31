"""Plan a sweep for a TPU topology on a machine without one: compile every program, report HBM.

    python launch/plan.py --config=experiments/math500_llama.py --topology=v5e:2x4 \
        --policy=Llama-3.2-1B-Instruct --prm=Llama-3.1-8B --mesh=4,2,1

Every (method, n) program of an experiment config is AOT-compiled for the TPU topology
(libtpu's compile-only devices, ``jax.experimental.topologies``; no TPU, no weights) with
the models built abstractly (``nnx.eval_shape``) from a shape preset (:data:`PRESETS`, the
public ``config.json`` values) or a local folder's ``config.json``. Each compile runs in
a subprocess (killed past ``compile_timeout_s``; its peak host memory read from
``/proc/<pid>/status`` VmHWM). A program reports per-chip HBM (``memory_analysis()``:
arguments = weights + inputs, outputs, temporaries) against the chip's HBM, or why it has
no figures (RESOURCE_EXHAUSTED at compile, timeout, host memory).

Wall time is estimated from UNIT programs (the search's while loops have no usable cost
analysis): one policy decode step over R rows (one token at a typical cache length), one
PRM scoring block (``step_tokens`` tokens over R rows), the two prefills. Each unit is
compiled at two row counts and its per-chip roofline time ``max(flops / peak_flops,
bytes_accessed / hbm_bandwidth)`` from ``cost_analysis()`` is extrapolated linearly in
the rows (the weights are read once per call, the KV cache and the matmuls grow with
rows); the counts per program are printed with the table.

The PRM is the real adapter class (``interop.prm.TokenProbPRM`` / ``ClassifierPRM``) over
the PRM trunk's shapes, with stream tables of a vocabulary without text
(``interop.prm.toy_tables``: the real tables' pair table is larger, a few MB at most) and
chat-template id runs of the real templates' lengths (:data:`PRM_FORMATS`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ttc_jax.config import ModelConfig, RopeScaling

GIB = 1024**3
LIBTPU_INSTALL = ('pip install "libtpu==0.0.42.*"  (the libtpu of jax 0.10.2; or '
                  'pip install -e ".[tpu]")')

# -- shape presets (public config.json values) ------------------------------------------------

_LLAMA31_ROPE = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_len=8192)
_LLAMA32_ROPE = dict(_LLAMA31_ROPE, factor=32.0)

PRESETS: dict[str, dict] = {
    "Llama-3.2-1B-Instruct": dict(
        vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, rope_theta=500000.0, rope_scaling=_LLAMA32_ROPE,
        norm_eps=1e-5, tie_embeddings=True),
    "Llama-3.2-3B-Instruct": dict(
        vocab_size=128256, d_model=3072, num_layers=28, num_heads=24, num_kv_heads=8,
        head_dim=128, mlp_dim=8192, rope_theta=500000.0, rope_scaling=_LLAMA32_ROPE,
        norm_eps=1e-5, tie_embeddings=True),
    # the trunk of RLHFlow/Llama3.1-8B-PRM-Deepseek-Data
    "Llama-3.1-8B": dict(
        vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_dim=14336, rope_theta=500000.0, rope_scaling=_LLAMA31_ROPE,
        norm_eps=1e-5, tie_embeddings=False),
    "Qwen2.5-1.5B": dict(
        vocab_size=151936, d_model=1536, num_layers=28, num_heads=12, num_kv_heads=2,
        head_dim=128, mlp_dim=8960, rope_theta=1000000.0, norm_eps=1e-6,
        tie_embeddings=True, qkv_bias=True),
    "Qwen2.5-7B": dict(
        vocab_size=152064, d_model=3584, num_layers=28, num_heads=28, num_kv_heads=4,
        head_dim=128, mlp_dim=18944, rope_theta=1000000.0, norm_eps=1e-6,
        tie_embeddings=False, qkv_bias=True),
    # trunk only (the loader ties: no lm_head; the two-class head is ClassifierPRM's)
    "Qwen2.5-Math-PRM-7B": dict(
        vocab_size=152064, d_model=3584, num_layers=28, num_heads=28, num_kv_heads=4,
        head_dim=128, mlp_dim=18944, rope_theta=10000.0, norm_eps=1e-6,
        tie_embeddings=True, qkv_bias=True),
    "tiny": dict(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128, tie_embeddings=True),
    # a tiny trunk with 128-wide heads: the TPU attention kernel's lane width
    "tiny128": dict(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=128, mlp_dim=128, tie_embeddings=True),
}
# the PRM adapter class of a preset (others: token_prob, the RLHFlow style)
PRM_KIND = {"Qwen2.5-Math-PRM-7B": "classifier"}

# Lengths of the templates' id runs (Llama 3.1 RLHFlow / Qwen2.5-Math-PRM chat templates;
# the policy's Llama 3.2 / Qwen chat template around the problem). Only the lengths shape
# the program (static constants of the prompt rewrite and the per-step stream).
PRM_FORMATS = {
    "token_prob": dict(prm_prefix=5, prm_suffix=0, read=5, after=6, policy_prefix=40,
                       policy_suffix=5),
    "classifier": dict(prm_prefix=22, prm_suffix=5, read=1, after=0, policy_prefix=20,
                       policy_suffix=5),
}

# Per chip: HBM (GiB as the chip is sold) and the public peak bf16 FLOP/s and HBM bytes/s.
CHIPS = {
    "v5e": dict(hbm_gib=16, flops=197e12, hbm_bw=819e9),
    "v6e": dict(hbm_gib=32, flops=918e12, hbm_bw=1640e9),
    "v5p": dict(hbm_gib=95, flops=459e12, hbm_bw=2765e9),
    "v4": dict(hbm_gib=32, flops=275e12, hbm_bw=1228e9),
}
TOPOLOGY_EXAMPLES = ("v5e:2x2", "v5e:2x4", "v5e:4x4", "v6e:2x2", "v6e:2x4", "v5p:2x2x1",
                     "v5p:2x2x2", "v4:2x2x1", "v4:2x2x2")


def model_config(name: str, *, dtype: str = "bfloat16", max_seq_len: int = 4096
                 ) -> ModelConfig:
    """The ModelConfig of a preset name or of a local folder's ``config.json``."""
    if name in PRESETS:
        fields = dict(PRESETS[name])
        rs = fields.pop("rope_scaling", None)
        return ModelConfig(**fields, rope_scaling=None if rs is None else RopeScaling(**rs),
                           max_seq_len=max_seq_len, dtype=dtype, param_dtype=dtype)
    if Path(name, "config.json").exists():
        from ttc_jax.interop.hf import read_hf_config

        cfg, _ = read_hf_config(name, dtype=dtype, max_seq_len=max_seq_len, architectures=None)
        return cfg
    raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)} or pass "
                     f"a local folder holding a Hugging Face config.json")


def prm_kind_of(name: str) -> str:
    if name in PRM_KIND:
        return PRM_KIND[name]
    if Path(name, "config.json").exists():
        raw = json.loads(Path(name, "config.json").read_text())
        if "ProcessRewardModel" in (raw.get("architectures") or [""])[0]:
            return "classifier"
    return "token_prob"


# -- topology and mesh ------------------------------------------------------------------------

def require_libtpu() -> None:
    # the parent and each compile subprocess load libtpu (as may other processes on the
    # machine): without this the second one fails on /tmp/libtpu_lockfile
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(f"libtpu is not installed, so no TPU program can be compiled "
                           f"here; install it: {LIBTPU_INSTALL}")


def chip_of(topology: str) -> dict:
    gen = topology.split(":")[0]
    if gen not in CHIPS or ":" not in topology:
        raise ValueError(f"topology {topology!r} is not a TPU topology name; use "
                         f"<generation>:<layout> with generation in {list(CHIPS)}, e.g. "
                         f"{list(TOPOLOGY_EXAMPLES)}")
    return CHIPS[gen]


def get_topology(topology: str):
    """The compile-only TPU topology (``.devices``); a ValueError listing valid names."""
    chip_of(topology)
    require_libtpu()
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # noqa: BLE001 - libtpu raises plain RuntimeErrors / XlaRuntimeError
        raise ValueError(f"topology {topology!r} is not available ({str(e).splitlines()[0]}); "
                         f"valid names look like {list(TOPOLOGY_EXAMPLES)} (v5e/v6e: AxB, "
                         f"v4/v5p: AxBxC; at least one host: v5e:1x1 is refused)") from None


def _factorizations(n: int) -> list[str]:
    return [f"{d},{m},{n // (d * m)}" for d in range(1, n + 1) if n % d == 0
            for m in range(1, n // d + 1) if (n // d) % m == 0]


def parse_mesh(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--mesh={text!r}: give data,model,stage as three positive ints, "
                         f"e.g. 4,2,1")
    return parts


def check_mesh(mesh: tuple[int, int, int], num_devices: int, topology: str) -> None:
    if math.prod(mesh) != num_devices:
        raise ValueError(f"mesh data,model,stage={','.join(map(str, mesh))} has "
                         f"{math.prod(mesh)} devices but topology {topology} has "
                         f"{num_devices}; choose one of {_factorizations(num_devices)} "
                         f"(--mesh=data,model,stage)")


def make_topology_mesh(topo, mesh: tuple[int, int, int]):
    from ttc_jax.config import MeshConfig
    from ttc_jax.parallel import make_mesh

    return make_mesh(MeshConfig(*mesh), list(topo.devices))


# -- the programs -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything one compile needs (JSON round-trip to a subprocess)."""

    topology: str
    mesh: tuple[int, int, int]
    policy: str
    prm: str
    dtype: str = "bfloat16"
    batch_size: int = 4          # problems per compiled call (P)
    prompt_len: int = 512        # prompt width W
    prm_cache_len: int = 3072
    search: dict = dataclasses.field(default_factory=dict)  # SearchConfig fields

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Setup:
        d = json.loads(text)
        d["mesh"] = tuple(d["mesh"])
        return cls(**d)

    def search_config(self, method: str | None = None, n: int | None = None):
        from ttc_jax.config import SearchConfig, from_dict

        f = dict(self.search)
        if method is not None:
            f["method"] = method
        if n is not None:
            f["n"] = n
        f["beam_width"] = min(f.get("beam_width", 4), f.get("n", 4))
        return from_dict(SearchConfig, f)

    @property
    def capacity(self) -> int:
        return self.prompt_len + int(self.search.get("max_new_tokens", 256))


def synthetic_spec(vocab_size: int):
    """SearchTokens for a vocabulary without real text: 0 pad, 1 bos, 2 eos, 3 "\\n\\n",
    4 "A:", every other id a letter (table shapes are those of the real vocabulary)."""
    from ttc_jax.search import SearchTokens

    vocab = [b"", b"", b"", b"\n\n", b"A:"] + [b"a"] * (vocab_size - 5)
    return SearchTokens.build(vocab=vocab, pad_id=0, bos_id=1, eos_ids=(2,), answer_prefix=(4,),
                              answer="boxed", vocab_size=vocab_size)


def abstract_models(s: Setup, layers: int | None = None):
    """(policy, prm) as abstract nnx modules (ShapeDtypeStruct params); ``layers``: both
    trunks cut to that many decoder blocks (the unit programs)."""
    from flax import nnx

    from ttc_jax.interop import prm as hf_prm
    from ttc_jax.models.transformer import Transformer

    pcfg = model_config(s.policy, dtype=s.dtype, max_seq_len=s.capacity)
    rcfg = model_config(s.prm, dtype=s.dtype, max_seq_len=max(s.prm_cache_len, s.capacity))
    kind = prm_kind_of(s.prm)
    if kind == "classifier" and not rcfg.tie_embeddings:
        rcfg = dataclasses.replace(rcfg, tie_embeddings=True)  # the trunk has no lm_head
    if layers is not None:
        pcfg = dataclasses.replace(pcfg, num_layers=layers)
        rcfg = dataclasses.replace(rcfg, num_layers=layers)
    f = PRM_FORMATS[kind]
    ids = lambda k: tuple([5] * k)  # noqa: E731 - any id of the vocabulary
    fmt = hf_prm.PRMFormat(ids(f["prm_prefix"]), ids(f["prm_suffix"]), ids(f["read"]),
                           ids(f["after"]))
    tables = hf_prm.toy_tables(pcfg.vocab_size, [3], fmt)
    kw = dict(policy_prefix=ids(f["policy_prefix"]), policy_suffix=ids(f["policy_suffix"]),
              prm_prefix=fmt.prefix, prm_suffix=fmt.suffix, read=fmt.read, after=fmt.after,
              eos_ids=(2,), tables=tables, cache_len=max(s.prm_cache_len, s.capacity))
    policy = nnx.eval_shape(lambda: Transformer(pcfg, rngs=nnx.Rngs(0)))
    if kind == "classifier":
        prm = nnx.eval_shape(lambda: hf_prm.ClassifierPRM(
            Transformer(rcfg, rngs=nnx.Rngs(0)), **kw))
    else:
        prm = nnx.eval_shape(lambda: hf_prm.TokenProbPRM(
            Transformer(rcfg, rngs=nnx.Rngs(0)), plus_id=6, minus_id=7, **kw))
    return policy, prm


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        tree, shardings)


def _replicated(tree, mesh):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def _params(model, mesh):
    from flax import nnx

    from ttc_jax.parallel.rules import check_model, tree_shardings

    graphdef, state = nnx.split(model)
    check_model(getattr(model, "lm", model).cfg, mesh)
    return graphdef, _abstract(state, tree_shardings(state, mesh))


def lower_search(s: Setup, method: str, n: int, topo=None):
    """The lowered ``_search_jit`` of (method, n) for ``s`` (abstract inputs with the rules
    table's NamedShardings), ready to ``.compile()``."""
    import contextlib

    import jax
    import numpy as np

    from ttc_jax.models.paged import attention_kernel
    from ttc_jax.search.api import _search_jit, layout_of, problem_keys
    from ttc_jax.search.strategies import Kernel, make_sampler, make_strategy

    topo = get_topology(s.topology) if topo is None else topo
    check_mesh(s.mesh, len(topo.devices), s.topology)
    mesh = make_topology_mesh(topo, s.mesh)
    cfg = s.search_config(method, n)
    policy, prm = abstract_models(s)
    spec = synthetic_spec(policy.cfg.vocab_size)
    pdef, pparams = _params(policy, mesh)
    rdef, rparams = _params(prm, mesh)
    p, w = s.batch_size, s.prompt_len
    prompts = jax.ShapeDtypeStruct((p, w), np.int32)
    lens = jax.ShapeDtypeStruct((p,), np.int32)
    keys = jax.eval_shape(lambda: problem_keys(cfg.seed, np.arange(p)))
    vocab = jax.eval_shape(spec.tables)
    prompts, lens, keys, vocab = _replicated((prompts, lens, keys, vocab), mesh)
    layout = layout_of(cfg)
    # a paged cache compiles with the TPU kernel (the default backend here is the CPU)
    kernel = attention_kernel("ragged") if layout.paged else contextlib.nullcontext()
    with jax.set_mesh(mesh), kernel:
        return _search_jit.lower(
            pdef, pparams, rdef, rparams, None, None, prompts, lens, keys, vocab,
            strategy=make_strategy(cfg), kernel=Kernel(make_sampler(cfg), spec,
                                                       cfg.max_step_tokens,
                                                       cfg.prm_block_tokens),
            capacity=s.capacity, max_new_tokens=cfg.max_new_tokens, gamma=0, layout=layout)


def memory_figures(compiled) -> dict:
    """Per-chip bytes from ``compiled.memory_analysis()``."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes),
           "output_bytes": int(m.output_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes),
           "generated_code_bytes": int(m.generated_code_size_in_bytes)}
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                          - out["alias_bytes"])
    return out


def _cost(compiled) -> dict:
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return {"flops": float(c.get("flops", 0.0)),
            "bytes": float(c.get("bytes accessed", 0.0)),
            "optimal_seconds": float(c.get("optimal_seconds", -1.0))}


UNITS = ("decode", "prm_block", "prefill_policy", "prefill_prm")
UNIT_LAYERS = (1, 2)  # units compile with this many blocks; cost is linear in the blocks


def lower_unit(s: Setup, name: str, rows: int, topo=None, layers: int | None = None):
    """One unit program at ``rows`` rows, lowered. ``decode``: one policy token per row
    with every row's cache filled to the typical length (prompt + half the budget);
    ``prm_block``: one PRM scoring call of ``step_tokens`` solution tokens per row (the
    adapter's stream rewrite and its peek) at that length; ``prefill_policy`` /
    ``prefill_prm``: the prompt call over ``batch_size`` prompts (``rows`` ignored).
    ``layers``: the trunks cut to that many blocks (the planner compiles 1 and 2 and
    extrapolates to the real depth: every block costs the same). The caches hold
    the bucket of ``models.transformer.bucket_sizes`` that covers the typical length, and
    cached attention is traced with that one bucket: the branch its ``lax.switch`` takes
    at that length (same cost, a tenth of the compile time)."""
    import contextlib

    from ttc_jax.models import transformer

    @contextlib.contextmanager
    def one_bucket():
        saved = transformer.bucket_sizes
        transformer.bucket_sizes = lambda capacity, smallest=64: (capacity,)
        try:
            yield
        finally:
            transformer.bucket_sizes = saved

    with one_bucket():
        return _lower_unit(s, name, rows, topo, layers)


def _lower_unit(s: Setup, name: str, rows: int, topo=None, layers: int | None = None):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from ttc_jax.models.cache import KVCache
    from ttc_jax.models.transformer import bucket_sizes, hoist_layers
    from ttc_jax.parallel.rules import cache_sharding

    if name not in UNITS:
        raise ValueError(f"unknown unit {name!r}; choose one of {list(UNITS)}")
    topo = get_topology(s.topology) if topo is None else topo
    check_mesh(s.mesh, len(topo.devices), s.topology)
    mesh = make_topology_mesh(topo, s.mesh)
    cfg = s.search_config()
    policy, prm = abstract_models(s, layers)
    typical = s.prompt_len + cfg.max_new_tokens // 2
    rep = NamedSharding(mesh, PartitionSpec())

    def bucket(cap, need):
        return next(b for b in bucket_sizes(cap) if b >= need)

    def cache_abs(mcfg, b, cap):
        c = jax.eval_shape(lambda: KVCache.init(mcfg, b, cap))
        sh = (cache_sharding(mesh, c) if b % s.mesh[0] == 0
              else jax.tree.map(lambda _: rep, c))
        return _abstract(c, sh)

    def toks(b, t):
        sh = NamedSharding(mesh, PartitionSpec("data")) if b % s.mesh[0] == 0 else rep
        return jax.ShapeDtypeStruct((b, t), np.int32, sharding=sh)

    with jax.set_mesh(mesh):
        if name == "decode":
            pdef, pparams = _params(policy, mesh)

            def decode(params, tokens, cache):
                model = nnx.merge(pdef, params)
                hoist_layers(model)
                cache = cache.replace(lengths=jnp.full_like(cache.lengths, typical))
                logits, cache = model.extend(tokens, cache)
                return logits[:, -1], cache

            return jax.jit(decode, donate_argnums=2).lower(
                pparams, toks(rows, 1),
                cache_abs(policy.cfg, rows, bucket(s.capacity, typical + 1)))
        if name == "prm_block":
            rdef, rparams = _params(prm, mesh)
            c = cfg.prm_block_tokens or cfg.max_step_tokens
            cap = bucket(max(s.prm_cache_len, s.capacity), typical + c + 32)

            def prm_block(params, tokens, cache):
                model = nnx.merge(rdef, params)
                object.__setattr__(model, "cache_len", cap)  # no widening in the unit
                hoist_layers(model)
                cache = cache.replace(lengths=jnp.full_like(cache.lengths, typical),
                                      carry=jnp.zeros_like(cache.carry))
                # the solution-block branch of ``extend`` (its prompt branch runs once),
                # with the trunk over one stream chunk: a typical block's whole stream
                return model._steps(tokens, cache, jnp.full(tokens.shape[:1], c, jnp.int32),
                                    one_chunk=True)

            return jax.jit(prm_block, donate_argnums=2).lower(
                rparams, toks(rows, c), cache_abs(prm.cfg, rows, cap))
        model = policy if name == "prefill_policy" else prm
        mdef, mparams = _params(model, mesh)

        def prefill(params, prompts, lens, cache):
            m = nnx.merge(mdef, params)
            hoist_layers(m)
            # the prompt call search makes (an adapter's ``prefill``: no cond whose
            # solution branch cost analysis would also count)
            out, cache = getattr(m, "prefill", m.extend)(prompts, cache, lens)
            return out[:, -1], cache

        p = s.batch_size
        return jax.jit(prefill, donate_argnums=3).lower(
            mparams, toks(p, s.prompt_len), jax.ShapeDtypeStruct((p,), np.int32, sharding=rep),
            cache_abs(model.cfg, p, s.capacity))


# -- subprocess jobs --------------------------------------------------------------------------

_OOM = re.compile(r"RESOURCE_EXHAUSTED[^\n]*")
_TEMPS = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\)")


def child_main(argv: list[str]) -> None:
    """``python -m ttc_jax.eval.plan <job> <setup json>``: one compile, a JSON line out."""
    import resource

    job, setup = argv[0], Setup.from_json(argv[1])
    t0 = time.perf_counter()
    out: dict = {}
    if job == "search":
        method, n = argv[2], int(argv[3])
        lowered = lower_search(setup, method, n)
        compiled = lowered.compile()
        out.update(memory_figures(compiled))
    elif job == "unit":
        compiled = lower_unit(setup, argv[2], int(argv[3]),
                              layers=int(argv[4]) if len(argv) > 4 else None).compile()
        out.update(_cost(compiled), **memory_figures(compiled))
    else:
        raise ValueError(f"unknown job {job!r}")
    out["compile_s"] = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_host_bytes"] = ru.ru_maxrss * 1024
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    print("PLAN_JSON " + json.dumps(out), flush=True)


def _cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_job(args: list[str], timeout_s: float, mem_limit_bytes: int = 0) -> dict:
    """Runs one compile job in a subprocess. Returns its figures plus ``status``: ``ok``,
    ``oom`` (RESOURCE_EXHAUSTED: does not fit the chip), ``timeout``, ``host_oom`` or
    ``error``; ``compile_s`` and ``peak_host_bytes`` always."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")

    def limit():
        try:  # the compile dies with the planner (PR_SET_PDEATHSIG = SIGKILL)
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if mem_limit_bytes:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mem_limit_bytes, mem_limit_bytes))

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ttc_jax.eval.plan", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=limit)
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)
    reader.start()
    peak, cpu = 0, 0.0
    status = None
    try:
        while proc.poll() is None:
            peak = max(peak, _vm_hwm(proc.pid))
            cpu = max(cpu, _cpu_s(proc.pid))
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                status = "timeout"
                break
            time.sleep(0.25)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.wait()
    reader.join(timeout=5)
    elapsed = time.perf_counter() - t0
    text = "".join(chunks)
    res: dict = {}
    for line in text.splitlines():
        if line.startswith("PLAN_JSON "):
            res = json.loads(line[len("PLAN_JSON "):])
    res.setdefault("compile_s", elapsed)
    res["peak_host_bytes"] = max(res.get("peak_host_bytes", 0), peak)
    res["cpu_s"] = max(res.get("cpu_s", 0.0), cpu)
    if status == "timeout":
        res.update(status="timeout", compile_s=elapsed,
                   detail=f"compile ran past {timeout_s:.0f} s and was killed")
    elif proc.returncode == 0 and "compile_s" in res and res.get("status") is None:
        res["status"] = "ok"
    elif (m := _OOM.search(text)) is not None:
        res.update(status="oom", detail=m.group(0)[:300])
        t = _TEMPS.search(text)
        if t:
            scale = 1024 ** ("KMGT".index(t.group(2)) + 1)
            res["needed_temp_bytes"] = int(float(t.group(1)) * scale)
    elif "MemoryError" in text or "bad_alloc" in text or proc.returncode in (-9, 137):
        res.update(status="host_oom", detail="host memory limit hit (killed or out of "
                   "memory while compiling)")
    else:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["?"]
        res.update(status="error", detail=f"exit {proc.returncode}: {tail[0][:300]}")
    return res


# -- estimates and the table ------------------------------------------------------------------

def unit_seconds(u: dict, chip: dict) -> float:
    """Per-chip roofline time of a unit program."""
    return max(u["flops"] / chip["flops"], u["bytes"] / chip["hbm_bw"])


def _interp(units: dict, name: str, rows: int, r1: int, r2: int, chip: dict) -> float:
    a, b = units.get(f"{name}@{r1}"), units.get(f"{name}@{r2}")
    if a is None:
        return math.nan
    ta = unit_seconds(a, chip)
    if b is None or r2 == r1:
        return ta * rows / r1
    tb = unit_seconds(b, chip)
    return ta + (tb - ta) * (rows - r1) / (r2 - r1)


def counts(s: Setup, method: str, n: int) -> dict:
    """Unit calls per compiled call (an upper bound: every row runs the full budget)."""
    cfg = s.search_config(method, n)
    t, c = cfg.max_new_tokens, cfg.prm_block_tokens or cfg.max_step_tokens
    paged = cfg.kv_cache == "paged"
    gathers = 0
    if method in ("beam", "dvts", "lookahead"):
        blocks = max(cfg.max_steps * -(-cfg.max_step_tokens // c), -(-t // c))
        gathers = 0 if paged else cfg.max_steps  # paged: reorders move page tables only
        note = (f"decode {t} x {1 + cfg.lookahead} (tokens per row <= max_new_tokens; "
                f"x (1 + lookahead)), PRM blocks of {c} <= {blocks} x {1 + cfg.lookahead}, "
                + ("reorders move page tables (no KV bytes)" if paged else
                   f"{gathers} reorders of both KV caches (read + write)"))
        decode = t * (1 + cfg.lookahead)
        blocks = blocks * (1 + cfg.lookahead)
    else:
        blocks = -(-t // c)
        decode = t
        note = f"decode {t} (= max_new_tokens), PRM blocks {t}/{c}={blocks}"
    return {"rows": s.batch_size * n, "decode": decode, "prm_blocks": blocks,
            "gathers": gathers, "note": note}


def cache_bytes_per_chip(s: Setup, rows: int) -> float:
    """Both models' KV caches (k and v) per chip: rows over ``data``, kv heads over
    ``model``."""
    import numpy as np

    d, m, _ = s.mesh
    total = 0.0
    for name, cap in ((s.policy, s.capacity), (s.prm, max(s.prm_cache_len, s.capacity))):
        c = model_config(name, dtype=s.dtype)
        per = c.num_layers * c.num_kv_heads * cap * c.head_dim * 2 * np.dtype(
            c.jnp_dtype).itemsize
        total += per * rows / (min(d, rows) * min(m, c.num_kv_heads))
    return total


def estimate(s: Setup, method: str, n: int, units: dict, r1: int, r2: int) -> dict:
    chip = chip_of(s.topology)
    k = counts(s, method, n)
    rows = k["rows"]
    dec = _interp(units, "decode", rows, r1, r2, chip)
    blk = _interp(units, "prm_block", rows, r1, r2, chip)
    pre = sum(unit_seconds(units[k], chip) if k in units else math.nan
              for k in (f"prefill_policy@{s.batch_size}", f"prefill_prm@{s.batch_size}"))
    # never below the analytic floor: "bytes accessed" extrapolated from 1-2 blocks is not
    # always monotone in rows (docs/plan.md: the first run's decode went negative at N=64)
    f = floor_estimate(s, method, n)
    dec, blk, pre = (max(x, f[k_]) if not math.isnan(x) else x
                     for x, k_ in ((dec, "decode_s"), (blk, "prm_block_s"), (pre, "prefill_s")))
    gather = k["gathers"] * 2 * cache_bytes_per_chip(s, rows) / chip["hbm_bw"]
    call = k["decode"] * dec + k["prm_blocks"] * blk + pre + gather
    return {**k, "decode_s": dec, "prm_block_s": blk, "prefill_s": pre, "gather_s": gather,
            "call_s": call,
            "problem_s": call / s.batch_size}


def floor_estimate(s: Setup, method: str, n: int) -> dict:
    """An analytic lower bound per compiled call, for comparison with the unit programs'
    figures (XLA's "bytes accessed" counts every fused operand whole, e.g. the whole KV
    cache around each layer's in-place update, so the units overstate HBM traffic as rows
    grow): each decode step reads the policy's weights once and every row's KV cache at
    the typical length; each PRM block reads the PRM's weights twice (the block and its
    peek) and its cache; FLOPs from ``ModelConfig.flops_per_token``; per chip, the rows
    over ``data``, weights and kv heads over ``model`` and ``stage``; no overheads."""
    import numpy as np

    chip = chip_of(s.topology)
    d, m, st = s.mesh
    k = counts(s, method, n)
    cfg = s.search_config(method, n)
    rows, typical = k["rows"], s.prompt_len + cfg.max_new_tokens // 2
    pc, rc = model_config(s.policy, dtype=s.dtype), model_config(s.prm, dtype=s.dtype)
    if prm_kind_of(s.prm) == "classifier":
        rc = dataclasses.replace(rc, tie_embeddings=True)
    item = np.dtype(pc.jnp_dtype).itemsize
    chips = d * m * st

    def kv_row(c, length):  # one row's cache bytes per chip
        return c.num_layers * c.num_kv_heads * length * c.head_dim * 2 * item / (
            min(m, c.num_kv_heads) * st)

    def t(flops, nbytes):
        return max(flops / chip["flops"], nbytes / chip["hbm_bw"])

    per_chip_rows = -(-rows // d)
    dec = t(rows * pc.flops_per_token(typical) / chips,
            pc.num_params() * item / (m * st) + per_chip_rows * kv_row(pc, typical))
    c = cfg.prm_block_tokens or cfg.max_step_tokens
    blk = t(rows * (c + 8) * rc.flops_per_token(typical) / chips,
            2 * rc.num_params() * item / (m * st) + 2 * per_chip_rows * kv_row(rc, typical))
    pre = t(s.batch_size * s.prompt_len * (pc.flops_per_token(s.prompt_len // 2)
                                           + rc.flops_per_token(s.prompt_len // 2)) / chips,
            (pc.num_params() + rc.num_params()) * item / (m * st))
    gather = k["gathers"] * 2 * cache_bytes_per_chip(s, rows) / chip["hbm_bw"]
    call = k["decode"] * dec + k["prm_blocks"] * blk + pre + gather
    return {"decode_s": dec, "prm_block_s": blk, "prefill_s": pre, "call_s": call,
            "problem_s": call / s.batch_size}


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def run_units(s: Setup, r1: int, r2: int, *, timeout_s: float, mem_limit_bytes: int = 0,
              log=print) -> dict:
    """Compiles the unit programs at ``UNIT_LAYERS`` blocks (and rows r1, r2 for the
    per-row ones) and returns {"<unit>@<rows>": cost at the models' real depth}: FLOPs and
    bytes are linear in the blocks (identical, unrolled), so ``c(L) = c(1) + (L - 1) *
    (c(2) - c(1))``."""
    chip = chip_of(s.topology)
    depth = {"decode": model_config(s.policy).num_layers,
             "prefill_policy": model_config(s.policy).num_layers,
             "prm_block": model_config(s.prm).num_layers,
             "prefill_prm": model_config(s.prm).num_layers}
    jobs = [("decode", r1), ("decode", r2), ("prm_block", r1), ("prm_block", r2),
            ("prefill_policy", s.batch_size), ("prefill_prm", s.batch_size)]
    units = {}
    for name, rows in dict.fromkeys(jobs):
        got = {}
        big = depth[name]
        for layers in UNIT_LAYERS if big > max(UNIT_LAYERS) else (big,):
            u = run_job(["unit", s.to_json(), name, str(rows), str(layers)], timeout_s,
                        mem_limit_bytes)
            if u["status"] != "ok":
                log(f"unit {name}@{rows} ({layers} blocks): {u['status']} after "
                    f"{u['compile_s']:.0f} s: {u.get('detail', '')} (no estimate from it)")
                break
            got[layers] = u
        if len(got) < (len(UNIT_LAYERS) if big > max(UNIT_LAYERS) else 1):
            continue
        (l1, a), (l2, b) = (sorted(got.items()) * 2)[:2]
        u = {k: a[k] + (b[k] - a[k]) * (big - l1) / max(l2 - l1, 1) for k in ("flops", "bytes")}
        u.update(compile_s=a["compile_s"] + b["compile_s"] * (l2 != l1),
                 cpu_s=a["cpu_s"] + b["cpu_s"] * (l2 != l1),
                 peak_host_bytes=max(a["peak_host_bytes"], b["peak_host_bytes"]))
        units[f"{name}@{rows}"] = u
        log(f"unit {name}@{rows}: at {big} blocks {u['flops'] / 1e12:.4f} TFLOP, "
            f"{u['bytes'] / 1e9:.3f} GB accessed per chip -> {unit_seconds(u, chip) * 1e3:.3f} "
            f"ms (from {l1} and {l2} blocks: {a['bytes'] / 1e9:.3f}, {b['bytes'] / 1e9:.3f} "
            f"GB; compiles {u['compile_s']:.0f} s wall, {u['cpu_s']:.0f} s CPU, host "
            f"{_gib(u['peak_host_bytes'])} GiB)")
    return units


def plan(s: Setup, methods, budgets, *, num_problems: int = 500, compile_timeout_s: float = 300,
         mem_limit_bytes: int = 0, unit_rows: tuple[int, int] | None = None,
         unit_timeout_s: float | None = None, log=print) -> dict:
    """Compiles every (method, n) program and the unit programs; prints the table and the
    RESULT lines (``log``); returns {"rows": [...], "results": {...}, "units": {...}}."""
    chip = chip_of(s.topology)
    topo = get_topology(s.topology)
    check_mesh(s.mesh, len(topo.devices), s.topology)
    from ttc_jax.parallel.rules import check_model

    mesh = make_topology_mesh(topo, s.mesh)
    for name in (s.policy, s.prm):  # unknown presets, indivisible shapes fail here
        check_model(model_config(name), mesh)
    d = s.mesh[0]
    r1, r2 = unit_rows or (d, 8 * d)
    log(f"plan: {s.topology} ({len(topo.devices)} chips, {chip['hbm_gib']} GiB HBM each), "
        f"mesh data,model,stage={s.mesh}, policy {s.policy}, PRM {s.prm} "
        f"({prm_kind_of(s.prm)}), {s.dtype}, {s.batch_size} problems x prompt {s.prompt_len} "
        f"per call, max_new_tokens {s.search.get('max_new_tokens')}, step tokens "
        f"{s.search.get('max_step_tokens')}, policy cache {s.capacity}, PRM cache "
        f"{max(s.prm_cache_len, s.capacity)}")
    rows = []
    for method in methods:  # the search programs first: the table's main figures
        for n in budgets:
            r = run_job(["search", s.to_json(), method, str(n)], compile_timeout_s,
                        mem_limit_bytes)
            r.update(method=method, n=n)
            r["fits"] = r["status"] == "ok" and r["total_bytes"] <= chip["hbm_gib"] * GIB
            log(f"compiled {method} N={n}: {r['status']} in {r['compile_s']:.0f} s "
                f"({r['cpu_s']:.0f} s CPU, host {_gib(r['peak_host_bytes'])} GiB)"
                + (f", {_gib(r['total_bytes'])} GiB per chip" if r["status"] == "ok" else
                   f": {r.get('detail', '')}"))
            rows.append(r)
    units = run_units(s, r1, r2, timeout_s=unit_timeout_s or compile_timeout_s,
                      mem_limit_bytes=mem_limit_bytes, log=log)
    head = (f"{'method':<19}{'N':>5}{'rows':>6}  {'status':<9}{'args':>7}{'out':>7}"
            f"{'temp':>7}{'total':>7}  {'fits':<5}{'compile_s':>10}{'cpu_s':>7}{'host_GiB':>9}"
            f"{'s/problem':>11}{'sweep_h':>9}{'floor_h':>9}")
    log(head)
    for r in rows:
        method, n = r["method"], r["n"]
        est = estimate(s, method, n, units, r1, r2)
        floor = floor_estimate(s, method, n)
        r.update(estimate=est, floor=floor, sweep_hours=est["problem_s"] * num_problems / 3600,
                 floor_sweep_hours=floor["problem_s"] * num_problems / 3600)
        ok = r["status"] == "ok"
        log(f"{method:<19}{n:>5}{est['rows']:>6}  {r['status']:<9}"
            f"{_gib(r.get('argument_bytes')):>7}{_gib(r.get('output_bytes')):>7}"
            f"{_gib(r.get('temp_bytes', r.get('needed_temp_bytes'))):>7}"
            f"{_gib(r.get('total_bytes')):>7}  {('yes' if r['fits'] else 'no'):<5}"
            f"{r['compile_s']:>10.1f}{r['cpu_s']:>7.0f}{r['peak_host_bytes'] / GIB:>9.2f}"
            f"{est['problem_s']:>11.1f}{r['sweep_hours']:>9.2f}{r['floor_sweep_hours']:>9.2f}"
            + ("" if ok else f"  {r.get('detail', '')}"))
    log("columns: GiB per chip from memory_analysis() (args = weights + inputs; temp of an "
        "oom row = the temporaries the compiler asked for); fits = compiled and total <= "
        f"{chip['hbm_gib']} GiB; compile_s wall / cpu_s CPU seconds of the compile subprocess "
        f"(its start and model building included), host_GiB its peak RSS; s/problem and "
        f"sweep_h ({num_problems} problems) from the unit programs' roofline (peak "
        f"{chip['flops'] / 1e12:.0f} TFLOP/s, {chip['hbm_bw'] / 1e9:.0f} GB/s per chip), "
        f"units compiled at {UNIT_LAYERS} blocks and rows {r1} and {r2}, linear in both; "
        f"floor_h: the analytic lower bound of floor_estimate (weights and KV at the "
        f"typical length read once per call); calls per program:")
    for r in rows:
        log(f"  {r['method']} N={r['n']}: {r['estimate']['note']}, prefill 1; "
            f"decode {r['estimate']['decode_s'] * 1e3:.2f} ms, PRM block "
            f"{r['estimate']['prm_block_s'] * 1e3:.2f} ms, prefill "
            f"{r['estimate']['prefill_s'] * 1e3:.1f} ms, reorders "
            f"{r['estimate']['gather_s']:.2f} s; per call "
            f"{r['estimate']['call_s']:.1f} s / {s.batch_size} problems")
    hbm = [r.get("total_bytes") or (r.get("needed_temp_bytes") or 0) for r in rows]
    results = {
        "plan_fits_all": int(bool(rows) and all(r["fits"] for r in rows)),
        "plan_max_compile_s": round(max([r["compile_s"] for r in rows] + [0.0]), 1),
        "plan_max_hbm_gib_per_chip": round(max(hbm + [0]) / GIB, 2),
        "plan_sweep_hours_estimate": round(sum(r["sweep_hours"] for r in rows), 2),
        "plan_sweep_hours_floor": round(sum(r["floor_sweep_hours"] for r in rows), 2),
    }
    for k, v in results.items():
        log(f"RESULT {k}={v}")
    return {"rows": rows, "results": results, "units": units}


def setup_from_config(c, *, topology: str, mesh: tuple[int, int, int] | None, policy: str,
                      prm: str, prompt_len: int | None = None) -> Setup:
    """A Setup from an experiment config (``experiments/math500_llama.py``)."""
    sc = c.search.to_dict() if hasattr(c.search, "to_dict") else dict(c.search)
    m = mesh or (c.mesh.data, c.mesh.model, c.mesh.stage)
    w = prompt_len or c.max_seq_len - sc["max_new_tokens"]
    return Setup(topology=topology, mesh=tuple(m), policy=policy, prm=prm, dtype=c.dtype,
                 batch_size=c.batch_size, prompt_len=w, prm_cache_len=c.prm_cache_len,
                 search=sc)


if __name__ == "__main__":
    child_main(sys.argv[1:])
