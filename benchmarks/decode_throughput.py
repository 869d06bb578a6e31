"""Decode throughput: the one-jit while_loop sampler vs a Python loop of jitted steps.

Both generate N=16 samples x 128 new tokens from one prompt with the same tiny model and
the same stopping rule (each row stops at a stop token; the loop ends when every row is
done, which the Python loop must check on the host after each step, as a host-driven
sampler does). A stop token the model never emits keeps every row running for the full
128 tokens, so both do identical work. Runs alternate so machine noise hits both.

  RESULT decode_vs_python_loop=<ours / python loop>
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.decode import Temperature, sample
from ttc_jax.decode.sampler import prefill
from ttc_jax.models import init_model

N, NEW, REPEATS = 16, 128, 5
CFG = ModelConfig(vocab_size=21, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=256, max_seq_len=192)
PROMPT = [1, 18, 19, 4, 5, 6, 13, 7, 20]
STOP = (CFG.vocab_size,)  # an id the model never emits: every row runs all NEW tokens


def ours(model, rng):
    out = sample(model, [PROMPT], n=N, rng=rng, max_new_tokens=NEW, strategy=Temperature(1.0),
                 stop_tokens=STOP, capacity=len(PROMPT) + NEW)
    return jax.block_until_ready(out.tokens)


def make_python_loop(model):
    graphdef, params = nnx.split(model)
    strategy = Temperature(1.0)

    @jax.jit
    def start(params):
        m = nnx.merge(graphdef, params)
        toks = jnp.asarray([PROMPT], jnp.int32)
        return prefill(m, toks, jnp.asarray([len(PROMPT)]), n=N, capacity=len(PROMPT) + NEW,
                       max_new_tokens=1)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(params, cache, logits, done, rng, i):
        m = nnx.merge(graphdef, params)
        tok = strategy.sample(logits, jax.random.fold_in(rng, i))
        logits, cache = m.extend(tok[:, None], cache, (~done).astype(jnp.int32))
        done = done | jnp.isin(tok, jnp.asarray(STOP))
        return jnp.where(done, 0, tok), logits[:, 0], cache, done

    def run(rng):
        s = start(params)
        cache, logits, done, toks = s.cache, s.logits, s.done, []
        for i in range(NEW):
            tok, logits, cache, done = step(params, cache, logits, done, rng, i)
            toks.append(tok)
            if bool(done.all()):  # the host decides when to stop: one sync per step
                break
        return jax.block_until_ready(jnp.stack(toks, 1))

    return run


def main():
    model = init_model(CFG, seed=0)
    loop = make_python_loop(model)
    rng = jax.random.key(0)
    ours(model, rng)
    loop(rng)  # compile both
    t_ours, t_loop = [], []
    for r in range(REPEATS):
        for fn, acc in ((ours, t_ours), (lambda m, k: loop(k), t_loop)):
            t0 = time.perf_counter()
            fn(model, jax.random.fold_in(rng, r))
            acc.append(time.perf_counter() - t0)
    tokens = N * NEW
    a, b = statistics.median(t_ours), statistics.median(t_loop)
    print(f"model {CFG.num_params():,} params, N={N} x {NEW} new tokens, median of {REPEATS}")
    print(f"{'one-jit while_loop':>22}: {a * 1e3:8.1f} ms  {tokens / a:10,.0f} tokens/s")
    print(f"{'python loop of steps':>22}: {b * 1e3:8.1f} ms  {tokens / b:10,.0f} tokens/s")
    print(f"RESULT decode_tokens_per_s={tokens / a:.0f}")
    print(f"RESULT decode_vs_python_loop={b / a:.2f}")


if __name__ == "__main__":
    main()
