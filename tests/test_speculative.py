"""Speculative decoding: exactly the target's outputs (greedy) and distribution (sampling),
consistent caches after rejections, and the search step generator's contract."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from ttc_jax.config import ModelConfig
from ttc_jax.decode import Greedy, Temperature, TopK, sample
from ttc_jax.decode import speculative as spec_mod
from ttc_jax.decode.speculative import (
    SpecState,
    accept_and_correct,
    spec_decode,
    spec_prefill,
    speculative_generate_step,
    speculative_sample,
)
from ttc_jax.models import KVCache, init_model

# A 5-token vocabulary: the exact joint distribution of 4 tokens has 625 cells.
TINY_T = ModelConfig(vocab_size=5, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                     head_dim=8, mlp_dim=32, max_seq_len=16)
TINY_D = ModelConfig(vocab_size=5, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                     head_dim=8, mlp_dim=16, max_seq_len=16)
PROMPT = [0, 3, 1]
STEPS = 4  # generated tokens whose joint law is tested
STRATEGY = Temperature(0.4)  # sharp, so target and draft laws differ clearly


@pytest.fixture(scope="module")
def tiny():
    return init_model(TINY_T, seed=0), init_model(TINY_D, seed=7)


def _exact_joint(model, strategy, prompt, steps):
    """P(x_1..x_steps | prompt) under ``strategy`` applied to the model: [V]*steps."""
    v = model.cfg.vocab_size
    seqs = np.asarray([prompt + list(c) for c in itertools.product(range(v), repeat=steps)])
    logp = np.asarray(strategy.log_probs(model(jnp.asarray(seqs))), np.float64)
    p0 = len(prompt)
    total = np.zeros(len(seqs))
    for t in range(steps):
        total += logp[np.arange(len(seqs)), p0 - 1 + t, seqs[:, p0 + t]]
    return np.exp(total).reshape((v,) * steps)


def _joint_counts(tokens, v, steps):
    idx = np.ravel_multi_index(tokens[:, :steps].T, (v,) * steps)
    return np.bincount(idx, minlength=v**steps)


def _chi2_pvalue(counts, probs):
    """Chi-square goodness of fit; cells with expected count < 5 are pooled."""
    n = counts.sum()
    expected = probs.ravel() / probs.sum() * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def _spec_tokens(target, draft, strategy, n, gamma, seed=0, capacity=None):
    out = speculative_sample(target, draft, [PROMPT], n=n, rng=jax.random.key(seed),
                             max_new_tokens=STEPS, strategy=strategy, stop_tokens=(),
                             gamma=gamma, capacity=capacity)
    return np.asarray(out.tokens[0]), out


def test_accept_and_correct_matches_the_rule_on_hand_made_distributions():
    # p, q over 3 tokens; drafts [0, 1]; the first draft is accepted with prob
    # min(1, p0(0)/q0(0)) = 0.5 / 0.8.
    p = np.log(np.asarray([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]]))
    q = np.log(np.asarray([[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]]))
    r = 40_000
    keys = jax.random.split(jax.random.key(0), r)
    n, nxt = jax.jit(jax.vmap(
        lambda k: accept_and_correct(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32),
                                     jnp.asarray([[0, 1]]), k[None])))(keys)
    n, nxt = np.asarray(n)[:, 0], np.asarray(nxt)[:, 0]
    a0, a1 = 0.5 / 0.8, 0.1 / 0.8
    want_n = np.asarray([1 - a0, a0 * (1 - a1), a0 * a1])
    got_n = np.bincount(n, minlength=3)
    assert stats.chisquare(got_n, want_n * r).pvalue > 1e-3
    # after rejecting draft 0 the token comes from norm(max(0, p0 - q0)) = [0, .2, .1]/.3
    assert _chi2_pvalue(np.bincount(nxt[n == 0], minlength=3)[1:],
                        np.asarray([2.0, 1.0])) > 1e-3
    assert np.all(nxt[n == 0] != 0)
    # after accepting both, the bonus token comes from p_2
    assert _chi2_pvalue(np.bincount(nxt[n == 2], minlength=3), np.exp(p[0, 2])) > 1e-3


@pytest.mark.parametrize("strategy,gamma", [(STRATEGY, 2), (TopK(3, 0.7), 3)])
def test_sampled_joint_distribution_is_the_targets(tiny, strategy, gamma):
    target, draft = tiny
    tokens, out = _spec_tokens(target, draft, strategy, n=20_000, gamma=gamma)
    want = _exact_joint(target, strategy, PROMPT, STEPS)
    counts = _joint_counts(tokens, 5, STEPS)
    assert _chi2_pvalue(counts, want) > 1e-3
    # the draft really is different: its law is rejected by the same test
    assert _chi2_pvalue(counts, _exact_joint(draft, strategy, PROMPT, STEPS)) < 1e-6
    rate = float(out.accepted.sum() / out.proposed.sum())
    assert 0.05 < rate < 0.95, rate  # rejections and acceptances both happened


def test_the_distribution_test_fails_for_an_always_accept_rule(tiny, monkeypatch):
    target, draft = tiny

    def always_accept(p_logp, q_logp, drafts, keys):
        n = jnp.full((drafts.shape[0],), drafts.shape[1], jnp.int32)
        nxt = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(keys, p_logp[:, -1])
        return n, nxt.astype(jnp.int32)

    monkeypatch.setattr(spec_mod, "accept_and_correct", always_accept)
    # a capacity no other test uses: a fresh trace that picks up the patched rule
    tokens, _ = _spec_tokens(target, draft, STRATEGY, n=20_000, gamma=2, capacity=11)
    monkeypatch.undo()
    want = _exact_joint(target, STRATEGY, PROMPT, STEPS)
    assert _chi2_pvalue(_joint_counts(tokens, 5, STEPS), want) < 1e-6


CFG_T = ModelConfig(vocab_size=12, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=64)
CFG_D = ModelConfig(vocab_size=12, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=8, mlp_dim=32, max_seq_len=64)
PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 4, 4]]
EOS = 2


@pytest.fixture(scope="module")
def small():
    return init_model(CFG_T, seed=1), init_model(CFG_D, seed=2)


@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_output_is_the_targets_greedy_output(small, gamma):
    target, draft = small
    kw = dict(n=2, rng=jax.random.key(3), max_new_tokens=24, strategy=Greedy(),
              stop_tokens=(EOS,), capacity=40)
    ref = sample(target, PROMPTS, **kw)
    out = speculative_sample(target, draft, PROMPTS, gamma=gamma, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(out.done, ref.done)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
    assert int(out.accepted.sum()) < int(out.proposed.sum())  # a random draft gets rejected
    assert np.all(out.iterations <= out.lengths)  # >= 1 token per target call


def test_caches_hold_exactly_the_committed_tokens_after_rejections(small):
    target, draft = small
    tokens, lens = np.zeros((3, 8), np.int32), np.asarray([len(p) for p in PROMPTS])
    for i, p in enumerate(PROMPTS):
        tokens[i, :len(p)] = p

    @jax.jit
    def run(t_params, d_params):
        t, d = nnx.merge(nnx.graphdef(target), t_params), nnx.merge(nnx.graphdef(draft), d_params)
        s = spec_prefill(t, d, jnp.asarray(tokens), jnp.asarray(lens), n=4, capacity=48,
                         max_new_tokens=30)
        return spec_decode(t, d, s, jax.random.key(5), gamma=4, strategy=Temperature(1.0),
                           stop_tokens=(EOS,))

    s: SpecState = run(nnx.state(target), nnx.state(draft))
    assert int(s.accepted.sum()) < int(s.proposed.sum())  # there were rejections
    assert int(s.accepted.sum()) > 0
    # one compiled fresh prefill per model: sequences padded to 40, n tokens counted
    fresh_kv = {id(m): jax.jit(lambda toks, n, m=m: m.extend(
        toks, KVCache.init(m.cfg, 1, 48), n)[1]) for m in (target, draft)}
    for row in range(s.rows):
        prompt = PROMPTS[row // 4]
        seq = prompt + list(np.asarray(s.tokens[row, :s.num_tokens[row]]))
        assert int(s.pending[row]) == seq[-1]
        for model, cache, lag in ((target, s.target_cache, False),
                                  (draft, s.draft_cache, bool(s.draft_lag[row]))):
            held = len(seq) - 1 - int(lag)
            assert int(cache.lengths[row]) == held
            if lag:
                assert int(s.draft_prev[row]) == seq[-2]
            padded = np.zeros((1, 40), np.int32)
            padded[0, :held] = seq[:held]
            fresh = fresh_kv[id(model)](jnp.asarray(padded), jnp.asarray([held]))
            np.testing.assert_allclose(cache.k[:, row, :, :held], fresh.k[:, 0, :, :held],
                                       atol=1e-5)
            np.testing.assert_allclose(cache.v[:, row, :, :held], fresh.v[:, 0, :, :held],
                                       atol=1e-5)


def test_bad_input_raises_clear_errors(small):
    target, draft = small
    kw = dict(n=1, rng=jax.random.key(0), max_new_tokens=8, strategy=Greedy(),
              stop_tokens=(EOS,))
    with pytest.raises(ValueError, match="gamma"):
        speculative_sample(target, draft, PROMPTS, gamma=0, **kw)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_sample(target, init_model(TINY_D), PROMPTS, **kw)
    with pytest.raises(ValueError, match="longer than the cache"):
        speculative_sample(target, draft, PROMPTS, capacity=10, **kw)


@pytest.mark.slow
def test_search_step_generator_matches_the_search_kernel_when_greedy():
    from ttc_jax.search.state import init_state
    from ttc_jax.search.step import generate
    from ttc_jax.search.tokens import SearchTokens
    from ttc_jax.tasks import get_task

    task = get_task("arithmetic")
    spec = SearchTokens.from_task(task)
    cfg_t = ModelConfig(vocab_size=21, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_seq_len=96)
    cfg_d = ModelConfig(vocab_size=21, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32, max_seq_len=96)
    target, draft = init_model(cfg_t, seed=3), init_model(cfg_d, seed=4)
    # an answer line ending in a delimiter must end a row: bias the target toward "A:"
    prompts = [[spec.bos_id] + task.tokenizer.encode("Q:1+2\n"),
               [spec.bos_id] + task.tokenizer.encode("Q:3*4-5\nA:7")]
    width, n, t_max = 16, 2, 40
    toks = np.full((2, width), spec.pad_id, np.int32)
    for i, p in enumerate(prompts):
        toks[i, :len(p)] = p
    lens = jnp.asarray([len(p) for p in prompts])
    toks = jnp.asarray(toks)

    @functools.partial(jax.jit, static_argnums=(0, 1, 2))
    def run(stop_at_delimiter, cap, gamma):
        s = init_state(target, None, toks, lens, n=n, capacity=width + t_max,
                       max_new_tokens=t_max, vocab=spec.tables())
        ref, start_ref = generate(target, s, None, jnp.ones((4,), bool), strategy=None,
                                  spec=spec, cap=cap, stop_at_delimiter=stop_at_delimiter)
        d_cache = KVCache.init(cfg_d, 2, width + t_max)
        _, d_cache = draft.extend(toks, d_cache, lens)
        last = jnp.repeat(toks[jnp.arange(2), lens - 1], n)
        got, d_cache, start = speculative_generate_step(
            target, draft, s, d_cache.repeat(n), last, None, jnp.ones((4,), bool),
            strategy=None, spec=spec, cap=cap, stop_at_delimiter=stop_at_delimiter,
            gamma=gamma)
        return ref, got, d_cache, start_ref, start

    for stop_at_delimiter, cap, gamma in ((True, 16, 3), (False, t_max, 4)):
        ref, got, d_cache, s0, s1 = run(stop_at_delimiter, cap, gamma)
        np.testing.assert_array_equal(s0, s1)
        for f in ("tokens", "num_tokens", "line_start", "done", "ended"):
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
        np.testing.assert_array_equal(got.cache.lengths, ref.cache.lengths)
        np.testing.assert_array_equal(d_cache.lengths, ref.cache.lengths)
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4)
        np.testing.assert_array_equal(got.compute.policy_tokens, ref.compute.policy_tokens)
        assert np.all(np.asarray(got.compute.policy_flops) > 0)
