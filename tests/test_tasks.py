"""Specification of the Task interface and the embedded arithmetic benchmark."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttc_jax.tasks import ArithmeticTask, Problem, StepCheck, Task, get_task

TASK = ArithmeticTask()
ALPHABET = "0123456789+-*=:QA\n"
STEP_LINE = re.compile(r"(0|[1-9][0-9]*)[+\-*](0|[1-9][0-9]*)=(0|[1-9][0-9]*)")

op_strategy = st.one_of(
    st.tuples(st.sampled_from("+-"), st.integers(1, 99)),
    st.tuples(st.just("*"), st.integers(2, 9)),
)
problem_strategy = st.builds(
    TASK.make_problem, st.integers(0, 999), st.lists(op_strategy, min_size=1, max_size=12)
)


def reference_answer(prompt: str) -> int:
    """Evaluates ``Q:a op b op c ...`` left to right mod 1000 with Python's own arithmetic."""
    numbers = [int(x) for x in re.findall(r"[0-9]+", prompt)]
    ops = re.findall(r"[+\-*]", prompt)
    value = numbers[0]
    for op, x in zip(ops, numbers[1:]):
        value = eval(f"{value}{op}{x}") % 1000
    return value


def reference_extract(text: str) -> str | None:
    """The answer rule written the plain way: digits after the last 'A:' to the newline."""
    if "A:" not in text:
        return None
    tail = text.split("A:")[-1].split("\n")[0]
    if not tail or not all(c in "0123456789" for c in tail):
        return None
    return tail.lstrip("0") or "0"


def replace_char(s: str, pos: int, char: str) -> str:
    return s[:pos] + char + s[pos + 1 :]


# --------------------------------------------------------------------------- format


def test_the_documented_example_literally():
    problem = TASK.make_problem(16, [("*", 2), ("+", 2), ("-", 22), ("+", 88)])
    assert TASK.prompt_text(problem) == "Q:16*2+2-22+88\n"
    assert TASK.solution_text(problem) == "16*2=32\n32+2=34\n34-22=12\n12+88=100\nA:100\n"
    assert problem.answer == "100"
    assert problem.difficulty == 4
    assert problem.meta == {"start": 16, "ops": (("*", 2), ("+", 2), ("-", 22), ("+", 88))}
    assert re.fullmatch(r"arith-k4-[0-9a-f]{10}", problem.uid)


@pytest.mark.parametrize(
    ("start", "op", "operand", "line"),
    [
        (5, "-", 10, "5-10=995"),
        (200, "*", 9, "200*9=800"),
        (500, "*", 3, "500*3=500"),
        (999, "+", 1, "999+1=0"),
        (0, "-", 1, "0-1=999"),
    ],
)
def test_results_are_taken_mod_1000(start, op, operand, line):
    problem = TASK.make_problem(start, [(op, operand)])
    answer = line.split("=")[1]
    assert TASK.solution_text(problem) == f"{line}\nA:{answer}\n"
    assert problem.answer == answer


@given(seed=st.integers(0, 2**32), k=st.integers(1, 12))
@settings(deadline=None, max_examples=40)
def test_generated_problems_follow_the_format_and_distribution(seed, k):
    for split in ("train", "test"):
        for problem in TASK.problems(split, k, 3, seed):
            assert problem.difficulty == k
            start, ops = problem.meta["start"], problem.meta["ops"]
            assert 0 <= start <= 999 and len(ops) == k
            for op, x in ops:
                assert (1 <= x <= 99) if op in "+-" else (op == "*" and 2 <= x <= 9)
            assert problem.prompt == f"Q:{start}" + "".join(f"{o}{x}" for o, x in ops) + "\n"
            lines = TASK.solution_text(problem).split("\n")
            assert lines[-1] == ""  # solution ends with the delimiter
            assert all(STEP_LINE.fullmatch(line) for line in lines[:k])
            assert lines[k] == f"A:{reference_answer(problem.prompt)}" == f"A:{problem.answer}"
            assert len(lines) == k + 2


def test_all_three_ops_and_the_full_start_range_occur():
    problems = TASK.problems("train", 3, 3000, seed=0)
    ops = [op for p in problems for op, _ in p.meta["ops"]]
    for op in "+-*":
        assert 0.28 < ops.count(op) / len(ops) < 0.39
    starts = [p.meta["start"] for p in problems]
    assert min(starts) < 10 and max(starts) > 990


@given(problem_strategy)
def test_solution_text_is_encodable_by_the_task_tokenizer(problem):
    tok = TASK.tokenizer
    text = TASK.prompt_text(problem) + TASK.solution_text(problem)
    assert tok.decode(tok.encode(text)) == text


def test_problem_without_meta_is_solved_from_its_prompt():
    problem = TASK.make_problem(16, [("*", 2), ("+", 2), ("-", 22), ("+", 88)])
    bare = Problem(problem.prompt, problem.answer, problem.difficulty, problem.uid)
    assert bare == problem and hash(bare) == hash(problem)  # meta is not compared or hashed
    assert TASK.solution_text(bare) == TASK.solution_text(problem)


# --------------------------------------------------------------------------- generator


def test_train_and_test_never_share_a_prompt():
    for k in (1, 2):  # small spaces, where a split bug would collide
        train = {p.prompt for s in range(2) for p in TASK.problems("train", k, 3000, seed=s)}
        test = {p.prompt for s in range(2) for p in TASK.problems("test", k, 3000, seed=s)}
        assert len(train) > 3000 and len(test) > 3000
        assert not train & test


def test_split_of_assigns_about_test_fraction_of_all_prompts_to_test():
    task = ArithmeticTask(test_fraction=0.25)
    problems = task.problems("train", 2, 2000, seed=0) + task.problems("test", 2, 2000, seed=0)
    assert all(task.split_of(p.prompt) == "train" for p in problems[:2000])
    assert all(task.split_of(p.prompt) == "test" for p in problems[2000:])
    ones = [task.make_problem(s, [("+", x)]) for s in range(0, 1000, 7) for x in range(1, 100)]
    share = sum(task.split_of(p.prompt) == "test" for p in ones) / len(ones)
    assert 0.22 < share < 0.28


def test_same_seed_same_problems_other_seed_other_problems():
    first = TASK.problems("train", 4, 200, seed=7)
    assert TASK.problems("train", 4, 200, seed=7) == first
    assert not set(TASK.problems("train", 4, 200, seed=8)) & set(first)
    assert TASK.problems("train", 4, 50, seed=7) == first[:50]  # n only truncates


def test_problems_are_distinct_and_of_the_requested_difficulty():
    for k in (1, 5, 8):
        problems = TASK.problems("test", k, 2000, seed=3)
        assert len(problems) == 2000
        assert len({p.prompt for p in problems}) == 2000
        assert len({p.uid for p in problems}) == 2000
        assert {p.difficulty for p in problems} == {k}


def test_very_long_chains_are_allowed():
    problems = TASK.problems("test", 300, 2, seed=0)
    assert [p.difficulty for p in problems] == [300, 300]
    assert TASK.step_labels(problems[0], TASK.solution_text(problems[0])) == [True] * 301


def test_sample_problems_concatenates_difficulties_in_order():
    problems = TASK.sample_problems("train", [3, 1, 2], n_per_difficulty=4, seed=0)
    assert [p.difficulty for p in problems] == [3] * 4 + [1] * 4 + [2] * 4
    assert problems[4:8] == TASK.problems("train", 1, 4, seed=0)


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"'dev'.*'train', 'test'"):
        TASK.problems("dev", 1, 1, seed=0)
    with pytest.raises(ValueError, match="difficulty=0 must be >= 1"):
        TASK.problems("train", 0, 1, seed=0)
    with pytest.raises(ValueError, match="too many"):
        TASK.problems("test", 1, 50_000, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        ArithmeticTask(test_fraction=0.0)
    with pytest.raises(ValueError, match="min_difficulty"):
        ArithmeticTask(min_difficulty=3, max_difficulty=2)


def test_registry_builds_tasks_by_name_and_lists_known_names():
    task = get_task("arithmetic", max_difficulty=4)
    assert isinstance(task, ArithmeticTask) and task.difficulties == (1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"'nope'.*\['arithmetic'"):
        get_task("nope")


# --------------------------------------------------------------------------- checker


@given(seed=st.integers(0, 2**32), k=st.integers(1, 12))
@settings(deadline=None, max_examples=40)
def test_canonical_solution_of_generated_problems_passes_the_checker(seed, k):
    (problem,) = TASK.problems("train", k, 1, seed)
    text = TASK.solution_text(problem)
    assert all(c.correct for c in TASK.check_steps(problem, text))
    assert TASK.step_labels(problem, text) == [True] * (k + 1)
    assert TASK.grade(problem, text)


@given(problem_strategy)
def test_canonical_solution_passes_the_checker(problem):
    text = TASK.solution_text(problem)
    checks = TASK.check_steps(problem, text)
    assert len(checks) == problem.difficulty + 1
    assert all(c.correct for c in checks)
    assert [c.is_answer for c in checks] == [False] * problem.difficulty + [True]
    assert TASK.step_labels(problem, text) == [True] * len(checks)
    assert TASK.grade(problem, text)


@given(problem_strategy, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_corrupting_a_result_digit_is_flagged_at_exactly_that_step(problem, data):
    lines = TASK.solution_text(problem).split("\n")[:-1]
    j = data.draw(st.integers(0, len(lines) - 1), label="step")
    head, sep, result = lines[j].rpartition("=" if "=" in lines[j] else ":")
    pos = data.draw(st.integers(0, len(result) - 1), label="digit position")
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != result[pos]]))
    lines[j] = head + sep + replace_char(result, pos, digit)
    text = "\n".join(lines) + "\n"

    checks = TASK.check_steps(problem, text)
    assert [c.correct for c in checks[:j]] == [True] * j
    assert checks[j].well_formed and not checks[j].arithmetic_ok and not checks[j].correct
    assert TASK.step_labels(problem, text) == [True] * j + [False] * (len(lines) - j)
    # Outcome grading only sees the answer line: a wrong middle step goes unnoticed.
    assert TASK.grade(problem, text) == (j < problem.difficulty)


def test_a_step_built_on_a_wrong_result_is_locally_right_but_labelled_false():
    problem = TASK.make_problem(16, [("*", 2), ("+", 2)])
    text = "16*2=33\n33+2=35\nA:35\n"
    assert [c.correct for c in TASK.check_steps(problem, text)] == [False, True, True]
    assert TASK.step_labels(problem, text) == [False, False, False]
    assert not TASK.grade(problem, text)


@pytest.mark.parametrize(
    ("text", "checks", "labels"),
    [
        # (well_formed, arithmetic_ok, consistent) per step
        ("16*2=32\n", [(1, 1, 1)], [True]),  # unfinished but right so far
        ("16*3=48\n48+2=50\nA:50\n", [(1, 1, 0), (1, 1, 1), (1, 1, 1)], [False] * 3),
        ("16+2=18\n", [(1, 1, 0)], [False]),  # wrong op
        ("17*2=34\n", [(1, 1, 0)], [False]),  # wrong start
        (
            "16*2=32\n32+2=34\n34+2=36\nA:36\n",
            [(1, 1, 1)] * 2 + [(1, 1, 0), (1, 1, 0)],
            [True, True, False, False],
        ),  # extra step
        ("16*2=32\nA:32\n", [(1, 1, 1), (1, 1, 0)], [True, False]),  # answer too early
        (
            "16*2=32\n32+2=34\nA:34\nA:34\n",
            [(1, 1, 1)] * 3 + [(1, 0, 0)],
            [True, True, True, False],
        ),  # a second answer line
        ("16*2 =32\n", [(0, 0, 0)], [False]),  # malformed
        ("16*2=32\n\n32+2=34\n", [(1, 1, 1), (0, 0, 0), (1, 1, 0)], [True, False, False]),
        ("016*2=032\n32+02=34\nA:034", [(1, 1, 1)] * 3, [True] * 3),  # leading zeros
        ("", [], []),
    ],
)
def test_step_checks_on_hand_written_traces(text, checks, labels):
    problem = TASK.make_problem(16, [("*", 2), ("+", 2)])
    got = TASK.check_steps(problem, text)
    assert [(c.well_formed, c.arithmetic_ok, c.consistent) for c in got] == [
        tuple(bool(b) for b in c) for c in checks
    ]
    assert all(isinstance(c, StepCheck) for c in got)
    assert TASK.step_labels(problem, text) == labels


def test_huge_numbers_in_a_step_do_not_crash_the_checker():
    problem = TASK.make_problem(16, [("*", 2)])
    text = "1" + "0" * 5000 + "16*2=32\nA:" + "9" * 5000 + "\n"
    assert TASK.step_labels(problem, text) == [False, False]
    assert TASK.extract_answer(text) == "9" * 5000


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("16*2=32\nA:32\n", "32"),
        ("A:100", "100"),
        ("A:007\n", "7"),
        ("A:000", "0"),
        ("A:1\nA:2\nmore text", "2"),
        ("A:5\nA:", None),
        ("A: 5", None),
        ("A:5x", None),
        ("A:-5", None),
        ("A:\n5", None),
        ("no answer here", None),
        ("", None),
        ("A:٣", None),  # non-ASCII digits are garbage
        ("Q:1+2\nA:A:12", "12"),
    ],
)
def test_extract_answer_known_examples(text, answer):
    assert TASK.extract_answer(text) == answer


@given(st.one_of(st.text(), st.text(alphabet=ALPHABET), st.text(alphabet="A:0123\n")))
def test_extract_answer_never_raises_and_matches_the_plain_rule(text):
    answer = TASK.extract_answer(text)
    assert answer is None or re.fullmatch(r"0|[1-9][0-9]*", answer)
    assert answer == reference_extract(text)


@given(problem_strategy, st.one_of(st.text(), st.text(alphabet=ALPHABET, max_size=80)))
def test_grade_and_step_labels_never_raise_on_arbitrary_text(problem, text):
    assert TASK.grade(problem, text) == (TASK.extract_answer(text) == problem.answer)
    labels = TASK.step_labels(problem, text)
    assert len(labels) == len(TASK.split_steps(text))
    assert labels == sorted(labels, reverse=True)  # once False, False for good


# --------------------------------------------------------------------------- interface


class _ParagraphTask(Task):
    """A minimal MATH-style task: paragraphs as steps, no step checker."""

    name = "paragraphs"
    step_delimiter = "\n\n"

    tokenizer = property(lambda self: None)
    difficulties = property(lambda self: (1,))

    def problems(self, split, difficulty, n, seed):
        return [Problem("1+1?", "2", 1, "p0")]

    def solution_text(self, problem):
        return "One and one.\n\nThe answer is 2"

    def extract_answer(self, text):
        return text.rsplit(" ", 1)[-1] or None


def test_a_task_without_a_checker_grades_and_splits_but_asks_for_mc_labels():
    task = _ParagraphTask()
    problem = task.problems("train", 1, 1, 0)[0]
    text = task.solution_text(problem)
    assert not task.has_exact_step_labels and TASK.has_exact_step_labels
    assert task.split_steps(text + "\n\n") == ["One and one.", "The answer is 2"]
    assert task.grade(problem, text) and not task.grade(problem, "The answer is 3")
    assert task.prompt_text(problem) == "1+1?"
    with pytest.raises(NotImplementedError, match="Monte-Carlo"):
        task.step_labels(problem, text)


def test_split_steps_keeps_inner_empty_steps_and_drops_a_trailing_one():
    assert TASK.split_steps("a\n\nb\n") == ["a", "", "b"]
    assert TASK.split_steps("a") == ["a"]
    assert TASK.split_steps("") == []
