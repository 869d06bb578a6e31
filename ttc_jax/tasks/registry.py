"""Tasks by name, so configs can say ``task="arithmetic"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ttc_jax.tasks.arithmetic import ArithmeticTask
from ttc_jax.tasks.base import Task
from ttc_jax.tasks.math import MathTask

_REGISTRY: dict[str, Callable[..., Task]] = {"arithmetic": ArithmeticTask, "math": MathTask}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Makes ``get_task(name, **kwargs)`` call ``factory(**kwargs)``; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered; pick another name")
    _REGISTRY[name] = factory


def get_task(name: str, **kwargs: Any) -> Task:
    """The task registered as ``name``, built with ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
