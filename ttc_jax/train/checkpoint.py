"""Preemption-safe checkpoints of a training run, on top of orbax.

One `Checkpointer` owns `workdir/checkpoints/<step>/`. Each step holds two items:

* ``state``: any pytree of arrays (NNX `State`, optax state, step counter, typed or raw PRNG
  keys, EMA, ...), written with `ocp.args.StandardSave`;
* ``meta``: a JSON object ``{"step", "config", "data_position", **extra}``.

The run's config is also written to ``workdir/config.json`` on a fresh start, and it is
compared with the checkpoint's config before a restore, so a run cannot silently resume
from a checkpoint of a different experiment.

Typical loop::

    ckpt = Checkpointer(workdir, config, save_every=1000)
    state, meta = ckpt.maybe_restore(init_state)
    start = 0 if meta is None else meta["step"]
    with ckpt.preemption_handler():
        for step in range(start + 1, num_steps + 1):
            state = train_step(state, batch_for(step))
            ckpt.save(step, state, force=ckpt.should_stop or step == num_steps)
            if ckpt.should_stop:
                break
    ckpt.close()

How orbax 0.12.8 marks a finished save (checked by experiment): a step is written into
``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>`` when complete, so a kill during a
save leaves only the temporary directory, which `all_steps()` ignores. A kill while
`max_to_keep` deletes an old step can leave a half-deleted ``<step>`` directory that orbax
still lists; `restore` detects it and raises `CheckpointCorrupt`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

PyTree = Any

DEFAULT_IGNORE_KEYS: tuple[str, ...] = (
    "train.num_steps", "train.log_every", "train.eval_every", "train.eval_problems",
    "train.save_every", "train.keep_checkpoints", "mesh")
"""Config keys that may change between a run and its resumption: the length of the run
(to extend it), bookkeeping that does not change the weights, and the mesh (a run may
resume on another device layout; orbax restores into the new shardings)."""

STATE_ITEM = "state"
META_ITEM = "meta"
_ITEMS = (STATE_ITEM, META_ITEM)
_RESERVED_META_KEYS = ("step", "config")
_MISSING = object()


class CheckpointConfigMismatch(ValueError):
    """The checkpoint was written by a run with a different config."""


class CheckpointCorrupt(RuntimeError):
    """A checkpoint step is partial (interrupted save or deletion) or its files are damaged."""


class Checkpointer:
    """Saves and restores a training run's state in ``workdir/checkpoints/<step>/``.

    Saves are synchronous: when `save` returns True the step is on disk and finalized.

    Args:
      workdir: the run's directory. Checkpoints go to ``workdir/checkpoints``.
      config: the run's config, a JSON-serialisable mapping (a dataclass or an object with
        ``to_dict()``, such as an ml_collections ``ConfigDict``, is converted first).
      save_every: `save` writes when ``step % save_every == 0`` (or when forced).
      keep: how many of the most recent steps to keep on disk; None keeps all.
      resume: True to continue the run found in ``workdir``. False asserts a fresh start:
        it raises `FileExistsError` when ``workdir`` already holds checkpoints.
      ignore_keys: dotted config keys (``"train.num_steps"``), or prefixes of them
        (``"train"``), that may differ from the checkpoint's config.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        config: Mapping[str, Any],
        *,
        save_every: int,
        keep: int | None = 3,
        resume: bool = True,
        ignore_keys: Iterable[str] = DEFAULT_IGNORE_KEYS,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every={save_every} must be >= 1 (1 saves every step).")
        if keep is not None and keep < 1:
            raise ValueError(f"keep={keep} must be >= 1, or None to keep every checkpoint.")
        self.workdir = Path(workdir).absolute()
        self.checkpoint_dir = self.workdir / "checkpoints"
        self.config = _normalise_config(config)
        self.save_every = save_every
        self.ignore_keys = tuple(ignore_keys)
        self._stop_signal: int | None = None

        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,  # `save` decides; orbax must not skip a step we ask for.
            enable_async_checkpointing=False,
            create=True,
        )
        # Handlers are registered up front: with `item_names` only, a new manager cannot
        # read an item's metadata until it has saved or restored that item once.
        handlers = {
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            META_ITEM: ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.checkpoint_dir, options=options, item_handlers=handlers
        )
        steps = self.all_steps()
        if steps and not resume:
            self._manager.close()
            raise FileExistsError(
                f"Workdir {self.workdir} already holds checkpoints (steps {steps}) and "
                "resume=False would overwrite them. Pass a new workdir, delete "
                f"{self.checkpoint_dir} if that run is no longer needed, or pass "
                "resume=True to continue it."
            )
        if not steps and jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            config_json = json.dumps(self.config, indent=2, sort_keys=True) + "\n"
            (self.workdir / "config.json").write_text(config_json)

    # ----------------------------------------------------------------- queries

    def all_steps(self) -> list[int]:
        """Finalized checkpoint steps on disk, ascending (re-read from disk each call)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalized step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        """The directory of ``step`` (which may not exist)."""
        return self.checkpoint_dir / str(step)

    def interrupted_steps(self) -> list[int]:
        """Steps whose save was interrupted: only orbax's temporary directory exists."""
        if not self.checkpoint_dir.is_dir():
            return []
        names = (path.name for path in self.checkpoint_dir.iterdir())
        steps = {step for step in map(_tmp_dir_step, names) if step is not None}
        return sorted(steps - set(self.all_steps()))

    # -------------------------------------------------------------------- save

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` at ``step`` when ``step % save_every == 0`` or ``force``.

        Args:
          step: the number of training steps done.
          state: a pytree of arrays; typed PRNG keys (`jax.random.key`) are supported.
          extra: JSON-serialisable values stored in the checkpoint's meta. Its
            ``data_position`` (how far the data pipeline has read) defaults to ``step``.
          force: save even off the ``save_every`` grid (at preemption or the last step).

        Returns:
          True if the step was written; False if it is off the grid or already on disk.
        """
        if not force and step % self.save_every != 0:
            return False
        steps = self.all_steps()
        if step in steps:
            logger.info("Checkpoint for step %d already exists in %s; not saving.",
                        step, self.checkpoint_dir)
            return False
        if steps and step < steps[-1]:
            logger.warning(
                "Saving step %d while %s holds later step %d; a resume will pick step %d.",
                step, self.checkpoint_dir, steps[-1], steps[-1],
            )
        meta = self._make_meta(step, extra)
        args = ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
        )
        return bool(self._manager.save(step, args=args, force=True))

    def _make_meta(self, step: int, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        extra = dict(extra or {})
        reserved = sorted(set(extra) & set(_RESERVED_META_KEYS))
        if reserved:
            raise ValueError(
                f"extra may not contain the reserved keys {reserved}: the checkpoint stores "
                "the step and the run's config itself. Rename them."
            )
        meta = {"step": step, "config": self.config, "data_position": step, **extra}
        try:
            json.dumps(meta)
        except TypeError as e:
            raise TypeError(
                f"extra must be JSON-serialisable (convert arrays with int()/float()): {e}"
            ) from e
        return meta

    # ----------------------------------------------------------------- restore

    def restore(
        self,
        abstract_state: PyTree,
        step: int | None = None,
        *,
        check_config: bool = True,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Restores ``step`` (default: the latest) into the structure of ``abstract_state``.

        Args:
          abstract_state: a pytree like the saved one whose leaves are arrays or
            `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`). Restored arrays get the
            leaves' dtypes and shardings; a `ShapeDtypeStruct` without a sharding is placed
            as it was saved (orbax reads the saved sharding; pass shardings when the device
            topology may have changed). Python scalar leaves come back as 0-d numpy arrays
            when the target is abstract and as Python scalars when the target is concrete.
          step: the step to restore; None means the latest.
          check_config: compare the checkpoint's config with this run's config.

        Returns:
          ``(state, meta)``, with ``meta`` the JSON dict written by `save`.

        Raises:
          FileNotFoundError: no such step (the message lists the available steps).
          CheckpointCorrupt: the step is partial or its files are damaged.
          CheckpointConfigMismatch: the configs differ outside ``ignore_keys``.
          ValueError: ``abstract_state`` does not have the saved tree structure or shapes.
        """
        step = self._resolve_step(step)
        path = self.step_dir(step)
        missing = [item for item in _ITEMS if not (path / item).is_dir()]
        if missing:
            raise CheckpointCorrupt(
                f"Checkpoint {path} is partial: item(s) {missing} are missing (the process "
                "was probably killed while saving or deleting it). "
                + self._fallback_advice(step)
            )

        meta = self._restore_items(step, {META_ITEM: ocp.args.JsonRestore()})[META_ITEM]
        if not isinstance(meta, dict) or "config" not in meta:
            raise CheckpointCorrupt(
                f"Checkpoint {path} has no config in its meta item ({meta!r}). "
                + self._fallback_advice(step)
            )
        if check_config:
            self._check_config(meta["config"], path)

        try:
            saved_tree = self._manager.item_metadata(step)[STATE_ITEM]
        except Exception as e:
            raise self._corrupt(step, e) from e
        if saved_tree is None:
            raise CheckpointCorrupt(
                f"Checkpoint {path / STATE_ITEM} has no readable tree metadata. "
                + self._fallback_advice(step)
            )
        problems = _structure_problems(abstract_state, saved_tree)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"The state in {path} does not match abstract_state:\n  {shown}{more}\n"
                "Build abstract_state from the same model and optimizer as the saved run."
            )

        restored = self._restore_items(
            step, {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        )
        return restored[STATE_ITEM], meta

    def maybe_restore(self, init_state: PyTree) -> tuple[PyTree, dict[str, Any] | None]:
        """Resumes from the latest checkpoint if there is one.

        Returns ``(restored_state, meta)``, or ``(init_state, None)`` on a fresh start.
        ``init_state`` gives the structure, dtypes and shardings of the restored state.
        """
        interrupted = self.interrupted_steps()
        if interrupted:
            logger.warning(
                "Ignoring interrupted saves of steps %s in %s (left by a kill during a save).",
                interrupted, self.checkpoint_dir,
            )
        if self.latest_step() is None:
            return init_state, None
        state, meta = self.restore(init_state)
        logger.info("Resumed from %s.", self.step_dir(meta["step"]))
        return state, meta

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(
                    f"No checkpoints in {self.checkpoint_dir}; use maybe_restore() to start "
                    "fresh when there is nothing to resume."
                )
            return steps[-1]
        if step in steps:
            return step
        path = self.step_dir(step)
        if step in self.interrupted_steps():
            raise CheckpointCorrupt(
                f"Checkpoint {path} was never finalized: its save was interrupted and only "
                f"orbax's temporary directory {path}{ocp.step.TMP_DIR_SUFFIX}* exists. "
                + self._fallback_advice(step)
            )
        raise FileNotFoundError(
            f"No checkpoint for step {step} at {path}. Available steps: {steps or 'none'}."
        )

    def _restore_items(self, step: int, items: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            # A failed read leaves orbax's other reads as abandoned coroutines in reference
            # cycles. Finalize them now: left to a later automatic collection, their errors
            # can surface inside unrelated code (under Python 3.11.7, inside `ast.parse`,
            # which then fails with "AST constructor recursion depth mismatch").
            gc.collect()
            raise self._corrupt(step, e) from e

    def _corrupt(self, step: int, error: Exception) -> CheckpointCorrupt:
        detail = str(error).strip().splitlines()[0][:500] if str(error).strip() else ""
        return CheckpointCorrupt(
            f"Could not read checkpoint {self.step_dir(step)}: it is partial or corrupt "
            f"({type(error).__name__}: {detail}). " + self._fallback_advice(step)
        )

    def _fallback_advice(self, step: int) -> str:
        earlier = [s for s in self.all_steps() if s < step]
        then = (
            f"the run then resumes from step {earlier[-1]}"
            if earlier
            else "there is no earlier checkpoint, so the run then starts from scratch"
        )
        return f"Delete {self.step_dir(step)} to fall back to the previous checkpoint ({then})."

    def _check_config(self, saved_config: Mapping[str, Any], path: Path) -> None:
        diffs = config_diff(saved_config, self.config, ignore_keys=self.ignore_keys)
        if not diffs:
            return
        lines = "\n  ".join(diffs)
        raise CheckpointConfigMismatch(
            f"Checkpoint {path} was written with a different config:\n  {lines}\n"
            "Resume with the same config as that run (see its config.json), or start a new "
            "run with a new --workdir (resume=False with a fresh workdir). Keys allowed to "
            f"differ: {list(self.ignore_keys)}."
        )

    # --------------------------------------------------------------- preemption

    @property
    def should_stop(self) -> bool:
        """True once a preemption signal arrived (or `request_stop` was called)."""
        return self._stop_signal is not None

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Sets `should_stop`, as a signal caught by `preemption_handler` would."""
        self._stop_signal = signum

    @contextlib.contextmanager
    def preemption_handler(
        self, signals: Sequence[int] = (signal.SIGTERM,)
    ) -> Iterator[Checkpointer]:
        """While active, ``signals`` set `should_stop` instead of killing the process.

        The loop should check `should_stop` after each step, save with ``force=True`` and
        exit. A second signal while stopping goes to the previous handler (so a second
        Ctrl-C still interrupts). The previous handlers are restored on exit. Must be
        entered from the main thread. On several hosts, agree on the stop step first
        (e.g. orbax's ``CheckpointManager.reached_preemption``), or hosts may save
        different steps.
        """
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is None:
                self._stop_signal = signum
                logger.warning(
                    "Received %s: will save a checkpoint and stop after this step.",
                    signal.Signals(signum).name,
                )
                return
            _forward_signal(signum, frame, previous[signum])

        try:
            for signum in signals:
                previous[signum] = signal.signal(signum, handler)
        except ValueError as e:
            _restore_handlers(previous)
            raise RuntimeError(
                "preemption_handler() must be entered from the main thread (Python only "
                f"delivers signals there): {e}"
            ) from e
        try:
            yield self
        finally:
            _restore_handlers(previous)

    # ------------------------------------------------------------------ cleanup

    def wait(self) -> None:
        """Blocks until pending saves are on disk (saves are synchronous; kept for API)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending work and releases orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d": 64}}`` -> ``{"model.d": 64}`` (empty mappings stay as values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def config_diff(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    ignore_keys: Iterable[str] = DEFAULT_IGNORE_KEYS,
) -> list[str]:
    """Lines ``"key: checkpoint has A, this run has B"`` for each differing dotted key.

    A key is ignored when it equals an entry of ``ignore_keys`` or lies under it.
    """
    ignore = tuple(ignore_keys)
    flat_saved = flatten_config(_normalise_config(saved))
    flat_current = flatten_config(_normalise_config(current))
    lines = []
    for key in sorted(flat_saved.keys() | flat_current.keys()):
        if any(key == k or key.startswith(f"{k}.") for k in ignore):
            continue
        old = flat_saved.get(key, _MISSING)
        new = flat_current.get(key, _MISSING)
        if old != new:
            lines.append(f"{key}: checkpoint has {_show(old)}, this run has {_show(new)}")
    return lines


def _show(value: Any) -> str:
    return "<missing>" if value is _MISSING else json.dumps(value)


def _normalise_config(config: Any) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), as it reads back from disk."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif not isinstance(config, Mapping) and hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}.")
    try:
        return json.loads(json.dumps(config))
    except TypeError as e:
        raise TypeError(
            f"config must be JSON-serialisable (plain dicts, lists, str, numbers): {e}"
        ) from e


def _tmp_dir_step(name: str) -> int | None:
    """The step of an orbax temporary directory name (``12.orbax-checkpoint-tmp[-ts]``)."""
    head, sep, _ = name.partition(ocp.step.TMP_DIR_SUFFIX)
    return int(head) if sep and head.isdigit() else None


def _structure_problems(target: PyTree, saved_tree: PyTree) -> list[str]:
    """Keys missing on either side, and shapes that differ, between target and checkpoint."""
    want = ocp.tree.to_flat_dict(target, sep=".")
    have = ocp.tree.to_flat_dict(saved_tree, sep=".")
    problems = [f"{k}: in abstract_state but not in the checkpoint" for k in want.keys() - have]
    problems += [f"{k}: in the checkpoint but not in abstract_state" for k in have.keys() - want]
    for key in sorted(want.keys() & have.keys()):
        leaf, saved = want[key], have[key]
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue  # Saved as key data, whose shape has an extra trailing axis.
        shape, saved_shape = getattr(leaf, "shape", None), getattr(saved, "shape", None)
        if shape is not None and saved_shape is not None and tuple(shape) != tuple(saved_shape):
            problems.append(
                f"{key}: checkpoint has shape {tuple(saved_shape)}, "
                f"abstract_state has {tuple(shape)}"
            )
    return sorted(problems)


def _forward_signal(signum: int, frame: FrameType | None, previous: Any) -> None:
    """Delivers a signal to the handler that was installed before ours."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
