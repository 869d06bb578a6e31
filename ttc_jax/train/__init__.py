"""Training: the trainer, data, checkpoints with resume, metrics, PRM data, export."""

from ttc_jax.train.checkpoint import CheckpointConfigMismatch, CheckpointCorrupt, Checkpointer
from ttc_jax.train.metrics import MetricsWriter, ProgressLine
from ttc_jax.train.trainer import (
    TrainState,
    create_state,
    fit,
    lm_loss,
    make_optimizer,
    make_train_step,
    prm_loss,
)

__all__ = [
    "CheckpointConfigMismatch", "CheckpointCorrupt", "Checkpointer", "MetricsWriter",
    "ProgressLine", "TrainState", "create_state", "fit", "lm_loss", "make_optimizer",
    "make_train_step", "prm_loss",
]
