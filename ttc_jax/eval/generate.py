"""Sampling solutions for task problems and measuring accuracy.

Prompts are padded to a fixed width and batches to a fixed size, so one compiled sampler
serves every difficulty; the decode loop stops as soon as every row is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from ttc_jax.decode import Greedy, SamplingStrategy, sample
from ttc_jax.tasks import Problem, Task
from ttc_jax.train.data import round_up

GREEDY = Greedy()


@dataclasses.dataclass
class Samples:
    """n samples for each problem.

    Attributes:
      problems: the P problems.
      texts: P lists of n decoded solution texts (up to eos, specials removed).
      tokens: [P, n, T] int32 generated tokens; lengths [P, n]; logprobs [P, n, T].
      ended: [P, n] bool, the sample ended with eos (not cut by the budget).
    """

    problems: list[Problem]
    texts: list[list[str]]
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    ended: np.ndarray

    def correct(self, task: Task) -> np.ndarray:
        """[P, n] bool: sample graded right."""
        return np.asarray([[task.grade(p, t) for t in ts]
                           for p, ts in zip(self.problems, self.texts)], bool)


def sample_solutions(model, task: Task, problems: Sequence[Problem], *, n: int,
                     rng: jax.Array, strategy: SamplingStrategy = GREEDY,
                     max_new_tokens: int = 128, batch_size: int = 64,
                     prompt_multiple: int = 16,
                     prefixes: Sequence[str] | None = None) -> Samples:
    """Samples n solutions per problem with the policy ``model`` (one jit for all batches).

    With ``prefixes`` (one solution prefix per problem), generation continues after the
    prompt and the prefix, and ``texts`` hold only the continuation.
    """
    tok = task.tokenizer
    problems = list(problems)
    prompts = [tok.encode(task.prompt_text(p), add_bos=True) for p in problems]
    if prefixes is not None:
        if len(prefixes) != len(problems):
            raise ValueError(f"{len(prefixes)} prefixes for {len(problems)} problems")
        prompts = [p + tok.encode(pre) for p, pre in zip(prompts, prefixes)]
    width = round_up(max(len(p) for p in prompts), prompt_multiple)
    capacity = width + max_new_tokens
    outs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = np.full((batch_size, width), tok.pad_id, np.int32)
        lens = np.ones((batch_size,), np.int32)  # filler rows: a lone bos (or pad)
        batch[:, 0] = tok.pad_id if tok.bos_id is None else tok.bos_id
        for i, p in enumerate(chunk):
            batch[i, :len(p)] = p
            lens[i] = len(p)
        out = sample(model, (batch, lens), n=n, rng=jax.random.fold_in(rng, start),
                     max_new_tokens=max_new_tokens, strategy=strategy,
                     stop_tokens=tuple(tok.eos_ids), capacity=capacity, pad_id=tok.pad_id)
        m = len(chunk)
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:m], out))  # noqa: B023
    tokens = np.concatenate([o.tokens for o in outs])
    lengths = np.concatenate([o.lengths for o in outs])
    texts = [[tok.decode_until_eos(tokens[i, j, :lengths[i, j]]) for j in range(n)]
             for i in range(len(problems))]
    return Samples(problems=problems, texts=texts, tokens=tokens, lengths=lengths,
                   logprobs=np.concatenate([o.logprobs for o in outs]),
                   ended=np.concatenate([o.done for o in outs]))


def greedy_accuracy(model, task: Task, difficulties: Sequence[int], n_per_difficulty: int,
                    *, seed: int = 0, split: str = "test", batch_size: int = 64,
                    max_new_tokens: int = 128) -> dict[int, float]:
    """Greedy accuracy per difficulty on ``n_per_difficulty`` problems of ``split``."""
    problems = task.sample_problems(split, difficulties, n_per_difficulty, seed)
    s = sample_solutions(model, task, problems, n=1, rng=jax.random.key(seed),
                         batch_size=batch_size, max_new_tokens=max_new_tokens)
    right = s.correct(task)[:, 0]
    ks = np.asarray([p.difficulty for p in problems])
    return {int(k): float(right[ks == k].mean()) for k in difficulties}
