"""Sweeps: a killed (or torn) sweep resumes to exactly the rows of an uninterrupted one;
FLOPs match a hand count and the search's own counters; subsampled choices equal the
device kernels'; difficulty levels, the compute-optimal selector (blind to test outcomes)
and adaptive allocation against plain-Python references."""

import dataclasses
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.config import ModelConfig, SearchConfig
from ttc_jax.eval import adaptive, difficulty
from ttc_jax.eval import compute_optimal as co
from ttc_jax.eval import sweep as sw
from ttc_jax.models import init_model
from ttc_jax.models.prm import init_prm
from ttc_jax.search import SearchTokens, encode_prompts, search, vote
from ttc_jax.tasks import get_task

TINY = ModelConfig(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64, max_seq_len=96)
CFG = sw.SweepConfig(ns=(1, 2, 4), tree_ns=(4,), beam_widths=(2,), difficulties=(2, 3),
                     problems_per_k=3, val_problems_per_k=2, greedy_models=("policy_small",),
                     max_rows=8, max_steps=3, max_step_tokens=6, max_new_tokens=24)


@pytest.fixture(scope="module")
def models():
    policy = init_model(TINY, seed=0)
    prm = init_prm(TINY, seed=1)
    prm.score_w[...] = 0.3 * jax.random.normal(jax.random.key(2), (TINY.d_model,))
    return {"policy": policy, "prm": prm, "policy_small": policy}


@pytest.fixture(scope="module")
def full(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "rows.jsonl"
    rows = sw.run_sweep(CFG, path, models=models, progress=False)
    return path, rows


def _lines(path):
    return sorted(path.read_text().splitlines())


def test_sweep_has_one_row_per_problem_and_config(full):
    path, rows = full
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    problems = sw.sweep_problems(CFG)
    planned = {k for u in sw.plan_units(CFG, problems) for k in u.keys(CFG, problems[u.split])}
    assert set(keys) == planned
    n_test, n_val = len(problems["test"]), len(problems["val"])
    # greedy 1 + samples 1 + 3 sampling methods x 3 N + beam/dvts at N=4 (M=2): 13 per problem
    assert len(rows) == 13 * (n_test + n_val)
    assert not {p.uid for p in problems["test"]} & {p.uid for p in problems["val"]}


def test_killed_sweep_resumes_to_the_same_rows(full, models, tmp_path, monkeypatch):
    path, _ = full
    out = tmp_path / "rows.jsonl"
    real = sw.JsonlWriter.append
    calls = {"n": 0}

    def dying(self, rows):
        calls["n"] += 1
        if calls["n"] == 4:  # die half-way through a unit's write: a torn line
            data = json.dumps(rows[0], sort_keys=True) + "\n" + json.dumps(rows[1])[:37]
            with self.path.open("a") as f:
                f.write(data)
            raise KeyboardInterrupt("killed")
        real(self, rows)

    monkeypatch.setattr(sw.JsonlWriter, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(CFG, out, models=models, progress=False)
    monkeypatch.setattr(sw.JsonlWriter, "append", real)
    assert not out.read_text().endswith("\n")  # the torn line is there
    rows = sw.run_sweep(CFG, out, models=models, progress=False)
    assert _lines(out) == _lines(path)
    assert len(rows) == len(_lines(path))


def test_truncated_file_resumes_to_the_same_rows(full, models, tmp_path):
    path, _ = full
    out = tmp_path / "rows.jsonl"
    data = path.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 25  # keep half the rows and a torn line
    out.write_bytes(data[:cut])
    sw.run_sweep(CFG, out, models=models, progress=False)
    assert _lines(out) == _lines(path)
    sw.run_sweep(CFG, out, models=models, progress=False)  # a finished sweep adds nothing
    assert _lines(out) == _lines(path)


def test_flops_match_a_hand_count():
    cfg = ModelConfig(vocab_size=7, d_model=4, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=2, mlp_dim=6, max_seq_len=16)
    # multiply-adds per token: q 4x4, k 4x2, v 4x2, o 4x4, MLP 3x4x6, head 4x7 = 148;
    # attention: QK^T and PV, 2 heads x 2 dims x ctx each = 8 ctx.
    per_token = lambda ctx, head=28: 2 * (148 - 28 + head) + 2 * 8 * ctx  # noqa: E731
    # prompt of 3 tokens, then 2 generated tokens attending to 4 and 5 positions
    assert sw.prefill_flops(cfg, 3) == per_token(1) + per_token(2) + per_token(3)
    assert sw.candidate_flops(cfg, 3, 2) == per_token(4) + per_token(5) == 736
    # the PRM swaps the vocabulary head (4x7) for a scalar head (4x1)
    assert sw.candidate_flops(cfg, 3, 2, lm_head=False) == per_token(4, 4) + per_token(5, 4)


def test_sampling_rows_add_up_to_the_search_counters(full):
    """The sweep checks each problem's per-candidate FLOPs against the search's counters
    (it raises otherwise); here the rows' totals are recomputed from the per-candidate
    lists by hand."""
    _, rows = full
    samples = {(r["split"], r["uid"]): r for r in rows if r["method"] == "samples"}
    for r in rows:
        if r["method"] in sw.SAMPLING_METHODS:
            s = samples[(r["split"], r["uid"])]
            n = r["n"]
            pol = s["policy_prefill_flops"] + sum(s["policy_flops_list"][:n])
            prm = (s["prm_prefill_flops"] + sum(s["prm_flops_list"][:n])
                   if r["method"] != "majority" else 0.0)
            assert r["policy_flops"] == pytest.approx(pol)
            assert r["prm_flops"] == pytest.approx(prm)
            assert r["policy_tokens"] == sum(s["lengths"][:n])
            assert r["correct"] == (r["answer"] is not None and r["answer"] == r["reference"])
            assert r["oracle"] == any(s["correct_list"][:n])


@pytest.mark.slow
def test_subsampled_choice_equals_the_device_kernels(models):
    """At N_max, the host choice over the candidates equals each method's own kernel."""
    task = get_task("arithmetic")
    problems = task.sample_problems("test", [2, 3], 2, 0)
    prompts, lens = encode_prompts(task, problems)
    spec = SearchTokens.from_task(task)
    rng = random.Random(0)
    for method in sw.SAMPLING_METHODS:
        cfg = SearchConfig(method=method, n=4, max_new_tokens=24, max_step_tokens=6)
        res = jax.tree.map(np.asarray, search(models["policy"], models["prm"], prompts, lens,
                                              cfg, spec))
        for b in range(len(problems)):
            answers = [None if a < 0 else int(a) for a in res.answers[b]]
            got = sw.choose(method, answers, res.scores[b].tolist())
            want = None if res.answer[b] < 0 else int(res.answer[b])
            assert got == want, (method, answers, res.scores[b])
    # and on random votes with ties, against the device vote
    for _ in range(20):
        a = np.asarray([[rng.choice([-1, 3, 5, 7]) for _ in range(6)]], np.int32)
        w = np.asarray([[rng.choice([0.25, 0.5, 1.0]) for _ in range(6)]], np.float32)
        want, _ = vote(jnp.asarray(a), jnp.asarray(w))
        got = sw.choose("weighted_best_of_n", [None if x < 0 else int(x) for x in a[0]],
                        w[0].tolist())
        assert (got if got is not None else -1) == int(want[0])


def test_bad_config_says_what_to_do():
    with pytest.raises(ValueError, match="unknown sweep method"):
        sw.SweepConfig(methods=("bogus",))
    with pytest.raises(ValueError, match="max_rows"):
        sw.SweepConfig(ns=(1, 128), max_rows=64)
    with pytest.raises(ValueError, match="val_problem_seed"):
        sw.sweep_problems(dataclasses.replace(CFG, val_problem_seed=CFG.problem_seed))


# ----------------------------------------------------------------------------- analysis
# Synthetic sweep rows: two splits, a handful of configs, known outcomes.


def _synthetic(seed=0, n_problems=40):
    rng = np.random.default_rng(seed)
    rows = []
    configs = [("majority", n, 0) for n in (1, 4)] + \
              [("weighted_best_of_n", n, 0) for n in (1, 4)] + [("beam", 4, 2)]
    for split in ("val", "test"):
        for i in range(n_problems):
            uid = f"{split}-{i}"
            easy = i % 2 == 0
            k = 8
            correct = (rng.random(k) < (0.9 if easy else 0.2)).tolist()
            answers = [1 if c else int(rng.integers(2, 5)) for c in correct]
            scores = [float(0.8 * c + 0.2 * rng.random()) for c in correct]
            rows.append({
                "key": f"{split}|s|{uid}", "split": split, "seed": 0, "uid": uid,
                "method": "samples", "n": k, "beam_width": 0, "reference": 1,
                "answers": answers, "scores": scores, "correct_list": correct,
                "policy_prefill_flops": 10.0, "prm_prefill_flops": 20.0,
                "policy_flops_list": [100.0] * k, "prm_flops_list": [50.0] * k})
            for meth, n, m in configs:
                flops = 10.0 + 100.0 * n + (20.0 + 50.0 * n if meth != "majority" else 0.0)
                if meth == "beam":
                    flops, ok = 560.0, not easy or rng.random() < 0.5  # beam wins hard ones
                else:
                    ok = sw.choose(meth, answers[:n], scores[:n]) == 1
                rows.append({"key": f"{split}|{meth}|{n}|{uid}", "split": split, "seed": 0,
                             "uid": uid, "method": meth, "n": n, "beam_width": m,
                             "correct": bool(ok), "flops": flops})
    return rows


def test_quantile_levels_and_bins_match_numpy():
    vals = {f"u{i}": float(v) for i, v in enumerate(np.random.default_rng(0).random(23))}
    levels = difficulty.quantile_levels(vals, 5)
    ranked = sorted(vals, key=lambda u: -vals[u])
    sizes = np.bincount([levels[u] for u in ranked])
    assert sizes.tolist() == [5, 4, 5, 4, 5]  # linspace(0, 23, 6).round() boundaries
    assert [levels[u] for u in ranked] == sorted(levels[u] for u in ranked)
    edges = difficulty.fit_edges(list(vals.values()), 4)
    np.testing.assert_allclose(edges, np.quantile(list(vals.values()), [0.75, 0.5, 0.25]))
    bins = difficulty.assign_bins(vals, edges)
    for u, v in vals.items():
        assert bins[u] == sum(v < e for e in edges)


def test_selector_never_uses_test_outcomes():
    rows = _synthetic()
    val_only = [r for r in rows if r["split"] == "val"]
    for kw in (dict(difficulty="predicted", charge_probes=True),
               dict(difficulty="predicted", charge_probes=False)):
        sel = co.fit_selector(rows, probes=2, num_bins=2, **kw)
        assert co.fit_selector(val_only, probes=2, num_bins=2, **kw) == sel
        corrupt = [dict(r) for r in rows]
        rng = random.Random(1)
        for r in corrupt:
            if r["split"] == "test":
                if "correct" in r:
                    r["correct"] = rng.random() < 0.5
                if "correct_list" in r:
                    r["correct_list"] = [rng.random() < 0.5 for _ in r["correct_list"]]
        assert co.fit_selector(corrupt, probes=2, num_bins=2, **kw) == sel
        # ... while the validation outcomes do drive it
        flipped = [dict(r, correct=not r["correct"]) if r["split"] == "val" and "correct" in r
                   else r for r in rows]
        assert co.fit_selector(flipped, probes=2, num_bins=2, **kw).choice != sel.choice


def test_selector_choice_and_evaluation_match_a_plain_reference():
    rows = _synthetic()
    sel = co.fit_selector(rows, probes=2, num_bins=2, charge_probes=False)
    val = {(r["method"], r["n"], r["beam_width"], r["uid"]): r for r in rows
           if r["split"] == "val" and r["method"] != "samples"}
    scores = {r["uid"]: np.mean(r["scores"][:2]) for r in rows
              if r["method"] == "samples" and r["split"] == "val"}
    cut = np.quantile(list(scores.values()), 0.5)
    configs = sorted({k[:3] for k in val})
    for b in (0, 1):
        uids = [u for u, s in scores.items() if (s < cut) == b]
        for n in (1, 4):
            limit = np.mean([val[("weighted_best_of_n", n, 0, u)]["flops"] for u in uids])
            best = max((c for c in configs
                        if np.mean([val[c + (u,)]["flops"] for u in uids]) <= limit + 1e-6),
                       key=lambda c: (np.mean([val[c + (u,)]["correct"] for u in uids]),
                                      -np.mean([val[c + (u,)]["flops"] for u in uids])))
            assert sel.choice[(n, b)] == best
    res = co.evaluate(sel, rows)
    test = {(r["method"], r["n"], r["beam_width"], r["uid"]): r for r in rows
            if r["split"] == "test" and r["method"] != "samples"}
    tscores = {r["uid"]: np.mean(r["scores"][:2]) for r in rows
               if r["method"] == "samples" and r["split"] == "test"}
    for n in (1, 4):
        picks = [test[sel.choice[(n, int(s < cut))] + (u,)] for u, s in tscores.items()]
        assert res[n]["acc"] == pytest.approx(np.mean([p["correct"] for p in picks]))
        assert res[n]["flops"] == pytest.approx(np.mean([p["flops"] for p in picks]))


def test_probe_flops_are_charged_once():
    s = {"policy_prefill_flops": 10.0, "prm_prefill_flops": 20.0,
         "policy_flops_list": [1.0, 2.0, 4.0, 8.0], "prm_flops_list": [100.0, 200.0, 400.0,
                                                                       800.0]}
    assert co.extra_probe_flops(s, ("weighted_best_of_n", 4, 0), 2) == 0.0
    assert co.extra_probe_flops(s, ("weighted_best_of_n", 1, 0), 2) == 2.0 + 200.0
    assert co.extra_probe_flops(s, ("majority", 1, 0), 2) == 2.0 + 20.0 + 300.0
    assert co.extra_probe_flops(s, ("beam", 4, 2), 2) == 3.0 + 300.0


def test_adaptive_rule_matches_a_plain_loop():
    s = {"answers": [3, None, 3, 5, 3, 5, 5, 5], "scores": [0.9, 0.1, 0.2, 0.8, 0.3, 0.7,
                                                            0.6, 0.5],
         "reference": 3, "policy_prefill_flops": 10.0, "prm_prefill_flops": 20.0,
         "policy_flops_list": [1.0] * 8, "prm_flops_list": [2.0] * 8}
    for share, min_n, weighted, thr in [(0.6, 2, True, 0.0), (0.9, 2, True, 0.0),
                                        (0.7, 3, False, 0.0), (1.0, 1, True, 0.0),
                                        (0.55, 4, True, 0.0), (0.0, 1, True, 1.0),
                                        (0.5, 1, True, 1.6), (0.0, 2, False, 3.0)]:
        rule = adaptive.StopRule(share, min_n, 8, weighted, thr)
        n = 0
        for n in range(1, 9):  # reference: recount from scratch at every n
            tot = {}
            for a, w in zip(s["answers"][:n], s["scores"][:n]):
                if a is not None:
                    tot[a] = tot.get(a, 0) + (w if weighted else 1)
            top = max(tot.values()) if tot else 0.0
            if n >= min_n and tot and top >= share * sum(tot.values()) and top >= thr:
                break
        ans, used, flops = adaptive.run_rule(s, rule)
        assert used == n
        assert flops == 10.0 + n + (20.0 + 2.0 * n if weighted else 0.0)
        meth = "weighted_best_of_n" if weighted else "majority"
        assert ans == sw.choose(meth, s["answers"][:n], s["scores"][:n])
    with pytest.raises(ValueError, match="max_n"):
        adaptive.run_rule(s, adaptive.StopRule(0.5, 1, 9))


def test_adaptive_fit_uses_validation_and_meets_its_target():
    rows = _synthetic()
    rows += [dict(r, method="weighted_best_of_n", n=8, key=r["key"] + "|8",
                  correct=sw.choose("weighted_best_of_n", r["answers"], r["scores"]) == 1,
                  flops=30.0 + 150.0 * 8) for r in rows if r["method"] == "samples"]
    rule = adaptive.fit_rule(rows, ref_n=8, max_ns=(8,))
    val = adaptive.evaluate_rule(rows, rule, split="val")
    assert val["acc"] >= adaptive.reference(rows, 8, split="val")["acc"]
    for share in adaptive.SHARES:  # no cheaper rule on the grid reaches the target
        for thr in adaptive.THRESHOLDS:
            for min_n in (1, 2, 4):
                r = adaptive.evaluate_rule(rows, adaptive.StopRule(share, min_n, 8, True, thr),
                                           split="val")
                if r["acc"] >= adaptive.reference(rows, 8, split="val")["acc"]:
                    assert r["flops"] >= val["flops"]


def test_complete_rows_drops_unfinished_configs(full):
    _, rows = full
    beam_test = [r for r in rows if r["method"] == "beam" and r["split"] == "test"]
    partial = [r for r in rows if r is not beam_test[0]]
    kept = sw.complete_rows(partial)
    assert not [r for r in kept if r["method"] == "beam"]  # beam@4 now misses a problem
    assert len(kept) == len(partial) - (len(beam_test) - 1) - sum(
        r["method"] == "beam" and r["split"] == "val" for r in rows)
    assert sw.complete_rows(rows) == rows
