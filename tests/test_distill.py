"""Distillation: each divergence equals its formula, masks and the teacher's freezing work,
on-policy samples are packed right, and short runs learn and resume."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.config import ModelConfig, TrainConfig
from ttc_jax.models import init_model
from ttc_jax.models.io import load_model, save_model
from ttc_jax.tasks import get_task
from ttc_jax.train import data
from ttc_jax.train.distill import (
    DistillConfig,
    FeatureStudent,
    divergence,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    kept_rows,
    layer_map,
    make_distill_loss,
    on_policy_step,
    prompt_batch,
    reverse_kl,
    sequence_batch,
    student_samples,
    train_distill,
)
from ttc_jax.train.metrics import read_metrics


def _softmax(x, t=1.0):
    x = np.asarray(x, np.float64) / t
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(a, b):
    return np.sum(np.where(a > 0, a * (np.log(np.maximum(a, 1e-300)) - np.log(b)), 0.0), -1)


T_LOGITS = np.asarray([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 3.0, -2.0]], np.float32)
S_LOGITS = np.asarray([[0.5, 1.5, 0.0, -0.5], [1.0, -1.0, 0.5, 0.5]], np.float32)


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_forward_and_reverse_kl_equal_their_formulas_with_tau_squared(tau):
    p, q = _softmax(T_LOGITS, tau), _softmax(S_LOGITS, tau)
    np.testing.assert_allclose(forward_kl(S_LOGITS, T_LOGITS, tau), tau**2 * _kl(p, q),
                               rtol=1e-5)
    np.testing.assert_allclose(reverse_kl(S_LOGITS, T_LOGITS, tau), tau**2 * _kl(q, p),
                               rtol=1e-5)


def test_kl_on_hand_made_distributions():
    # p = [1/2, 1/2], q = [3/4, 1/4]: KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    p, q = np.log([0.5, 0.5]), np.log([0.75, 0.25])
    np.testing.assert_allclose(forward_kl(q, p), 0.5 * np.log(4 / 3), rtol=1e-6)
    # KL(q||p) = 3/4 ln(3/2) + 1/4 ln(1/2)
    np.testing.assert_allclose(reverse_kl(q, p), 0.75 * np.log(1.5) + 0.25 * np.log(0.5),
                               rtol=1e-6)
    # a zero-probability teacher token contributes nothing (0 log 0 = 0)
    hard = np.asarray([0.0, -1e30])
    np.testing.assert_allclose(forward_kl(q, hard), -np.log(0.75), rtol=1e-6)


@pytest.mark.parametrize("beta,tau", [(0.5, 1.0), (0.1, 1.0), (0.9, 2.0)])
def test_generalized_jsd_equals_its_formula(beta, tau):
    p, q = _softmax(T_LOGITS, tau), _softmax(S_LOGITS, tau)
    m = beta * p + (1 - beta) * q
    want = tau**2 * (beta * _kl(p, m) + (1 - beta) * _kl(q, m))
    np.testing.assert_allclose(generalized_jsd(S_LOGITS, T_LOGITS, beta, tau), want, rtol=1e-5)


def test_jsd_is_symmetric_at_half_and_approaches_the_kls_at_the_limits():
    a = generalized_jsd(S_LOGITS, T_LOGITS, 0.5)
    np.testing.assert_allclose(a, generalized_jsd(T_LOGITS, S_LOGITS, 0.5), rtol=1e-5)
    assert np.all(np.asarray(a) <= np.log(2) + 1e-6)
    eps = 1e-3
    # JSD(β)/β -> KL(q||p) ... as β -> 0 the mixture is q: β KL(p||q) + O(β²) dominates
    np.testing.assert_allclose(generalized_jsd(S_LOGITS, T_LOGITS, eps) / eps,
                               forward_kl(S_LOGITS, T_LOGITS), rtol=2e-2)
    np.testing.assert_allclose(generalized_jsd(S_LOGITS, T_LOGITS, 1 - eps) / eps,
                               reverse_kl(S_LOGITS, T_LOGITS), rtol=2e-2)


def test_unknown_loss_and_bad_settings_raise():
    with pytest.raises(ValueError, match="choose one of"):
        divergence("kl", S_LOGITS, T_LOGITS)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(S_LOGITS, T_LOGITS, 1.0)
    with pytest.raises(ValueError, match="mode"):
        DistillConfig(mode="offline")
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="min_score"):
        DistillConfig(min_score=1.5)


TASK = get_task("arithmetic")
V = TASK.tokenizer.vocab_size
T_CFG = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=16, mlp_dim=64, max_seq_len=128)
S_CFG = ModelConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=8, mlp_dim=32, max_seq_len=128)
TRAIN = TrainConfig(seed=0, batch_size=4, num_steps=40, learning_rate=1e-2, warmup_steps=5,
                    difficulty_min=1, difficulty_max=2, num_buckets=1, save_every=20,
                    log_every=10, eval_every=0)


@pytest.fixture(scope="module")
def models():
    return init_model(T_CFG, seed=0), init_model(S_CFG, seed=1)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_supervised_loss_is_the_masked_mix_of_divergence_and_ce(models, loss):
    teacher, student = models
    dcfg = DistillConfig(loss=loss, temperature=2.0, alpha=0.3, beta=0.4)
    batch = data.lm_batch(TASK, TRAIN, 0)
    t_def, t_params = nnx.split(teacher)
    loss_fn = make_distill_loss(dcfg, t_def)
    got, metrics = loss_fn(student, dict(batch, teacher=t_params))
    tokens, mask = batch["tokens"], batch["mask"]
    s_logits, t_logits = np.asarray(student(tokens[:, :-1])), np.asarray(teacher(tokens[:, :-1]))
    p, q = _softmax(t_logits, 2.0), _softmax(s_logits, 2.0)
    if loss == "forward_kl":
        div = 4 * _kl(p, q)
    elif loss == "reverse_kl":
        div = 4 * _kl(q, p)
    else:
        m = 0.4 * p + 0.6 * q
        div = 4 * (0.4 * _kl(p, m) + 0.6 * _kl(q, m))
    logq1 = np.log(_softmax(s_logits))
    ce = -np.take_along_axis(logq1, tokens[:, 1:, None], -1)[..., 0]
    want = 0.3 * (div * mask).sum() / mask.sum() + 0.7 * (ce * mask).sum() / mask.sum()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(metrics["tokens"], mask.sum())


def test_padding_does_not_change_the_loss_and_the_teacher_gets_no_gradient(models):
    teacher, student = models
    batch = data.lm_batch(TASK, TRAIN, 3)
    t_def, t_params = nnx.split(teacher)
    loss_fn = make_distill_loss(DistillConfig(alpha=0.5), t_def)
    base = loss_fn(student, dict(batch, teacher=t_params))[0]
    noisy = dict(batch)
    noisy["tokens"] = np.where(np.pad(batch["mask"], ((0, 0), (1, 0))) > 0, batch["tokens"],
                               (batch["tokens"] + 5) % V)  # garbage outside the targets...
    noisy["tokens"][:, :2] = batch["tokens"][:, :2]
    # ...but the prompt is context, so keep it: only change padding after each sequence
    lens = (batch["tokens"] != TASK.tokenizer.pad_id).sum(1)
    noisy["tokens"] = batch["tokens"].copy()
    for i, n in enumerate(lens):
        noisy["tokens"][i, n + 1:] = 7
    np.testing.assert_allclose(loss_fn(student, dict(noisy, teacher=t_params))[0], base,
                               rtol=1e-6)
    s_def, s_params = nnx.split(student)
    grads = jax.grad(lambda tp: loss_fn(nnx.merge(s_def, s_params),
                                        dict(batch, teacher=tp))[0])(t_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_layer_outputs_end_in_the_final_hidden_state():
    model = init_model(dataclasses.replace(T_CFG, num_layers=3), seed=2)
    tokens = data.lm_batch(TASK, TRAIN, 1)["tokens"]
    h, layers = model.hidden(tokens, return_layers=True)
    assert layers.shape == (3, *tokens.shape, T_CFG.d_model)
    np.testing.assert_allclose(h, model.hidden(tokens), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.final_norm(layers[-1]), h, rtol=1e-5, atol=1e-5)
    assert layer_map(2, 4) == (1, 3) and layer_map(2, 3) == (1, 2) and layer_map(3, 3) == (0, 1, 2)


def test_hidden_state_loss_equals_its_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 5, 4)), 3.0 * rng.normal(size=(3, 3, 5, 6))
    proj, mask = rng.normal(size=(2, 4, 6)), (rng.random((3, 5)) > 0.3).astype(np.float32)
    got = hidden_state_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(proj), (0, 2),
                            jnp.asarray(mask))
    tn = t[[0, 2]] / np.sqrt((t[[0, 2]] ** 2).mean(-1, keepdims=True))
    err = ((np.einsum("lbtd,lde->lbte", s, proj) - tn) ** 2).mean(axis=(0, 3))
    np.testing.assert_allclose(got, (err * mask).sum() / mask.sum(), rtol=1e-4)


def test_hidden_state_distillation_trains_the_maps_and_exports_the_plain_student(
        tmp_path, models):
    teacher, student = models
    dcfg = DistillConfig(alpha=0.5, hidden_weight=2.0)
    t_def, t_params = nnx.split(teacher)
    loss_fn = make_distill_loss(dcfg, t_def)
    batch = dict(data.lm_batch(TASK, TRAIN, 2), teacher=t_params)
    fs = FeatureStudent(student, teacher.cfg, seed=0)
    loss, metrics = loss_fn(fs, batch)
    plain, plain_metrics = make_distill_loss(DistillConfig(alpha=0.5), t_def)(student, batch)
    np.testing.assert_allclose(loss, plain + 2.0 * metrics["hidden"], rtol=1e-5)
    assert "hidden" not in plain_metrics
    f_def, f_params = nnx.split(fs)
    grads = nnx.to_pure_dict(jax.grad(
        lambda p: loss_fn(nnx.merge(f_def, p), batch)[0])(f_params))
    assert float(jnp.abs(grads["proj"]).max()) > 0
    cfg = _config(tmp_path, "logit", steps=20)
    cfg["distill"]["hidden_weight"] = 1.0
    model, _ = train_distill(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "hidden" in r]
    assert rows[-1]["hidden"] < rows[0]["hidden"], rows
    assert load_model(tmp_path / "run" / "model").cfg == S_CFG  # the maps are not exported
    with pytest.raises(ValueError, match="hidden_weight"):
        DistillConfig(hidden_weight=-1.0)
    with pytest.raises(ValueError, match="hidden_weight"):
        DistillConfig(mode="sequence", hidden_weight=1.0)


def test_student_samples_are_packed_after_their_prompts(models):
    _, student = models
    batch = prompt_batch(TASK, TRAIN, 0)
    seq, mask = jax.jit(lambda p, n, k: student_samples(
        student, p, n, k, max_new_tokens=batch["gen"].shape[0], temperature=1.0,
        stop_tokens=(TASK.tokenizer.eos_id,)))(batch["prompts"], batch["prompt_lens"],
                                                jax.random.wrap_key_data(batch["rng"]))
    seq, mask = np.asarray(seq), np.asarray(mask)
    assert seq.shape[1] == batch["prompts"].shape[1] + batch["gen"].shape[0] + 1
    for i, n in enumerate(batch["prompt_lens"]):
        np.testing.assert_array_equal(seq[i, :n], batch["prompts"][i, :n])
        m = int(mask[i].sum())
        assert m >= 1 and np.all(mask[i, n - 1:n - 1 + m] == 1)
        generated = seq[i, n:n + m]
        assert np.all(seq[i, n + m:] == TASK.tokenizer.pad_id)
        eos = np.flatnonzero(generated == TASK.tokenizer.eos_id)
        assert len(eos) == 0 or eos[0] == m - 1  # nothing after the first eos
    # the same step gives the same batch (resumable)
    np.testing.assert_array_equal(prompt_batch(TASK, TRAIN, 0)["rng"], batch["rng"])


def test_on_policy_steps_follow_the_fraction():
    d = DistillConfig(mode="on_policy", on_policy_fraction=0.3)
    share = np.mean([on_policy_step(d, TRAIN, s) for s in range(2000)])
    assert abs(share - 0.3) < 0.04
    assert not any(on_policy_step(DistillConfig(on_policy_fraction=0.0), TRAIN, s)
                   for s in range(100))


def test_sequence_batch_trains_on_the_selected_solutions():
    probs = TASK.sample_problems("train", [1, 2], 3, 0)
    rows = [{"prompt": TASK.prompt_text(p), "solution": f"{p.answer}\nA:{p.answer}\n",
             "difficulty": p.difficulty} for p in probs]
    b = sequence_batch(rows, TASK, TRAIN, 5)
    tok = TASK.tokenizer
    texts = {tok.decode(t[m > 0]) for t, m in zip(b["tokens"][:, 1:], b["mask"])}
    assert texts <= {r["solution"] + tok.decode([tok.eos_id]) for r in rows}
    np.testing.assert_array_equal(sequence_batch(rows, TASK, TRAIN, 5)["tokens"], b["tokens"])


def test_min_score_keeps_the_confident_selections_and_names_the_fix_when_none_pass():
    rows = [{"score": s, "correct": c} for s, c in ((0.95, True), (0.2, False), (0.9, True))]
    assert kept_rows(rows, 0.0) == rows
    assert kept_rows(rows, 0.9) == [rows[0], rows[2]]
    with pytest.raises(ValueError, match="lower min_score"):
        kept_rows(rows, 0.99)


def _config(tmp_path, mode, steps=40):
    teacher = save_model(init_model(T_CFG, seed=0), tmp_path / "teacher", kind="policy")
    train = dict(vars(TRAIN), num_steps=steps)
    return {"kind": "distill", "task": "arithmetic",
            "model": {k: getattr(S_CFG, k) for k in ("vocab_size", "d_model", "num_layers",
                                                     "num_heads", "num_kv_heads", "head_dim",
                                                     "mlp_dim", "max_seq_len")},
            "train": train,
            "distill": {"mode": mode, "teacher": str(teacher), "loss": "forward_kl",
                        "alpha": 1.0, "on_policy_fraction": 0.5}}


def test_a_short_logit_distillation_run_lowers_the_loss(tmp_path):
    cfg = _config(tmp_path, "logit")
    train_distill(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "kd" in r]
    assert rows[-1]["kd"] < 0.5 * rows[0]["kd"], rows
    assert load_model(tmp_path / "run" / "model").cfg == S_CFG
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "distill"


@pytest.mark.slow
def test_on_policy_run_lowers_the_loss_and_resumes_to_the_same_weights(tmp_path):
    cfg = _config(tmp_path, "on_policy", steps=30)
    full, _ = train_distill(cfg, tmp_path / "full")
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    on = [r for r in rows if "kd" in r]
    assert on[-1]["kd"] < on[0]["kd"]
    assert 0 < np.mean([r["on_policy"] for r in on]) < 1
    # the same run, killed after its step-20 checkpoint, resumes to the same weights
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "30")
    shutil.rmtree(tmp_path / "resumed" / "model")
    resumed, state = train_distill(cfg, tmp_path / "resumed")
    assert int(state.step) == 30
    for a, b in zip(jax.tree.leaves(nnx.state(full)), jax.tree.leaves(nnx.state(resumed))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
