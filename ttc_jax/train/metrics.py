"""Training metrics: a JSON-lines log (plus optional TensorBoard) and a progress line.

`MetricsWriter` appends ``{"step", "time", **metrics}`` rows to a ``.jsonl`` file, one per
line, flushed at each write, so a killed run loses at most the row being written. After a
resume from step ``s``, ``writer.truncate_after(s)`` drops the rows that the resumed run will
write again, so the log has each step once.

`ProgressLine` prints ``step 1200/5000 | loss 0.512 | 4.1 steps/s | 12.3k tok/s | ETA
15m20s`` every few seconds; `format_progress` is the pure formatting function behind it.

This module does not import jax: values are converted through numpy (``float(x)`` works on a
jax scalar, and so does ``np.asarray``).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

ScalarWriter = Callable[[str, float, int], None]


class MetricsWriter:
    """Appends one JSON object per line to ``path``; optionally mirrors to TensorBoard.

    Args:
      path: the ``.jsonl`` file. It is created (with its parent directories) or appended to.
      tensorboard_dir: also write scalars there, with ``tensorboardX`` or, failing that,
        ``tensorflow``. When neither imports, TensorBoard is skipped (`tensorboard_enabled`
        is False) and only the JSON log is written.

    Values must be scalars: Python numbers, bools, strings, or numpy/jax arrays of one
    element (written as floats; integer arrays too). ``NaN`` and ``inf`` are written as the
    bare tokens ``NaN``/``Infinity``, which Python's `json` reads back.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, tensorboard_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_last_line(self.path)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._tensorboard: _TensorBoard | None = None
        if tensorboard_dir is not None:
            self._tensorboard = _open_tensorboard(Path(tensorboard_dir))

    @property
    def tensorboard_enabled(self) -> bool:
        """Whether scalars also go to TensorBoard."""
        return self._tensorboard is not None

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Appends ``{"step": step, "time": <unix seconds>, **metrics}`` and flushes it.

        Returns the row as written.
        """
        if "step" in metrics or "time" in metrics:
            raise ValueError("metrics may not use the keys 'step' and 'time'; rename them.")
        row: dict[str, Any] = {"step": int(step), "time": time.time()}
        row.update({name: to_json_scalar(name, value) for name, value in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for name, value in row.items():
                if name not in ("step", "time") and isinstance(value, (int, float)):
                    self._tensorboard.scalar(name, float(value), int(step))
            self._tensorboard.flush()
        return row

    def truncate_after(self, step: int) -> int:
        """Drops rows whose step is greater than ``step`` (call it after resuming there).

        Rows that do not parse (a line torn by a kill) are dropped too. The file is
        rewritten atomically. Returns the number of rows dropped.
        """
        self._file.close()
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line + "\n")
            else:
                dropped += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        """Closes the file (and the TensorBoard writer)."""
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a metrics file, in order (a torn last line is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def to_json_scalar(name: str, value: Any) -> float | int | bool | str | None:
    """A metric value as a JSON scalar; numpy/jax arrays of one element become floats."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    array = np.asarray(value)
    if array.size != 1:
        raise TypeError(
            f"metric {name!r} has shape {array.shape}; log scalars (reduce it with .mean() "
            "or log its elements under separate names)."
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(f"metric {name!r} has dtype {array.dtype}; log a number instead.")
    return float(array.reshape(()))


def _drop_torn_last_line(path: Path) -> None:
    """Cuts an unterminated last line (a write cut by a kill) so appends start cleanly."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    logger.warning("Dropping a torn last line of %s (written when the run was killed).", path)
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


class _TensorBoard:
    """The two TensorBoard writers we may find, behind one interface."""

    def __init__(self, scalar: ScalarWriter, flush: Callable[[], Any], close: Callable[[], Any]):
        self.scalar, self.flush, self.close = scalar, flush, close


def _open_tensorboard(logdir: Path) -> _TensorBoard | None:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        pass
    else:
        writer = SummaryWriter(str(logdir))
        return _TensorBoard(writer.add_scalar, writer.flush, writer.close)
    try:
        import tensorflow as tf
    except ImportError:
        logger.info("No tensorboardX or tensorflow: not writing TensorBoard logs to %s.", logdir)
        return None
    tf_writer = tf.summary.create_file_writer(str(logdir))

    def scalar(name: str, value: float, step: int) -> None:
        with tf_writer.as_default():
            tf.summary.scalar(name, value, step=step)

    return _TensorBoard(scalar, tf_writer.flush, tf_writer.close)


# ----------------------------------------------------------------- progress line


def format_duration(seconds: float) -> str:
    """``920 -> "15m20s"``, ``3725 -> "1h02m05s"``, ``45 -> "45s"``; unknown -> ``"?"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_count(value: float) -> str:
    """``950 -> "950"``, ``12345 -> "12.3k"``, ``1.5e6 -> "1.5M"``, ``2.5e9 -> "2.5G"``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def format_progress(
    step: int,
    total_steps: int,
    metrics: Mapping[str, float] | None = None,
    *,
    steps_per_sec: float | None = None,
    tokens_per_sec: float | None = None,
) -> str:
    """``step 1200/5000 | loss 0.512 | 4.1 steps/s | 12.3k tok/s | ETA 15m20s``.

    Rates and ETA are left out when unknown (None, or no steps per second yet).
    """
    parts = [f"step {step}/{total_steps}"]
    parts += [f"{name} {float(value):.4g}" for name, value in (metrics or {}).items()]
    if steps_per_sec is not None and steps_per_sec > 0:
        parts.append(f"{steps_per_sec:.3g} steps/s")
        if tokens_per_sec is not None:
            parts.append(f"{format_count(tokens_per_sec)} tok/s")
        eta = max(total_steps - step, 0) / steps_per_sec
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class ProgressLine:
    """Prints a progress line at most every ``every_seconds``, with rates over a window.

    Call ``update(step, tokens=..., loss=...)`` after each step, or each logged step. Rates
    are measured over the last ``window`` calls, so the slow first (compiling) step stops
    counting once it leaves the window.

    Args:
      total_steps: the step the run ends at.
      tokens_per_step: tokens in one step's batch, for a ``tok/s`` rate when `update` is
        not given token counts.
      every_seconds: the least time between printed lines (the first call always prints,
        and so does the last step).
      window: how many recent calls the rates are computed over.
      stream: where lines go (default: stderr); None prints nothing, `update` still returns.
      clock: seconds as a float (a fake one in tests).
    """

    def __init__(
        self,
        total_steps: int,
        tokens_per_step: int | None = None,
        *,
        every_seconds: float = 10.0,
        window: int = 50,
        stream: IO[str] | None = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 2:
            raise ValueError(f"window={window} must be >= 2 to measure a rate.")
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.every_seconds = every_seconds
        self.stream = stream
        self.clock = clock
        # (time, step, tokens counted so far) of the last `window` updates.
        self._samples: collections.deque[tuple[float, int, float]] = collections.deque(
            maxlen=window
        )
        self._tokens = 0.0
        self._counted_tokens = False
        self._last_print: float | None = None

    def rates(self) -> tuple[float | None, float | None]:
        """``(steps/s, tokens/s)`` over the window; None where not measurable yet."""
        if len(self._samples) < 2:
            return None, None
        (t0, s0, k0), (t1, s1, k1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None, None
        steps_per_sec = (s1 - s0) / (t1 - t0)
        if self._counted_tokens:
            return steps_per_sec, (k1 - k0) / (t1 - t0)
        if self.tokens_per_step is not None:
            return steps_per_sec, steps_per_sec * self.tokens_per_step
        return steps_per_sec, None

    def update(self, step: int, *, tokens: float | None = None, **metrics: Any) -> str | None:
        """Records that ``step`` is done; returns (and prints) a line when one is due.

        Args:
          step: the number of steps done.
          tokens: tokens processed since the previous call (overrides ``tokens_per_step``).
          **metrics: scalars to show, in order (``loss=0.51``).
        """
        now = self.clock()
        if tokens is not None:
            self._tokens += float(tokens)
            self._counted_tokens = True
        self._samples.append((now, step, self._tokens))
        due = (
            self._last_print is None
            or now - self._last_print >= self.every_seconds
            or step >= self.total_steps
        )
        if not due:
            return None
        self._last_print = now
        steps_per_sec, tokens_per_sec = self.rates()
        line = format_progress(
            step,
            self.total_steps,
            {name: float(to_json_scalar(name, value)) for name, value in metrics.items()},
            steps_per_sec=steps_per_sec,
            tokens_per_sec=tokens_per_sec,
        )
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        return line
