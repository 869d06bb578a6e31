"""``rules="search_and_learn"``: each of huggingface/search-and-learn's rules, as the
jit-compiled kernels apply it, against the plain-Python transcriptions in
``tests/sal_reference.py``: first at the level of the selection functions (pure functions of
scores and flags), then one small end-to-end ``search()`` per method on the shipped models,
showing the switch changes what it should and nothing else (docs/search_and_learn.md)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import sal_reference as ref
from ttc_jax.config import SearchConfig
from ttc_jax.search.select import (
    Pool,
    beam_parents_in_row_order,
    duplicates,
    dvts_parents_halting,
)

# -- config ------------------------------------------------------------------------------


def test_rules_is_validated_and_defaults_to_ttc_jax():
    assert SearchConfig().rules == "ttc_jax"
    assert SearchConfig(method="dvts", n=8, beam_width=4, rules="search_and_learn").rules == (
        "search_and_learn")
    with pytest.raises(ValueError, match=r"search.rules='sal' is unknown; choose one of "
                                         r"\['ttc_jax', 'search_and_learn'\]"):
        SearchConfig(rules="sal")


# -- beam search: survivors ----------------------------------------------------------------

def _random_iteration(rng, n, *, ties: bool):
    scores = rng.integers(0, 4, size=n) / 4 if ties else rng.uniform(size=n)
    completed = rng.uniform(size=n) < 0.3
    texts = rng.integers(0, 3 if ties else 1000, size=n)
    return scores.astype(np.float32), completed, texts


@pytest.mark.parametrize("filter_dups", [False, True])
def test_beam_survivors_are_the_references_in_row_order_repeated_to_n(filter_dups):
    rng = np.random.default_rng(0)
    for trial in range(300):
        n, bw = [(8, 2), (8, 4), (12, 3), (6, 1), (4, 4)][trial % 5]
        scores, completed, texts = _random_iteration(rng, n, ties=trial % 2 == 0)
        rows = [dict(text=int(t), completed=bool(c), score=float(s))
                for t, c, s in zip(texts, completed, scores)]
        want = ref.beam_next_rows(rows, n, bw, filter_duplicates=filter_dups)
        eligible = ~completed
        if filter_dups:  # the text stands in for the row's token fingerprint
            eligible &= ~np.asarray(duplicates(jnp.asarray(texts[None]),
                                               jnp.zeros((1, n), jnp.int32),
                                               jnp.asarray(eligible[None])))[0]
        parents, n_surv = beam_parents_in_row_order(jnp.asarray(scores[None]),
                                                    jnp.asarray(eligible[None]), n // bw)
        assert int(n_surv[0]) == len(set(want)), trial
        if want:
            assert list(np.asarray(parents[0])) == want, (trial, scores, completed)


# -- beam search: the completed pool -------------------------------------------------------

def _fake_state(p, n, t, ids, lengths, scores_per_step):
    """Just the fields Pool.append reads; token 0 of a row names (iteration, row)."""
    tokens = jnp.zeros((p * n, t), jnp.int32).at[:, 0].set(jnp.asarray(ids).reshape(-1))
    return types.SimpleNamespace(
        tokens=tokens, num_tokens=jnp.asarray(lengths, jnp.int32).reshape(-1),
        step_scores=jnp.asarray(scores_per_step, jnp.float32).reshape(p * n, -1),
        num_steps=jnp.ones((p * n,), jnp.int32), ended=jnp.ones((p * n,), bool))


def test_completed_pool_keeps_the_first_n_in_completion_order_padded_by_repeats():
    rng = np.random.default_rng(1)
    p, n, t = 3, 6, 4
    for trial in range(40):
        iters = int(rng.integers(1, 5))
        pool = Pool.empty(p, n, t, t)
        recorded = [[] for _ in range(p)]
        for i in range(iters):
            rate = [0.05, 0.3, 0.9][trial % 3]
            completed = rng.uniform(size=(p, n)) < rate
            if i == iters - 1:
                completed[:] = True  # the last iteration finishes every beam
            score = rng.uniform(size=(p, n)).astype(np.float32)
            ids = (i * 100 + np.arange(n))[None, :].repeat(p, 0)
            s = _fake_state(p, n, t, ids, np.full((p, n), 2), score[..., None].repeat(t, -1))
            pool = pool.append(s, jnp.asarray(completed), jnp.asarray(score))
            for q in range(p):
                recorded[q].append([dict(completed=bool(completed[q, r]),
                                         score=float(score[q, r])) for r in range(n)])
        full = jax.tree.map(np.asarray, pool.repeat_to_full())
        for q in range(p):
            want = ref.beam_completed_pool(recorded[q], n)
            assert full.valid[q].all()
            assert list(full.tokens[q, :, 0]) == [i * 100 + r for i, r in want], trial
            np.testing.assert_array_equal(
                full.score[q], [recorded[q][i][r]["score"] for i, r in want])
            assert ref.beam_choice(list(full.score[q])) == int(np.argmax(full.score[q]))


def test_pool_reference_pads_by_repeating_the_kept_list_and_sorts_only_when_asked():
    its = [[dict(completed=False, score=0.9), dict(completed=True, score=0.2)],
           [dict(completed=True, score=0.7), dict(completed=True, score=0.1)]]
    assert ref.beam_completed_pool(its, 2) == [(0, 1), (1, 0)]
    assert ref.beam_completed_pool(its, 5) == [(0, 1), (1, 0), (1, 1), (0, 1), (1, 0)]
    assert ref.beam_completed_pool(its, 2, sort_completed=True) == [(1, 0), (0, 1)]
    with pytest.raises(ZeroDivisionError):
        ref.beam_completed_pool([[dict(completed=False, score=0.0)]], 1)


# -- DVTS: halting and the returned pool ---------------------------------------------------

def test_dvts_returns_the_m_siblings_of_each_subtrees_last_expansion():
    rng = np.random.default_rng(2)
    g, m = 3, 4
    n = g * m
    for trial in range(100):
        iters = int(rng.integers(1, 6))
        halted = np.zeros(n, bool)
        record = np.zeros((n, 2))  # (iteration, score) of each row's last expansion
        recorded = []
        for i in range(iters):
            active = ~halted
            if not active.any():
                break
            score = rng.integers(0, 5, size=n) / 4  # ties: the first best sibling
            stopped = rng.uniform(size=n) < 0.25
            boxed = rng.uniform(size=n) < 0.15
            if i == iters - 1:
                stopped[:] = True  # the last iteration writes to the end
            parents, halts = dvts_parents_halting(
                jnp.asarray(score[None]), jnp.asarray(active[None]),
                jnp.asarray((stopped | boxed)[None]), m)
            parents, halts = np.asarray(parents[0]), np.asarray(halts[0])
            assert (parents // m == np.arange(n) // m).all()
            record[active] = np.stack([np.full(n, i), score], 1)[active]
            recorded.append({
                sub: [dict(text="boxed{" if boxed[r] else "x", stopped=bool(stopped[r]),
                           score=float(score[r])) for r in range(sub * m, (sub + 1) * m)]
                for sub in range(g) if active[sub * m]})
            halted |= halts
            # a continuing subtree copies its best row; a halted one keeps its siblings
            cont = active & ~halts
            assert (parents[~cont] == np.arange(n)[~cont]).all()
            record[cont] = record[parents[cont]]
        pool, expanded = ref.dvts_pool(recorded, g, m)
        assert [i for i, _, _ in pool] == list(record[:, 0].astype(int)), trial
        np.testing.assert_array_equal(
            [recorded[i][sub][j]["score"] for i, sub, j in pool], record[:, 1])


def test_dvts_stop_text_rule():
    assert ref.dvts_stopped("so $\\boxed{3}$") and ref.dvts_stopped("boxed{")
    assert not ref.dvts_stopped("\\boxed 3") and not ref.dvts_stopped("boxed")


# -- lookahead and the "last" score --------------------------------------------------------

def test_lookahead_text_scored_by_each_method():
    assert ref.lookahead_scored_text("beam", "A\n\n", "B\n\n", "B\n\nC\n\n") == "A\n\nB\n\n"
    assert ref.lookahead_scored_text("dvts", "A\n\n", "B\n\n", "B\n\nC\n\n") == (
        "A\n\nB\n\nC\n\n")
    assert ref.lookahead_rounds([True, True, True], 2) == 3
    assert ref.lookahead_rounds([True, False, True], 2) == 2  # eos / cap ends the rollout
    assert ref.lookahead_rounds([False], 3) == 1


def test_last_score_of_a_trailing_separator_is_the_empty_steps_verdict():
    text = "Step 1\n\nStep 2\n\n"
    assert ref.prm_steps(text) == ["Step 1", "Step 2", ""]
    assert ref.last_score([0.9, 0.8, 0.3], text) == 0.3  # the empty step's verdict
    assert ref.ttc_jax_step_count(text) == 2  # ttc_jax's last: 0.8, at the final step end
    assert ref.last_score([0.9, 0.8], "Step 1\n\nStep 2") == 0.8
    with pytest.raises(ValueError, match="2 scores for 3 PRM steps"):
        ref.last_score([0.9, 0.8], text)
