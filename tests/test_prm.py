"""The PRM: step scores at step ends, exact and Monte-Carlo labels, ranking metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.config import ModelConfig, TrainConfig
from ttc_jax.eval.prm_quality import aggregate_np, vote
from ttc_jax.models import KVCache
from ttc_jax.models.prm import init_prm, segment_running_min
from ttc_jax.tasks import get_task
from ttc_jax.tasks.arithmetic import apply_op
from ttc_jax.train import data
from ttc_jax.train.prm_data import mc_step_labels, prm_batch, step_prefixes
from ttc_jax.train.trainer import create_state, make_optimizer, make_train_step, prm_loss

TASK = get_task("arithmetic")
TOK = TASK.tokenizer
CFG = ModelConfig(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                  mlp_dim=64, max_seq_len=64)


def corrupt_step(problem, step: int) -> str:
    """The canonical solution with step ``step``'s result off by one, then continued
    correctly from the wrong value (as a policy that slipped once would)."""
    value = problem.meta["start"]
    lines = []
    for i, (op, x) in enumerate(problem.meta["ops"]):
        new = apply_op(value, op, x)
        if i == step:
            new = (new + 1) % 1000
        lines.append(f"{value}{op}{x}={new}")
        value = new
    return "\n".join(lines) + f"\nA:{value}\n"


def scripted_rollout(p_step: float, seed: int = 0):
    """A policy that continues any prefix, each step right with probability p_step."""
    rng = np.random.default_rng(seed)

    def rollout(queries, n):
        out = []
        for problem, prefix in queries:
            done = [s for s in TASK.split_steps(prefix) if "=" in s]
            value = int(done[-1].split("=")[1]) if done else problem.meta["start"]
            comps = []
            for _ in range(n):
                v, lines = value, []
                for op, x in problem.meta["ops"][len(done):]:
                    new = apply_op(v, op, x)
                    if rng.random() > p_step:
                        new = (new + 1) % 1000
                    lines.append(f"{v}{op}{x}={new}")
                    v = new
                comps.append("".join(s + "\n" for s in lines) + f"A:{v}\n")
            out.append(comps)
        return out

    return rollout


def test_step_prefixes_end_at_each_delimiter():
    assert step_prefixes(TASK, "1+2=3\n3*2=6\nA:6\n") == ["1+2=3\n", "1+2=3\n3*2=6\n",
                                                         "1+2=3\n3*2=6\nA:6\n"]
    assert step_prefixes(TASK, "1+2=3\n3*2") == ["1+2=3\n", "1+2=3\n3*2"]


def test_mc_labels_agree_with_exact_labels_on_a_scripted_policy():
    problems = TASK.sample_problems("train", [3, 4, 5], 4, seed=1)
    texts, probs = [], []
    for i, p in enumerate(problems):
        texts.append(TASK.solution_text(p))
        texts.append(corrupt_step(p, i % p.difficulty))
        probs += [p, p]
    exact = [TASK.step_labels(p, t) for p, t in zip(probs, texts)]
    assert any(not all(e) for e in exact) and any(all(e) for e in exact)
    p_step = 0.9
    mc = mc_step_labels(TASK, probs, texts, scripted_rollout(p_step), num_rollouts=200)
    for p, t, e, m in zip(probs, texts, exact, mc):
        assert len(e) == len(m)
        # Hard estimate (Math-Shepherd): a step is good iff some rollout reaches the answer.
        assert [v > 0 for v in m] == list(e), (t, m, e)
        # Soft estimate: from a right prefix with r steps left, P(right) = p_step ** r.
        for j, (ej, mj) in enumerate(zip(e, m)):
            if ej:
                remaining = max(p.difficulty - (j + 1), 0)
                assert abs(mj - p_step**remaining) < 0.12, (j, mj)


def test_step_end_positions_are_the_delimiters_and_a_cut_final_step():
    p = TASK.problems("train", 2, 1, seed=0)[0]
    ids, plen = data.encode_example(TASK, p)
    ends = data.step_end_positions(ids, plen, TOK.step_delimiter_id, TOK.eos_id)
    assert len(ends) == 3 and all(ids[e] == TOK.step_delimiter_id for e in ends)
    cut, plen = data.encode_example(TASK, p, "12+3=1", add_eos=False)
    assert data.step_end_positions(cut, plen, TOK.step_delimiter_id, TOK.eos_id) == [
        len(cut) - 1]


@pytest.mark.parametrize("pooling, token_logprob", [("last", False), ("step_min", False),
                                                    ("step_min", True)])
def test_prm_incremental_scores_equal_full_scoring(pooling, token_logprob):
    prm = init_prm(CFG, seed=1, pooling=pooling, step_delimiter_id=TOK.step_delimiter_id,
                   token_logprob=token_logprob)
    prm.score_w[...] = jax.random.normal(jax.random.key(0), (CFG.d_model,))
    tokens = jax.random.randint(jax.random.key(2), (2, 20), 3, 21)
    tokens = tokens.at[:, jnp.asarray([4, 8, 13])].set(TOK.step_delimiter_id)
    full = prm(tokens)
    cache = KVCache.init(CFG, 2, 32)
    a, cache = prm.extend(tokens[:, :6], cache)  # blocks cut steps in the middle
    b, cache = prm.extend(tokens[:, 6:11], cache)
    c, cache = prm.extend(tokens[:, 11:], cache, jnp.asarray([9, 9]))
    np.testing.assert_allclose(jnp.concatenate([a, b, c], 1), full, atol=1e-5)


def test_step_min_pooling_is_the_minimum_over_each_steps_tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 20, (3, 17))
    tokens[:, [3, 9, 10]] = TOK.step_delimiter_id
    values = rng.normal(size=(3, 17)).astype(np.float32)
    pooled, carry = segment_running_min(jnp.asarray(values), jnp.asarray(tokens),
                                        TOK.step_delimiter_id, jnp.full((3,), jnp.inf),
                                        jnp.asarray([17, 17, 5]))
    for b in range(3):
        run = np.inf
        for t in range(17):
            run = min(run, values[b, t])
            assert pooled[b, t] == pytest.approx(run)
            if t == 16 and b < 2:
                assert carry[b] == pytest.approx(run)
            if tokens[b, t] == TOK.step_delimiter_id:
                run = np.inf
    assert carry[2] == pytest.approx(np.min(values[2, 4:5]))  # after 5 tokens


def test_prm_loss_learns_to_separate_right_from_corrupted_steps():
    """A few hundred steps on right vs corrupted k=1 solutions: the loss must fall."""
    problems = TASK.sample_problems("train", [1], 64, seed=3)
    seqs, ends, labels = [], [], []
    for i, p in enumerate(problems):
        text = TASK.solution_text(p) if i % 2 else corrupt_step(p, 0)
        ids, plen = data.encode_example(TASK, p, text)
        seqs.append(ids)
        ends.append(data.step_end_positions(ids, plen, TOK.step_delimiter_id, TOK.eos_id))
        labels.append([float(v) for v in TASK.step_labels(p, text)])
    ds = {"seqs": seqs, "ends": ends, "labels": labels}
    tc = TrainConfig(batch_size=16, num_steps=150, learning_rate=3e-3, warmup_steps=10)
    tx = make_optimizer(tc)
    graphdef, state = create_state(init_prm(CFG), tc, tx)
    step = make_train_step(graphdef, prm_loss, tx)
    losses = []
    for s in range(tc.num_steps):
        state, m = step(state, prm_batch(ds, tc, s, TOK.pad_id))
        losses.append(float(m["loss"]))
    assert np.mean(losses[:10]) > 0.6 and np.mean(losses[-20:]) < 0.45, (losses[:3],
                                                                         losses[-3:])


def test_aggregations_and_votes_follow_their_definitions():
    s = [0.9, 0.5, 0.8]
    assert aggregate_np(s, "last") == 0.8 and aggregate_np(s, "min") == 0.5
    assert aggregate_np(s, "prod") == pytest.approx(0.36)
    assert aggregate_np(s, "mean") == pytest.approx(2.2 / 3)
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        aggregate_np(s, "max")
    assert vote(["1", "2", "2", None]) == "2"
    assert vote(["1", "2"]) == "1"  # tie: first seen
    assert vote(["1", "2", "2"], [0.9, 0.3, 0.3]) == "1"  # 0.9 > 0.6
    assert vote([None, None]) is None


def test_token_logprob_feature_is_the_trunks_log_prob_of_each_token():
    prm = init_prm(CFG, seed=2, token_logprob=True)  # score_w = 0, score_b = 0, scale = 1
    tokens = jax.random.randint(jax.random.key(3), (2, 12), 3, 21)
    logp = jax.nn.log_softmax(prm.lm(tokens), axis=-1)
    ref = jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    out = prm(tokens)
    np.testing.assert_allclose(out[:, 1:], ref, atol=1e-5)
    np.testing.assert_allclose(out[:, 0], 0.0)
