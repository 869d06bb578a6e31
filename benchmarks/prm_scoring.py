"""PRM scoring cost in a step-level search: incremental (the PRM's own KV cache, each
step's new tokens only, ``ttc_jax.search.score_new``) vs full re-scoring of every prefix
after each step (how search-and-learn scores).

P=4 problems x N=16 rows, 8 steps each: row (p, i) is problem p's prompt followed by a
stand-in candidate, the solution of another 7-op arithmetic problem (7 steps + the answer
line; scoring time depends only on lengths). The PRM is at the shipped size (random init).
Incremental scoring works as search does (``search.state.init_state``): the PRM prefills
each problem's prompt once and copies the cache to its N rows, then reads each step's new
tokens in blocks of 16. Full re-scoring reads every row's prompt + solution so far after
each step, padded to a multiple of 16. Both are one jit call over all 8 iterations,
prefill included. Runs alternate; median of REPEATS. The two must give the same step
scores (checked).

  RESULT incremental_vs_full_rescore=<full time / incremental time>
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.models.cache import KVCache
from ttc_jax.models.prm import init_prm
from ttc_jax.models.transformer import hoist_layers
from ttc_jax.search import SearchTokens, score_new
from ttc_jax.search.state import Compute, SearchState
from ttc_jax.tasks import get_task
from ttc_jax.train.data import round_up

P, N, STEPS, REPEATS, WIDTH = 4, 16, 8, 7, 16
R = P * N  # rows: P problems x N candidates
CFG = ModelConfig(vocab_size=21, d_model=96, num_layers=3, num_heads=6, num_kv_heads=3,
                  head_dim=16, mlp_dim=384, max_seq_len=192)
TASK = get_task("arithmetic")
SPEC = SearchTokens.from_task(TASK)


def make_data():
    tok = TASK.tokenizer
    problems = TASK.sample_problems("test", [STEPS - 1], P + R, seed=0)
    prompts = [tok.encode(TASK.prompt_text(p), add_bos=True)
               for p in problems[:P] for _ in range(N)]  # row p*N + i: problem p
    sols = [tok.encode(TASK.solution_text(p)) for p in problems[P:]]
    pw = round_up(max(map(len, prompts)), 16)
    tw = round_up(max(map(len, sols)), 16)
    prompt_arr = np.zeros((R, pw), np.int32)
    sol_arr = np.zeros((R, tw), np.int32)
    ends = np.zeros((R, STEPS), np.int32)  # exclusive end of step i within the solution
    for r, (p, s) in enumerate(zip(prompts, sols)):
        prompt_arr[r, :len(p)], sol_arr[r, :len(s)] = p, s
        ends[r] = np.flatnonzero(np.asarray(s) == tok.step_delimiter_id) + 1
    plens = np.asarray([len(p) for p in prompts], np.int32)
    return prompt_arr, plens, sol_arr, ends


@functools.partial(jax.jit, static_argnames="graphdef")
def incremental(graphdef, params, prompts, plens, sols, ends):
    prm = nnx.merge(graphdef, params)
    hoist_layers(prm)  # as search does: per-layer params sliced once, outside the loop
    t = sols.shape[1]
    cache = KVCache.init(CFG, P, prompts.shape[1] + t)
    _, cache = prm.extend(prompts[::N], cache, plens[::N])  # once per problem
    cache = cache.repeat(N)
    zi, zb = jnp.zeros((R,), jnp.int32), jnp.zeros((R,), bool)
    s = SearchState(cache=None, logits=None, prm_cache=cache, tokens=sols, num_tokens=zi,
                    line_start=zi, step_scores=jnp.zeros((R, t)), step_pos=jnp.zeros((R, t),
                    jnp.int32), num_steps=zi, open_step=zb, done=zb, ended=zb,
                    compute=Compute.zeros(P), vocab=SPEC.tables())
    for i in range(STEPS):  # one search iteration: the new step's tokens only
        start = s.num_tokens
        s = score_new(prm, s.replace(num_tokens=ends[:, i]), start, spec=SPEC, width=WIDTH)
    return s.step_scores[:, :STEPS]


@functools.partial(jax.jit, static_argnames=("graphdef", "widths"))
def full(graphdef, params, seqs, end_pos, widths):
    prm = nnx.merge(graphdef, params)
    out = []
    for i, w in enumerate(widths):  # re-score every prefix after each step
        probs = jax.nn.sigmoid(prm(seqs[:, :w]))  # [R, w]
        out.append(jnp.take_along_axis(probs, end_pos[:, i:i + 1], axis=1))
    return jnp.concatenate(out, axis=1)


def main():
    prm = init_prm(CFG, seed=0)
    prm.score_w[...] = 0.1 * jax.random.normal(jax.random.key(1), (CFG.d_model,))
    graphdef, params = nnx.split(prm)
    prompts, plens, sols, ends = make_data()
    seqs = np.zeros((R, prompts.shape[1] + sols.shape[1]), np.int32)
    for r in range(R):
        seq = list(prompts[r, :plens[r]]) + list(sols[r, :ends[r, -1]])
        seqs[r, :len(seq)] = seq
    end_pos = plens[:, None] + ends - 1  # [R, STEPS] position of each step's delimiter
    widths = tuple(min(round_up(int(end_pos[:, i].max()) + 1, 16), seqs.shape[1])
                   for i in range(STEPS))
    run_inc = lambda: jax.block_until_ready(incremental(graphdef, params, prompts, plens,  # noqa: E731
                                                        sols, ends))
    run_full = lambda: jax.block_until_ready(full(graphdef, params, seqs, end_pos, widths))  # noqa: E731
    a, b = np.asarray(run_inc()), np.asarray(run_full())
    np.testing.assert_allclose(a, b, atol=1e-4)  # same scores, both ways
    t_inc, t_full = [], []
    for _ in range(REPEATS):
        for fn, acc in ((run_inc, t_inc), (run_full, t_full)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    a, b = statistics.median(t_inc), statistics.median(t_full)
    toks_full = sum(R * w for w in widths)
    toks_inc = P * prompts.shape[1] + R * STEPS * WIDTH
    print(f"PRM {CFG.num_params():,} params, P={P} problems x N={N} rows x {STEPS} steps, "
          f"median of {REPEATS}")
    print(f"{'incremental (KV cache)':>24}: {a * 1e3:8.2f} ms  ({toks_inc} token slots)")
    print(f"{'full re-scoring':>24}: {b * 1e3:8.2f} ms  ({toks_full} token slots)")
    print(f"RESULT incremental_vs_full_rescore={b / a:.2f}")


if __name__ == "__main__":
    main()
