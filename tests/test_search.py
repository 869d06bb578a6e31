"""The search kernels on tiny random models: incremental PRM scores equal full re-scoring,
every selection the kernels made equals a plain-Python reference run on the recorded
scores, DVTS subtrees never mix and end finished, lookahead scores use the rollout,
batched problems equal one problem at a time, and compute is counted exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_search_select import beam_reference
from ttc_jax.config import ModelConfig, SearchConfig
from ttc_jax.eval.prm_quality import vote as vote_np
from ttc_jax.models import init_model
from ttc_jax.models.prm import init_prm
from ttc_jax.search import SearchTokens, aggregate, encode_prompts, row_hash, search
from ttc_jax.search.state import flops_line
from ttc_jax.tasks import get_task
from ttc_jax.train.data import step_end_positions

TASK = get_task("arithmetic")
TOK = TASK.tokenizer
SPEC = SearchTokens.from_task(TASK)
CFG = ModelConfig(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                  mlp_dim=64, max_seq_len=96)
N, M, T = 8, 2, 24
BASE = dict(n=N, beam_width=M, max_steps=3, max_step_tokens=6, max_new_tokens=T)
RUNS = {
    "best_of_n": dict(method="best_of_n", aggregation="prod"),
    "weighted_best_of_n": dict(method="weighted_best_of_n", aggregation="prod"),
    "beam": dict(method="beam", aggregation="mean"),
    "dvts": dict(method="dvts", aggregation="min"),
    "lookahead": dict(method="lookahead", lookahead=1, aggregation="last"),
}


@pytest.fixture(scope="module")
def models():
    policy = init_model(CFG, seed=0)
    prm = init_prm(CFG, seed=1)
    prm.score_w[...] = 0.2 * jax.random.normal(jax.random.key(2), (CFG.d_model,))
    return policy, prm


@pytest.fixture(scope="module")
def prompts():
    problems = TASK.sample_problems("test", [2, 3], 1, seed=0)
    return encode_prompts(TASK, problems)


@pytest.fixture(scope="module")
def results(models, prompts):
    cache = {}

    def get(name, **over):
        key = (name, tuple(sorted(over.items())))
        if key not in cache:
            cfg = SearchConfig(**{**BASE, **RUNS.get(name, {}), **over})
            prm = None if cfg.method == "majority" else models[1]
            cache[key] = jax.tree.map(np.asarray, search(models[0], prm, *prompts, cfg, SPEC))
        return cache[key]

    return get


_forward = nnx.jit(lambda model, x: model(x))  # one compile per model


def full_scores(prm, prompt, plen, tokens):
    """Step probabilities by one full pass over prompt + solution (no cache)."""
    ids = list(prompt[:plen]) + list(tokens)
    ends = step_end_positions(ids, plen, TOK.step_delimiter_id, TOK.eos_id)
    probs = jax.nn.sigmoid(_forward(prm, jnp.asarray([ids + [0] * (48 - len(ids))])))[0]
    return np.asarray(probs)[ends]


@pytest.mark.parametrize("name", ["best_of_n", "beam", "dvts", "lookahead"])
def test_incremental_prm_scores_equal_full_rescoring(name, models, prompts, results):
    res = results(name)
    checked = 0
    for p in range(res.tokens.shape[0]):
        for c in range(res.tokens.shape[1]):
            if not res.valid[p, c]:
                continue
            want = full_scores(models[1], prompts[0][p], prompts[1][p],
                               res.tokens[p, c, :res.lengths[p, c]])
            assert res.num_steps[p, c] == len(want)
            np.testing.assert_allclose(res.step_scores[p, c, :len(want)], want, atol=1e-5)
            checked += len(want)
    assert checked > 10


def test_beam_selection_and_completed_pool_match_the_python_reference(results):
    res = results("beam")
    tr = res.trace
    iters = int(tr.iterations)
    assert iters >= 2
    keep = N // M
    for p in range(res.tokens.shape[0]):
        completed = []
        for i in range(iters):
            act, comp = tr.active[i, p], tr.completed[i, p]
            elig = act & ~comp
            sel = tr.select_score[i, p]
            np.testing.assert_array_equal(sel[elig], tr.score[i, p][elig])  # no lookahead
            assert np.all(np.isneginf(sel[~elig]))
            assert list(tr.parents[i, p]) == beam_reference(sel, elig, keep), (p, i)
            if i + 1 < iters:  # every row of the next iteration is a live child
                assert tr.active[i + 1, p].all() == (elig.sum() > 0)
            completed += [(-tr.score[i, p, r], i, r, tr.hashes[i, p, r])
                          for r in range(N) if comp[r]]
        want = sorted(completed)[:N]
        k = len(want)
        assert res.valid[p].sum() == k
        np.testing.assert_allclose(res.scores[p, :k], [-w[0] for w in want], rtol=1e-6)
        hashes = np.asarray(row_hash(jnp.asarray(res.tokens[p]), jnp.asarray(res.lengths[p])))
        assert list(hashes[:k]) == [w[3] for w in want]
        assert res.chosen[p] == 0  # the pool is sorted: the best completed beam


def test_dvts_keeps_the_best_of_m_per_subtree_and_returns_only_finished_candidates(results):
    res = results("dvts")
    tr = res.trace
    for i in range(int(tr.iterations)):
        for p in range(res.tokens.shape[0]):
            for g in range(N // M):
                rows = list(range(g * M, (g + 1) * M))
                live = [r for r in rows if tr.active[i, p, r]]
                sel = tr.select_score[i, p]
                want = [min(live, key=lambda r: (-sel[r], r))] * M if live else rows
                assert list(tr.parents[i, p, g * M:(g + 1) * M]) == want
    assert (tr.parents // M == np.arange(N) // M).all()  # subtrees never mix
    assert res.tokens.shape[1] == N // M
    assert (res.ended | (res.lengths == T)).all()  # every candidate is finished
    np.testing.assert_allclose(res.scores, np.asarray(aggregate(
        jnp.asarray(res.step_scores), jnp.asarray(res.num_steps), "min")), rtol=1e-6)


def test_lookahead_ranks_steps_by_the_scores_after_the_greedy_rollout(results):
    res, plain = results("lookahead"), results("lookahead", lookahead=0, method="beam")
    tr = res.trace
    differs = 0
    for i in range(int(tr.iterations)):
        for p in range(res.tokens.shape[0]):
            elig = tr.active[i, p] & ~tr.completed[i, p]
            sel = tr.select_score[i, p]
            differs += int(np.sum(sel[elig] != tr.score[i, p][elig]))
            assert list(tr.parents[i, p]) == beam_reference(sel, elig, N // M)
    assert differs > 0  # the ranking score is not the plain step score
    assert res.compute.policy_tokens.sum() > plain.compute.policy_tokens.sum()


def greedy_step_reference(policy, ids: list[int], cap: int) -> list[int]:
    """One reasoning step by plain greedy decoding with full forward passes (no cache):
    argmax over the non-banned ids until the delimiter, eos or ``cap`` tokens."""
    out = []
    banned = list(SPEC.banned())
    while len(out) < cap:
        seq = ids + out
        logits = np.array(_forward(policy, jnp.asarray([seq + [0] * (48 - len(seq))])))
        logits = logits[0, len(seq) - 1]
        logits[banned] = -np.inf
        out.append(int(np.argmax(logits)))
        if out[-1] in SPEC.delimiter_ids + SPEC.eos_ids:
            break
    return out


def test_lookahead_score_equals_an_independent_greedy_rollout(models, prompts, results):
    """The ranking score of a lookahead=1 candidate is the PRM's score ("last") after one
    more greedy step, recomputed here with uncached forward passes and full re-scoring."""
    policy, prm = models
    res = results("lookahead")
    tr = res.trace
    checked = 0
    for p in range(res.tokens.shape[0]):
        prompt = list(prompts[0][p][:prompts[1][p]])
        for c in np.flatnonzero(res.valid[p]):
            sol = list(res.tokens[p, c, :res.lengths[p, c]])
            ends, pos = [], 0  # where the kernel's steps ended: delimiter, eos or the cap
            while pos < len(sol):
                span = sol[pos:pos + BASE["max_step_tokens"]]
                stop = [j for j, t in enumerate(span) if t in SPEC.delimiter_ids + SPEC.eos_ids]
                pos += stop[0] + 1 if stop else len(span)
                ends.append(pos)
            for i in range(int(tr.iterations) - 1):  # the last iteration does no lookahead
                if i >= len(ends) - 1 or SPEC.eos_id in sol[:ends[i]]:
                    break
                prefix = sol[:ends[i]]  # the i+1 steps written up to iteration i
                padded = prefix + [0] * (res.tokens.shape[2] - len(prefix))  # buffer width
                h = int(row_hash(jnp.asarray([padded]), jnp.asarray([len(prefix)]))[0])
                rows = np.flatnonzero((tr.hashes[i, p] == h) & np.isfinite(
                    tr.select_score[i, p]))
                if not len(rows):  # completed there (an answer line), not ranked
                    continue
                rollout = greedy_step_reference(policy, prompt + prefix,
                                                BASE["max_step_tokens"])
                want = full_scores(prm, prompts[0][p], prompts[1][p], prefix + rollout)[-1]
                np.testing.assert_allclose(tr.select_score[i, p, rows], want, atol=1e-5)
                checked += 1
    assert checked >= 4


def test_filter_duplicates_keeps_one_copy_of_identical_beams(results):
    res = results("beam", temperature=1e-4, filter_duplicates=True)
    tr = res.trace
    first = tr.active[0] & ~tr.completed[0]  # near-greedy: every row wrote the same step
    assert len(set(tr.hashes[0][first].tolist())) == 1
    eligible = np.isfinite(tr.select_score[0])
    assert (eligible.sum(axis=1) == (first.sum(axis=1) > 0)).all()
    assert (tr.parents[0][first.any(axis=1)] == np.argmax(first, axis=1)[:, None]).all()


def test_sampling_methods_choose_by_their_rule(results):
    bon, wbon = results("best_of_n"), results("weighted_best_of_n")
    np.testing.assert_array_equal(bon.tokens, wbon.tokens)  # same samples, other rule
    np.testing.assert_array_equal(bon.chosen, np.argmax(bon.scores, axis=1))
    for p in range(bon.tokens.shape[0]):
        answers = [None if a < 0 else str(a) for a in wbon.answers[p]]
        ref = vote_np(answers, list(wbon.scores[p]))
        if ref is None:
            assert wbon.answer[p] == -1
        else:
            assert wbon.answer[p] == int(ref) and wbon.chosen[p] == answers.index(ref)


def test_majority_runs_without_a_prm_and_counts_no_prm_compute(results):
    res = results("majority", method="majority")
    assert res.compute.prm_tokens.sum() == 0 and res.compute.prm_flops.sum() == 0
    assert res.compute.policy_tokens.sum() == res.lengths.sum()


def test_compute_is_counted_token_by_token(results, prompts):
    res = results("best_of_n")
    plens = prompts[1]
    for p in range(res.tokens.shape[0]):
        assert res.compute.policy_tokens[p] == res.lengths[p].sum()
        assert res.compute.prm_tokens[p] == res.lengths[p].sum()
        pre = sum(CFG.flops_per_token(c) for c in range(1, plens[p] + 1))
        gen = sum(CFG.flops_per_token(plens[p] + j + 1)
                  for n_tok in res.lengths[p] for j in range(n_tok))
        np.testing.assert_allclose(res.compute.policy_flops[p], pre + gen, rtol=1e-5)
        base, slope = flops_line(CFG, lm_head=False)
        prm_flops = sum(base + slope * c for c in range(1, plens[p] + 1)) + sum(
            base + slope * (plens[p] + j + 1) for n_tok in res.lengths[p] for j in range(n_tok))
        np.testing.assert_allclose(res.compute.prm_flops[p], prm_flops, rtol=1e-5)


@pytest.mark.parametrize("name", ["beam", "dvts"])
def test_batched_problems_equal_one_problem_at_a_time(name, models, prompts, results):
    batched = results(name)
    cfg = SearchConfig(**{**BASE, **RUNS[name]})
    for p in range(prompts[0].shape[0]):
        one = jax.tree.map(np.asarray, search(models[0], models[1], prompts[0][p:p + 1],
                                              prompts[1][p:p + 1], cfg, SPEC, problem_ids=[p]))
        np.testing.assert_array_equal(one.tokens[0], batched.tokens[p])
        np.testing.assert_allclose(one.scores[0], batched.scores[p], rtol=1e-6)
        assert one.chosen[0] == batched.chosen[p]
        np.testing.assert_allclose(one.compute.policy_flops[0], batched.compute.policy_flops[p],
                                   rtol=1e-6)


def test_bad_search_input_fails_with_a_clear_error(models, prompts):
    cfg = SearchConfig(**{**BASE, "method": "beam"})
    with pytest.raises(ValueError, match="needs a PRM"):
        search(models[0], None, *prompts, cfg, SPEC)
    with pytest.raises(ValueError, match="one length per prompt"):
        search(models[0], models[1], prompts[0], prompts[1][:1], cfg, SPEC)
    with pytest.raises(ValueError, match="capacity=8 < prompt width"):
        search(models[0], models[1], *prompts, cfg, SPEC, capacity=8)


@pytest.mark.parametrize("name", ["best_of_n", "beam", "lookahead"])
def test_speculative_steps_with_a_draft_give_the_policys_near_greedy_search(name, models,
                                                                             prompts, results):
    """With a draft model every step (and lookahead rollout) is generated speculatively;
    at a near-zero temperature both samplers are the policy's argmax, so tokens, scores,
    choices and committed token counts equal the plain search's."""
    draft = init_model(ModelConfig(d_model=16, num_layers=1, num_heads=1, num_kv_heads=1,
                                   head_dim=16, mlp_dim=32, max_seq_len=96), seed=7)
    plain = results(name, temperature=1e-4)
    cfg = SearchConfig(**{**BASE, **RUNS[name], "temperature": 1e-4})
    spec = jax.tree.map(np.asarray, search(models[0], models[1], *prompts, cfg, SPEC,
                                           draft=draft, gamma=3))
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    np.testing.assert_allclose(spec.scores, plain.scores, atol=1e-5)
    np.testing.assert_array_equal(spec.chosen, plain.chosen)
    np.testing.assert_array_equal(spec.compute.policy_tokens, plain.compute.policy_tokens)
    # the draft really ran: its prefill and proposals are counted as policy FLOPs
    assert (spec.compute.policy_flops != plain.compute.policy_flops).all()


def test_a_draft_with_another_vocabulary_is_refused(models, prompts):
    draft = init_model(ModelConfig(vocab_size=30, d_model=16, num_layers=1, num_heads=1,
                                   num_kv_heads=1, head_dim=16, mlp_dim=32), seed=7)
    cfg = SearchConfig(**{**BASE, **RUNS["beam"]})
    with pytest.raises(ValueError, match="the draft must share the tokenizer"):
        search(models[0], models[1], *prompts, cfg, SPEC, draft=draft)
