"""End to end: the MATH-500 experiment config runs on local HF-format folders with the REAL
vocabularies.

The real Llama 3 tokenizer folders (``real_vocab``: Llama-3.2-Instruct policy, Llama-3.1
PRM) get tiny random transformers models saved into copies of them (vocabulary 128,256,
hidden 16, one layer). The policy is untied and nudged so that tokens ending a step (every
id whose text holds "\\n\\n", ".\\n\\n" included) and eos are often sampled, so the search
meets real step boundaries. The sweep (beam and DVTS) must write one JSONL per (method, n)
whose rows are consistent with the candidates, give a too-long problem an error row, end
every step at a real boundary, and resume where an interrupted sweep stopped.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8)
PROBLEMS = [{"problem": "What is 3+4?", "answer": "7", "level": 1, "unique_id": "p1"},
            {"problem": "What is 2+2?", "answer": "4", "level": 2, "unique_id": "p2"},
            {"problem": "Compute " + " + ".join(["1"] * 400) + ".", "answer": "400",
             "level": 5, "unique_id": "long"},
            {"problem": "What is 1+1?", "answer": "2", "level": 1, "unique_id": "p3"}]


def tiny_hf_folder(src, dst, *, seed: int, nudge=None, untie: bool = False):
    """Copies a real_vocab folder and saves a tiny random transformers model into it (the
    copy's generation_config.json and tokenizer files stay as shipped)."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / "config.json").read_text())
    raw.update(TINY)
    if untie:
        raw["tie_word_embeddings"] = False
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[raw["model_type"]]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**{k: v for k, v in raw.items() if not k.startswith("_")}))
    if nudge:  # {ids: gain}: every input shares a direction c; those ids' output rows follow it
        with torch.no_grad():
            c = torch.zeros(raw["hidden_size"])
            c[0] = 1.0
            model.model.embed_tokens.weight.add_(c * 0.5)
            for ids, gain in nudge.items():
                model.lm_head.weight[list(ids)] += c * gain
    tmp = dst.parent / (dst.name + ".save")
    model.save_pretrained(tmp)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tmp / name, dst / name)
    shutil.rmtree(tmp)
    return dst


@pytest.fixture(scope="module")
def llama(real_vocab, tmp_path_factory):
    """(policy folder, PRM folder, MATH JSONL) on the real Llama 3 vocabulary."""
    from ttc_jax.interop.tokenizer import HFTokenizer

    root = tmp_path_factory.mktemp("e2e_llama")
    tok = HFTokenizer.from_folder(real_vocab["llama3.2-instruct"])
    nudge = {tuple(tok.step_delimiter_ids): 1.0, tuple(tok.eos_ids): 1.7}
    policy = tiny_hf_folder(real_vocab["llama3.2-instruct"], root / "policy", seed=0,
                            nudge=nudge, untie=True)
    prm = tiny_hf_folder(real_vocab["llama3.1-prm"], root / "prm", seed=1)
    data = root / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    return policy, prm, data


def sweep_config(policy, prm, data, **kw):
    spec = importlib.util.spec_from_file_location("cfg", "experiments/math500_llama.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("local")
    c.policy, c.prm, c.data = str(policy), str(prm), str(data)
    c.num_problems = 0
    c.methods = ("beam", "dvts")
    c.budgets = (4,)
    c.batch_size = 2
    c.prompt_multiple = 128
    c.max_seq_len, c.prm_cache_len = 512, 1024
    c.search.update(max_steps=3, max_step_tokens=8, max_new_tokens=32, beam_width=2)
    c.update(kw)
    return c


def check_rows(rows, c):
    from ttc_jax.search import NO_ANSWER, answer_id_of_text
    from ttc_jax.tasks.math import is_equiv

    assert [r["uid"] for r in rows] == [p["unique_id"] for p in PROBLEMS]  # file order
    for r in rows:
        if r["uid"] == "long":
            assert r["error"] == (f"prompt of {r['prompt_len']} tokens + "
                                  f"{c.search.max_new_tokens} new tokens > max_seq_len "
                                  f"{c.max_seq_len}")
            assert r["prompt_len"] + c.search.max_new_tokens > c.max_seq_len
            assert not r["correct_naive"] and not r["study_correct_weighted"]
            assert r["candidate_answers"] == [] and r["policy_tokens"] == 0
            continue
        assert r["error"] is None
        scores = r["candidate_scores"]
        n_cand = r["n"] // r["beam_width"] if r["method"] == "dvts" else r["n"]
        assert 1 <= len(scores) <= n_cand and all(0.0 <= x <= 1.0 for x in scores)
        assert len(r["candidate_answers"]) == len(scores) == len(r["candidate_answer_ids"])
        assert r["pred_naive"] == r["candidate_answers"][int(np.argmax(scores))]
        for k in ("naive", "weighted", "majority"):
            assert r[f"correct_{k}"] == is_equiv(r[f"pred_{k}"], r["reference"])
        assert r["oracle"] == any(is_equiv(a, r["reference"]) for a in r["candidate_answers"])
        assert all(a == NO_ANSWER or a >= 0 for a in r["candidate_answer_ids"])
        for raw, aid in zip(r["candidate_raw_answers"], r["candidate_answer_ids"]):
            if aid != NO_ANSWER:  # the device read a \boxed{}: the host reads the same text
                assert aid == answer_id_of_text(raw, "boxed")
        assert r["policy_tokens"] > 0 and r["prm_tokens"] > 0


@pytest.mark.slow
def test_math500_sweep_on_real_vocab_beam_dvts_resume(llama, tmp_path):
    from ttc_jax.interop.math_search import run_sweep

    c = sweep_config(*llama)
    summary = run_sweep(c, tmp_path)
    assert [(s["method"], s["n"]) for s in summary] == [("beam", 4), ("dvts", 4)]
    first = {}
    for s in summary:
        assert s["problems"] == 4 and s["errors"] == 1 and s["new_rows"] == 4
        path = tmp_path / f"{s['method']}_n4.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        check_rows(rows, c)
        first[s["method"]] = rows
        assert s["acc_naive"] == np.mean([r["correct_naive"] for r in rows])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    # an interrupted sweep: beam lost its last two rows (one torn mid-write)
    path = tmp_path / "beam_n4.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:30])
    again = run_sweep(c, tmp_path)
    assert [s["new_rows"] for s in again] == [2, 0]
    resumed = [json.loads(x) for x in path.read_text().splitlines()]
    check_rows(resumed, c)
    drop = ("run_id",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed]
            == [{k: v for k, v in r.items() if k not in drop} for r in first["beam"]])

    # other settings: refused, not mixed
    c2 = sweep_config(*llama)
    c2.search.update(temperature=0.5)
    with pytest.raises(ValueError, match="written with other settings"):
        run_sweep(c2, tmp_path)


@pytest.mark.slow
def test_steps_end_at_real_boundaries(llama):
    """Every step end the device recorded is a token of ``step_delimiter_ids`` (".\\n\\n"
    merges included), except a final cut or the token before eos: the number of steps of
    each candidate is its delimiter count plus one when it does not end on a delimiter."""
    from ttc_jax.config import SearchConfig, from_dict
    from ttc_jax.interop.hf import load_hf_model
    from ttc_jax.interop.math_search import iter_results, load_prm
    from ttc_jax.interop.tokenizer import HFTokenizer
    from ttc_jax.tasks.math import MathTask

    policy_dir, prm_dir, data = llama
    tok = HFTokenizer.from_folder(policy_dir)
    tok.chat_date = "26 Jul 2024"
    task = MathTask(data, tok)
    problems = [p for p in task.all_problems() if p.uid != "long"]
    policy = load_hf_model(policy_dir, max_seq_len=512)
    prm = load_prm("token_prob", str(prm_dir), tok, policy_format="llama3",
                   policy_system=task.system_prompt, dtype="float32", cache_len=1024)
    delims = set(tok.step_delimiter_ids)
    assert {tok.encode("\n\n")[0], tok.encode(".\n\n")[0]} <= delims
    seen_delims, seen_merged = 0, 0
    c = sweep_config(*llama)
    assert (policy.cfg.max_seq_len, prm.cache_len) == (c.max_seq_len, c.prm_cache_len)
    for method in c.methods:  # the sweep's settings: its compiled programs are reused
        cfg = from_dict(SearchConfig, dict(c.search.to_dict(), method=method, n=4))
        for _, _, res, b in iter_results(policy, prm, tok, task, problems, cfg,
                                         batch_size=c.batch_size):
            for j in np.flatnonzero(res.valid[b]):
                toks = [int(t) for t in res.tokens[b, j, :res.lengths[b, j]]]
                real = toks[:-1] if toks and toks[-1] in tok.eos_ids else toks
                n_delim = sum(t in delims for t in real)
                tail = 1 if real and real[-1] not in delims else 0
                assert int(res.num_steps[b, j]) == n_delim + tail, (toks, res.num_steps[b, j])
                seen_delims += n_delim
                seen_merged += sum(t in delims and t != tok.encode("\n\n")[0] for t in real)
    assert seen_delims > 0 and seen_merged > 0  # the search met real (merged) boundaries


@pytest.mark.slow
def test_qwen_policy_with_a_classifier_prm(real_vocab, tmp_path):
    """Qwen2.5: no bos, two eos ids, an embedding (151,936) wider than the tokenizer; the
    Qwen2.5-Math-PRM stand-in brings its own tokenizer (``<extra_0>``)."""
    from ttc_jax.interop.hf import tiny_hf_folder as tiny_prm_folder
    from ttc_jax.interop.math_search import run_sweep
    from ttc_jax.interop.tokenizer import HFTokenizer

    tok = HFTokenizer.from_folder(real_vocab["qwen2.5-instruct"])
    assert tok.bos_id is None and len(tok.eos_ids) == 2
    nudge = {tuple(tok.step_delimiter_ids): 1.0, tuple(tok.eos_ids): 1.7}
    policy = tiny_hf_folder(real_vocab["qwen2.5-instruct"], tmp_path / "policy", seed=2,
                            nudge=nudge, untie=True)
    prm = tiny_prm_folder(real_vocab["qwen2.5-math-prm"], tmp_path / "prm", seed=3,
                          prm_head=True)
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    c = sweep_config(policy, prm, data, prm_kind="classifier", chat_format="qwen")
    c.methods = ("beam",)
    (s,) = run_sweep(c, tmp_path / "out")
    assert s["problems"] == 4 and s["errors"] == 1
    rows = [json.loads(x) for x in (tmp_path / "out" / "beam_n4.jsonl").read_text().splitlines()]
    check_rows(rows, c)


def test_select_answers_naive_weighted_majority():
    from ttc_jax.interop.math_search import select_answers

    answers = ["\\frac{1}{2}", "0.5", "3", None, "3", "3"]
    scores = [0.9, 0.8, 0.1, 0.95, 0.2, 0.3]
    pick = select_answers(answers, scores)
    assert pick["naive"] is None  # the top-scored candidate has no answer
    assert pick["weighted"] == "\\frac{1}{2}"  # 0.9 + 0.8 (0.5 == 1/2) > 0.6
    assert pick["majority"] == "3"
    assert select_answers([], []) == {"naive": None, "weighted": None, "majority": None}
