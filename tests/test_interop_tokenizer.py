"""HFTokenizer (tokenizers library) against transformers' fast tokenizer; chat prompts."""

import json

import pytest

from ttc_jax.interop.tokenizer import HFTokenizer, render_chat
from ttc_jax.tasks import Tokenizer

tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|finetune_right_pad_id|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
CORPUS = [
    "Solve the following math problem efficiently and clearly.",
    "## Step 1: Compute the sum\n\nWe have $1 + 2 = 3$.\n\n",
    "Therefore, the final answer is: $\\boxed{3}$. I hope it is correct.",
    "The fraction \\frac{1}{2} equals 0.5; negative numbers like -7 appear too.",
    "Intervals such as (-\\infty, 3] and sets \\{1, 2\\} are answers.",
] * 20
TEXTS = [
    "## Step 2: Simplify\n\n$\\frac{3}{4} + 1 = \\frac{7}{4}$",
    "unseen wörds ünïcödé and emoji 🙂 still round-trip",
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
    "  leading spaces and\ttabs\n\n\n",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


def test_encode_matches_transformers_and_round_trips(folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    tok = HFTokenizer.from_folder(folder)
    assert isinstance(tok, Tokenizer)
    for text in TEXTS + CORPUS[:5]:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids, skip_special=False) == text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_special_ids_and_delimiter(folder):
    tok = HFTokenizer.from_folder(folder)
    assert tok.bos_id == tok.token_to_id("<|begin_of_text|>")
    assert tok.eos_id == tok.token_to_id("<|eot_id|>")
    assert tok.pad_id == tok.token_to_id("<|finetune_right_pad_id|>")  # no pad: a safe one
    assert tok.encode("hi", add_bos=True, add_eos=True)[0] == tok.bos_id
    assert tok.encode("hi", add_eos=True)[-1] == tok.eos_id
    assert tok.step_delimiter_id is not None
    assert tok.encode("\n\n") == [tok.step_delimiter_id]
    ids = tok.encode("x = 1") + [tok.eos_id] + tok.encode("ignored")
    assert tok.decode_until_eos(ids) == "x = 1"
    with pytest.raises(ValueError, match="also an eos id"):
        HFTokenizer.from_folder(folder, pad="<|eot_id|>")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer.from_folder(folder / "nope")


def test_chat_formats():
    llama = render_chat("llama3", system="Be brief.", user="What is 2+2? ")
    assert llama == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                     "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                     "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    qwen = render_chat("qwen", system="Be brief.", user="What is 2+2?")
    assert qwen == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat("qwen", user="u", add_generation_prompt=False) == \
        "<|im_start|>user\nu<|im_end|>\n"
    with pytest.raises(ValueError, match="chat format 'gpt'"):
        render_chat("gpt", user="u")


def test_chat_prompt_tokenizes_special_tokens_as_ids(folder):
    tok = HFTokenizer.from_folder(folder)
    ids = tok.encode(render_chat("llama3", system="s", user="u"))
    assert ids[0] == tok.bos_id
    assert ids.count(tok.token_to_id("<|start_header_id|>")) == 3
    assert ids.count(tok.eos_id) == 2
