"""Training batches as pure functions of (seed, step): a resumed run sees exactly the data
an uninterrupted run would have seen, with no iterator state to checkpoint.

Sequences are ``[bos] prompt solution [eos]``, right-padded; the loss mask covers the
solution and eos (the tokens the policy must produce). Each step draws its batch from one
contiguous group of difficulties and pads to a multiple of ``bucket_multiple``, so only a
handful of shapes are ever compiled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttc_jax.config import TrainConfig
from ttc_jax.tasks import Problem, Task


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def encode_example(task: Task, problem: Problem, solution: str | None = None,
                   *, add_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of ``[bos] prompt solution [eos]`` and the prompt length (bos included)."""
    tok = task.tokenizer
    prompt = tok.encode(task.prompt_text(problem), add_bos=True)
    solution = task.solution_text(problem) if solution is None else solution
    return prompt + tok.encode(solution, add_eos=add_eos), len(prompt)


def difficulty_groups(cfg: TrainConfig) -> list[list[int]]:
    """Splits [difficulty_min, difficulty_max] into num_buckets contiguous groups."""
    ks = list(range(cfg.difficulty_min, cfg.difficulty_max + 1))
    return [list(g) for g in np.array_split(ks, min(cfg.num_buckets, len(ks)))]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator of one step's data (independent streams per purpose)."""
    return np.random.default_rng([seed, stream, step])


_POOLS: dict[tuple, list[Problem]] = {}


def problem_pool(task: Task, split: str, k: int, n: int, seed: int) -> list[Problem]:
    """The fixed training set of difficulty ``k`` (``train.train_problems > 0``), built once
    per process."""
    key = (task.name, split, k, n, seed)
    if key not in _POOLS:
        _POOLS[key] = task.problems(split, k, n, seed=seed)
    return _POOLS[key]


def sample_problems_for_step(task: Task, cfg: TrainConfig, step: int,
                             split: str = "train") -> list[Problem]:
    """``batch_size`` problems of one difficulty group, a pure function of (seed, step):
    fresh problems, or draws (with replacement) from the fixed set of
    ``cfg.train_problems`` per difficulty when that is > 0."""
    rng = step_rng(cfg.seed, step)
    groups = difficulty_groups(cfg)
    group = groups[int(rng.integers(len(groups)))]
    ks = rng.choice(group, size=cfg.batch_size)
    problems: list[Problem] = []
    for k in sorted(set(ks.tolist())):
        count = int((ks == k).sum())
        if cfg.train_problems:
            pool = problem_pool(task, split, k, cfg.train_problems, seed=cfg.seed)
            problems += [pool[i] for i in rng.integers(len(pool), size=count)]
        else:
            problems += task.problems(split, k, count, seed=int(rng.integers(2**31)))
    order = rng.permutation(len(problems))
    return [problems[i] for i in order]


def pack(seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int,
         multiple: int) -> dict[str, np.ndarray]:
    """Right-pads token lists into an LM batch.

    Returns:
      tokens: [B, W + 1] int32, W a multiple of ``multiple``.
      mask: [B, W] float32, 1 where the target ``tokens[:, 1:]`` is a token to learn
        (position >= start - 1, i.e. targets from the first solution token on).
    """
    width = round_up(max(len(s) for s in seqs) - 1, multiple)
    tokens = np.full((len(seqs), width + 1), pad_id, np.int32)
    mask = np.zeros((len(seqs), width), np.float32)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        tokens[i, :len(s)] = s
        mask[i, start - 1:len(s) - 1] = 1.0
    return {"tokens": tokens, "mask": mask}


def lm_batch(task: Task, cfg: TrainConfig, step: int) -> dict[str, np.ndarray]:
    """The supervised batch of ``step``: canonical solutions of training problems."""
    encoded = [encode_example(task, p) for p in sample_problems_for_step(task, cfg, step)]
    return pack([e[0] for e in encoded], [e[1] for e in encoded], task.tokenizer.pad_id,
                cfg.bucket_multiple)


def step_end_positions(ids: Sequence[int], prompt_len: int,
                       delimiter_ids: int | Sequence[int],
                       eos_ids: int | Sequence[int]) -> list[int]:
    """Positions (in ``ids``) of the last token of each solution step.

    A step ends at a step-end token (any of ``delimiter_ids``: with a real BPE every
    token whose text holds the separator, e.g. ``".\n\n"``); a final step cut off
    without one ends at the last non-eos token. The PRM's score for step i is read at
    position i of this list.
    """
    delims = {delimiter_ids} if isinstance(delimiter_ids, int) else set(delimiter_ids)
    eos = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    ends = [i for i in range(prompt_len, len(ids)) if ids[i] in delims]
    last = len(ids) - 1
    while last >= prompt_len and ids[last] in eos:
        last -= 1
    if last >= prompt_len and (not ends or ends[-1] < last):
        ends.append(last)
    return ends


def pack_prm(seqs: Sequence[Sequence[int]], step_ends: Sequence[Sequence[int]],
             labels: Sequence[Sequence[float]], pad_id: int,
             multiple: int) -> dict[str, np.ndarray]:
    """A PRM batch: tokens [B, W], label_mask [B, W] (1 at step ends), labels [B, W]."""
    width = round_up(max(len(s) for s in seqs), multiple)
    b = len(seqs)
    tokens = np.full((b, width), pad_id, np.int32)
    label_mask = np.zeros((b, width), np.float32)
    targets = np.zeros((b, width), np.float32)
    for i, (s, ends, ys) in enumerate(zip(seqs, step_ends, labels)):
        if len(ends) != len(ys):
            raise ValueError(f"sequence {i}: {len(ends)} step ends but {len(ys)} labels")
        tokens[i, :len(s)] = s
        label_mask[i, list(ends)] = 1.0
        targets[i, list(ends)] = ys
    return {"tokens": tokens, "label_mask": label_mask, "labels": targets}
