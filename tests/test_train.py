"""The trainer: learning is real, resume is exact, and bad restarts fail clearly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ttc_jax.config import ModelConfig, TrainConfig
from ttc_jax.eval.generate import greedy_accuracy
from ttc_jax.models.transformer import init_model
from ttc_jax.tasks import get_task
from ttc_jax.train import data
from ttc_jax.train.checkpoint import CheckpointConfigMismatch
from ttc_jax.train.export import restore_model
from ttc_jax.train.run import train
from ttc_jax.train.trainer import create_state, lm_loss, make_optimizer, make_train_step

ROOT = Path(__file__).resolve().parent.parent
TASK = get_task("arithmetic")
TINY = dict(vocab_size=21, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
            mlp_dim=64, max_seq_len=160)


def tiny_config(**train):
    t = dict(seed=0, batch_size=8, num_steps=30, learning_rate=3e-3, warmup_steps=5,
             save_every=10, log_every=5, eval_every=0, difficulty_min=1, difficulty_max=3,
             num_buckets=2)
    t.update(train)
    return {"kind": "policy", "task": "arithmetic", "model": dict(TINY), "train": t}


def test_batches_are_a_pure_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=16, seed=3)
    a, b = data.lm_batch(TASK, cfg, 7), data.lm_batch(TASK, cfg, 7)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"][:, :8], data.lm_batch(TASK, cfg, 8)["tokens"][:, :8])
    widths = {data.lm_batch(TASK, cfg, s)["tokens"].shape[1] - 1 for s in range(40)}
    assert all(w % cfg.bucket_multiple == 0 for w in widths) and len(widths) <= 8


def test_a_finite_training_set_is_fixed_by_the_seed_and_every_batch_draws_from_it():
    cfg = TrainConfig(batch_size=16, seed=3, train_problems=5, difficulty_max=4)
    pool = {TASK.prompt_text(p) for k in range(1, 5)
            for p in TASK.problems("train", k, 5, seed=3)}
    seen = {TASK.prompt_text(p) for s in range(60)
            for p in data.sample_problems_for_step(TASK, cfg, s)}
    assert seen == pool  # 60 batches of 16 cover all 20 problems and nothing else
    other = TrainConfig(batch_size=16, seed=4, train_problems=5, difficulty_max=4)
    assert not {TASK.prompt_text(p) for p in data.sample_problems_for_step(TASK, other, 0)} <= pool
    unlimited = {TASK.prompt_text(p) for s in range(60)
                 for p in data.sample_problems_for_step(TASK, TrainConfig(batch_size=16, seed=3,
                                                                          difficulty_max=4), s)}
    assert len(unlimited) > 500  # the default: fresh problems every step
    with pytest.raises(ValueError, match="train_problems"):
        TrainConfig(train_problems=-1)


def test_loss_mask_covers_exactly_the_solution_and_eos():
    p = TASK.problems("train", 2, 1, seed=0)[0]
    batch = data.pack(*zip(data.encode_example(TASK, p)), pad_id=0, multiple=16)
    targets = batch["tokens"][0, 1:][batch["mask"][0] > 0]
    tok = TASK.tokenizer
    assert tok.decode(targets.tolist(), skip_special=False) == TASK.solution_text(p) + "<eos>"


@pytest.mark.slow
def test_learning_is_real_loss_falls_and_k1_accuracy_beats_chance():
    """A 1-digit-by-3-digit step is right by chance with probability ~1/1000."""
    mc = ModelConfig(**dict(TINY, d_model=48, num_layers=2, num_heads=3, mlp_dim=192,
                            max_seq_len=64))
    tc = TrainConfig(batch_size=32, num_steps=1500, difficulty_min=1, difficulty_max=1,
                     learning_rate=5e-3, warmup_steps=20)
    tx = make_optimizer(tc)
    graphdef, state = create_state(init_model(mc), tc, tx)
    step = make_train_step(graphdef, lm_loss, tx)
    losses = []
    for s in range(tc.num_steps):
        state, metrics = step(state, data.lm_batch(TASK, tc, s))
        losses.append(float(metrics["loss"]))
    assert losses[0] > 2.0
    assert np.mean(losses[-50:]) < 0.35, np.mean(losses[-50:])
    acc = greedy_accuracy(nnx.merge(graphdef, state.params), TASK, [1], 200,
                          max_new_tokens=24)[1]
    # P(>= 4 of 200 right | chance 1/1000) < 1e-4.
    assert acc >= 0.02, acc


def _params(workdir):
    model, _, _ = restore_model(workdir)
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def _launch(workdir, *extra):
    cmd = [sys.executable, str(ROOT / "launch/train.py"),
           f"--config={ROOT / 'experiments/policy_small.py'}:local", f"--workdir={workdir}",
           "--config.train.num_steps=60", "--config.train.save_every=10",
           "--config.train.eval_every=0", *extra]
    return cmd


@pytest.mark.slow
def test_resume_after_sigkill_ends_bit_identical_to_uninterrupted_run(tmp_path):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run goes alongside the one that gets killed (one core each)
    ref_err = open(tmp_path / "straight.err", "wb")  # noqa: SIM115 - closed below
    ref = subprocess.Popen(_launch(straight), env=env, stdout=subprocess.DEVNULL,
                           stderr=ref_err)
    proc = subprocess.Popen(_launch(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "20").exists():  # mid-run, with steps to redo
        assert time.time() < deadline and proc.poll() is None, "run ended before step 20"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] < 60, "the kill came too late to test a resume"
    subprocess.run(_launch(killed), check=True, env=env, capture_output=True)
    code = ref.wait(timeout=300)
    ref_err.close()
    assert code == 0, (tmp_path / "straight.err").read_text()[-2000:]
    for a, b in zip(_params(straight), _params(killed), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if "loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == 60  # no duplicate or lost rows


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    wd = tmp_path / "run"
    proc = subprocess.Popen(_launch(wd, "--config.train.num_steps=100000",
                                    "--config.train.save_every=100000"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (wd / "metrics.jsonl").exists() or not (wd / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    steps = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 10  # saved off the save_every grid


def test_fresh_start_never_overwrites_and_config_mismatch_is_named(tmp_path):
    cfg = tiny_config(num_steps=10)
    train(cfg, tmp_path)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(cfg, tmp_path, resume=False)
    bad = tiny_config(num_steps=10)
    bad["model"]["mlp_dim"] = 32
    with pytest.raises(CheckpointConfigMismatch, match=r"model\.mlp_dim: checkpoint has 64"):
        train(bad, tmp_path)
    longer = tiny_config(num_steps=15)  # extending a run is allowed
    _, state = train(longer, tmp_path)
    assert int(state.step) == 15


def test_unknown_kind_and_vocab_mismatch_fail_early(tmp_path):
    with pytest.raises(ValueError, match="unknown config kind 'rl'"):
        train(dict(tiny_config(), kind="rl"), tmp_path / "a")
    cfg = tiny_config()
    cfg["model"]["vocab_size"] = 30
    with pytest.raises(ValueError, match="vocab_size=21"):
        train(cfg, tmp_path / "b")


def test_data_parallel_train_steps_match_one_device():
    """Batch split over a 2-device `data` axis: same params as one device (1e-5)."""
    from ttc_jax.config import MeshConfig
    from ttc_jax.parallel import make_mesh, replicated, shard_batch

    mc = ModelConfig(**TINY)
    tc = TrainConfig(batch_size=8, difficulty_max=2)
    tx = make_optimizer(tc)
    graphdef, one = create_state(init_model(mc), tc, tx)
    _, two = create_state(init_model(mc), tc, tx)  # own buffers: the step donates its input
    step = make_train_step(graphdef, lm_loss, tx)
    mesh = make_mesh(MeshConfig(data=2), jax.devices()[:2])
    two = jax.device_put(two, replicated(mesh))
    for s in range(3):
        batch = data.lm_batch(TASK, tc, s)
        one, _ = step(one, batch)
        two, _ = step(two, shard_batch(batch, mesh))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not divisible by mesh.data=2"):
        shard_batch({"tokens": np.zeros((3, 4))}, mesh)
    with pytest.raises(ValueError, match=r"data\*model\*stage=4\*1\*1=4 but 2 devices"):
        make_mesh(MeshConfig(data=4), jax.devices()[:2])
