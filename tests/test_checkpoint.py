"""Specification of `ttc_jax.train.checkpoint.Checkpointer`, with damage done on disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ttc_jax.train.checkpoint import (
    CheckpointConfigMismatch,
    CheckpointCorrupt,
    Checkpointer,
    config_diff,
    flatten_config,
)

# After a failed read of a damaged checkpoint, orbax's other in-flight reads fail on its
# closed event loop; their abandoned coroutines are reported whenever they are collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CONFIG = {
    "model": {"d_model": 64, "n_layers": 2, "dims": (4, 8)},
    "train": {"num_steps": 100, "log_every": 10, "lr": 3e-4},
}


def make_state(seed: int = 0) -> dict:
    """A training state with every kind of leaf a run stores."""
    _, params = nnx.split(nnx.Linear(3, 4, rngs=nnx.Rngs(seed)))
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # Non-zero moments, count=1.
    return {
        "params": params,
        "opt_state": opt_state,
        "step": 7,
        "rng": jax.random.key(seed + 1),  # Typed key.
        "raw_rng": jax.random.PRNGKey(seed + 2),  # uint32 key data.
        "ema": jnp.full((5,), 0.25, jnp.bfloat16),
        # Big enough that its data lies in a file of its own rather than inline in the index.
        "big": jax.random.normal(jax.random.key(seed), (20_000,)),
    }


def assert_trees_equal(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a_dtype, e_dtype = jnp.asarray(a).dtype, jnp.asarray(e).dtype
        if jax.dtypes.issubdtype(e_dtype, jax.dtypes.prng_key):
            assert a_dtype == e_dtype
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        elif isinstance(e, jax.Array):
            assert a_dtype == e_dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def saved_run(workdir: Path, steps=(10, 20, 30), **kwargs) -> Checkpointer:
    ckpt = Checkpointer(workdir, CONFIG, save_every=10, **kwargs)
    for step in steps:
        assert ckpt.save(step, make_state(step), extra={"data_position": 3 * step})
    return ckpt


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("target", ["abstract", "concrete"])
def test_round_trip_restores_equal_values_and_dtypes(workdir: Path, target: str) -> None:
    state = make_state(seed=3)
    ckpt = Checkpointer(workdir, CONFIG, save_every=5)
    assert ckpt.save(5, state, extra={"data_position": 123, "note": "hi"})

    template = make_state(seed=9)  # Same structure, different values.
    if target == "abstract":
        template = jax.eval_shape(lambda: template)
    restored, meta = ckpt.restore(template)

    assert isinstance(restored["params"], nnx.State)
    assert int(restored["step"]) == 7
    assert_trees_equal(
        {k: v for k, v in restored.items() if k != "step"},
        {k: v for k, v in state.items() if k != "step"},
    )
    assert meta["step"] == 5
    assert meta["data_position"] == 123
    assert meta["note"] == "hi"
    assert meta["config"] == json.loads(json.dumps(CONFIG))
    # The restored typed key is usable as a key.
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (3,)), jax.random.normal(state["rng"], (3,))
    )


def test_restore_gives_requested_dtype_and_sharding(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=1)
    ckpt.save(1, {"w": jnp.arange(8, dtype=jnp.float32).reshape(2, 4)})
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    target = {"w": jax.ShapeDtypeStruct((2, 4), jnp.bfloat16, sharding=sharding)}

    restored, _ = ckpt.restore(target)

    assert restored["w"].dtype == jnp.bfloat16
    assert restored["w"].sharding == sharding
    np.testing.assert_array_equal(restored["w"].astype(jnp.float32), np.arange(8).reshape(2, 4))


def test_default_data_position_is_the_step(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=1)
    ckpt.save(4, {"x": jnp.zeros(2)})
    _, meta = ckpt.restore({"x": jnp.zeros(2)})
    assert meta["data_position"] == 4


def test_extra_with_reserved_or_non_json_values_is_rejected(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=1)
    with pytest.raises(ValueError, match="reserved keys \\['config'\\]"):
        ckpt.save(1, {"x": jnp.zeros(2)}, extra={"config": {}})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ckpt.save(1, {"x": jnp.zeros(2)}, extra={"loss": object()})
    assert ckpt.all_steps() == []


# ----------------------------------------------------------- schedule and keep


def test_save_every_keep_and_latest_step(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=3, keep=2)
    assert ckpt.latest_step() is None
    saved = [step for step in range(1, 11) if ckpt.save(step, {"x": jnp.full(2, step)})]

    assert saved == [3, 6, 9]
    assert ckpt.all_steps() == [6, 9]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "9"]
    assert ckpt.latest_step() == 9
    assert ckpt.save(10, {"x": jnp.full(2, 10)}, force=True)
    assert ckpt.all_steps() == [9, 10]


def test_saving_an_existing_step_again_is_skipped(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=1)
    assert ckpt.save(2, {"x": jnp.zeros(2)})
    assert not ckpt.save(2, {"x": jnp.ones(2)}, force=True)
    restored, _ = ckpt.restore({"x": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["x"], np.zeros(2))


def test_config_json_is_written_on_first_start(workdir: Path) -> None:
    Checkpointer(workdir, CONFIG, save_every=1).close()
    assert json.loads((workdir / "config.json").read_text()) == json.loads(json.dumps(CONFIG))


# ------------------------------------------------------------- resume and config


def test_maybe_restore_starts_fresh_then_resumes_latest(workdir: Path) -> None:
    init = {"x": jnp.zeros(3), "step": jnp.asarray(0)}
    ckpt = Checkpointer(workdir, CONFIG, save_every=10)
    state, meta = ckpt.maybe_restore(init)
    assert state is init and meta is None
    saved_run(workdir).close()

    resumed = Checkpointer(workdir, CONFIG, save_every=10)
    state, meta = resumed.maybe_restore(make_state())
    assert meta["step"] == 30 and meta["data_position"] == 90
    assert_trees_equal(state, make_state(30))


def test_config_mismatch_names_each_key_and_the_path(workdir: Path) -> None:
    saved_run(workdir).close()
    other = {**CONFIG, "model": {**CONFIG["model"], "d_model": 128}, "new": True}
    ckpt = Checkpointer(workdir, other, save_every=10)

    with pytest.raises(CheckpointConfigMismatch) as info:
        ckpt.maybe_restore(make_state())
    message = str(info.value)
    assert "model.d_model: checkpoint has 64, this run has 128" in message
    assert "new: checkpoint has <missing>, this run has true" in message
    assert str(workdir / "checkpoints" / "30") in message
    assert "--workdir" in message
    assert "n_layers" not in message
    # It is a ValueError, and skipping the check restores anyway.
    assert isinstance(info.value, ValueError)
    _, meta = ckpt.restore(make_state(), check_config=False)
    assert meta["step"] == 30


def test_ignored_keys_may_change_so_a_run_can_be_extended(workdir: Path) -> None:
    saved_run(workdir).close()
    extended = {**CONFIG, "train": {**CONFIG["train"], "num_steps": 500, "log_every": 1}}
    _, meta = Checkpointer(workdir, extended, save_every=10).maybe_restore(make_state())
    assert meta["step"] == 30

    with pytest.raises(CheckpointConfigMismatch, match="train.num_steps"):
        Checkpointer(workdir, extended, save_every=10, ignore_keys=()).maybe_restore(
            make_state()
        )
    # A prefix ignores everything under it.
    faster = {**CONFIG, "train": {**CONFIG["train"], "lr": 1.0}}
    Checkpointer(workdir, faster, save_every=10, ignore_keys=("train",)).maybe_restore(
        make_state()
    )


def test_config_diff_and_flatten_config() -> None:
    assert flatten_config({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": 2,
        "e": {},
    }
    # Tuples and lists compare equal: both are JSON arrays on disk.
    assert config_diff({"a": [1, 2]}, {"a": (1, 2)}) == []
    assert config_diff({"a": {"b": "x"}}, {"a": {"b": "y"}}) == [
        'a.b: checkpoint has "x", this run has "y"'
    ]


def test_resume_false_never_overwrites_existing_checkpoints(workdir: Path) -> None:
    saved_run(workdir).close()
    with pytest.raises(FileExistsError) as info:
        Checkpointer(workdir, CONFIG, save_every=10, resume=False)
    assert str(workdir) in str(info.value)
    assert "new workdir" in str(info.value)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
    # A fresh workdir is fine.
    Checkpointer(workdir.parent / "fresh", CONFIG, save_every=10, resume=False).close()


def test_wrong_state_structure_is_a_value_error_not_corruption(workdir: Path) -> None:
    ckpt = saved_run(workdir)
    target = make_state()
    target["extra_buffer"] = jnp.zeros(2)
    target["big"] = jnp.zeros(7)
    with pytest.raises(ValueError) as info:
        ckpt.restore(target)
    assert not isinstance(info.value, CheckpointCorrupt)
    assert "extra_buffer: in abstract_state but not in the checkpoint" in str(info.value)
    assert "big: checkpoint has shape (20000,), abstract_state has (7,)" in str(info.value)


# ------------------------------------------------ missing, partial and corrupt


def test_missing_step_lists_available_steps(workdir: Path) -> None:
    ckpt = saved_run(workdir)
    with pytest.raises(FileNotFoundError) as info:
        ckpt.restore(make_state(), step=25)
    assert str(workdir / "checkpoints" / "25") in str(info.value)
    assert "[10, 20, 30]" in str(info.value)


def _assert_corrupt(ckpt: Checkpointer, step: int, match: str | None = None) -> CheckpointCorrupt:
    with pytest.raises(CheckpointCorrupt, match=match) as info:
        ckpt.restore(make_state(), step=step)
    message = str(info.value)
    assert str(ckpt.step_dir(step)) in message
    assert f"Delete {ckpt.step_dir(step)}" in message
    return info.value


@pytest.mark.parametrize("item", ["meta", "state"])
def test_step_missing_an_item_is_corrupt(workdir: Path, item: str) -> None:
    ckpt = saved_run(workdir)
    shutil.rmtree(workdir / "checkpoints" / "30" / item)
    error = _assert_corrupt(ckpt, 30, match="partial")
    assert f"['{item}']" in str(error)
    assert "resumes from step 20" in str(error)
    # maybe_restore does not silently pick another step.
    with pytest.raises(CheckpointCorrupt):
        ckpt.maybe_restore(make_state())
    # Deleting the step falls back to the previous one, as the message says.
    shutil.rmtree(workdir / "checkpoints" / "30")
    _, meta = ckpt.maybe_restore(make_state())
    assert meta["step"] == 20


@pytest.mark.parametrize(
    "relative",
    ["state/_METADATA", "state/manifest.ocdbt", "meta/metadata", "state/ocdbt.process_0"],
)
def test_step_missing_a_file_is_corrupt(workdir: Path, relative: str) -> None:
    ckpt = saved_run(workdir)
    path = workdir / "checkpoints" / "30" / relative
    assert path.exists(), f"orbax layout changed: {path} is not written any more"
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    error = _assert_corrupt(ckpt, 30)
    assert error.__cause__ is not None or "no readable tree metadata" in str(error)


def _data_files(step_dir: Path) -> list[Path]:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no orbax data files under {step_dir}/state"
    return files


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_damaged_data_files_are_corrupt(workdir: Path, damage: str) -> None:
    ckpt = saved_run(workdir)
    for path in _data_files(workdir / "checkpoints" / "30"):
        data = path.read_bytes()
        path.write_bytes(b"\x00garbage!" * 8 if damage == "garbage" else data[: len(data) // 2])
    error = _assert_corrupt(ckpt, 30, match="partial or corrupt")
    assert error.__cause__ is not None
    # Other steps are untouched.
    _, meta = ckpt.restore(make_state(), step=20)
    assert meta["step"] == 20


def test_garbage_meta_json_is_corrupt(workdir: Path) -> None:
    ckpt = saved_run(workdir)
    (workdir / "checkpoints" / "30" / "meta" / "metadata").write_text("{not json")
    assert isinstance(_assert_corrupt(ckpt, 30).__cause__, json.JSONDecodeError)


def test_interrupted_save_is_ignored_on_resume_and_corrupt_when_asked_for(
    workdir: Path,
) -> None:
    ckpt = saved_run(workdir)
    ckpt.close()
    # What a kill during a save leaves: the step only exists under orbax's temporary name.
    root = workdir / "checkpoints"
    os.rename(root / "30", root / "30.orbax-checkpoint-tmp")

    resumed = Checkpointer(workdir, CONFIG, save_every=10)
    assert resumed.all_steps() == [10, 20]
    assert resumed.interrupted_steps() == [30]
    _, meta = resumed.maybe_restore(make_state())
    assert meta["step"] == 20
    _assert_corrupt(resumed, 30, match="never finalized")
    # Saving that step again replaces the temporary directory.
    assert resumed.save(30, make_state(30))
    assert resumed.interrupted_steps() == []
    _, meta = resumed.restore(make_state())
    assert meta["step"] == 30


# ------------------------------------------------------------------ preemption


def test_sigterm_sets_should_stop_and_restores_previous_handler(workdir: Path) -> None:
    ckpt = Checkpointer(workdir, CONFIG, save_every=10)
    calls = []
    previous = lambda signum, frame: calls.append(signum)
    original = signal.signal(signal.SIGTERM, previous)
    try:
        with ckpt.preemption_handler():
            assert signal.getsignal(signal.SIGTERM) is not previous
            assert not ckpt.should_stop
            os.kill(os.getpid(), signal.SIGTERM)
            assert ckpt.should_stop
            assert calls == []
            # A second signal while stopping goes to the previous handler.
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def test_preempted_loop_saves_its_step_and_resumes_there(workdir: Path) -> None:
    def train(start_state, stop_at: int | None) -> tuple[dict, int]:
        ckpt = Checkpointer(workdir, CONFIG, save_every=100)
        state, meta = ckpt.maybe_restore(start_state)
        step = 0 if meta is None else meta["step"]
        with ckpt.preemption_handler():
            while step < 10:
                step += 1
                state = {"x": state["x"] + 1}
                if step == stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                ckpt.save(step, state, force=ckpt.should_stop or step == 10)
                if ckpt.should_stop:
                    break
        ckpt.close()
        return state, step

    state, step = train({"x": jnp.zeros(2)}, stop_at=4)
    assert step == 4
    state, step = train({"x": jnp.zeros(2)}, stop_at=None)
    assert step == 10
    np.testing.assert_array_equal(state["x"], np.full(2, 10.0))
    assert Checkpointer(workdir, CONFIG, save_every=100).all_steps() == [4, 10]
