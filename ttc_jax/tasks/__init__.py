"""Tasks: problems, prompts, answer extraction, grading, step labels, and tokenizers."""

from ttc_jax.tasks.arithmetic import ArithmeticTask, StepCheck, apply_op
from ttc_jax.tasks.base import SPLITS, Problem, Task
from ttc_jax.tasks.registry import get_task, register_task
from ttc_jax.tasks.tokenizer import CharTokenizer, Tokenizer, pad_batch

__all__ = [
    "SPLITS",
    "ArithmeticTask",
    "CharTokenizer",
    "Problem",
    "StepCheck",
    "Task",
    "Tokenizer",
    "apply_op",
    "get_task",
    "pad_batch",
    "register_task",
]
