"""``rules="search_and_learn"``: each of huggingface/search-and-learn's rules, as the
jit-compiled kernels apply it, against the plain-Python transcriptions in
``tests/sal_reference.py``: first at the level of the selection functions (pure functions of
scores and flags), then one small end-to-end ``search()`` per method on the shipped models,
showing the switch changes what it should and nothing else (docs/search_and_learn.md)."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import sal_reference as ref
from ttc_jax.config import SearchConfig
from ttc_jax.models.cache import KVCache
from ttc_jax.models.prm import ProcessRewardModel
from ttc_jax.search import SearchTokens, encode_prompts, row_hash, search
from ttc_jax.search.select import (
    Pool,
    beam_parents_in_row_order,
    duplicates,
    dvts_parents_halting,
)
from ttc_jax.search.strategies import box_opened
from ttc_jax.tasks import get_task

TASK = get_task("arithmetic")

# -- config ------------------------------------------------------------------------------


def test_rules_is_validated_and_defaults_to_ttc_jax():
    assert SearchConfig().rules == "ttc_jax"
    assert SearchConfig(method="dvts", n=8, beam_width=4, rules="search_and_learn").rules == (
        "search_and_learn")
    with pytest.raises(ValueError, match=r"search.rules='sal' is unknown; choose one of "
                                         r"\['ttc_jax', 'search_and_learn'\]"):
        SearchConfig(rules="sal")


@pytest.mark.parametrize("module", ["experiments.search", "experiments.math500_llama"])
def test_experiment_configs_carry_the_rules_key(module):
    """ml_collections only overrides keys that exist: --config.search.rules=... needs it."""
    import importlib

    from ttc_jax.config import from_dict

    c = importlib.import_module(module).get_config()
    assert c.search.rules == "ttc_jax"
    c.search.rules = "search_and_learn"  # what the flag does
    assert from_dict(SearchConfig, c.search.to_dict()).rules == "search_and_learn"


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


def test_box_opened_matches_the_text_rule_on_token_rows():
    """On token rows whose vocabulary writes "boxed" only at a token's end and "{" only
    at a token's start, the token-pair match equals ``"boxed{" in text``."""
    vocab = [b"", b"", b"", b"\\", b"boxed", b"\\boxed", b"{", b"{1", b"}", b"1", b" ", b"x",
             b"\n\n"]
    spec = SearchTokens.build(vocab=vocab, pad_id=0, bos_id=1, eos_ids=[2],
                              answer_prefix=[11], answer="boxed")
    rng = np.random.default_rng(3)
    tokens = rng.integers(3, len(vocab), size=(400, 12))
    lengths = rng.integers(0, 13, size=400)
    got = np.asarray(box_opened(jnp.asarray(tokens), jnp.asarray(lengths), spec,
                                spec.tables()))
    texts = [b"".join(vocab[t] for t in row[:k]).decode() for row, k in zip(tokens, lengths)]
    assert list(got) == [ref.dvts_stopped(x) for x in texts]
    assert 50 < got.sum() < 350
    digits = SearchTokens.from_task(TASK)  # no box answers: never halts on text
    assert not np.asarray(box_opened(jnp.asarray(tokens), jnp.asarray(lengths), digits,
                                     digits.tables())).any()


@pytest.mark.parametrize("name", ["llama3.2-instruct", "qwen2.5-instruct"])
def test_box_opened_on_the_real_vocabularies(real_vocab, name):
    """No real Llama 3 / Qwen2.5 token holds "boxed" except at its end, and none holds
    "boxed{", so on their tokenizations the pair rule is the reference's text rule."""
    from ttc_jax.interop.tokenizer import HFTokenizer

    tok = HFTokenizer.from_folder(real_vocab[name])
    vocab = tok.vocab_bytes()
    assert not [b for b in vocab if b"boxed" in b and not b.endswith(b"boxed")]
    spec = SearchTokens.from_tokenizer(tok, answer="boxed",
                                       answer_marker="Therefore, the final answer is")
    texts = ["Therefore, the final answer is: $\\boxed{3}$. I hope it is correct.",
             "$\\boxed{\\frac{1}{2}}$", "so \\boxed 5", "boxed {7}", "(boxed){", " boxed{x",
             "## Step 1: add\n\nThe sum is 5.\n\n"]
    rows = [tok.encode(x) for x in texts]
    width = max(map(len, rows))
    tokens = np.array([r + [0] * (width - len(r)) for r in rows])
    got = np.asarray(box_opened(jnp.asarray(tokens), jnp.asarray([len(r) for r in rows]),
                                spec, spec.tables()))
    assert list(got) == [ref.dvts_stopped(x) for x in texts] == [1, 1, 0, 0, 0, 1, 0]


# -- end to end on the shipped models ------------------------------------------------------

N, M = 8, 2
E2E = dict(n=N, beam_width=M, max_steps=6, max_step_tokens=16, max_new_tokens=64,
           aggregation="min", temperature=1.0)


@pytest.fixture(scope="module")
def shipped():
    from ttc_jax.models.io import load_model

    policy, prm = load_model("policy_small"), load_model("prm")
    spec = SearchTokens.from_task(TASK, vocab_size=policy.cfg.vocab_size)
    prompts = encode_prompts(TASK, TASK.sample_problems("test", [3, 5], 1, seed=0))
    cache = {}

    def run(spec_=None, prm_=None, **over):
        key = (id(spec_), id(prm_), tuple(sorted(over.items())))
        if key not in cache:
            cfg = SearchConfig(**{**E2E, **over})
            cache[key] = jax.tree.map(np.asarray, search(policy, prm_ or prm, *prompts, cfg,
                                                         spec_ or spec))
        return cache[key]

    return types.SimpleNamespace(run=run, spec=spec, policy=policy, prompts=prompts, prm=prm)


def _pool_hashes(res, p):
    return np.asarray(row_hash(jnp.asarray(res.tokens[p]), jnp.asarray(res.lengths[p])))


def test_beam_search_keeps_the_first_n_to_finish_and_ranks_like_the_reference(shipped):
    res = shipped.run(method="beam", rules="search_and_learn", filter_duplicates=True)
    tr = res.trace
    iters = int(tr.iterations)
    assert iters >= 3
    for p in range(res.tokens.shape[0]):
        recorded = []
        for i in range(iters):
            act = tr.active[i, p]
            if not act.any():
                break
            assert act.all()  # every iteration expands N beams (copies of the survivors)
            rows = [dict(text=int(tr.hashes[i, p, r]), completed=bool(tr.completed[i, p, r]),
                         score=float(tr.score[i, p, r])) for r in range(N)]
            recorded.append(rows)
            elig = np.isfinite(tr.select_score[i, p])
            np.testing.assert_array_equal(tr.select_score[i, p][elig], tr.score[i, p][elig])
            want = ref.beam_next_rows(rows, N, M, filter_duplicates=True)
            if want:
                assert list(tr.parents[i, p]) == want, (p, i)
        pool = ref.beam_completed_pool(recorded, N)
        assert res.valid[p].all()
        assert list(_pool_hashes(res, p)) == [recorded[i][r]["text"] for i, r in pool]
        np.testing.assert_allclose(res.scores[p], [recorded[i][r]["score"] for i, r in pool],
                                   rtol=1e-6)
        assert res.chosen[p] == ref.beam_choice(list(res.scores[p]))
    assert (tr.completed[:iters - 1].sum(axis=(0, 2)) > 0).any()  # some beams finished early


def test_beam_lookahead_is_generated_but_never_scored(shipped):
    """Under the reference's rules a beam search with lookahead=1 is the same search as
    without (its rollout changes no score); only the policy tokens of the rollouts add."""
    plain = shipped.run(method="beam", rules="search_and_learn", filter_duplicates=True)
    look = shipped.run(method="lookahead", lookahead=1, rules="search_and_learn",
                       filter_duplicates=True)
    np.testing.assert_array_equal(look.tokens, plain.tokens)
    np.testing.assert_array_equal(look.scores, plain.scores)
    np.testing.assert_array_equal(look.trace.parents, plain.trace.parents)
    np.testing.assert_array_equal(look.compute.prm_tokens, plain.compute.prm_tokens)
    assert (look.compute.policy_tokens > plain.compute.policy_tokens).all()


def test_dvts_returns_every_sibling_of_the_last_expansion_scored_with_its_lookahead(shipped):
    res = shipped.run(method="dvts", rules="search_and_learn", lookahead=1)
    tr = res.trace
    g = N // M
    assert res.tokens.shape[1] == N and res.valid.all()
    assert shipped.spec.answer == "digits"  # arithmetic: no box, no text stop
    looked = 0
    for p in range(res.tokens.shape[0]):
        recorded = []
        for i in range(int(tr.iterations)):
            act = tr.active[i, p]
            recorded.append({
                sub: [dict(text=int(tr.hashes[i, p, r]), stopped=bool(tr.completed[i, p, r]),
                           score=float(tr.select_score[i, p, r]))
                      for r in range(sub * M, (sub + 1) * M)]
                for sub in range(g) if act[sub * M]})
            elig = act & ~tr.completed[i, p]
            looked += int(np.sum(tr.select_score[i, p][elig] != tr.score[i, p][elig]))
        pool, _ = ref.dvts_pool(recorded + [{}], g, M, stopped=lambda text: False)
        assert list(_pool_hashes(res, p)) == [recorded[i][sub][j]["text"]
                                              for i, sub, j in pool]
        np.testing.assert_allclose(res.scores[p], [recorded[i][sub][j]["score"]
                                                   for i, sub, j in pool], rtol=1e-6)
        assert res.chosen[p] == ref.dvts_choice(list(res.scores[p]))
    assert (tr.parents // M == np.arange(N) // M).all()  # subtrees never mix
    assert looked > 0  # the ranking (and returned) scores include the rollout


def test_dvts_halts_a_subtree_once_its_chosen_text_opens_a_box(shipped):
    """A vocabulary in which "=" reads "boxed" and every digit starts with "{": the first
    step ("12+34=46") opens a box, so every subtree halts after its first expansion."""
    tok = TASK.tokenizer
    fake = [b"boxed" if b == b"=" else b"{" + b if b.isdigit() else b
            for b in tok.vocab_bytes()]
    spec = SearchTokens.build(vocab=fake, pad_id=tok.pad_id, bos_id=tok.bos_id,
                              eos_ids=[tok.eos_id], answer_prefix=tok.encode("A:"),
                              answer="boxed", separator=b"\n",
                              vocab_size=shipped.policy.cfg.vocab_size)
    res = shipped.run(spec, method="dvts", rules="search_and_learn")
    tr = res.trace
    g = N // M
    for p in range(res.tokens.shape[0]):
        texts = [b"".join(fake[t] for t in res.tokens[p, r, :res.lengths[p, r]]).decode()
                 for r in range(N)]
        recorded = [{sub: [dict(text=texts[r], stopped=bool(tr.completed[0, p, r]),
                                score=float(tr.select_score[0, p, r]))
                           for r in range(sub * M, (sub + 1) * M)] for sub in range(g)}]
        pool, expanded = ref.dvts_pool(recorded + [{}], g, M)  # raises if it would go on
        assert expanded == [list(range(g))] and {i for i, _, _ in pool} == {0}
        assert any(ref.dvts_stopped(x) for x in texts)
    assert int(tr.iterations) == 1
    assert int(shipped.run(method="dvts", rules="search_and_learn").trace.iterations) > 1


def test_the_switch_leaves_the_first_step_and_the_sampling_methods_alone(shipped):
    for method in ("beam", "dvts"):
        a, b = shipped.run(method=method), shipped.run(method=method, rules="search_and_learn")
        for f in ("active", "score", "hashes"):
            np.testing.assert_array_equal(getattr(a.trace, f)[0], getattr(b.trace, f)[0])
    a, b = shipped.run(method="best_of_n"), shipped.run(method="best_of_n",
                                                        rules="search_and_learn")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


# -- the empty trailing step: search-and-learn's "last" after a final step end ------------

class EmptyStepPRM(ProcessRewardModel):
    """The shipped PRM with an ``empty_step_logits``, as the HF adapters have
    (``interop.prm.ChatPRMAdapter``): here its score of one more step-end token after the
    row's stream, on a copy of the cache."""

    def empty_step_logits(self, cache):
        b = cache.lengths.shape[0]
        logits, _ = self.extend(jnp.full((b, 1), self.empty_id, jnp.int32), cache,
                                jnp.ones((b,), jnp.int32))
        return logits[:, 0]


@pytest.fixture(scope="module")
def empty_prm(shipped):
    prm = EmptyStepPRM(shipped.prm.cfg, rngs=nnx.Rngs(0), **shipped.prm.init_kwargs)
    nnx.update(prm, nnx.state(shipped.prm))
    prm.empty_id = TASK.tokenizer.encode("\n")[-1]
    assert shipped.spec.tables().lookup(jnp.asarray(prm.empty_id))
    return prm


@functools.lru_cache(maxsize=4)
def _verdict_fn(graphdef, width: int, t: int):
    @jax.jit
    def fn(params, prompt, plen, row, rlen):
        prm = nnx.merge(graphdef, params)
        cache = KVCache.init(prm.cfg, 1, width + t + 4)
        _, cache = prm.extend(prompt[None], cache, plen[None])
        _, cache = prm.extend(row[None], cache, rlen[None])
        return jax.nn.sigmoid(prm.empty_step_logits(cache))[0]
    return fn


def _empty_verdict(prm, prompts, lens, row):
    """The PRM's empty-step verdict after prompt + ``row`` (eos included), fed afresh
    (one compiled program for every row: both padded to fixed widths)."""
    graphdef, params = nnx.split(prm)
    t = E2E["max_new_tokens"]
    padded = np.zeros((t,), np.int32)
    padded[:len(row)] = row
    fn = _verdict_fn(graphdef, prompts.shape[0], t)
    return float(fn(params, jnp.asarray(prompts, jnp.int32), jnp.int32(lens),
                    jnp.asarray(padded), jnp.int32(len(row))))


def _check_empty_scores(res, shipped, prm, how):
    """Each returned score: over the row's steps plus, where its last real token ends a
    step, the empty step's verdict (recomputed here); other rows (a step cut by the cap,
    eos right after a non-step-end token) keep the old score. Returns (rows with an empty
    step, rows without). (The shipped arithmetic policy writes "\\n" before its eos, so
    its eos-ended rows end at a step end too, as the reference's text does.)"""
    prompts, lens = shipped.prompts
    ends = np.asarray(shipped.spec.tables().ends_step)
    kinds = [0, 0]  # [with an empty step, without]
    for p in range(res.tokens.shape[0]):
        for r in range(res.tokens.shape[1]):
            row = res.tokens[p, r, :res.lengths[p, r]]
            real = row[:-1] if row[-1] in shipped.spec.eos_ids else row
            steps = list(res.step_scores[p, r, :res.num_steps[p, r]])
            if ends[real[-1]]:
                steps.append(_empty_verdict(prm, prompts[p], lens[p], row))
            kinds[0 if ends[real[-1]] else 1] += 1
            np.testing.assert_allclose(res.scores[p, r], ref.aggregate(steps, how),
                                       rtol=2e-5, atol=2e-6)
    return kinds


def test_dvts_last_is_the_empty_steps_verdict_after_a_step_end(shipped, empty_prm):
    # six iterations: every returned row ends at a step end ("\\n", or "\\n" then eos)
    full = shipped.run(prm_=empty_prm, method="dvts", rules="search_and_learn",
                       aggregation="last")
    assert _check_empty_scores(full, shipped, empty_prm, "last")[0] > 0
    # two: the second (the last) writes past step ends, and the cap cuts every row
    res = shipped.run(prm_=empty_prm, method="dvts", rules="search_and_learn",
                      aggregation="last", max_steps=2)
    assert _check_empty_scores(res, shipped, empty_prm, "last")[1] > 0
    old = shipped.run(method="dvts", rules="search_and_learn", aggregation="last",
                      max_steps=2)
    for f in ("active", "hashes", "completed"):  # the first expansion is the same
        np.testing.assert_array_equal(getattr(res.trace, f)[0], getattr(old.trace, f)[0])
    done = old.trace.completed[0]
    np.testing.assert_array_equal(res.trace.score[0][done], old.trace.score[0][done])
    assert (res.trace.score[0][~done] != old.trace.score[0][~done]).all()


def test_beam_ranks_and_pools_with_the_empty_step(shipped, empty_prm):
    res = shipped.run(prm_=empty_prm, method="beam", rules="search_and_learn",
                      filter_duplicates=True)
    assert _check_empty_scores(res, shipped, empty_prm, E2E["aggregation"])[0] > 0
    old = shipped.run(method="beam", rules="search_and_learn", filter_duplicates=True)
    done = old.trace.completed[0]
    np.testing.assert_array_equal(res.trace.hashes[0], old.trace.hashes[0])
    np.testing.assert_array_equal(res.trace.score[0][done], old.trace.score[0][done])
    # unfinished beams (all end at a step end) rank by min over their steps + the empty one
    assert (res.trace.score[0][~done] <= old.trace.score[0][~done]).all()
    assert (res.trace.score[0][~done] < old.trace.score[0][~done]).any()
    elig = np.isfinite(res.trace.select_score[0])
    np.testing.assert_array_equal(res.trace.select_score[0][elig], res.trace.score[0][elig])


@pytest.mark.parametrize("method", ["beam", "dvts", "best_of_n"])
def test_default_rules_never_read_the_empty_step(shipped, empty_prm, method):
    a, b = shipped.run(method=method), shipped.run(prm_=empty_prm, method=method)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_best_of_n_scores_the_empty_step_under_search_and_learn(shipped, empty_prm):
    res = shipped.run(prm_=empty_prm, method="best_of_n", rules="search_and_learn")
    _check_empty_scores(res, shipped, empty_prm, E2E["aggregation"])
