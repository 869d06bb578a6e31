"""Speculative decoding vs teacher-only sampling: tokens/s, acceptance rate, best γ, and
where the speed-up breaks even as the target grows.

  python benchmarks/speculative.py                       # shipped teacher + student draft
  python benchmarks/speculative.py --draft=policy_small --gammas=1,2,4

Part 1 (measured): the same prompts, seed, strategy and budget through
``ttc_jax.decode.sample`` (the target alone) and ``speculative_sample`` for each γ; tokens/s
is generated tokens / wall time of the compiled call (best of --repeats).

Part 2 (break-even, a cost model fed by measurements): per-call times of the compiled
loops, for targets of growing size (random weights: only their speed matters): t1 (one
target token), tv (one target call verifying γ+1 tokens) and td (one draft token, the
shipped draft). With the acceptance rate α measured in part 1, an iteration commits
E = (1 - α^(γ+1)) / (1 - α) tokens and costs γ·td + tv, so the predicted speed-up is
E·t1 / (γ·td + tv). Part 1's pair is in the table too, so the model can be checked
against the measured ratio.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.decode import Greedy, Temperature, sample, speculative_sample
from ttc_jax.models import KVCache, init_model
from ttc_jax.models.io import load_model
from ttc_jax.search.api import encode_prompts
from ttc_jax.tasks import get_task

_TARGET = flags.DEFINE_string("target", "teacher", "target model (shipped name or folder)")
_DRAFT = flags.DEFINE_string("draft", "student", "draft model (shipped name or folder)")
_GAMMAS = flags.DEFINE_list("gammas", ["1", "2", "3", "4", "6"], "draft lengths γ")
_BATCH = flags.DEFINE_integer("batch", 8, "prompts decoded together (one sample each)")
_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "token budget per sample")
_TEMP = flags.DEFINE_float("temperature", 1.0, "sampling temperature (0 = greedy)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per setting (best is kept)")
_SEED = flags.DEFINE_integer("seed", 0, "one seed for prompts and sampling")
_SWEEP = flags.DEFINE_bool("sweep", True, "part 2: the break-even sweep over target sizes")

SWEEP_TARGETS = [  # (name, d_model, layers, heads, kv heads, mlp)
    ("d96 L3 (teacher)", 96, 3, 6, 3, 384),
    ("d192 L4", 192, 4, 12, 4, 768),
    ("d384 L6", 384, 6, 24, 8, 1536),
]


def _best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def measured(target, draft, task, gammas):
    probs = task.sample_problems("test", list(range(1, 9)), max(1, _BATCH.value // 8),
                                 _SEED.value)[:_BATCH.value]
    prompts, lens = encode_prompts(task, probs, 16)
    strategy = Greedy() if _TEMP.value == 0 else Temperature(_TEMP.value)
    kw = dict(n=1, rng=jax.random.key(_SEED.value), max_new_tokens=_TOKENS.value,
              strategy=strategy, stop_tokens=(task.tokenizer.eos_id,),
              capacity=prompts.shape[1] + _TOKENS.value)
    base = sample(target, (prompts, lens), **kw)
    base_tokens = int(np.sum(base.lengths))
    t_base = _best_time(lambda: sample(target, (prompts, lens), **kw), _REPEATS.value)
    print(f"prompts {len(probs)} (k=1..8), strategy {strategy}, budget {_TOKENS.value}")
    print(f"{'decoder':<24}{'tokens':>8}{'time s':>9}{'tok/s':>9}{'accept':>8}"
          f"{'tok/call':>9}{'speed-up':>9}")
    print(f"{'target only':<24}{base_tokens:>8}{t_base:>9.3f}{base_tokens / t_base:>9.0f}"
          f"{'':>8}{1.0:>9.2f}{1.0:>9.2f}")
    rows = []
    for g in gammas:
        out = speculative_sample(target, draft, (prompts, lens), gamma=g, **kw)
        toks = int(np.sum(out.lengths))
        t = _best_time(lambda g=g: speculative_sample(target, draft, (prompts, lens), gamma=g,
                                                      **kw), _REPEATS.value)
        rate = float(np.sum(out.accepted) / max(1, np.sum(out.proposed)))
        per_call = toks / max(1, int(np.sum(out.iterations)))
        speedup = (toks / t) / (base_tokens / t_base)
        rows.append((g, rate, speedup))
        print(f"{'speculative γ=' + str(g):<24}{toks:>8}{t:>9.3f}{toks / t:>9.0f}{rate:>8.3f}"
              f"{per_call:>9.2f}{speedup:>9.2f}")
    return rows


def _loop_time(model, cfg: ModelConfig, batch: int, width: int, steps: int = 32) -> float:
    """Seconds per call of ``model.extend`` with ``width`` new tokens on a half-full cache,
    inside a compiled fori_loop (the way the decoders call it)."""
    graphdef, params = nnx.split(model)
    cap = 160

    @jax.jit
    def run(params):
        m = nnx.merge(graphdef, params)
        cache = KVCache.init(cfg, batch, cap).replace(lengths=jnp.full((batch,), 64, jnp.int32))
        toks = jnp.ones((batch, width), jnp.int32)

        def body(i, c):
            acc, cache = c
            logits, new = m.extend(toks, cache)
            return acc + logits[:, -1, 0], new.replace(lengths=cache.lengths)

        return jax.lax.fori_loop(0, steps, body, (jnp.zeros((batch,)), cache))[0]

    return _best_time(lambda: run(params), _REPEATS.value) / steps


def break_even(draft, rows, batch: int):
    gammas = [g for g, _, _ in rows]
    td = _loop_time(draft, draft.cfg, batch, 1)
    print(f"\nbreak-even sweep (batch {batch}; draft {draft.cfg.num_params():,} params, "
          f"td = {td * 1e3:.3f} ms/token); predicted speed-up E*t1/(γ*td + tv) with the "
          f"measured acceptance rate of each γ:")
    print(f"{'target':<20}{'params':>11}{'t1 ms':>8}{'td/t1':>7}"
          + "".join(f"{'γ=' + str(g):>8}" for g in gammas))
    best_by_size = []
    for name, d, layers, heads, kv, mlp in SWEEP_TARGETS:
        cfg = ModelConfig(vocab_size=draft.cfg.vocab_size, d_model=d, num_layers=layers,
                          num_heads=heads, num_kv_heads=kv, head_dim=16, mlp_dim=mlp,
                          max_seq_len=192)
        model = init_model(cfg, seed=0)
        t1 = _loop_time(model, cfg, batch, 1)
        preds = []
        for g, rate, _ in rows:
            tv = _loop_time(model, cfg, batch, g + 1)
            e = (1 - rate ** (g + 1)) / (1 - rate) if rate < 1 else g + 1
            preds.append(e * t1 / (g * td + tv))
        best_by_size.append((cfg.num_params(), max(preds)))
        print(f"{name:<20}{cfg.num_params():>11,}{t1 * 1e3:>8.3f}{td / t1:>7.2f}"
              + "".join(f"{p:>8.2f}" for p in preds))
    above = [n for n, s in best_by_size if s >= 1.0]
    return best_by_size, (min(above) if above else None)


def main(argv):
    del argv
    task = get_task("arithmetic")
    target = load_model(_TARGET.value, kind="policy")
    draft = load_model(_DRAFT.value, kind="policy")
    print(f"target {_TARGET.value}: {target.cfg.num_params():,} params; draft {_DRAFT.value}: "
          f"{draft.cfg.num_params():,} params; backend {jax.default_backend()}")
    gammas = [int(g) for g in _GAMMAS.value]
    rows = measured(target, draft, task, gammas)
    g_best, rate_best, best = max(rows, key=lambda r: r[2])
    if _SWEEP.value:
        sizes, first = break_even(draft, rows, _BATCH.value)
        print(f"\nsmallest swept target with a predicted speed-up >= 1: "
              f"{first if first else 'none'} params; at the largest "
              f"({sizes[-1][0]:,} params): {sizes[-1][1]:.2f}x")
        print(f"RESULT speculative_breakeven_params={first or 0}")
        print(f"RESULT speculative_predicted_speedup_largest={sizes[-1][1]:.3f}")
    print(f"RESULT speculative_best_gamma={g_best}")
    print(f"RESULT speculative_acceptance_rate={rate_best:.3f}")
    print(f"RESULT speculative_speedup={best:.3f}")


if __name__ == "__main__":
    app.run(main)
