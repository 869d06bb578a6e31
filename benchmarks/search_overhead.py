"""What step-level search costs beyond sampling, and what one jit buys over a host loop.

1. Beam search (N=16, M=4) vs best-of-N sampling + PRM scoring, compared per policy
   token generated (time / tokens), since the two generate different token counts.
   RESULT beam_vs_bon_same_tokens=<beam s per token / BoN s per token>
2. The one-jit beam search vs a host-driven loop (one jitted call per step -- the same
   step kernel -- then selection and the completed pool in numpy, then a jitted gather
   of the state). Both make identical choices (checked).
   RESULT jit_beam_vs_host_loop=<host loop time / one-jit time>
3. The one-jit beam search vs the loop as search-and-learn runs it: the same host loop,
   but the PRM re-scores every whole prefix after each step (no PRM cache).
   RESULT jit_beam_vs_reference_loop=<reference loop time / one-jit time>

Models: the shipped policy_small and prm when present in ttc_jax/assets, else random
models of their sizes. Runs alternate; median of REPEATS.
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig, SearchConfig
from ttc_jax.models import init_model
from ttc_jax.models.io import load_model
from ttc_jax.models.prm import init_prm
from ttc_jax.models.transformer import hoist_layers
from ttc_jax.search import SearchTokens, aggregate, encode_prompts, search, step
from ttc_jax.search.api import problem_keys
from ttc_jax.search.state import init_state
from ttc_jax.search.step import fold_rows, row_keys
from ttc_jax.search.strategies import make_sampler
from ttc_jax.tasks import get_task

P, REPEATS = 4, 3
TASK = get_task("arithmetic")
SPEC = SearchTokens.from_task(TASK)
BEAM = SearchConfig(method="beam", n=16, beam_width=4, max_steps=8, max_step_tokens=16,
                    max_new_tokens=96, aggregation="last")
BON = SearchConfig(method="best_of_n", n=16, max_step_tokens=16, max_new_tokens=96)


def models():
    try:
        return load_model("policy_small"), load_model("prm"), "shipped"
    except FileNotFoundError:
        pol = ModelConfig(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                          mlp_dim=256, max_seq_len=192)
        prm_cfg = ModelConfig(d_model=96, num_layers=3, num_heads=6, num_kv_heads=3,
                              head_dim=16, mlp_dim=384, max_seq_len=192)
        prm = init_prm(prm_cfg, seed=1)
        prm.score_w[...] = 0.1 * jax.random.normal(jax.random.key(2), (96,))
        return init_model(pol, seed=0), prm, "random-init"


def host_driven_beam(start, advance, p: int, cfg: SearchConfig):
    """The host side of a beam search driven from Python (how search-and-learn runs it):
    ``advance`` runs one jitted iteration and returns each row's aggregated score, then
    numpy keeps the completed pool, ranks the live rows, and a jitted gather reorders them.

    start() -> (state, keys); advance(state, keys, active [R] bool, i, last) -> (state,
    scores [R]). Returns run() -> the chosen tokens per problem.
    """
    n, m = cfg.n, cfg.beam_width
    gather = jax.jit(lambda s, rows: s.gather(rows), donate_argnums=0)

    def run():
        s, keys = start()
        live = np.ones(p, bool)
        pool = [[] for _ in range(p)]  # (-score, order, tokens)
        for i in range(cfg.max_steps):
            last = i == cfg.max_steps - 1
            active = ~np.asarray(s.done) & np.repeat(live, n)
            s, agg = advance(s, keys, active, i, last)
            done, agg = np.asarray(s.done), np.asarray(agg)
            toks, lens_ = np.asarray(s.tokens), np.asarray(s.num_tokens)
            completed = active & (done | last)
            eligible = (active & ~completed).reshape(p, n)
            rows = np.zeros((p, n), np.int64)
            for q in range(p):
                for r in np.flatnonzero(completed.reshape(p, n)[q]):
                    pool[q].append((-agg[q * n + r], len(pool[q]),
                                    tuple(toks[q * n + r, :lens_[q * n + r]])))
                ranked = sorted(np.flatnonzero(eligible[q]),
                                key=lambda r: (-agg[q * n + r], r))[:n // m]  # noqa: B023
                live[q] = bool(ranked)
                rows[q] = [q * n + (ranked[j % len(ranked)] if ranked else j) for j in range(n)]
            if not live.any():
                break
            s = gather(s, jnp.asarray(rows.reshape(-1), jnp.int32))
        return [sorted(pl)[0][2] for pl in pool]

    return run


def host_loop_beam(policy, prm, prompts, lens, cfg: SearchConfig):
    """Host-driven beam search with the one-jit search's own step kernel (incremental PRM
    scoring): only the loop and the selection move to the host."""
    pdef, pparams = nnx.split(policy)
    rdef, rparams = nnx.split(prm)
    n, t, c = cfg.n, cfg.max_new_tokens, cfg.max_step_tokens
    sampler = make_sampler(cfg)
    capacity = prompts.shape[1] + t

    @jax.jit
    def start(pparams, rparams, prompts, lens, keys):
        s = init_state(nnx.merge(pdef, pparams), nnx.merge(rdef, rparams), prompts, lens,
                       n=n, capacity=capacity, max_new_tokens=t, vocab=SPEC.tables())
        return s, row_keys(keys, n)

    @functools.partial(jax.jit, donate_argnums=2)
    def one_step(pparams, rparams, s, keys, active, i, last):
        pol, rm = hoist_layers(nnx.merge(pdef, pparams), nnx.merge(rdef, rparams))
        s = step(pol, rm, s, fold_rows(keys, i), active, strategy=sampler, spec=SPEC,
                 cap=jnp.where(last, t, c), stop_at_delimiter=~last, width=c)
        return s, aggregate(s.step_scores, s.num_steps, cfg.aggregation)

    p = prompts.shape[0]
    return host_driven_beam(
        lambda: start(pparams, rparams, prompts, lens, problem_keys(cfg.seed, np.arange(p))),
        lambda s, keys, active, i, last: one_step(pparams, rparams, s, keys,
                                                  jnp.asarray(active), i, last),
        p, cfg)


def reference_loop_beam(policy, prm, prompts, lens, cfg: SearchConfig):
    """Beam search as search-and-learn runs it: a jitted policy step per iteration, then
    the PRM re-scores every row's whole prefix (prompt + solution so far, one jitted call
    padded to a multiple of 16 tokens), then numpy selection."""
    pdef, pparams = nnx.split(policy)
    rdef, rparams = nnx.split(prm)
    n, t, c = cfg.n, cfg.max_new_tokens, cfg.max_step_tokens
    sampler = make_sampler(cfg)
    capacity = prompts.shape[1] + t
    prompts_np, plen = np.asarray(prompts), np.repeat(np.asarray(lens), n)

    @jax.jit
    def start(pparams, prompts, lens, keys):
        s = init_state(nnx.merge(pdef, pparams), None, prompts, lens, n=n, capacity=capacity,
                       max_new_tokens=t, vocab=SPEC.tables())
        return s, row_keys(keys, n)

    @functools.partial(jax.jit, donate_argnums=1)
    def one_step(pparams, s, keys, active, i, last):
        return step(nnx.merge(pdef, pparams).hoist_layers(), None, s, fold_rows(keys, i),
                    active, strategy=sampler, spec=SPEC, cap=jnp.where(last, t, c),
                    stop_at_delimiter=~last, width=c)

    @jax.jit
    def rescore(rparams, seqs):
        return jax.nn.sigmoid(nnx.merge(rdef, rparams)(seqs))

    def advance(s, keys, active, i, last):
        s = one_step(pparams, s, keys, jnp.asarray(active), i, last)
        # The PRM re-reads every prefix; the last step's score sits at the last non-eos
        # token (a delimiter, or the end of a line cut short).
        toks, lens_ = np.asarray(s.tokens), np.asarray(s.num_tokens)
        real = lens_ - (toks[np.arange(len(toks)), np.maximum(lens_ - 1, 0)] == SPEC.eos_id)
        width = int(-(-int((plen + lens_).max()) // 16) * 16)
        seqs = np.zeros((len(toks), width), np.int32)
        for r in range(len(toks)):
            seqs[r, :plen[r]] = prompts_np[r // n, :plen[r]]
            seqs[r, plen[r]:plen[r] + lens_[r]] = toks[r, :lens_[r]]
        probs = np.asarray(rescore(rparams, jnp.asarray(seqs)))
        return s, probs[np.arange(len(toks)), plen + np.maximum(real, 1) - 1]

    p = prompts.shape[0]
    return host_driven_beam(
        lambda: start(pparams, prompts, lens, problem_keys(cfg.seed, np.arange(p))),
        advance, p, cfg)


def main():
    policy, prm, kind = models()
    problems = TASK.sample_problems("test", [4, 6], P // 2, seed=0)
    prompts, lens = encode_prompts(TASK, problems, 32)
    prompts, lens = jnp.asarray(prompts), jnp.asarray(lens)

    def run_cfg(cfg):
        return lambda: jax.block_until_ready(search(policy, prm, prompts, lens, cfg, SPEC))

    beam, bon = run_cfg(BEAM), run_cfg(BON)
    host = host_loop_beam(policy, prm, prompts, lens, BEAM)
    ref = reference_loop_beam(policy, prm, prompts, lens, BEAM)
    rb, rn = beam(), bon()
    chosen_host, chosen_ref = host(), ref()
    rb = jax.tree.map(np.asarray, rb)
    chosen_jit = [tuple(rb.tokens[q, rb.chosen[q], :rb.lengths[q, rb.chosen[q]]])
                  for q in range(P)]
    assert chosen_host == chosen_jit, "host loop and one-jit beam search disagree"
    same_ref = np.mean([a == b for a, b in zip(chosen_ref, chosen_jit)])
    beam_tok = float(rb.compute.policy_tokens.sum())
    bon_tok = float(np.asarray(rn.compute.policy_tokens).sum())
    times = {"beam": [], "bon": [], "host": [], "ref": []}
    for _ in range(REPEATS):
        for name, fn in (("beam", beam), ("bon", bon), ("host", host), ("ref", ref)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tb, tn, th, tr = (statistics.median(times[k]) for k in ("beam", "bon", "host", "ref"))
    print(f"{kind} models; P={P} problems, N=16, M=4, median of {REPEATS}")
    print(f"{'one-jit beam search':>22}: {tb * 1e3:8.1f} ms  {beam_tok:8.0f} policy tokens  "
          f"{tb / beam_tok * 1e6:7.1f} us/token")
    print(f"{'best-of-N + PRM':>22}: {tn * 1e3:8.1f} ms  {bon_tok:8.0f} policy tokens  "
          f"{tn / bon_tok * 1e6:7.1f} us/token")
    print(f"{'host-loop beam search':>22}: {th * 1e3:8.1f} ms  (same step kernel, incremental PRM)")
    print(f"{'reference-style loop':>22}: {tr * 1e3:8.1f} ms  (full PRM re-scoring per "
          f"iteration; same choice on {same_ref:.0%} of problems)")
    print(f"RESULT beam_vs_bon_same_tokens={(tb / beam_tok) / (tn / bon_tok):.2f}")
    print(f"RESULT jit_beam_vs_host_loop={th / tb:.2f}")
    print(f"RESULT jit_beam_vs_reference_loop={tr / tb:.2f}")


if __name__ == "__main__":
    main()
