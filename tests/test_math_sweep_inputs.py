"""Bad input files fail early with a ValueError naming the file (and line) and what to do;
the MATH sweep's host-side pieces: prompt buckets, error rows, the resumable row log."""

import json
import struct

import numpy as np
import pytest

from ttc_jax.config import SearchConfig
from ttc_jax.interop.hf import read_hf_config
from ttc_jax.interop.math_search import (
    RowLog,
    error_row,
    prompt_buckets,
    summarize,
    too_long_error,
)
from ttc_jax.interop.safetensors import SafetensorsCheckpoint
from ttc_jax.tasks.math import MathTask

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
          "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": 128}
ROWS = [{"problem": "What is 1+1?", "answer": "2", "unique_id": "a"},
        {"problem": "What is 2+2?", "answer": 4, "unique_id": "b"},
        {"problem": "What is 3+3?", "answer": "6", "unique_id": "c"}]


def _config_dir(tmp_path, data: bytes):
    (tmp_path / "config.json").write_bytes(data)
    return tmp_path


def _jsonl(tmp_path, lines: list[bytes]):
    path = tmp_path / "math.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _good_lines():
    return [json.dumps(r).encode() for r in ROWS]


# -- config.json ----------------------------------------------------------------------------

def test_config_json_corrupt_names_file_and_line(tmp_path):
    text = json.dumps(CONFIG, indent=1).encode()
    folder = _config_dir(tmp_path, text[:-40])  # cut off mid-object
    with pytest.raises(ValueError, match=r"config\.json line \d+ column \d+: not valid JSON.*"
                                         r"re-download"):
        read_hf_config(folder)


def test_config_json_bom_is_accepted(tmp_path):
    folder = _config_dir(tmp_path, b"\xef\xbb\xbf" + json.dumps(CONFIG).encode())
    cfg, info = read_hf_config(folder)
    assert cfg.d_model == 16 and info.model_type == "llama"


def test_config_json_not_utf8_names_file(tmp_path):
    text = json.dumps(dict(CONFIG, note="caf\u00e9"), ensure_ascii=False).encode("latin-1")
    folder = _config_dir(tmp_path, text)
    with pytest.raises(ValueError, match=r"config\.json line 1: byte 0xe9 at offset \d+ is "
                                         r"not UTF-8.*re-download"):
        read_hf_config(folder)


@pytest.mark.parametrize("text", [b"null", b"[1, 2]", b""])
def test_config_json_not_an_object(tmp_path, text):
    with pytest.raises(ValueError, match=r"config\.json"):
        read_hf_config(_config_dir(tmp_path, text))


def test_config_json_without_hidden_size(tmp_path):
    raw = {k: v for k, v in CONFIG.items() if k != "hidden_size"}
    folder = _config_dir(tmp_path, json.dumps(raw).encode())
    with pytest.raises(ValueError, match=r"config\.json has no \['hidden_size'\].*own "
                                         r"config\.json"):
        read_hf_config(folder)


def test_config_json_non_integer_size(tmp_path):
    folder = _config_dir(tmp_path, json.dumps(dict(CONFIG, hidden_size="16")).encode())
    with pytest.raises(ValueError, match=r"config\.json: hidden_size='16' must be positive"):
        read_hf_config(folder)


def test_sweep_fails_on_a_bad_config_before_loading(tmp_path):
    import importlib.util

    from ttc_jax.interop.math_search import run_sweep

    spec = importlib.util.spec_from_file_location("cfg", "experiments/math500_llama.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("local")
    folder = tmp_path / "policy"
    folder.mkdir()
    _config_dir(folder, b"{\"vocab_size\": 64,")
    c.policy, c.data = str(folder), str(_jsonl(tmp_path, _good_lines()))
    with pytest.raises(ValueError, match=r"policy/config\.json line 1"):
        run_sweep(c, tmp_path / "out")


# -- the MATH JSONL -------------------------------------------------------------------------

def test_jsonl_corrupt_line_names_file_and_line(tmp_path):
    lines = _good_lines()
    lines[1] = lines[1][:-5]
    with pytest.raises(ValueError, match=r"math\.jsonl line 2 column \d+: not valid JSON"):
        MathTask(_jsonl(tmp_path, lines), None)


def test_jsonl_bom_is_accepted(tmp_path):
    lines = _good_lines()
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    task = MathTask(_jsonl(tmp_path, lines), None)
    assert [p.uid for p in task.all_problems()] == ["a", "b", "c"]
    assert task.all_problems()[1].answer == "4"


def test_jsonl_non_utf8_byte_names_line(tmp_path):
    lines = _good_lines()
    lines[2] = json.dumps({"problem": "Caf\u00e9?", "answer": "1"},
                          ensure_ascii=False).encode("latin-1")
    with pytest.raises(ValueError, match=r"math\.jsonl line 3: byte 0xe9 at column \d+ is not "
                                         r"UTF-8; re-save the file as UTF-8"):
        MathTask(_jsonl(tmp_path, lines), None)


@pytest.mark.parametrize("bad, message", [
    (b"null", r"line 2 is a JSON NoneType, not an object"),
    (b"[1, 2]", r"line 2 is a JSON list, not an object"),
    (b'{"problem": null, "answer": "2"}', r"line 2: 'problem' is None; it must be"),
    (b'{"problem": "x", "answer": null}', r"line 2: 'answer' is None; it must be"),
    (b'{"problem": "x"}', r"line 2 has no 'answer' field"),
])
def test_jsonl_bad_rows_name_the_line(tmp_path, bad, message):
    lines = _good_lines()
    lines[1] = bad
    with pytest.raises(ValueError, match=r"math\.jsonl " + message):
        MathTask(_jsonl(tmp_path, lines), None)


# -- safetensors ----------------------------------------------------------------------------

def _safetensors(path, tensors: dict[str, np.ndarray]) -> bytes:
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    data = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    path.write_bytes(data)
    return data


def test_safetensors_roundtrip_reads(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    _safetensors(tmp_path / "model.safetensors", {"w": w, "b": np.ones(4, np.float32)})
    ck = SafetensorsCheckpoint(tmp_path)
    np.testing.assert_array_equal(ck.get("w"), w)


def test_safetensors_truncated_names_file(tmp_path):
    data = _safetensors(tmp_path / "model.safetensors",
                        {"w": np.ones((64, 64), np.float32)})
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated: tensor 'w' needs "
                                         r"bytes up to \d+ but the file holds \d+.*re-download"):
        SafetensorsCheckpoint(tmp_path)


def test_safetensors_truncated_inside_header(tmp_path):
    data = _safetensors(tmp_path / "model.safetensors", {"w": np.ones(4, np.float32)})
    (tmp_path / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated or not a "
                                         r"safetensors file"):
        SafetensorsCheckpoint(tmp_path)


def test_safetensors_bad_index_names_file(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": ')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json line 1 column \d+: "
                                         r"not valid JSON"):
        SafetensorsCheckpoint(tmp_path)


# -- buckets, error rows, the row log -------------------------------------------------------

def test_prompt_buckets_group_by_width_and_flag_too_long():
    lens = [100, 900, 130, 500, 64, 257, 300]
    buckets, too_long = prompt_buckets(lens, multiple=128, limit=512)
    assert buckets == {128: [0, 4], 256: [2], 384: [5, 6], 512: [3]}
    assert too_long == [1]
    b2, _ = prompt_buckets(lens, multiple=128, limit=260)  # capped at the limit
    assert b2 == {128: [0, 4], 256: [2], 260: [5]}
    assert sorted([i for m in b2.values() for i in m] + [1, 3, 6]) == list(range(7))
    with pytest.raises(ValueError):
        prompt_buckets(lens, multiple=0, limit=512)


def test_error_row_is_graded_wrong_and_counted():
    from ttc_jax.tasks.base import Problem

    cfg = SearchConfig(method="beam", n=4, beam_width=2, max_step_tokens=2048,
                       max_new_tokens=2048)
    msg = too_long_error(900, cfg, 2560)
    assert msg == "prompt of 900 tokens + 2048 new tokens > max_seq_len 2560"
    row = error_row(Problem("p", "7", 1, "u1"), cfg, 900, msg)
    assert row["error"] == msg and row["pred_naive"] is None
    assert not any(row[f"{g}correct_{k}"] for g in ("", "study_")
                   for k in ("naive", "weighted", "majority"))
    ok = dict(row, error=None, correct_naive=True, study_correct_naive=True)
    s = summarize([row, ok])
    assert s["problems"] == 2 and s["errors"] == 1 and s["acc_naive"] == 0.5
    assert s["study_acc_naive"] == 0.5 and s["acc_majority"] == 0.0


def test_row_log_resumes_cuts_torn_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "beam_n4.jsonl"
    log = RowLog(path, "run1")
    for uid in ("b", "a"):
        log.append({"uid": uid, "x": 1})
    log.append({"uid": "a", "x": 2})  # already there: ignored
    with path.open("ab") as f:
        f.write(b'{"uid": "c", "x"')  # a kill mid-write
    again = RowLog(path, "run1")
    assert list(again.rows) == ["b", "a"] and again.rows["a"]["x"] == 1
    assert path.read_bytes().endswith(b"}\n")
    again.append({"uid": "c", "x": 3})
    again.reorder(["a", "b", "c"])
    assert [json.loads(x)["uid"] for x in path.read_text().splitlines()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"beam_n4\.jsonl line 1 was written with other "
                                         r"settings.*another --out"):
        RowLog(path, "run2")


def test_search_config_allows_the_reference_budgets():
    import importlib.util

    from ttc_jax.config import from_dict

    spec = importlib.util.spec_from_file_location("cfg", "experiments/math500_llama.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("reference")
    cfg = from_dict(SearchConfig, dict(c.search.to_dict(), method="beam", n=4))
    assert cfg.max_step_tokens == 2048 and cfg.max_new_tokens == 2048


def test_save_safetensors_roundtrip(tmp_path):
    import ml_dtypes

    from ttc_jax.interop.safetensors import save_safetensors

    ts = {"b": np.arange(6, dtype=np.int32).reshape(2, 3),
          "a": np.linspace(0, 1, 5).astype(ml_dtypes.bfloat16)}
    save_safetensors(tmp_path / "model.safetensors", ts)
    ck = SafetensorsCheckpoint(tmp_path)
    assert ck.names() == ["a", "b"]
    for k, v in ts.items():
        np.testing.assert_array_equal(ck.get(k), v)
