"""PRM training data and the PRM training run.

Data: policy samples on training problems, each step labelled either
  (a) ``exact``: by the task's step checker (prefix correctness), or
  (b) ``mc``: Math-Shepherd style, by Monte-Carlo rollouts: from the prefix ending at each
      step, the policy completes the solution K times; the label is the fraction of
      completions whose answer is right. This needs no step checker, only a grader.
The labelled set is built once per run (deterministically from the seed) and stored in
the workdir, so a resumed run trains on exactly the same data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ttc_jax.config import ModelConfig, TrainConfig, from_dict
from ttc_jax.decode import Temperature
from ttc_jax.eval.generate import sample_solutions
from ttc_jax.models.io import load_model, save_model
from ttc_jax.models.prm import ProcessRewardModel, init_prm
from ttc_jax.tasks import Problem, Task, get_task
from ttc_jax.train import data
from ttc_jax.train.trainer import fit, prm_loss

logger = logging.getLogger(__name__)

LABELS = ("exact", "mc")

# (problem, prefix text, n) -> n completion texts that continue the prefix.
RolloutFn = Callable[[Sequence[tuple[Problem, str]], int], list[list[str]]]


def step_prefixes(task: Task, text: str) -> list[str]:
    """The solution text up to and including each step's delimiter."""
    steps = task.split_steps(text)
    out, acc = [], ""
    for i, s in enumerate(steps):
        acc += s + (task.step_delimiter if i < len(steps) - 1 or text.endswith(
            task.step_delimiter) else "")
        out.append(acc)
    return out


def mc_step_labels(task: Task, problems: Sequence[Problem], texts: Sequence[str],
                   rollout: RolloutFn, num_rollouts: int) -> list[list[float]]:
    """Monte-Carlo step labels: per step, the fraction of ``num_rollouts`` completions
    from the prefix ending at that step whose final answer is right.

    A prefix that already holds the answer line is graded directly (no rollout needed).
    """
    queries, where = [], []
    labels: list[list[float]] = []
    for i, (p, t) in enumerate(zip(problems, texts)):
        prefixes = step_prefixes(task, t)
        labels.append([0.0] * len(prefixes))
        for j, pre in enumerate(prefixes):
            if task.extract_answer(pre) is not None and j == len(prefixes) - 1:
                labels[i][j] = float(task.grade(p, pre))
            else:
                queries.append((p, pre))
                where.append((i, j))
    if queries:
        completions = rollout(queries, num_rollouts)
        for (i, j), (p, pre), comps in zip(where, queries, completions):
            labels[i][j] = float(np.mean([task.grade(p, pre + c) for c in comps]))
    return labels


def model_rollout(policy, task: Task, *, rng: jax.Array, temperature: float = 1.0,
                  max_new_tokens: int = 128, batch_size: int = 64) -> RolloutFn:
    """A RolloutFn that samples completions from ``policy`` (prompt + prefix as prompt)."""

    def rollout(queries, n):
        problems = [p for p, _ in queries]
        prefixes = [pre for _, pre in queries]
        s = sample_solutions(policy, task, problems, n=n, rng=rng,
                             strategy=Temperature(temperature), prefixes=prefixes,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
        return s.texts

    return rollout


def build_prm_dataset(policy, task: Task, *, num_problems: int, samples_per_problem: int,
                      difficulties: Sequence[int], seed: int, labels: str = "exact",
                      mc_rollouts: int = 8, temperature: float = 1.0,
                      batch_size: int = 64) -> dict[str, Any]:
    """Samples the policy on training problems and labels every step.

    Returns a dict with ``seqs`` (token lists), ``ends`` (step-end positions) and
    ``labels`` (per-step floats), plus summary statistics.
    """
    if labels not in LABELS:
        raise ValueError(f"prm labels={labels!r}; choose one of {list(LABELS)}")
    per_k = max(1, num_problems // len(difficulties))
    problems = task.sample_problems("train", difficulties, per_k, seed)
    rng = jax.random.key(seed)
    s = sample_solutions(policy, task, problems, n=samples_per_problem, rng=rng,
                         strategy=Temperature(temperature), batch_size=batch_size)
    flat_p = [p for p in problems for _ in range(samples_per_problem)]
    flat_t = [t for ts in s.texts for t in ts]
    if labels == "exact":
        ys = [[float(v) for v in task.step_labels(p, t)] for p, t in zip(flat_p, flat_t)]
    else:
        ys = mc_step_labels(task, flat_p, flat_t,
                            model_rollout(policy, task, rng=jax.random.fold_in(rng, 1),
                                          temperature=temperature, batch_size=batch_size),
                            mc_rollouts)
    tok = task.tokenizer
    seqs, ends, out_ys = [], [], []
    for p, t, y in zip(flat_p, flat_t, ys):
        ids, plen = data.encode_example(task, p, t)
        e = data.step_end_positions(ids, plen, tok.step_delimiter_ids, tok.eos_ids)
        if len(e) != len(y) or not e:
            continue  # e.g. an empty sample: nothing to score
        seqs.append(ids)
        ends.append(e)
        out_ys.append(y)
    correct = s.correct(task)
    return {"seqs": seqs, "ends": ends, "labels": out_ys,
            "stats": {"sequences": len(seqs), "sample_accuracy": float(correct.mean()),
                      "step_label_mean": float(np.mean([v for y in out_ys for v in y]))}}


def prm_batch(dataset: Mapping[str, Any], cfg: TrainConfig, step: int,
              pad_id: int) -> dict[str, np.ndarray]:
    """The PRM batch of ``step``: a pure function of (seed, step) over the fixed dataset."""
    rng = data.step_rng(cfg.seed, step, stream=1)
    idx = rng.integers(len(dataset["seqs"]), size=cfg.batch_size)
    return data.pack_prm([dataset["seqs"][i] for i in idx], [dataset["ends"][i] for i in idx],
                         [dataset["labels"][i] for i in idx], pad_id, cfg.bucket_multiple)


def _load_or_build(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    ds = build()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ds))
    tmp.replace(path)  # atomic: a kill never leaves a half-written dataset
    return ds


def prm_init_kwargs(pcfg: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """The PRM head's options (config ``prm.pooling``, ``prm.token_logprob``) and the
    task's step delimiter."""
    return {"pooling": pcfg.get("pooling", "last"),
            "step_delimiter_id": task.tokenizer.step_delimiter_id,
            "token_logprob": bool(pcfg.get("token_logprob", False))}


def train_prm(cfg: Mapping[str, Any], workdir: str | Path, *, resume: bool = True):
    """Trains a PRM (``kind='prm'`` config); exports it to ``workdir/model``."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg = from_dict(TrainConfig, cfg["train"])
    pcfg = cfg["prm"]
    task = get_task(cfg["task"])
    ks = list(range(train_cfg.difficulty_min, train_cfg.difficulty_max + 1))
    policy = load_model(pcfg["policy"], kind="policy")
    dataset = _load_or_build(workdir / "prm_data.json", lambda: build_prm_dataset(
        policy, task, num_problems=pcfg["num_problems"],
        samples_per_problem=pcfg["samples_per_problem"], difficulties=ks,
        seed=train_cfg.seed, labels=pcfg["labels"], mc_rollouts=pcfg["mc_rollouts"],
        temperature=pcfg["temperature"]))
    logger.info("PRM data: %s", dataset["stats"])
    head = prm_init_kwargs(pcfg, task)
    if pcfg.get("init_from"):
        trunk = load_model(pcfg["init_from"], kind="policy")
        model_cfg = trunk.cfg
        prm = init_prm(model_cfg, seed=train_cfg.seed, **head)
        prm.lm = trunk
    else:
        model_cfg = from_dict(ModelConfig, cfg["model"])
        prm = init_prm(model_cfg, seed=train_cfg.seed, **head)
    from ttc_jax.eval.prm_quality import prm_ranking_quality

    def eval_fn(m: ProcessRewardModel, step: int):
        q = prm_ranking_quality(m, policy, task, ks, pcfg["eval_problems"], n=8, seed=4321)
        return {"pairwise_acc": q["pairwise_acc_mean"]}

    model, state = fit(prm, loss_fn=prm_loss,
                       batch_fn=lambda s: prm_batch(dataset, train_cfg, s, task.tokenizer.pad_id),
                       cfg=train_cfg, workdir=workdir, run_config=cfg, eval_fn=eval_fn,
                       resume=resume)
    if int(state.step) >= train_cfg.num_steps:
        save_model(model, workdir / "model", kind="prm")
    return model, state
