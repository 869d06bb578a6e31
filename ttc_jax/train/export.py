"""Export the weights of a training run's latest checkpoint as a loadable model folder
(``model.json`` + ``params.npz``), e.g. to ship it in ``ttc_jax/assets/<name>``."""

from __future__ import annotations

import json
from pathlib import Path

from ttc_jax.config import ModelConfig, TrainConfig, from_dict
from ttc_jax.models.io import save_model
from ttc_jax.models.prm import init_prm
from ttc_jax.models.transformer import init_model
from ttc_jax.train.checkpoint import Checkpointer
from ttc_jax.train.trainer import create_state, make_optimizer, params_of


def restore_model(workdir: str | Path, step: int | None = None):
    """(model with the checkpoint's weights, kind, run config) of a training workdir."""
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: is {workdir} a training workdir "
                                f"(made by launch/train.py)?")
    cfg = json.loads(cfg_path.read_text())
    kind = cfg.get("kind", "policy")
    train_cfg = from_dict(TrainConfig, cfg["train"])
    model_cfg = from_dict(ModelConfig, cfg["model"])
    if kind == "prm" and cfg.get("prm", {}).get("init_from"):
        from ttc_jax.models.io import load_model
        model_cfg = load_model(cfg["prm"]["init_from"]).cfg
    if kind == "prm":
        from ttc_jax.tasks import get_task
        from ttc_jax.train.prm_data import prm_init_kwargs
        model = init_prm(model_cfg, seed=train_cfg.seed,
                         **prm_init_kwargs(cfg["prm"], get_task(cfg["task"])))
    else:
        model = init_model(model_cfg, seed=train_cfg.seed)
    graphdef, state = create_state(model, train_cfg, make_optimizer(train_cfg))
    ckpt = Checkpointer(workdir, cfg, save_every=train_cfg.save_every)
    state, _ = ckpt.restore(state, step)
    ckpt.close()
    from flax import nnx
    return nnx.merge(graphdef, params_of(state)), kind, cfg


def export(workdir: str | Path, out: str | Path, *, step: int | None = None,
           dtype: str | None = None) -> Path:
    model, kind, _ = restore_model(workdir, step)
    return save_model(model, out, kind=kind, dtype=dtype)
