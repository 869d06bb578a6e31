"""Search building blocks against plain-Python references: config errors, aggregation,
on-device answers and voting, beam/DVTS selection, the completed pool, and best-of-N with
a perfect verifier."""

import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.config import SearchConfig, from_dict
from ttc_jax.eval.prm_quality import aggregate_np
from ttc_jax.eval.prm_quality import vote as vote_np
from ttc_jax.search import (
    NO_ANSWER,
    Pool,
    SearchTokens,
    aggregate,
    answer_id_of_text,
    answer_ids,
    beam_parents,
    best_index,
    duplicates,
    dvts_parents,
    row_hash,
    vote,
)
from ttc_jax.search.state import SearchState
from ttc_jax.tasks import get_task
from ttc_jax.tasks.arithmetic import apply_op

TASK = get_task("arithmetic")
TOK = TASK.tokenizer
SPEC = SearchTokens.from_task(TASK)


# -- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(method="beam", n=10, beam_width=4), "n=10 must be divisible by beam_width=4; try "
                                              "n=8 or n=12"),
    (dict(method="dvts", n=2, beam_width=3), "beam_width=3 > n=2"),
    (dict(method="beam", n=3, beam_width=2), "try n=2 or n=4"),
    (dict(method="bogus"), "search.method='bogus' is unknown; choose one of"),
    (dict(aggregation="max"), "search.aggregation='max' is unknown; choose one of"),
    (dict(method="beam", max_steps=0), "search.max_steps=0 must be >= 1"),
    (dict(method="lookahead", lookahead=0), "method='lookahead' needs lookahead >= 1"),
    (dict(method="best_of_n", lookahead=2), "lookahead=2 only applies to beam"),
    (dict(max_step_tokens=32, max_new_tokens=16), "max_new_tokens=16 must be >="),
])
def test_bad_search_config_fails_early_and_says_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        SearchConfig(**kwargs)


def test_search_config_builds_from_a_dict_and_sampling_methods_ignore_divisibility():
    cfg = from_dict(SearchConfig, {"method": "beam", "n": 16, "beam_width": 4})
    assert cfg.n == 16 and cfg.method == "beam"
    SearchConfig(method="best_of_n", n=10, beam_width=4)  # no beams: no constraint


# -- aggregation and voting --------------------------------------------------------------

@pytest.mark.parametrize("how", ["last", "min", "prod", "mean"])
def test_aggregate_matches_the_numpy_reference(how):
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(6, 5)).astype(np.float32)
    counts = np.array([0, 1, 2, 3, 5, 4])
    got = np.asarray(aggregate(jnp.asarray(scores), jnp.asarray(counts), how))
    want = [aggregate_np(scores[i, :counts[i]], how) for i in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_vote_matches_the_python_reference_with_first_seen_tie_breaking():
    rng = np.random.default_rng(1)
    answers = rng.integers(-1, 4, size=(200, 7))  # -1: no answer
    answers[0] = -1
    weights = rng.integers(1, 4, size=(200, 7)).astype(np.float32) / 4  # exact sums, ties
    for w in (None, weights):
        winner, idx = vote(jnp.asarray(answers), None if w is None else jnp.asarray(w))
        winner, idx = np.asarray(winner), np.asarray(idx)
        for p in range(len(answers)):
            strs = [None if a < 0 else str(a) for a in answers[p]]
            ref = vote_np(strs, None if w is None else list(w[p]))
            assert winner[p] == (NO_ANSWER if ref is None else int(ref)), p
            if ref is not None:
                assert idx[p] == strs.index(ref)  # the first candidate with the answer


def test_weighted_vote_is_the_argmax_of_summed_scores_per_answer():
    answers = jnp.asarray([[5, 7, 5, 7, 9]])
    scores = jnp.asarray([[0.3, 0.5, 0.3, 0.05, 0.59]])
    winner, idx = vote(answers, scores)  # 5: 0.6, 7: 0.55, 9: 0.59
    assert int(winner[0]) == 5 and int(idx[0]) == 0
    winner, _ = vote(answers)  # majority: 5 and 7 tie at 2 -> first seen
    assert int(winner[0]) == 5


def test_on_device_answer_ids_match_extract_answer():
    rng = np.random.default_rng(2)
    alphabet = TOK.encode("0123456789A:\n+=") + [TOK.eos_id]
    seqs = [TOK.encode(TASK.solution_text(p)) for p in TASK.sample_problems("test", [1, 3], 3, 0)]
    seqs += [TOK.encode("A:007\n"), TOK.encode("A:\n"), TOK.encode("A:12+3\n"), [],
             TOK.encode("A:5\nA:6"), TOK.encode("A:5") + [TOK.eos_id], TOK.encode("AA:9")]
    digits = TOK.encode("0123456789")
    for _ in range(300):  # junk, an answer marker, mostly digits, junk
        junk = lambda k: list(rng.choice(alphabet, size=int(rng.integers(0, k))))  # noqa: E731
        body = [int(rng.choice(digits)) if rng.uniform() < 0.9 else int(rng.choice(alphabet))
                for _ in range(int(rng.integers(0, 5)))]
        marker = TOK.encode("A:") if rng.uniform() < 0.8 else []
        s = junk(4) + marker + body + junk(4)
        if TOK.eos_id in s:
            s = s[:s.index(TOK.eos_id) + 1]  # eos only ends a row
        seqs.append([int(x) for x in s])
    width = 40
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
    lens = np.array([len(s) for s in seqs])
    got = np.asarray(answer_ids(jnp.asarray(tokens), jnp.asarray(lens), SPEC, SPEC.tables()))
    want = [answer_id_of_text(TASK.extract_answer(TOK.decode_until_eos(s))) for s in seqs]
    np.testing.assert_array_equal(got, want)
    assert (got >= 0).sum() > 20 and (got < 0).sum() > 20


# -- selection rules ---------------------------------------------------------------------

def beam_reference(scores, eligible, keep):
    """Top ``keep`` eligible rows by score (ties: lower row), refilled cyclically."""
    ranked = sorted((r for r in range(len(scores)) if eligible[r]),
                    key=lambda r: (-scores[r], r))[:keep]
    if not ranked:
        return list(range(len(scores)))
    return [ranked[j % len(ranked)] for j in range(len(scores))]


def test_beam_keeps_top_n_over_m_by_score_and_expands_each_m_times():
    rng = np.random.default_rng(3)
    n, m = 12, 3
    scores = rng.integers(0, 6, size=(50, n)).astype(np.float32)  # many ties
    eligible = rng.uniform(size=(50, n)) < 0.7
    eligible[0] = False
    eligible[1] = True
    parents, n_surv = beam_parents(jnp.asarray(scores), jnp.asarray(eligible), n // m)
    parents = np.asarray(parents)
    for p in range(50):
        assert list(parents[p]) == beam_reference(scores[p], eligible[p], n // m), p
        if eligible[p].sum() >= n // m:
            assert int(n_surv[p]) == n // m
            assert sorted(np.bincount(parents[p], minlength=n)[np.unique(parents[p])]) == \
                [m] * (n // m)


def test_dvts_keeps_the_best_of_each_subtree_and_subtrees_never_mix():
    rng = np.random.default_rng(4)
    n, m = 12, 4
    scores = rng.integers(0, 5, size=(30, n)).astype(np.float32)
    active = rng.uniform(size=(30, n)) < 0.8
    parents = np.asarray(dvts_parents(jnp.asarray(scores), jnp.asarray(active), m))
    for p in range(30):
        for g in range(n // m):
            rows = range(g * m, (g + 1) * m)
            live = [r for r in rows if active[p, r]]
            want = ([min(live, key=lambda r: (-scores[p, r], r))] * m if live else list(rows))
            assert list(parents[p, g * m:(g + 1) * m]) == want
    assert (parents // m == np.arange(n) // m).all()


def test_duplicates_marks_later_copies_of_eligible_rows_only():
    tokens = jnp.asarray([[3, 4, 0], [3, 4, 0], [3, 4, 5], [3, 4, 0], [3, 4, 0]])
    lens = jnp.asarray([2, 2, 3, 2, 2])
    h = row_hash(tokens, lens)[None]
    eligible = jnp.asarray([[False, True, True, True, True]])
    assert list(np.asarray(duplicates(h, lens[None], eligible))[0]) == \
        [False, False, False, True, True]


def _state(tokens, scores):
    r, t = tokens.shape
    zi = jnp.zeros((r,), jnp.int32)
    return SearchState(cache=None, logits=None, prm_cache=None, tokens=tokens,
                       num_tokens=zi + 1, line_start=zi, step_scores=scores[:, None] * 1.0,
                       step_pos=zi[:, None], num_steps=zi + 1, open_step=zi > 0,
                       done=zi > 0, ended=zi > 0, compute=None)


def test_pool_keeps_the_best_n_completed_in_score_order_earlier_first_on_ties():
    pool = Pool.empty(1, 4, 1, 1)
    completed = []
    rng = np.random.default_rng(5)
    for it in range(4):
        scores = rng.integers(0, 4, size=4).astype(np.float32)
        done = rng.uniform(size=4) < 0.6
        tokens = jnp.asarray((it * 10 + np.arange(4))[:, None], jnp.int32)
        pool = pool.merge(_state(tokens, jnp.asarray(scores)), jnp.asarray(done[None]),
                          jnp.asarray(scores[None]))
        completed += [(-scores[r], it, r, it * 10 + r) for r in range(4) if done[r]]
    want = sorted(completed)[:4]
    k = len(want)
    assert list(np.asarray(pool.tokens[0, :k, 0])) == [w[3] for w in want]
    assert np.asarray(pool.valid[0]).sum() == k


# -- a perfect verifier --------------------------------------------------------------------

def corrupt(problem, step):
    value, lines = problem.meta["start"], []
    for i, (op, x) in enumerate(problem.meta["ops"]):
        new = apply_op(value, op, x) + (i == step)
        lines.append(f"{value}{op}{x}={new % 1000}")
        value = new % 1000
    return "\n".join(lines) + f"\nA:{value}\n"


def test_best_of_n_with_a_perfect_verifier_equals_oracle_at_n():
    """Scores from the task's step checker: BoN picks a right sample whenever one exists."""
    rng = np.random.default_rng(6)
    problems = TASK.sample_problems("test", [2, 3, 4], 6, seed=1)
    n, t, steps = 6, 64, 8
    tokens = np.zeros((len(problems), n, t), np.int32)
    lens = np.zeros((len(problems), n), np.int32)
    step_scores = np.zeros((len(problems), n, steps), np.float32)
    num_steps = np.zeros((len(problems), n), np.int32)
    texts = []
    for p, prob in enumerate(problems):
        row = []
        for j in range(n):
            right = rng.uniform() < 0.15
            text = TASK.solution_text(prob) if right else corrupt(
                prob, int(rng.integers(0, prob.difficulty)))
            ids = TOK.encode(text)
            tokens[p, j, :len(ids)], lens[p, j] = ids, len(ids)
            labels = TASK.step_labels(prob, text)
            step_scores[p, j, :len(labels)] = labels
            num_steps[p, j] = len(labels)
            row.append(text)
        texts.append(row)
    correct = np.array([[TASK.grade(prob, x) for x in row] for prob, row in zip(problems, texts)])
    assert 0 < correct.any(1).mean() < 1  # some problems have no right sample
    for how in ("last", "min", "prod", "mean"):
        agg = aggregate(jnp.asarray(step_scores), jnp.asarray(num_steps), how)
        chosen = np.asarray(best_index(agg))
        answers = np.asarray(answer_ids(jnp.asarray(tokens.reshape(-1, t)),
                                        jnp.asarray(lens.reshape(-1)), SPEC,
                                        SPEC.tables())).reshape(-1, n)
        picked = answers[np.arange(len(problems)), chosen]
        right = [int(prob.answer) for prob in problems]
        bon = np.mean(picked == right)
        assert bon == correct.any(1).mean(), how
