"""Entry points behind ``launch/train.py``: build everything from an experiment config and
train. ``kind='policy'`` trains a policy on canonical solutions; ``kind='prm'`` trains a
process reward model on labelled policy samples (see ``ttc_jax.train.prm_data``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from ttc_jax.config import MeshConfig, ModelConfig, TrainConfig, from_dict
from ttc_jax.eval.generate import greedy_accuracy
from ttc_jax.models.io import save_model
from ttc_jax.models.transformer import init_model
from ttc_jax.parallel import make_mesh
from ttc_jax.tasks import get_task
from ttc_jax.train import data
from ttc_jax.train.trainer import fit, lm_loss

logger = logging.getLogger(__name__)

KINDS = ("policy", "prm", "distill")


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def greedy_eval_fn(task, train_cfg: TrainConfig):
    """The periodic eval of policy training: greedy accuracy per difficulty on held-out
    problems (fixed seed), plus the mean; ``(model, step) -> metrics``."""
    ks = list(range(train_cfg.difficulty_min, train_cfg.difficulty_max + 1))

    def eval_fn(m, step):
        acc = greedy_accuracy(m, task, ks, train_cfg.eval_problems, seed=1234)
        out = {f"greedy_acc_k{k}": v for k, v in acc.items()}
        out["greedy_acc_mean"] = sum(acc.values()) / len(acc)
        return out

    return eval_fn


def mesh_from(cfg: Mapping[str, Any]):
    """The mesh of ``cfg['mesh']`` (data x model x stage: data, tensor and pipeline
    parallel training), or None for one device."""
    if not cfg.get("mesh"):
        return None
    mesh_cfg = from_dict(MeshConfig, cfg["mesh"])
    return None if mesh_cfg.size == 1 else make_mesh(mesh_cfg, jax.devices()[:mesh_cfg.size])


def train_policy(cfg: Mapping[str, Any], workdir: str | Path, *, resume: bool = True):
    """Trains a policy; returns (model, final TrainState)."""
    cfg = _as_dict(cfg)
    model_cfg = from_dict(ModelConfig, cfg["model"])
    train_cfg = from_dict(TrainConfig, cfg["train"])
    task = get_task(cfg["task"])
    if model_cfg.vocab_size != task.tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={model_cfg.vocab_size} but the {cfg['task']} "
                         f"tokenizer has {task.tokenizer.vocab_size} ids; set "
                         f"--config.model.vocab_size={task.tokenizer.vocab_size}")
    model = init_model(model_cfg, seed=train_cfg.seed)
    eval_fn = greedy_eval_fn(task, train_cfg)
    model, state = fit(model, loss_fn=lm_loss,
                       batch_fn=lambda s: data.lm_batch(task, train_cfg, s), cfg=train_cfg,
                       workdir=workdir, run_config=cfg, eval_fn=eval_fn, resume=resume,
                       mesh=mesh_from(cfg))
    if int(state.step) >= train_cfg.num_steps:  # finished, not stopped by a signal
        save_model(model, Path(workdir) / "model", kind="policy")  # process 0 writes
    return model, state


def train(cfg: Mapping[str, Any], workdir: str | Path, *, resume: bool = True):
    """Dispatches on ``cfg.kind``."""
    kind = _as_dict(cfg).get("kind", "policy")
    if kind == "policy":
        return train_policy(cfg, workdir, resume=resume)
    if kind == "prm":
        from ttc_jax.train.prm_data import train_prm
        return train_prm(cfg, workdir, resume=resume)
    if kind == "distill":
        from ttc_jax.train.distill import train_distill
        return train_distill(cfg, workdir, resume=resume)
    raise ValueError(f"unknown config kind {kind!r}; choose one of {list(KINDS)}")
