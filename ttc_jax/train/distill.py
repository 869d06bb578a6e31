"""Knowledge distillation: a small student learns from a frozen teacher.

Losses (per token, then averaged over the loss mask; ``p`` = teacher, ``q`` = student):

* ``forward_kl``: KL(p_τ || q_τ) · τ², with p_τ = softmax(teacher_logits / τ) and
  q_τ = softmax(student_logits / τ). The τ² factor (Hinton et al. 2015) keeps the soft
  term's gradient on the same scale as the hard cross-entropy's when τ changes (the
  gradient of the softened KL shrinks as 1/τ²). Mode covering.
* ``reverse_kl``: KL(q_τ || p_τ) · τ². Mode seeking.
* ``jsd``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024),
  JSD(β) = β KL(p || m) + (1 - β) KL(q || m) with m = β p + (1 - β) q, 0 < β < 1, at
  temperature τ (times τ²). β → 0 and β → 1 approach (scaled) forward and reverse KL.

The training loss mixes the divergence with cross-entropy on the data's next tokens:
``alpha * divergence + (1 - alpha) * CE`` (CE at temperature 1). On on-policy batches
(student samples) there are no reference tokens and the loss is the divergence alone.

Hidden-state distillation (FitNets, Romero et al. 2015; TinyBERT, Jiao et al. 2020) adds
``hidden_weight * MSE(W_i h_s^i, norm(h_t^j(i)))`` on supervised batches: student block i's
output, mapped by a learned linear ``W_i`` [d_s, d_t], regresses the teacher's block
j(i) = ⌈(i+1)·L_t/L_s⌉ - 1 output (unit-RMS per position), at every real token, prompt
included. The maps live beside the student in ``FeatureStudent`` and are dropped at export.

Modes (``DistillConfig.mode``), all through ``trainer.fit`` (checkpoints, resume):

* ``logit``: the task's canonical solutions (``data.lm_batch``); the teacher runs inside
  the same jitted train step (frozen: its params are an input of the step, no gradient).
* ``on_policy``: GKD. With probability ``on_policy_fraction`` a step's batch is the
  student's own samples for that step's prompts, drawn *inside* the jitted step with the
  current (stop-gradient) student; the teacher scores every sampled position. The step's
  randomness is ``fold_in(key(seed), step)``, so a resumed run repeats the same samples.
* ``sequence``: sequence-level distillation from search (expert iteration): the search
  policy (teacher or the student itself) + the shipped PRM run weighted best-of-N / beam
  on training problems; the selected solutions become a fixed data set (``search_data.jsonl``
  in the round's workdir) and the student is fine-tuned on them with cross-entropy;
  ``rounds > 1`` repeats with the fine-tuned student as the next start (and as the search
  policy when ``search_policy='student'``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ttc_jax.config import MeshConfig, ModelConfig, SearchConfig, TrainConfig, from_dict
from ttc_jax.decode import Temperature, decode, prefill
from ttc_jax.models.io import load_model, save_model
from ttc_jax.models.transformer import init_model
from ttc_jax.tasks import Problem, Task, get_task
from ttc_jax.train import data
from ttc_jax.train.trainer import fit, lm_loss

logger = logging.getLogger(__name__)

LOSSES = ("forward_kl", "reverse_kl", "jsd")
MODES = ("logit", "on_policy", "sequence")


# -- divergences ------------------------------------------------------------------------


def _kl(logp_a: jax.Array, logp_b: jax.Array) -> jax.Array:
    """KL(a || b) over the last axis from log-probabilities; 0 log 0 = 0."""
    p_a = jnp.exp(logp_a)
    return jnp.sum(jnp.where(p_a > 0, p_a * (logp_a - logp_b), 0.0), axis=-1)


def forward_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float = 1.0) -> jax.Array:
    """τ² KL(softmax(t/τ) || softmax(s/τ)) per position: [..., V] -> [...]."""
    p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature**2 * _kl(p, q)


def reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float = 1.0) -> jax.Array:
    """τ² KL(softmax(s/τ) || softmax(t/τ)) per position: [..., V] -> [...]."""
    p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature**2 * _kl(q, p)


def generalized_jsd(student_logits: jax.Array, teacher_logits: jax.Array, beta: float = 0.5,
                    temperature: float = 1.0) -> jax.Array:
    """τ² [β KL(p || m) + (1-β) KL(q || m)], m = β p + (1-β) q, per position."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta={beta} must be in (0, 1); use forward_kl / reverse_kl "
                         f"for the limits")
    p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    m = jnp.logaddexp(p + jnp.log(beta), q + jnp.log1p(-beta))
    return temperature**2 * (beta * _kl(p, m) + (1.0 - beta) * _kl(q, m))


def divergence(name: str, student_logits, teacher_logits, *, temperature: float = 1.0,
               beta: float = 0.5) -> jax.Array:
    """The divergence ``name`` (one of LOSSES) per position."""
    if name == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature)
    if name == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature)
    if name == "jsd":
        return generalized_jsd(student_logits, teacher_logits, beta, temperature)
    raise ValueError(f"unknown distillation loss {name!r}; choose one of {list(LOSSES)}")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over positions where mask > 0 (0 when the mask is empty)."""
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


# -- config -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher.

    Attributes:
      mode: 'logit' | 'on_policy' | 'sequence' (see the module docstring).
      teacher: a shipped model name or an exported model folder.
      loss: 'forward_kl' | 'reverse_kl' | 'jsd'.
      temperature: τ of the divergence (the τ² factor is applied).
      alpha: weight of the divergence; 1 - alpha goes to CE on the data tokens.
      beta: JSD's mixture weight.
      on_policy_fraction: GKD's λ, the share of steps trained on student samples.
      sample_temperature: the student's sampling temperature on on-policy steps.
      init: start the student from this exported model (folder or shipped name) instead
        of a fresh init (sequence mode starts from the distilled student).
      search: sequence mode: the search that selects solutions (SearchConfig fields).
      search_policy: 'teacher' or 'student' (expert iteration: the student searches).
      prm: the PRM that scores search candidates.
      search_problems: training problems per difficulty searched per round.
      rounds: sequence mode: search → fine-tune rounds.
      replay_fraction: sequence mode: the share of fine-tuning steps on the task's
        canonical training data (``data.lm_batch``) instead of the selected solutions, so
        a small search data set is not over-fitted.
      hidden_weight: weight of the hidden-state loss (0 = off; logit and on-policy modes).
      min_score: sequence mode: fine-tune only on selected solutions whose aggregated PRM
        score is at least this (a grader-free confidence filter; 0 keeps every one). The
        round's data file keeps all of them, so the threshold can change without a new
        search.
    """

    mode: str = "logit"
    teacher: str = "teacher"
    loss: str = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 0.5
    on_policy_fraction: float = 0.5
    sample_temperature: float = 1.0
    init: str = ""
    search: Mapping[str, Any] | None = None
    search_policy: str = "teacher"
    prm: str = "prm"
    search_problems: int = 200
    rounds: int = 1
    replay_fraction: float = 0.0
    min_score: float = 0.0
    hidden_weight: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"distill.mode={self.mode!r}; choose one of {list(MODES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"distill.loss={self.loss!r}; choose one of {list(LOSSES)}")
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature={self.temperature} must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha={self.alpha} must be in [0, 1]")
        if self.loss == "jsd" and not 0.0 < self.beta < 1.0:
            raise ValueError(f"distill.beta={self.beta} must be in (0, 1) for loss='jsd'")
        if not 0.0 <= self.on_policy_fraction <= 1.0:
            raise ValueError(f"distill.on_policy_fraction={self.on_policy_fraction} must be "
                             f"in [0, 1]")
        if self.search_policy not in ("teacher", "student"):
            raise ValueError(f"distill.search_policy={self.search_policy!r}; choose "
                             f"'teacher' or 'student'")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"distill.replay_fraction={self.replay_fraction} must be in "
                             f"[0, 1)")
        if self.hidden_weight < 0:
            raise ValueError(f"distill.hidden_weight={self.hidden_weight} must be >= 0 "
                             f"(0 turns hidden-state distillation off)")
        if self.hidden_weight > 0 and self.mode == "sequence":
            raise ValueError("distill.hidden_weight needs the teacher's states: use mode="
                             "'logit' or 'on_policy' (sequence mode fine-tunes on text)")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"distill.min_score={self.min_score} must be in [0, 1] (PRM "
                             f"scores are probabilities); 0 keeps every selected solution")
        if self.rounds < 1 or self.search_problems < 1:
            raise ValueError(f"distill.rounds={self.rounds} and distill.search_problems="
                             f"{self.search_problems} must be >= 1")


# -- hidden-state distillation ------------------------------------------------------------


def layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """The teacher block each student block learns from: evenly spaced, last to last."""
    return tuple(-(-(i + 1) * teacher_layers // student_layers) - 1
                 for i in range(student_layers))


class FeatureStudent(nnx.Module):
    """The student and the linear maps from its block outputs to the teacher's (trained
    with it, discarded at export: ``.student`` is the model)."""

    def __init__(self, student: nnx.Module, teacher_cfg: ModelConfig, *, seed: int = 0):
        self.student = student
        ls, ds, dt = student.cfg.num_layers, student.cfg.d_model, teacher_cfg.d_model
        self.teacher_layers = layer_map(ls, teacher_cfg.num_layers)
        self.proj = nnx.Param(jax.random.normal(jax.random.key(seed), (ls, ds, dt))
                              * ds**-0.5)


def hidden_state_loss(s_layers: jax.Array, t_layers: jax.Array, proj: jax.Array,
                      teacher_layers: tuple[int, ...], mask: jax.Array) -> jax.Array:
    """Mean over mapped layers and masked positions of mean_e (W h_s - h_t / rms(h_t))².

    s_layers [L_s, B, T, d_s], t_layers [L_t, B, T, d_t], proj [L_s, d_s, d_t], mask [B, T].
    """
    t = t_layers[jnp.asarray(teacher_layers)].astype(jnp.float32)
    t = t * jax.lax.rsqrt(jnp.mean(t * t, axis=-1, keepdims=True) + 1e-6)
    s = jnp.einsum("lbtd,lde->lbte", s_layers.astype(jnp.float32), proj)
    return masked_mean(jnp.mean((s - t) ** 2, axis=(0, 3)), mask)


# -- loss functions for trainer.fit -----------------------------------------------------


def make_distill_loss(dcfg: DistillConfig, teacher_graphdef: nnx.GraphDef, *,
                      stop_tokens: tuple[int, ...] = (), pad_id: int = 0):
    """(student, batch) -> (loss, metrics) for ``trainer.fit``.

    The teacher's params travel in ``batch['teacher']`` (an input of the jitted step, so
    they are not baked into the compiled program; ``stop_gradient`` freezes them).

    Supervised batch: tokens [B, W+1], mask [B, W] (``data.lm_batch``).
    On-policy batch: prompts [B, P], prompt_lens [B], rng [2] uint32 key data, gen [M]
    (only its static length M, the token budget, is used).
    """

    def frozen_teacher(batch):
        return nnx.merge(teacher_graphdef, jax.lax.stop_gradient(batch["teacher"]))

    def teacher_logits(batch, tokens):
        return jax.lax.stop_gradient(frozen_teacher(batch)(tokens))

    def div(s_logits, t_logits):
        return divergence(dcfg.loss, s_logits, t_logits, temperature=dcfg.temperature,
                          beta=dcfg.beta)

    def supervised(model, batch):
        tokens, mask = batch["tokens"], batch["mask"]
        inputs = tokens[:, :-1]
        metrics = {}
        if isinstance(model, FeatureStudent):
            student = model.student
            h, s_layers = student.hidden(inputs, return_layers=True)
            s_logits = student.logits_from_hidden(h)
            teacher = frozen_teacher(batch)
            th, t_layers = teacher.hidden(inputs, return_layers=True)
            t_logits = jax.lax.stop_gradient(teacher.logits_from_hidden(th))
            hid = hidden_state_loss(s_layers, jax.lax.stop_gradient(t_layers),
                                    model.proj[...], model.teacher_layers,
                                    (inputs != pad_id).astype(jnp.float32))
            metrics["hidden"] = hid
        else:
            s_logits = model(inputs)  # [B, W, V]
            t_logits = teacher_logits(batch, inputs)
            hid = jnp.float32(0.0)
        kd = masked_mean(div(s_logits, t_logits), mask)
        ce = masked_mean(optax.softmax_cross_entropy_with_integer_labels(
            s_logits, tokens[:, 1:]), mask)
        acc = masked_mean((jnp.argmax(s_logits, -1) == tokens[:, 1:]).astype(jnp.float32),
                          mask)
        loss = dcfg.alpha * kd + (1.0 - dcfg.alpha) * ce + dcfg.hidden_weight * hid
        return loss, dict(metrics, kd=kd, ce=ce, token_acc=acc, tokens=mask.sum(),
                          on_policy=jnp.float32(0.0))

    def on_policy(model, batch):
        student = model.student if isinstance(model, FeatureStudent) else model
        seq, mask = student_samples(student, batch["prompts"], batch["prompt_lens"],
                                    jax.random.wrap_key_data(batch["rng"]),
                                    max_new_tokens=batch["gen"].shape[0],
                                    temperature=dcfg.sample_temperature,
                                    stop_tokens=stop_tokens, pad_id=pad_id)
        s_logits = student(seq[:, :-1])
        t_logits = teacher_logits(batch, seq[:, :-1])
        kd = masked_mean(div(s_logits, t_logits), mask)
        metrics = {"hidden": jnp.float32(0.0)} if isinstance(model, FeatureStudent) else {}
        return kd, dict(metrics, kd=kd, ce=jnp.float32(0.0), token_acc=jnp.float32(0.0),
                        tokens=mask.sum(), on_policy=jnp.float32(1.0))

    def loss_fn(student, batch):
        return on_policy(student, batch) if "prompts" in batch else supervised(student, batch)

    return loss_fn


def student_samples(student, prompts: jax.Array, prompt_lens: jax.Array, rng: jax.Array, *,
                    max_new_tokens: int, temperature: float, stop_tokens: tuple[int, ...],
                    pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """The student's samples as an LM batch (no gradient flows through sampling).

    Args:
      prompts: [B, P] right-padded (bos first); prompt_lens [B].
    Returns:
      seq [B, P + M + 1] int32 (prompt, then the sample, then pad) and mask [B, P + M]
      float32: 1 where ``seq[:, 1:]`` is a sampled token (stop token included).
    """
    b, p = prompts.shape
    graphdef, params = nnx.split(student)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params)).hoist_layers()
    state = prefill(frozen, prompts, prompt_lens, n=1, capacity=p + max_new_tokens,
                    max_new_tokens=max_new_tokens)
    state = decode(frozen, state, rng, strategy=Temperature(temperature),
                   stop_tokens=stop_tokens)
    width = p + max_new_tokens + 1
    pos = jnp.arange(width)[None, :]  # [1, W+1]
    seq = jnp.where(pos < prompt_lens[:, None],
                    jnp.pad(prompts, ((0, 0), (0, width - p)), constant_values=pad_id), pad_id)
    rows = jnp.arange(b)[:, None]
    t = jnp.arange(max_new_tokens)[None, :]
    cols = jnp.where(t < state.num_tokens[:, None], prompt_lens[:, None] + t, width)
    seq = seq.at[rows, cols].set(state.tokens, mode="drop")
    # Target j is seq[j + 1]: sampled tokens sit at prompt_len .. prompt_len + n - 1.
    j = pos[:, :-1]
    mask = ((j >= prompt_lens[:, None] - 1)
            & (j < prompt_lens[:, None] - 1 + state.num_tokens[:, None])).astype(jnp.float32)
    return jax.lax.stop_gradient(seq), mask


# -- batches ----------------------------------------------------------------------------


def on_policy_step(dcfg: DistillConfig, cfg: TrainConfig, step: int) -> bool:
    """Whether ``step`` trains on student samples (a pure function of (seed, step))."""
    if dcfg.on_policy_fraction <= 0:
        return False
    return bool(data.step_rng(cfg.seed, step, stream=7).random() < dcfg.on_policy_fraction)


def prompt_batch(task: Task, cfg: TrainConfig, step: int) -> dict[str, np.ndarray]:
    """The prompts of ``step``'s problems: prompts [B, P] (P a multiple of
    ``bucket_multiple``), prompt_lens [B], gen [M] (M = the canonical batch's width, the
    sampling budget: enough for a correct solution), rng [2] key data of the step."""
    problems = data.sample_problems_for_step(task, cfg, step)
    tok = task.tokenizer
    enc = [data.encode_example(task, p) for p in problems]
    budget = data.round_up(max(len(s) - n for s, n in enc), cfg.bucket_multiple)
    prompts = [s[:n] for s, n in enc]
    width = data.round_up(max(len(p) for p in prompts), cfg.bucket_multiple)
    out = np.full((len(prompts), width), tok.pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, :len(p)] = p
    rng = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), step)))
    return {"prompts": out, "prompt_lens": np.asarray([len(p) for p in prompts], np.int32),
            "gen": np.zeros((budget,), np.int32), "rng": rng}


# -- runs -------------------------------------------------------------------------------


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _eval_fn(task: Task, train_cfg: TrainConfig):
    from ttc_jax.train.run import greedy_eval_fn  # run imports this module lazily

    return greedy_eval_fn(task, train_cfg)


def _student(cfg: Mapping[str, Any], dcfg: DistillConfig, train_cfg: TrainConfig, task: Task):
    if dcfg.init:
        model = load_model(dcfg.init, kind="policy")
        if "model" in cfg and from_dict(ModelConfig, cfg["model"]) != model.cfg:
            raise ValueError(f"distill.init={dcfg.init!r} has model config {model.cfg}, but "
                             f"the config's model is {cfg['model']}; drop one of them")
        return model
    model_cfg = from_dict(ModelConfig, cfg["model"])
    if model_cfg.vocab_size != task.tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={model_cfg.vocab_size} but the task tokenizer has "
                         f"{task.tokenizer.vocab_size} ids")
    return init_model(model_cfg, seed=train_cfg.seed)


def train_distill(cfg: Mapping[str, Any], workdir: str | Path, *, resume: bool = True):
    """Runs a distillation experiment (``cfg.kind == 'distill'``); returns (model, state)."""
    cfg = _as_dict(cfg)
    if cfg.get("mesh") and from_dict(MeshConfig, cfg["mesh"]).size > 1:
        raise ValueError(f"distillation runs on one device; set --config.mesh.data=1 "
                         f"(and model=1, stage=1), got mesh {cfg['mesh']}")
    dcfg = from_dict(DistillConfig, cfg.get("distill"))
    train_cfg = from_dict(TrainConfig, cfg["train"])
    task = get_task(cfg["task"])
    if dcfg.mode == "sequence":
        return train_sequence(cfg, dcfg, train_cfg, task, Path(workdir), resume=resume)
    teacher = load_model(dcfg.teacher, kind="policy")
    student = _student(cfg, dcfg, train_cfg, task)
    if teacher.cfg.vocab_size != student.cfg.vocab_size:
        raise ValueError(f"teacher vocab {teacher.cfg.vocab_size} != student vocab "
                         f"{student.cfg.vocab_size}; they must share the tokenizer")
    t_def, t_params = nnx.split(teacher)
    tok = task.tokenizer
    loss_fn = make_distill_loss(dcfg, t_def, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)

    def batch_fn(step):
        if dcfg.mode == "on_policy" and on_policy_step(dcfg, train_cfg, step):
            batch = prompt_batch(task, train_cfg, step)
        else:
            batch = data.lm_batch(task, train_cfg, step)
        return dict(batch, teacher=t_params)

    eval_fn = _eval_fn(task, train_cfg)
    if dcfg.hidden_weight > 0:
        student = FeatureStudent(student, teacher.cfg, seed=train_cfg.seed)
        eval_fn = lambda m, step, _eval=eval_fn: _eval(m.student, step)  # noqa: E731
    model, state = fit(student, loss_fn=loss_fn, batch_fn=batch_fn, cfg=train_cfg,
                       workdir=workdir, run_config=cfg, eval_fn=eval_fn, resume=resume)
    if isinstance(model, FeatureStudent):
        model = model.student
    if int(state.step) >= train_cfg.num_steps:
        save_model(model, Path(workdir) / "model", kind="policy")
    return model, state


# -- sequence-level distillation from search ---------------------------------------------


def search_dataset(policy, prm, task: Task, problems: list[Problem],
                   search_cfg: SearchConfig, *, batch: int = 64) -> list[dict[str, Any]]:
    """Runs the search on ``problems`` and returns one row per problem with the selected
    solution text (``solution``), its score and whether it is right (for reporting only:
    the fine-tuning keeps every selected solution, as a grader-free pipeline would)."""
    from ttc_jax.search.api import search_problems

    rows = []
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        for p, r in zip(chunk, search_problems(policy, prm, task, chunk, search_cfg)):
            rows.append({"prompt": task.prompt_text(p), "solution": r["chosen_text"],
                         "difficulty": p.difficulty, "correct": bool(r["correct"]),
                         "score": r["chosen_score"], "policy_flops": r["policy_flops"]})
    return rows


def sequence_batch(rows: list[dict[str, Any]], task: Task, cfg: TrainConfig,
                   step: int) -> dict[str, np.ndarray]:
    """An LM batch of selected solutions, a pure function of (seed, step, rows): rows are
    drawn from one difficulty group per step (few shapes, little padding)."""
    rng = data.step_rng(cfg.seed, step, stream=11)
    groups = [g for g in data.difficulty_groups(cfg)
              if any(r["difficulty"] in g for r in rows)]
    group = groups[int(rng.integers(len(groups)))]
    pool = [r for r in rows if r["difficulty"] in group]
    pick = rng.integers(len(pool), size=cfg.batch_size)
    tok = task.tokenizer
    seqs, starts = [], []
    for i in pick:
        prompt = tok.encode(pool[i]["prompt"], add_bos=True)
        seqs.append(prompt + tok.encode(pool[i]["solution"], add_eos=True))
        starts.append(len(prompt))
    return data.pack(seqs, starts, tok.pad_id, cfg.bucket_multiple)


def round_data(dcfg: DistillConfig, train_cfg: TrainConfig, task: Task, rdir: Path,
               r: int, student_src: str | Path | None) -> list[dict[str, Any]]:
    """The selected solutions of round ``r`` (``rdir/search_data.jsonl``), searched once and
    then read back: the fine-tuning's data is a file, so a resumed run sees the same."""
    data_path = rdir / "search_data.jsonl"
    if data_path.exists():
        return [json.loads(line) for line in data_path.read_text().splitlines()]
    if dcfg.search_policy == "teacher":
        policy = load_model(dcfg.teacher, kind="policy")
    elif student_src is None:
        raise ValueError("search_policy='student' needs the student: set distill.init")
    else:
        policy = load_model(student_src, kind="policy")
    ks = list(range(train_cfg.difficulty_min, train_cfg.difficulty_max + 1))
    problems = task.sample_problems("train", ks, dcfg.search_problems,
                                    seed=train_cfg.seed + 1000 * r)
    rows = search_dataset(policy, load_model(dcfg.prm, kind="prm"), task, problems,
                          from_dict(SearchConfig, dcfg.search or {}))
    rdir.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(x) + "\n" for x in rows))
    tmp.rename(data_path)
    logger.info("round %d: %d selected solutions (%.3f right)", r, len(rows),
                float(np.mean([x["correct"] for x in rows])))
    return rows


def kept_rows(rows: list[dict[str, Any]], min_score: float, r: int = 0
              ) -> list[dict[str, Any]]:
    """The selected solutions scoring at least ``min_score`` (the fine-tuning set)."""
    kept = [x for x in rows if x["score"] >= min_score]
    if not kept:
        best = max((x["score"] for x in rows), default=float("nan"))
        raise ValueError(f"round {r}: no selected solution scores >= distill.min_score="
                         f"{min_score} (best {best:.3f}); lower min_score")
    logger.info("round %d: fine-tuning on %d of %d selected solutions (score >= %g; %.3f "
                "right, reported only)", r, len(kept), len(rows), min_score,
                float(np.mean([x["correct"] for x in kept])))
    return kept


def search_data_only(cfg: Mapping[str, Any], workdir: str | Path) -> list[dict[str, Any]]:
    """Builds round 0's search data set without training (it needs no student when the
    teacher searches, so it can run while the student is still being distilled)."""
    cfg = _as_dict(cfg)
    dcfg = from_dict(DistillConfig, cfg.get("distill"))
    if dcfg.mode != "sequence":
        raise ValueError(f"search data is for distill.mode='sequence', not {dcfg.mode!r}")
    return round_data(dcfg, from_dict(TrainConfig, cfg["train"]), get_task(cfg["task"]),
                      Path(workdir) / "round0", 0, dcfg.init or None)


def train_sequence(cfg: dict[str, Any], dcfg: DistillConfig, train_cfg: TrainConfig,
                   task: Task, workdir: Path, *, resume: bool = True):
    """Expert iteration: for each round, search → keep the selected solutions → fine-tune.

    Round r lives in ``workdir/round<r>`` (its data set, checkpoints, metrics, model), so a
    killed run resumes inside the round it was in; finished rounds are reused.
    """
    if not dcfg.init:
        raise ValueError("sequence distillation fine-tunes an existing student: set "
                         "distill.init to a shipped model name or an exported folder")
    student_src: str | Path = dcfg.init
    model = state = None
    for r in range(dcfg.rounds):
        rdir = workdir / f"round{r}"
        rows = kept_rows(round_data(dcfg, train_cfg, task, rdir, r, student_src),
                         dcfg.min_score, r)
        student = load_model(student_src, kind="policy")
        def batch_fn(step, rows=rows):
            replay = data.step_rng(train_cfg.seed, step, stream=13).random()
            if replay < dcfg.replay_fraction:
                return data.lm_batch(task, train_cfg, step)
            return sequence_batch(rows, task, train_cfg, step)

        model, state = fit(student, loss_fn=lm_loss, batch_fn=batch_fn,
                           cfg=train_cfg, workdir=rdir, run_config=dict(cfg, round=r),
                           eval_fn=_eval_fn(task, train_cfg), resume=resume)
        if int(state.step) < train_cfg.num_steps:  # stopped by a signal
            return model, state
        student_src = save_model(model, rdir / "model", kind="policy")
    save_model(model, workdir / "model", kind="policy")
    return model, state


# -- comparing students -------------------------------------------------------------------


def compare_models(models: Mapping[str, Any], task: Task, *, problems_per_k: int = 100,
                   seed: int = 1, ks: tuple[int, ...] = tuple(range(1, 9))
                   ) -> dict[str, dict[int, float]]:
    """Greedy accuracy per difficulty of each named model (shipped name, folder or
    module) on the same held-out problems (the model card's protocol: test split, seed 1)."""
    from ttc_jax.eval.generate import greedy_accuracy

    out = {}
    for name, m in models.items():
        model = load_model(m, kind="policy") if isinstance(m, (str, Path)) else m
        out[name] = greedy_accuracy(model, task, list(ks), problems_per_k, seed=seed)
    return out


def accuracy_table(results: Mapping[str, Mapping[int, float]]) -> str:
    """A markdown table: one row per model, one column per k, and the mean."""
    ks = sorted(next(iter(results.values())))
    lines = ["| model | " + " | ".join(f"k={k}" for k in ks) + " | mean |",
             "|---|" + "---|" * (len(ks) + 1)]
    for name, acc in results.items():
        vals = [acc[k] for k in ks]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals)
                     + f" | {np.mean(vals):.3f} |")
    return "\n".join(lines)


def budget_comparison(teacher, student, task: Task, ns: tuple[int, ...] = (2, 4), *,
                      problems_per_k: int = 50, seed: int = 1, temperature: float = 0.7,
                      ks: tuple[int, ...] = tuple(range(1, 9))) -> list[dict[str, Any]]:
    """The student with majority voting over N samples vs one teacher greedy pass, with
    the FLOPs both spend counted by the search's own accounting (no PRM: a PRM as large as
    the teacher would alone cost about one teacher pass). Greedy is top_p -> 0.

    Returns rows {name, n, acc: {k: float}, mean, policy_flops (per problem, mean)}.
    """
    from ttc_jax.search.api import search_problems

    problems = task.sample_problems("test", list(ks), problems_per_k, seed)
    runs = [("teacher greedy", teacher, SearchConfig(method="majority", n=1, top_p=1e-6,
                                                     seed=seed))]
    runs += [(f"student majority@{n}", student,
              SearchConfig(method="majority", n=n, temperature=temperature, seed=seed))
             for n in ns]
    out = []
    for name, model, scfg in runs:
        rows = search_problems(model, None, task, problems, scfg)
        acc = {k: float(np.mean([r["correct"] for r in rows if r["difficulty"] == k]))
               for k in ks}
        out.append({"name": name, "n": scfg.n, "acc": acc, "mean": float(np.mean(
            list(acc.values()))), "policy_flops": float(np.mean([r["policy_flops"]
                                                                 for r in rows]))})
    return out
