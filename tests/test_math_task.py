"""MATH-style task: answer extraction, normalization, equivalence, JSONL loading."""

import json

import pytest

from ttc_jax.tasks import get_task
from ttc_jax.tasks.math import (
    MathTask,
    extract_answer,
    is_equiv,
    last_boxed,
    normalize_answer,
)

# (model text, expected normalized answer or None)
EXTRACT = [
    ("Therefore, the final answer is: $\\boxed{5}$. I hope it is correct.", "5"),
    ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
    ("$\\boxed{\\dfrac{3}{4}}$", "\\frac{3}{4}"),
    ("$\\boxed{\\tfrac12}$", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("nested \\boxed{\\frac{a^{2}}{b_{1}}} done", "\\frac{a^{2}}{b_{1}}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{-7}", "-7"),
    ("\\boxed{-\\frac{2}{3}}", "\\frac{-2}{3}"),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]"),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)"),
    ("\\boxed{[0,1)}", "[0,1)"),
    ("\\boxed{\\text{Evelyn}}", "Evelyn"),
    ("\\boxed{\\textbf{(C)}}", "C"),
    ("\\boxed{(B)}", "B"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{\\$18.90}", "18.9"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{30^{\\circ}}", "30"),
    ("\\boxed{12\\text{ cm}}", "12"),
    ("\\boxed{5 \\text{ inches}}", "5"),
    ("\\boxed{x = 4}", "4"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{0.50}", "0.5"),
    ("\\boxed{.5}", "0.5"),
    ("\\boxed{3/4}", "\\frac{3}{4}"),
    ("\\boxed{\\sqrt2}", "\\sqrt{2}"),
    ("\\boxed{2\\sqrt{5}}", "2\\sqrt{5}"),
    ("\\boxed 7", "7"),
    ("\\fbox{8}", "8"),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}"),
    ("\\boxed{ 3 }", "3"),
    ("\\boxed{-0}", "0"),
    ("\\boxed{p^2 + q}", "p^2+q"),
    ("The final answer is $42$.", "42"),
    ("Therefore, the final answer is: $\\frac{7}{8}$. I hope it is correct.", "\\frac{7}{8}"),
    ("So the final answer is 2/3", "\\frac{2}{3}"),
    ("We get 3 apples and then 11 pears", "11"),
    ("the balance is -4.25 dollars", "-4.25"),
    ("no digits at all here", None),
    ("", None),
    ("an unclosed \\boxed{12 without its brace", "12"),  # falls back to the last number
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer_table(text, expected):
    assert extract_answer(text) == expected


EQUIV = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "1/2", True),
    ("-\\frac{2}{3}", "\\frac{-2}{3}", True),
    ("2", "2.0", True),
    ("1,000", "1000", True),
    ("\\left(1,2\\right)", "(1, 2)", True),
    ("(1,2)", "[1,2]", False),
    ("(0.5, 3)", "(\\frac12, 3)", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("10\\%", "10", True),
    ("3", "4", False),
    ("\\sqrt{8}", "2\\sqrt{2}", True),   # sympy
    ("x+1", "1+x", True),                # sympy
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}", False),
    (None, "3", False),
]


@pytest.mark.parametrize("a,b,expected", EQUIV)
def test_is_equiv_table(a, b, expected):
    if "sqrt{8}" in str(a) or "x+1" in str(a):
        pytest.importorskip("sympy")  # symbolic equality is optional
    assert is_equiv(a, b) is expected


def test_table_has_at_least_40_cases():
    assert len(EXTRACT) + len(EQUIV) >= 40


def test_last_boxed_matches_braces():
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}} tail") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{{a}") is None


def test_normalize_is_idempotent():
    for text, _ in EXTRACT:
        ans = extract_answer(text)
        if ans is not None:
            assert normalize_answer(ans) == ans, text


@pytest.fixture
def jsonl(tmp_path):
    rows = [{"problem": "What is $1+1$?", "answer": "2", "level": 1, "unique_id": "a"},
            {"problem": "Half of 1?", "answer": "\\frac{1}{2}", "level": "Level 2",
             "unique_id": "b", "solution": "It is $\\boxed{\\frac12}$."},
            {"problem": "Interval?", "answer": "(0,1]", "level": 2, "unique_id": "c"}]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_math_task_loads_jsonl_and_grades(jsonl):
    task = get_task("math", path=jsonl, chat_format="qwen")
    assert isinstance(task, MathTask)
    assert task.difficulties == (1, 2)
    probs = task.problems("test", 2, 2, seed=0)
    assert sorted(p.uid for p in probs) == ["b", "c"]
    b = next(p for p in task.all_problems() if p.uid == "b")
    assert task.grade(b, "## Step 1: halve\n\nTherefore, the final answer is: $\\boxed{0.5}$.")
    assert not task.grade(b, "Therefore, the final answer is: $\\boxed{2}$.")
    assert not task.grade(b, "I give up.")
    assert task.grade(b, task.solution_text(b))
    assert task.split_steps("a\n\nb\n\n") == ["a", "b"]
    prompt = task.prompt_text(b)
    assert prompt.startswith("<|im_start|>system\nSolve the following math problem")
    assert prompt.endswith("Half of 1?<|im_end|>\n<|im_start|>assistant\n")


def test_math_task_errors(jsonl, tmp_path):
    task = MathTask(jsonl)
    with pytest.raises(ValueError, match="split='test'"):
        task.problems("train", 1, 1, seed=0)
    with pytest.raises(ValueError, match="only 1 problems of level 1"):
        task.problems("test", 1, 2, seed=0)
    with pytest.raises(ValueError, match="without a tokenizer"):
        _ = task.tokenizer
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(ValueError, match="no 'answer' field"):
        MathTask(bad)
    with pytest.raises(FileNotFoundError, match="MATH-style JSONL"):
        MathTask(tmp_path / "missing.jsonl")
