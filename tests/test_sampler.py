"""The sampler: distributions, determinism, stopping, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ttc_jax.config import ModelConfig
from ttc_jax.decode import Greedy, Temperature, TopK, TopP, get_strategy, sample
from ttc_jax.models import KVCache, init_model

CFG = ModelConfig(vocab_size=12, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, max_seq_len=48)
EOS = 2
PROMPTS = [[1, 5, 6, 7, 8], [1, 9]]


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=0)


def _chi2_pvalue(samples: np.ndarray, probs: np.ndarray) -> float:
    counts = np.bincount(samples, minlength=len(probs))
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token outside the support"
    probs = np.asarray(probs, np.float64)
    expected = probs[support] / probs[support].sum() * len(samples)
    return stats.chisquare(counts[support], expected).pvalue


LOGITS = np.asarray([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _draw(strategy, n=40_000, seed=0):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, len(LOGITS)))
    return np.asarray(strategy.sample(logits, jax.random.key(seed)))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_temperature_samples_follow_softmax_of_logits_over_t(t):
    draws = _draw(Temperature(t))
    assert _chi2_pvalue(draws, _softmax(LOGITS / t)) > 1e-3
    # The same test rejects a wrong temperature: it can fail.
    assert _chi2_pvalue(draws, _softmax(LOGITS / (t * 1.3))) < 1e-6


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = _softmax(LOGITS)  # sorted descending already
    p = 0.8
    k = int(np.searchsorted(np.cumsum(probs), p) + 1)  # smallest prefix with mass >= p
    ref = np.where(np.arange(len(probs)) < k, probs, 0)
    draws = _draw(TopP(p))
    assert _chi2_pvalue(draws, ref) > 1e-3
    wrong = np.where(np.arange(len(probs)) < k + 1, probs, 0)  # one token too many
    assert np.bincount(draws, minlength=len(probs))[k] == 0
    assert _chi2_pvalue(draws, wrong) < 1e-6  # a cut one token too late is rejected
    np.testing.assert_allclose(np.exp(np.asarray(TopP(p).log_probs(jnp.asarray(LOGITS)))),
                               ref / ref.sum(), atol=1e-6)


def test_top_k_renormalises_the_k_most_likely_at_temperature():
    ref = _softmax(LOGITS / 0.7)
    ref[3:] = 0
    draws = _draw(TopK(3, temperature=0.7))
    assert _chi2_pvalue(draws, ref) > 1e-3
    np.testing.assert_allclose(np.exp(np.asarray(TopK(3, 0.7).log_probs(jnp.asarray(LOGITS)))),
                               ref / ref.sum(), atol=1e-6)


def test_sampler_first_tokens_follow_the_models_distribution(model):
    t = 0.7
    out = sample(model, [PROMPTS[0]], n=20_000, rng=jax.random.key(3), max_new_tokens=1,
                 strategy=Temperature(t), stop_tokens=(EOS,), capacity=8)
    cache = KVCache.init(CFG, 1, 8)
    logits, _ = model.extend(jnp.asarray([PROMPTS[0]]), cache)
    probs = _softmax(np.asarray(logits[0, -1]) / t)
    draws = np.asarray(out.tokens[0, :, 0])
    assert _chi2_pvalue(draws, probs) > 1e-3
    assert _chi2_pvalue(draws, _softmax(np.asarray(logits[0, -1]))) < 1e-6


def test_greedy_is_deterministic_and_equals_argmax_of_the_full_forward(model):
    kw = dict(n=2, max_new_tokens=10, strategy=Greedy(), stop_tokens=(EOS,))
    a = sample(model, PROMPTS, rng=jax.random.key(0), **kw)
    b = sample(model, PROMPTS, rng=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens[:, 0], a.tokens[:, 1])
    forward = jax.jit(lambda x: model(x))  # causal: padding after a position is ignored
    for i, p in enumerate(PROMPTS):  # replay with full forwards, one token at a time
        seq = list(p)
        for _ in range(int(a.lengths[i, 0])):
            padded = jnp.asarray([seq + [0] * (16 - len(seq))])
            seq.append(int(jnp.argmax(forward(padded)[0, len(seq) - 1])))
        np.testing.assert_array_equal(seq[len(p):], a.tokens[i, 0, :a.lengths[i, 0]])


def test_same_seed_same_samples_different_seed_different(model):
    kw = dict(n=8, max_new_tokens=12, strategy=Temperature(1.0), stop_tokens=(EOS,))
    a = sample(model, PROMPTS, rng=jax.random.key(7), **kw)
    b = sample(model, PROMPTS, rng=jax.random.key(7), **kw)
    c = sample(model, PROMPTS, rng=jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.tokens[0, 0], a.tokens[0, 1])  # rows are independent


def test_rows_stop_at_stop_tokens_and_are_padded_after(model):
    stops = (3, 4, 5)
    out = sample(model, PROMPTS, n=16, rng=jax.random.key(1), max_new_tokens=20,
                 strategy=Temperature(1.0), stop_tokens=stops)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for b in range(2):
        for i in range(16):
            n = lengths[b, i]
            row = tokens[b, i]
            assert not np.isin(row[:n - 1], stops).any()
            assert bool(out.done[b, i]) == bool(np.isin(row[n - 1], stops))
            if not out.done[b, i]:
                assert n == 20
            assert (row[n:] == 0).all()
            assert (np.asarray(out.logprobs)[b, i, n:] == 0).all()
    assert out.done.any() and lengths.min() < 20


def test_logprobs_are_the_models_log_softmax_of_the_chosen_tokens(model):
    out = sample(model, [PROMPTS[0]], n=2, rng=jax.random.key(5), max_new_tokens=8,
                 strategy=TopP(0.9, 1.3), stop_tokens=(EOS,))
    n = int(out.lengths[0, 1])
    seq = jnp.asarray([PROMPTS[0] + list(np.asarray(out.tokens[0, 1, :n]))])
    lp = jax.nn.log_softmax(model(seq)[0], -1)
    p = len(PROMPTS[0])
    ref = lp[jnp.arange(p - 1, p - 1 + n), seq[0, p:]]
    np.testing.assert_allclose(out.logprobs[0, 1, :n], ref, atol=1e-5)


def test_bad_input_gives_clear_errors(model):
    kw = dict(rng=jax.random.key(0), stop_tokens=(EOS,), strategy=Greedy())
    with pytest.raises(ValueError, match="prompt longer than the cache"):
        sample(model, [[1] * 40], n=1, max_new_tokens=10, **kw)
    with pytest.raises(ValueError, match="n=0"):
        sample(model, PROMPTS, n=0, max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="is empty"):
        sample(model, [[1, 2], []], n=1, max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="unknown sampling strategy 'beam'"):
        get_strategy("beam")
    for p in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"top_p=.* must be in \(0, 1\]"):
            get_strategy("top_p", top_p=p)
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)
    with pytest.raises(ValueError, match="top_k"):
        TopK(0)
