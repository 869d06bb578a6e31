"""Specification of `ttc_jax.train.metrics`: the JSON-lines log and the progress line."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.train.metrics import (
    MetricsWriter,
    ProgressLine,
    format_count,
    format_duration,
    format_progress,
    read_metrics,
)

# ------------------------------------------------------------------ JSON lines


def test_rows_are_appended_flushed_and_converted_to_plain_numbers(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write(1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25), "n": 3, "tag": "a"})
    writer.write(2, {"loss": jnp.asarray([1.5]), "tokens": np.int64(7), "ok": jnp.bool_(True)})

    # Flushed: readable before close.
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["step"] == 1 and first["loss"] == 0.5 and first["acc"] == 0.25
    assert first["n"] == 3 and first["tag"] == "a"
    assert second == {**second, "step": 2, "loss": 1.5, "tokens": 7.0, "ok": 1.0}
    assert isinstance(second["tokens"], float)
    assert first["time"] <= second["time"]
    writer.close()


def test_nan_loss_is_logged_and_reads_back(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path / "m.jsonl") as writer:
        writer.write(1, {"loss": jnp.float32(jnp.nan)})
    assert math.isnan(read_metrics(tmp_path / "m.jsonl")[0]["loss"])


def test_non_scalar_metric_and_reserved_names_are_rejected(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path / "m.jsonl") as writer:
        with pytest.raises(TypeError, match="'logits' has shape \\(2, 3\\)"):
            writer.write(1, {"logits": jnp.zeros((2, 3))})
        with pytest.raises(ValueError, match="'step' and 'time'"):
            writer.write(1, {"step": 3})
    assert read_metrics(tmp_path / "m.jsonl") == []


def test_reopen_appends_and_truncate_after_drops_later_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        for step in (10, 20, 30, 40):
            writer.write(step, {"loss": 1.0 / step})
        writer.write(40, {"eval/acc": 0.5})

    # The run is resumed from its checkpoint at step 20: rows after it will be rewritten.
    with MetricsWriter(path) as writer:
        assert writer.truncate_after(20) == 3
        writer.write(30, {"loss": 0.03})

    rows = read_metrics(path)
    assert [row["step"] for row in rows] == [10, 20, 30]
    assert rows[-1]["loss"] == 0.03
    assert not path.with_name("metrics.jsonl.tmp").exists()


def test_torn_last_line_from_a_kill_is_dropped_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 0, "loss": 1.0}\n{"step": 2, "ti')
    with MetricsWriter(path) as writer:
        writer.write(2, {"loss": 0.5})
    assert [row["step"] for row in read_metrics(path)] == [1, 2]
    assert len(path.read_text().splitlines()) == 2


def test_tensorboard_is_skipped_when_no_writer_can_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import` raises ImportError.
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb") as writer:
        assert not writer.tensorboard_enabled
        writer.write(1, {"loss": 0.5})
    assert read_metrics(tmp_path / "m.jsonl")[0]["loss"] == 0.5


def test_tensorboard_gets_numeric_scalars_when_tensorboardx_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    class FakeSummaryWriter:
        def __init__(self, logdir: str) -> None:
            calls.append(("open", logdir))

        def add_scalar(self, name: str, value: float, step: int) -> None:
            calls.append((name, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close",))

    fake = types.ModuleType("tensorboardX")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "tensorboardX", fake)
    with MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb") as writer:
        assert writer.tensorboard_enabled
        writer.write(5, {"loss": jnp.float32(0.25), "tag": "x"})
    assert calls == [("open", str(tmp_path / "tb")), ("loss", 0.25, 5), ("close",)]


# --------------------------------------------------------------- progress line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (59.6, "1m00s"), (920, "15m20s"), (3725, "1h02m05s"),
     (90061, "25h01m01s"), (math.inf, "?"), (math.nan, "?"), (-1, "?")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (2.5, "2.5"), (950, "950"), (12_345, "12.3k"), (1.5e6, "1.5M"), (2.5e9, "2.5G")],
)
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


def test_format_progress_matches_the_documented_line() -> None:
    line = format_progress(
        1200, 5000, {"loss": 0.512}, steps_per_sec=3800 / 920, tokens_per_sec=12_340
    )
    assert line == "step 1200/5000 | loss 0.512 | 4.13 steps/s | 12.3k tok/s | ETA 15m20s"
    assert format_progress(1, 5000, {"loss": 2.0}) == "step 1/5000 | loss 2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_measures_rates_over_a_sliding_window() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = ProgressLine(100, every_seconds=5.0, window=3, stream=out, clock=clock)

    assert progress.update(1, tokens=1000, loss=3.0) == "step 1/100 | loss 3"
    # A 60 s compile on step 1, then 1 step per 0.5 s with 500 tokens each.
    clock.now = 60.0
    # 1 step in 60 s, 98 steps to go.
    assert progress.update(2, tokens=500, loss=2.0) == (
        "step 2/100 | loss 2 | 0.0167 steps/s | 8.3 tok/s | ETA 1h38m00s"
    )
    lines = {}
    for step in range(3, 13):
        clock.now += 0.5
        lines[step] = progress.update(step, tokens=500, loss=1.0)
    # Printed once 5 s have passed; the window (steps 10-12) no longer holds the compile.
    assert {step: line for step, line in lines.items() if line is not None} == {
        12: "step 12/100 | loss 1 | 2 steps/s | 1.0k tok/s | ETA 44s"
    }
    assert len(out.getvalue().splitlines()) == 3
    assert out.getvalue().splitlines()[-1] == lines[12]


def test_progress_line_uses_tokens_per_step_and_prints_the_last_step() -> None:
    clock = FakeClock()
    progress = ProgressLine(4, tokens_per_step=256, every_seconds=1e9, stream=None, clock=clock)
    progress.update(2)
    clock.now = 2.0
    assert progress.update(3) is None
    clock.now = 4.0
    assert progress.update(4) == "step 4/4 | 0.5 steps/s | 128 tok/s | ETA 0s"
