"""The real Llama 3.1/3.2 and Qwen2.5 vocabularies (the `real_vocab` fixture, `make vocab`):
chat prompts equal transformers' apply_chat_template, special ids as the models ship them,
every step boundary is a step-delimiter token, vocab bytes, policy/PRM compatibility, and
damaged files name themselves."""

import json
import re
import shutil

import pytest

from ttc_jax.interop.tokenizer import HFTokenizer, check_compatible

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

CHAT = ("llama3.2-instruct", "llama3.1-prm", "qwen2.5-instruct")
SYSTEM = ("Solve the following math problem efficiently and clearly:\n\n- For simple problems "
          "(2 steps or fewer):\nProvide a concise solution with minimal explanation.\n\n"
          "Regardless of the approach, always conclude with:\n\nTherefore, the final answer "
          "is: $\\boxed{answer}$. I hope it is correct.\n\nWhere [answer] is just the final "
          "number or expression that solves the problem.")
CONVERSATIONS = [
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "What is the value of $\\sqrt{36 \\times \\sqrt{16}}$?"}],
    [{"role": "system", "content": "Please reason step by step, and put your final answer "
                                   "within \\boxed{}."},
     {"role": "user", "content": "Let $f(x) = \\frac{3x^2 + 1}{x - 2}$.\n\nFind all $x$ such "
                                 "that $f(x) = 0$; give the answer as an interval.  "}],
    [{"role": "user", "content": "  How many vertical asymptotes does the graph of "
                                 "$y=\\frac{2}{x^2+x-6}$ have?\n"}],
    [{"role": "system", "content": "Réponds en français. 数学"},
     {"role": "user", "content": "Compute $\\displaystyle\\sum_{k=1}^{10} k^2$.\n\n\n"
                                 "(Hint: use $\\frac{n(n+1)(2n+1)}{6}$.)"}],
]

SOLUTIONS = [
    "## Step 1: Simplify the inner root\n\n$\\sqrt{16} = 4$, so the expression is "
    "$\\sqrt{36 \\times 4}$.\n\n## Step 2: Multiply\n\n$36 \\times 4 = 144$, and "
    "$\\sqrt{144} = 12$.\n\nTherefore, the final answer is: $\\boxed{12}$. I hope it is correct.",
    "## Step 1: Factor the denominator\n\nThe denominator factors as $(x+3)(x-2)$\n\n"
    "## Step 2: Check the numerator\n\nThe numerator is never zero:\n\n"
    "## Step 3: Count\n\nThere are two asymptotes, at $x=-3$ and $x=2$.\n\n"
    "Therefore, the final answer is: $\\boxed{2}$. I hope it is correct.",
    "## Step 1: Use the formula\n\n$$\\sum_{k=1}^{n} k^2 = \\frac{n(n+1)(2n+1)}{6}$$\n\n"
    "## Step 2: Substitute $n = 10$\n\nWe get $\\frac{10 \\cdot 11 \\cdot 21}{6} = 385$\n\n"
    "Therefore, the final answer is: $\\boxed{385}$. I hope it is correct.",
    "## Step 1: Solve the inequality\n\n$2x - 5 > 1$ gives $x > 3$, so the set is "
    "$(3, \\infty)$\n\n## Step 2: Write the interval\n\nThe answer is $[4, \\infty)$ for "
    "integers, i.e. $\\{4, 5, 6, \\dots\\}$\n\nTherefore, the final answer is: "
    "$\\boxed{(3, \\infty)}$. I hope it is correct.",
    "## Step 1: Set up the matrix\n\nLet $A = \\begin{pmatrix} 1 & 2 \\\\ 3 & 4 "
    "\\end{pmatrix}$\n\n## Step 2: Compute the determinant\n\n$\\det A = 1 \\cdot 4 - 2 "
    "\\cdot 3 = -2$ (by the $2 \\times 2$ rule)\n\n\n## Step 3: Conclude\n\nThe determinant "
    "is $-2$.\n\nTherefore, the final answer is: $\\boxed{-2}$. I hope it is correct.",
    "## Step 1: Convert to degrees\n\nWe have $\\frac{\\pi}{3}$ radians, which is "
    "$60^\\circ$.\n\n## Step 2: Evaluate\n\n$\\cos 60^\\circ = \\frac{1}{2}$, from the unit "
    "circle [see the table]\n\n## Step 3: Done\n\nSo $\\cos \\frac{\\pi}{3} = \\frac12$.\n\n"
    "Therefore, the final answer is: $\\boxed{\\frac{1}{2}}$. I hope it is correct.",
    "## Step 1: Count the arrangements\n\nThe word has 5 letters with two repeats:\n\n"
    "$$\\frac{5!}{2!} = 60$$\n\n## Step 2: Subtract the bad cases\n\nThere are $24$ bad "
    "ones; thus $60 - 24 = 36$.\n\nTherefore, the final answer is: $\\boxed{36}$. I hope it "
    "is correct.",
    "## Step 1: Write the recurrence\n\n$a_{n+1} = 2a_n + 1$ with $a_1 = 1$, so $a_n = "
    "2^n - 1$\n\n## Step 2: Find $a_{10}$\n\nWe get $2^{10} - 1 = 1023$!\n\n"
    "Therefore, the final answer is: $\\boxed{1023}$. I hope it is correct.",
    "## Step 1: Find the slope\n\nThe slope is $m = \\frac{7-3}{4-2} = 2$; the line is "
    "$y = 2x - 1$ (point-slope form)\n\n## Step 2: Find the intercept\n\nSetting $x = 0$ "
    "gives $y = -1$, i.e. the point $(0, -1)$\n\n\n\n## Step 3: Answer\n\nThe $y$-intercept "
    "is $-1$?\n\nTherefore, the final answer is: $\\boxed{-1}$. I hope it is correct.",
    "## Step 1: Expand\n\n$(x+1)^2 = x^2 + 2x + 1$, and the set of roots is $\\{-1\\}$.\n\n"
    "## Step 2: Read off the coefficient:\n\nThe coefficient of $x$ is 2 — as expected, "
    "see “the binomial theorem”\n\n## Step 3: Answer\n\n**2**\n\n"
    "Therefore, the final answer is: $\\boxed{2}$. I hope it is correct.",
]
TEXTS = ["unseen wörds ünïcödé, emoji 🙂🦙, 数学 and Ελληνικά round-trip",
         "  leading spaces and\ttabs\n\n\n", *SOLUTIONS[:3]]


@pytest.fixture(scope="module")
def toks(real_vocab):
    return {name: HFTokenizer.from_folder(path) for name, path in real_vocab.items()}


@pytest.fixture(scope="module")
def refs(real_vocab):
    transformers = pytest.importorskip("transformers")
    return {name: transformers.AutoTokenizer.from_pretrained(real_vocab[name])
            for name in CHAT}


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", CHAT)
def test_prompts_equal_transformers_apply_chat_template(toks, refs, name):
    tok, ref = toks[name], refs[name]
    assert tok.chat_template is not None
    for msgs in CONVERSATIONS:
        want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tok.render_chat(msgs) == want
        assert tok.render_chat(msgs, add_generation_prompt=False) == ref.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=False)
        ids = tok.encode(want)
        assert ids == _ids(ref.apply_chat_template(msgs, tokenize=True,
                                                   add_generation_prompt=True))
        assert ids == ref.encode(want, add_special_tokens=False)
    one = CONVERSATIONS[0]
    assert tok.render_chat(system=one[0]["content"], user=one[1]["content"]) == \
        ref.apply_chat_template(one, tokenize=False, add_generation_prompt=True)


def test_llama_date_lines_and_fixed_date(toks):
    tok = toks["llama3.2-instruct"]
    text = tok.render_chat(CONVERSATIONS[0], date="26 Jul 2024")
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in text
    import datetime
    assert "Today Date: 05 Mar 2025" in tok.render_chat(CONVERSATIONS[0],
                                                        date=datetime.date(2025, 3, 5))
    assert "Today Date: " + datetime.date.today().strftime("%d %b %Y") in tok.render_chat(
        CONVERSATIONS[0])
    # 3.1's template writes a fixed date
    assert "Today Date: 26 Jul 2024" in toks["llama3.1-prm"].render_chat(CONVERSATIONS[0])


def test_math_task_prompt_uses_the_folder_template(toks, refs, tmp_path):
    from ttc_jax.tasks.math import MathTask

    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"problem": "What is $1+1$?\n\nExplain.", "answer": "2"}) + "\n")
    for name in ("llama3.2-instruct", "qwen2.5-instruct"):
        task = MathTask(data, toks[name], chat_format="llama3")
        p = task._problems[0]
        msgs = [{"role": "system", "content": task.system_prompt},
                {"role": "user", "content": p.prompt}]
        assert task.prompt_text(p) == refs[name].apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True)


def test_special_ids_as_the_models_ship_them(toks):
    llama = toks["llama3.2-instruct"]
    assert llama.vocab_size == 128256
    assert llama.has_bos and llama.bos_id == 128000
    assert llama.eos_ids == (128009, 128001, 128008) and llama.eos_id == 128009
    assert llama.pad_id == llama.token_to_id("<|finetune_right_pad_id|>") == 128004
    for i, name in [(128006, "<|start_header_id|>"), (128008, "<|eom_id|>"),
                    (128010, "<|python_tag|>"), (128255, "<|reserved_special_token_247|>")]:
        assert llama.id_to_token(i) == name
    assert llama.token_to_id("<|endoftext|>") is None  # no 128257th token
    assert llama.encode("\n\n") == [271] and llama.encode(".\n\n") == [382]
    assert llama.encode("hi", add_bos=True)[0] == 128000
    for name, eos in [("qwen2.5-instruct", (151645, 151643)), ("qwen2.5-base", (151643,)),
                      ("qwen2.5-math-prm", (151645, 151643))]:
        q = toks[name]
        assert q.bos_id is None and not q.has_bos
        assert q.eos_ids == eos and q.pad_id not in q.eos_ids
        assert q.encode("hi", add_bos=True) == q.encode("hi")
        assert q.id_to_token(q.pad_id) in ("<|vision_pad|>", "<|fim_pad|>")
    assert toks["qwen2.5-instruct"].vocab_size == 151665
    assert toks["qwen2.5-math-prm"].token_to_id("<extra_0>") == 151665
    assert toks["qwen2.5-instruct"].token_to_id("<extra_0>") is None


def _boundaries_caught(tok, text):
    """(boundaries, caught by any step_delimiter_ids token, caught by the single id)."""
    ids = tok.encode(text)
    vb = tok.vocab_bytes()
    data = text.encode("utf-8")
    assert b"".join(vb[i] for i in ids) == data
    spans, pos = [], 0
    for i in ids:
        spans.append((pos, pos + len(vb[i]), i))
        pos += len(vb[i])
    delims = set(tok.step_delimiter_ids)
    n = new = old = 0
    for m in re.finditer(re.escape(b"\n\n"), data):
        n += 1
        owner = [i for a, b, i in spans if a <= m.start() and m.end() <= b]
        new += bool(owner) and owner[0] in delims
        old += bool(owner) and owner[0] == tok.step_delimiter_id
    return n, new, old


@pytest.mark.parametrize("name", ["llama3.2-instruct", "qwen2.5-instruct"])
def test_every_step_boundary_is_a_step_delimiter_token(toks, name):
    tok = toks[name]
    assert tok.step_delimiter_id == 271
    assert 271 in tok.step_delimiter_ids and all(
        b"\n\n" in tok.vocab_bytes()[i] for i in tok.step_delimiter_ids)
    if name.startswith("llama"):
        assert 382 in tok.step_delimiter_ids and len(tok.step_delimiter_ids) > 500
    n = new = old = 0
    for text in SOLUTIONS:
        a, b, c = _boundaries_caught(tok, text)
        n, new, old = n + a, new + b, old + c
    print(f"{name}: step boundaries caught: before {100 * old / n:.1f}% ({old}/{n}), "
          f"after {100 * new / n:.1f}% ({new}/{n})")
    assert new == n and old < n


@pytest.mark.parametrize("name", ["llama3.2-instruct", "qwen2.5-instruct"])
def test_vocab_bytes_decode_back(toks, name):
    tok = toks[name]
    vb = tok.vocab_bytes()
    assert len(vb) == tok.vocab_size and vb is tok.vocab_bytes()
    assert vb[tok.eos_id] == b"" and vb[tok.pad_id] == b""
    for text in TEXTS:
        ids = tok.encode(text)
        assert b"".join(vb[i] for i in ids) == text.encode("utf-8"), text
    # a token holding part of a UTF-8 character gives its true bytes
    partial = [i for i in tok.encode("ꙮ𓀀𝔸🦙") if not vb[i].decode("utf-8", "ignore")]
    assert partial and all(vb[i] for i in partial)


def test_policy_prm_vocabulary_compatibility(toks):
    check_compatible(toks["llama3.2-instruct"], toks["llama3.1-prm"])
    toks["qwen2.5-instruct"].vocab_compatible(toks["qwen2.5-math-prm"])  # + <extra_0>
    with pytest.raises(ValueError, match=r"disagree on \d+ policy ids, e.g. id \d+"):
        check_compatible(toks["llama3.2-instruct"], toks["qwen2.5-instruct"])
    with pytest.raises(ValueError, match="<extra_0> vs PRM missing"):
        check_compatible(toks["qwen2.5-math-prm"], toks["qwen2.5-instruct"])


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.name == "tokenizer.json":
            (dst / f.name).symlink_to(f)
        elif f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize("file,content,match", [
    ("tokenizer.json", b'{"version": "1.0", "added_tokens": [', "tokenizer.json: not a valid"),
    ("tokenizer_config.json", b'{"eos_token": "<|im_end|>",',
     "tokenizer_config.json line 1 column .*: not valid JSON"),
    ("generation_config.json", b'{"eos_token_id": [151645, \xff]}',
     "generation_config.json line 1: byte 0xff .* not UTF-8"),
    ("config.json", b"[1, 2]", "config.json holds a JSON list, not an object"),
    ("config.json", b"", "config.json line 1 column 1: not valid JSON"),
])
def test_bad_files_name_themselves(real_vocab, tmp_path, file, content, match):
    folder = _copy(real_vocab["qwen2.5-instruct"], tmp_path / "q")
    (folder / file).unlink()
    (folder / file).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        HFTokenizer.from_folder(folder)


def test_bom_is_accepted_and_template_file_wins(real_vocab, tmp_path):
    folder = _copy(real_vocab["qwen2.5-instruct"], tmp_path / "q")
    cfg = folder / "tokenizer_config.json"
    cfg.write_bytes(b"\xef\xbb\xbf" + cfg.read_bytes())
    tok = HFTokenizer.from_folder(folder)
    assert tok.eos_id == 151645 and tok.chat_template is not None
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]"
                                                "{% endfor %}")
    assert HFTokenizer.from_folder(folder).render_chat(user="u") == "[u]"
