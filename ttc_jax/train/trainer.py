"""The training loop: a jit-compiled step over a pytree state, orbax checkpoints, resume.

``TrainState`` holds everything a resumed run needs (params, optimizer state, step, EMA,
rng); the data of step s is a pure function of (seed, s), so nothing else is saved.
A run killed at any point and started again with the same command ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ttc_jax.config import TrainConfig
from ttc_jax.parallel.mesh import shard_batch
from ttc_jax.parallel.rules import shard_tree
from ttc_jax.train.checkpoint import Checkpointer
from ttc_jax.train.metrics import MetricsWriter, ProgressLine

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    """Attributes: step [] int32 steps done; params (nnx.State); opt_state (optax);
    ema (params-shaped, or an empty dict when EMA is off); rng [2] uint32 key data."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    rng: jax.Array


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup, cosine decay and global-norm clipping; no weight decay on
    vectors (norm scales, biases)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts)


def create_state(model: nnx.Module, cfg: TrainConfig,
                 tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params = nnx.split(model, nnx.Param)
    ema = jax.tree.map(jnp.copy, params) if cfg.ema_decay > 0 else {}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), ema=ema,
                       rng=jax.random.key_data(jax.random.key(cfg.seed)))
    return graphdef, state


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    ema_decay: float = 0.0):
    """Returns ``step(state, batch) -> (state, metrics)``, jit-compiled, state donated."""

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, batch: Batch):
        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params), batch)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay > 0:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema=ema), metrics

    return train_step


def lm_loss(model, batch: Batch):
    """Masked next-token cross-entropy. batch: tokens [B, W+1], mask [B, W]."""
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1])  # [B, W, V]
    targets = tokens[:, 1:]
    mask = batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(mask.sum(), 1.0)
    acc = ((jnp.argmax(logits, -1) == targets) * mask).sum() / denom
    return (ce * mask).sum() / denom, {"token_acc": acc, "tokens": mask.sum()}


def prm_loss(model, batch: Batch):
    """Binary cross-entropy of step scores at step ends against (soft) labels.

    batch: tokens [B, W], label_mask [B, W], labels [B, W] in [0, 1]. With
    ``pooling='step_min'`` the score of step i is the minimum over steps 0..i.
    """
    logits = model(batch["tokens"])  # [B, W]
    mask, labels = batch["label_mask"], batch["labels"]
    if getattr(model, "pooling", "last") == "step_min":
        # Prefix labels: step i is right iff steps 0..i are, so its prediction is the
        # running minimum of the step-local scores over steps so far.
        logits = jax.lax.cummin(jnp.where(mask > 0, logits, jnp.inf), axis=1)
        logits = jnp.where(mask > 0, logits, 0.0)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
    denom = jnp.maximum(mask.sum(), 1.0)
    acc = (((logits > 0) == (labels > 0.5)) * mask).sum() / denom
    return (bce * mask).sum() / denom, {"step_acc": acc, "tokens": mask.sum()}


def params_of(state: TrainState, use_ema: bool = True):
    """The weights to evaluate or ship: the EMA when it is kept, else the raw params."""
    return state.ema if (use_ema and isinstance(state.ema, nnx.State)) else state.params


def fit(model: nnx.Module, *, loss_fn: LossFn, batch_fn: Callable[[int], Batch],
        cfg: TrainConfig, workdir: str | Path, run_config: Mapping[str, Any],
        eval_fn: Callable[[nnx.Module, int], Mapping[str, float]] | None = None,
        resume: bool = True, mesh: Mesh | None = None) -> tuple[nnx.Module, TrainState]:
    """Trains ``model`` for ``cfg.num_steps`` steps in ``workdir``, resuming if possible.

    Args:
      model: the freshly initialised model (its params are replaced on resume).
      loss_fn: (model, batch) -> (loss, metrics).
      batch_fn: step -> batch of numpy arrays; must be a pure function of the step.
      run_config: the whole experiment config, stored beside each checkpoint and checked
        on resume.
      eval_fn: (model with current weights, step) -> metrics, every ``cfg.eval_every``.
      resume: False insists on a fresh workdir (error if it holds checkpoints).
      mesh: the (data, model, stage) mesh: params and optimizer state are placed by the
        logical-axis rules (``ttc_jax.parallel.shard_tree``), each batch is split along
        ``data`` (gradients are all-reduced by the compiler), and the steps run under
        ``jax.set_mesh(mesh)`` so tensor parallelism follows the shardings and
        ``stage`` > 1 runs the layers as a GPipe pipeline.
    Returns:
      The model with the final weights (EMA when enabled) and the final TrainState.
    """
    workdir = Path(workdir)
    tx = make_optimizer(cfg)
    graphdef, state = create_state(model, cfg, tx)
    place = lambda batch: batch
    if mesh is not None:
        state = shard_tree(state, mesh)
        place = lambda batch: shard_batch(batch, mesh)
    ckpt = Checkpointer(workdir, run_config, save_every=cfg.save_every,
                        keep=cfg.keep_checkpoints, resume=resume)
    state, meta = ckpt.maybe_restore(state)
    start = int(state.step)
    # Multi-host: process 0 writes metrics.jsonl; the others keep their own file beside it.
    name = "metrics.jsonl" if jax.process_index() == 0 else \
        f"metrics.process{jax.process_index()}.jsonl"
    writer = MetricsWriter(workdir / name)
    if meta is not None:
        writer.truncate_after(start)
        logger.info("resuming %s at step %d", workdir, start)
    train_step = make_train_step(graphdef, loss_fn, tx, cfg.ema_decay)
    progress = ProgressLine(cfg.num_steps)
    window: list[dict[str, float]] = []
    t0 = time.time()
    scope = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
    with ckpt.preemption_handler(), scope:
        for step in range(start, cfg.num_steps):
            state, metrics = train_step(state, place(batch_fn(step)))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.num_steps:
                window.append(jax.device_get(metrics))
                row = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                row["tokens"] = float(np.sum([m["tokens"] for m in window]))
                row["wall_s"] = time.time() - t0
                writer.write(done, row)
                progress.update(done, loss=row["loss"], tokens=row["tokens"])
                window = []
            else:
                window.append(metrics)
            if eval_fn is not None and cfg.eval_every and (done % cfg.eval_every == 0
                                                            or done == cfg.num_steps):
                ev = eval_fn(nnx.merge(graphdef, params_of(state)), done)
                writer.write(done, {f"eval/{k}": v for k, v in ev.items()})
                logger.info("step %d eval %s", done, dict(ev))
            ckpt.save(done, state, force=done == cfg.num_steps)
            if ckpt.should_stop:
                ckpt.save(done, state, force=True)
                logger.warning("stopped by signal after step %d; checkpoint saved", done)
                break
    ckpt.wait()
    ckpt.close()
    writer.close()
    return nnx.merge(graphdef, params_of(state)), state
