"""End to end: the MATH-500 experiment config runs on local HF-format folders.

A tiny byte-level BPE tokenizer (trained here) and a tiny random Llama saved by
transformers stand in for Llama-3.2-1B-Instruct and the RLHFlow PRM; the sweep must
write one JSONL per (method, n) whose rows are consistent with the candidates.
"""

import json

import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPECIAL = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|finetune_right_pad_id|>"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ttc_jax.tasks.math import SYSTEM_PROMPT

    root = tmp_path_factory.mktemp("e2e")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [SYSTEM_PROMPT, "Therefore, the final answer is: $\\boxed{7}$.\n\n",
              "0 1 2 3 4 5 6 7 8 9 + - = \n\n What is", "step\n\nstep\n\n"] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    policy = root / "policy"
    policy.mkdir()
    tok.save(str(policy / "tokenizer.json"))
    (policy / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=2048, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(policy)
    data = root / "math.jsonl"
    rows = [{"problem": "What is 3+4?", "answer": "7", "level": 1, "unique_id": "p1"},
            {"problem": "What is 2+2?", "answer": "4", "level": 2, "unique_id": "p2"},
            {"problem": "What is 1+1?", "answer": "2", "level": 1, "unique_id": "p3"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return policy, data


@pytest.mark.slow
def test_math500_config_runs_end_to_end(folders, tmp_path):
    import importlib.util

    from ttc_jax.interop.math_search import run_sweep

    spec = importlib.util.spec_from_file_location("cfg", "experiments/math500_llama.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("local")
    policy, data = folders
    c.policy, c.prm, c.data = str(policy), str(policy), str(data)
    c.num_problems = 3
    c.methods = ("best_of_n", "beam")
    c.budgets = (2,)
    c.max_seq_len, c.prm_cache_len = 640, 768
    c.search.update(max_steps=2, max_step_tokens=8, max_new_tokens=16, beam_width=2)
    summary = run_sweep(c, tmp_path)
    assert [(s["method"], s["n"]) for s in summary] == [("best_of_n", 2), ("beam", 2)]
    for s in summary:
        lines = (tmp_path / f"{s['method']}_n2.jsonl").read_text().splitlines()
        assert len(lines) == 3
        for line in lines:
            row = json.loads(line)
            assert row["uid"] in {"p1", "p2", "p3"}
            scores = row["candidate_scores"]
            assert scores and all(0.0 <= x <= 1.0 for x in scores)
            assert row["correct_naive"] == (row["pred_naive"] == row["reference"])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_select_answers_naive_weighted_majority():
    from ttc_jax.interop.math_search import select_answers

    answers = ["\\frac{1}{2}", "0.5", "3", None, "3", "3"]
    scores = [0.9, 0.8, 0.1, 0.95, 0.2, 0.3]
    pick = select_answers(answers, scores)
    assert pick["naive"] is None  # the top-scored candidate has no answer
    assert pick["weighted"] == "\\frac{1}{2}"  # 0.9 + 0.8 (0.5 == 1/2) > 0.6
    assert pick["majority"] == "3"
    assert select_answers([], []) == {"naive": None, "weighted": None, "majority": None}
