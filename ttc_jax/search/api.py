"""Entry points: ``search`` (token arrays in, SearchResult out, one jit call) and
``search_problems`` (task problems in, one JSON-ready row per problem out).

    cfg = SearchConfig(method="beam", n=16, beam_width=4)
    rows = search_problems(load_model("policy_small"), load_model("prm"), task, problems, cfg)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import SearchConfig
from ttc_jax.parallel.multihost import replicate, to_host
from ttc_jax.parallel.rules import shard_tree
from ttc_jax.search.result import SearchResult
from ttc_jax.search.state import init_state
from ttc_jax.search.step import row_keys
from ttc_jax.search.strategies import Kernel, make_sampler, make_strategy
from ttc_jax.search.tokens import NO_ANSWER, SearchTokens, answer_id_of_text


@functools.partial(jax.jit, static_argnames=("policy_def", "prm_def", "strategy", "kernel",
                                             "capacity", "max_new_tokens"))
def _search_jit(policy_def, policy_params, prm_def, prm_params, prompts, prompt_lens,
                problem_keys, *, strategy, kernel, capacity, max_new_tokens):
    policy = nnx.merge(policy_def, policy_params)
    prm = None if prm_def is None else nnx.merge(prm_def, prm_params)
    s = init_state(policy, prm, prompts, prompt_lens, n=strategy.n, capacity=capacity,
                   max_new_tokens=max_new_tokens)
    return strategy.run(policy, prm, s, row_keys(problem_keys, strategy.n), kernel)


def problem_keys(seed: int, problem_ids) -> jax.Array:
    """[P] keys: problem p's randomness depends only on (seed, problem_ids[p])."""
    ids = jnp.asarray(problem_ids, jnp.int32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(ids)


def search(policy, prm, prompts, prompt_lens, cfg: SearchConfig, spec: SearchTokens, *,
           problem_ids=None, capacity: int | None = None, mesh=None) -> SearchResult:
    """Runs ``cfg.method`` on P problems in one jit call.

    Args:
      policy: the policy Transformer; prm: the ProcessRewardModel (None only for
        'majority').
      prompts: [P, W] int32 right-padded prompts (bos first); prompt_lens: [P] (>= 1).
      cfg: the search; spec: the task's token ids (``SearchTokens.from_task(task)``).
      problem_ids: [P] ints naming the problems for the randomness (default 0..P-1): the
        same id, seed and layout give the same result whatever else is in the batch.
      capacity: KV-cache slots (default W + cfg.max_new_tokens).
      mesh: a (data, model, stage) mesh (``ttc_jax.parallel.make_mesh``): both models'
        params are placed by the logical-axis rules and the search runs under
        ``jax.set_mesh(mesh)`` (rows split along ``data`` where they divide, tensor
        parallel over ``model``, the layers pipelined over ``stage``). Across hosts the
        result is gathered so every process gets all of it.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
    p, w = prompts.shape
    if prompt_lens.shape != (p,):
        raise ValueError(f"prompt_lens has shape {prompt_lens.shape}; expected ({p},), one "
                         f"length per prompt row")
    if p == 0:
        raise ValueError("no problems given; pass at least one prompt")
    if int(prompt_lens.min()) < 1:
        raise ValueError("every prompt needs at least one token (e.g. bos)")
    if prm is None and cfg.method != "majority":
        raise ValueError(f"method={cfg.method!r} needs a PRM; pass prm=load_model('prm') "
                         f"or use method='majority'")
    capacity = capacity or w + cfg.max_new_tokens
    if capacity < w + cfg.max_new_tokens:
        raise ValueError(f"capacity={capacity} < prompt width {w} + max_new_tokens="
                         f"{cfg.max_new_tokens}; raise capacity or lower max_new_tokens")
    problem_ids = np.arange(p) if problem_ids is None else np.asarray(problem_ids)
    if problem_ids.shape != (p,):
        raise ValueError(f"problem_ids has shape {problem_ids.shape}; expected ({p},)")
    policy_def, policy_params = nnx.split(policy)
    prm_def, prm_params = nnx.split(prm) if prm is not None else (None, None)
    keys = problem_keys(cfg.seed, problem_ids)
    scope = contextlib.nullcontext()
    if mesh is not None:
        policy_params = shard_tree(policy_params, mesh)
        prm_params = None if prm is None else shard_tree(prm_params, mesh)
        prompts, prompt_lens, keys = replicate((prompts, prompt_lens, keys), mesh)
        scope = jax.set_mesh(mesh)
    with scope:
        res = _search_jit(policy_def, policy_params, prm_def, prm_params, prompts,
                          prompt_lens, keys, strategy=make_strategy(cfg),
                          kernel=Kernel(make_sampler(cfg), spec, cfg.max_step_tokens),
                          capacity=capacity, max_new_tokens=cfg.max_new_tokens)
    return to_host(res) if mesh is not None and jax.process_count() > 1 else res


def encode_prompts(task, problems, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """[P, W] right-padded prompt ids (bos first; W rounded up to ``multiple``), [P] lengths."""
    tok = task.tokenizer
    seqs = [tok.encode(task.prompt_text(p), add_bos=True) for p in problems]
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    out = np.full((len(seqs), width), tok.pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, np.asarray([len(s) for s in seqs], np.int32)


def search_problems(policy, prm, task, problems: Sequence, cfg: SearchConfig, *,
                    batch_size: int = 16, prompt_multiple: int = 32,
                    mesh=None) -> list[dict]:
    """Searches every problem (batches of ``batch_size``, padded to a fixed shape so one
    program serves all) and returns one JSON-ready dict per problem (``mesh``: see
    :func:`search`)."""
    problems = list(problems)
    if not problems:
        raise ValueError("no problems given")
    tok = task.tokenizer
    spec = SearchTokens.from_task(task)
    prompts, lens = encode_prompts(task, problems, prompt_multiple)
    max_len = max(policy.cfg.max_seq_len, 0)
    if prompts.shape[1] + cfg.max_new_tokens > max_len:
        raise ValueError(f"prompt width {prompts.shape[1]} + max_new_tokens="
                         f"{cfg.max_new_tokens} > policy max_seq_len={max_len}; lower "
                         f"search.max_new_tokens")
    rows = []
    for start in range(0, len(problems), batch_size):
        idx = np.arange(start, start + batch_size)
        take = np.minimum(idx, len(problems) - 1)  # filler rows repeat the last problem
        res = search(policy, prm, prompts[take], lens[take], cfg, spec, problem_ids=idx,
                     mesh=mesh)
        res = jax.tree.map(np.asarray, res)
        for b in range(min(batch_size, len(problems) - start)):
            rows.append(_row(task, tok, problems[start + b], res, b, cfg))
    return rows


def _row(task, tok, problem, res: SearchResult, b: int, cfg: SearchConfig) -> dict:
    c = int(res.chosen[b])
    text = tok.decode_until_eos(res.tokens[b, c, :res.lengths[b, c]])
    answer = task.extract_answer(text)
    if answer_id_of_text(answer) != int(res.answer[b]):  # the device and host must agree
        raise RuntimeError(f"on-device answer id {int(res.answer[b])} != host "
                           f"{answer_id_of_text(answer)} for {text!r}")
    valid = res.valid[b]
    texts = [tok.decode_until_eos(res.tokens[b, j, :res.lengths[b, j]])
             for j in range(valid.shape[0]) if valid[j]]
    correct = [task.grade(problem, t) for t in texts]
    return {
        "uid": problem.uid, "difficulty": problem.difficulty, "method": cfg.method,
        "n": cfg.n, "beam_width": cfg.beam_width, "aggregation": cfg.aggregation,
        "reference": problem.answer, "answer": answer,
        "correct": answer is not None and answer == problem.answer,
        "oracle": any(correct), "chosen_text": text, "chosen_score": float(res.scores[b, c]),
        "num_candidates": len(texts),
        "candidate_answers": [task.extract_answer(t) for t in texts],
        "candidate_scores": [float(x) for x in res.scores[b][valid]],
        "policy_tokens": float(res.compute.policy_tokens[b]),
        "policy_flops": float(res.compute.policy_flops[b]),
        "prm_tokens": float(res.compute.prm_tokens[b]),
        "prm_flops": float(res.compute.prm_flops[b]),
        "no_answer": int(res.answer[b]) == NO_ANSWER,
    }
