"""`make demo` at its smallest settings on the shipped models: the table it prints agrees
with the JSONL it writes (recomputed here from the file), and the plots exist."""

import numpy as np
import pytest

from ttc_jax.eval.demo import run_demo
from ttc_jax.eval.report import format_table, parse_table
from ttc_jax.eval.sweep import ALL_METHODS, SweepConfig, load_rows

SMALLEST = SweepConfig(ns=(1, 2), tree_ns=(2,), beam_widths=(2,), difficulties=(1, 4),
                       problems_per_k=2, val_problems_per_k=2, max_rows=16)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = []
    res = run_demo(SMALLEST, out, progress=False, printer=printed.append)
    return out, "\n".join(printed), res


@pytest.mark.slow
def test_printed_table_agrees_with_the_jsonl(demo):
    out, text, _ = demo
    start = text.index("method ")
    table = parse_table(text[start:text.index("greedy ", start)])
    rows = load_rows(out / "rows.jsonl")
    expect = {}
    for r in rows:
        if r["split"] == "test" and r["method"] in ALL_METHODS:
            name = r["method"] + (f"/M{r['beam_width']}" if r["beam_width"] else "")
            expect.setdefault(name, {}).setdefault(r["n"], []).append(r)
    assert set(table) == set(expect) == {"majority", "best_of_n", "weighted_best_of_n",
                                         "beam/M2", "dvts/M2"}
    for name, by_n in expect.items():
        assert set(table[name]) == set(by_n)
        for n, rs in by_n.items():
            acc, flops = table[name][n]
            assert len(rs) == 4  # 2 difficulties x 2 test problems
            assert acc == pytest.approx(np.mean([r["correct"] for r in rs]), abs=5e-4)
            assert flops == pytest.approx(np.mean([r["flops"] for r in rs]), rel=1e-3)


@pytest.mark.slow
def test_demo_writes_rows_and_plots_and_says_where(demo):
    out, text, res = demo
    for name in ("accuracy.png", "accuracy_per_level.png", "compute_optimal.png",
                 "small_vs_teacher.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert str(out / "rows.jsonl") in text
    assert "RESULT co_top_acc=" in text
    assert len(res["rows"]) == len(load_rows(out / "rows.jsonl"))


def test_table_format_round_trips():
    summary = {"beam/M4": [{"n": 4, "acc": 0.5, "flops": 1.25e9}],
               "majority": [{"n": 1, "acc": 0.125, "flops": 3.0e7},
                            {"n": 4, "acc": 1.0, "flops": 1.2e8}]}
    parsed = parse_table(format_table(summary))
    assert parsed == {"beam/M4": {4: (0.5, 1.25e9)},
                      "majority": {1: (0.125, 3.0e7), 4: (1.0, 1.2e8)}}


def test_demo_config_is_the_make_demo_one():
    from importlib import util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / "sweep.py"
    spec = util.spec_from_file_location("sweep_cfg", path)
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from ttc_jax.config import from_dict
    cfg = from_dict(SweepConfig, mod.get_config("demo").sweep.to_dict())
    assert max(cfg.ns) >= 16 and set(cfg.methods) == set(ALL_METHODS)
    assert cfg.val_problems_per_k > 0  # the demo shows compute-optimal selection too
