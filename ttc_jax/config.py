"""Frozen config dataclasses shared by the library, launch scripts and experiments.

Experiments (``experiments/*.py``) build an ``ml_collections.ConfigDict`` so that absl
flags can override any field (``--config.model.d_model=128``); the library converts it
to these frozen, hashable, validated dataclasses with :func:`from_dict`. Validation
happens at construction, so bad values fail before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


ROPE_SCALINGS = ("linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (Hugging Face ``rope_scaling`` / ``rope_parameters``).

    Attributes:
      kind: ``"linear"`` (every inverse frequency divided by ``factor``) or ``"llama3"``
        (Llama 3.1+: low frequencies divided by ``factor``, high ones kept, a smooth
        blend between the two wavelength bands).
      factor: the context extension factor.
      low_freq_factor, high_freq_factor: llama3 band edges, as wavelengths
        ``original_max_len / low_freq_factor`` and ``original_max_len / high_freq_factor``.
      original_max_len: the pre-extension context length (llama3 only).
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192

    def __post_init__(self):
        _check(self.kind in ROPE_SCALINGS,
               f"rope_scaling.kind={self.kind!r}; supported: {list(ROPE_SCALINGS)}")
        _check(self.factor > 0, f"rope_scaling.factor={self.factor} must be > 0")
        _check(self.kind != "llama3" or self.high_freq_factor > self.low_freq_factor,
               f"rope_scaling.high_freq_factor={self.high_freq_factor} must exceed "
               f"low_freq_factor={self.low_freq_factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).

    Attributes:
      vocab_size: V, number of token ids.
      d_model: D, residual width.
      num_layers: L, decoder blocks (stacked along a leading ``layers`` axis).
      num_heads: N, query heads.
      num_kv_heads: K, key/value heads; N must be a multiple of K (GQA groups G = N/K).
      head_dim: H, per-head width.
      mlp_dim: F, SwiGLU hidden width.
      max_seq_len: the longest sequence (prompt + generation) the model is used with; the
        default KV-cache length.
      rope_theta: RoPE base frequency.
      rope_scaling: optional RoPE frequency scaling (Llama 3.1+ checkpoints).
      norm_eps: RMSNorm epsilon.
      tie_embeddings: use the input embedding as the output projection.
      qkv_bias: biases on q/k/v projections (Qwen2 style).
      dtype: activation dtype ("float32" or "bfloat16").
      param_dtype: parameter dtype.
    """

    vocab_size: int = 21
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 256
    max_seq_len: int = 192
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim", "max_seq_len"):
            _check(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)} must be >= 1")
        _check(self.num_heads % self.num_kv_heads == 0,
               f"model.num_heads={self.num_heads} must be a multiple of "
               f"model.num_kv_heads={self.num_kv_heads} (grouped-query attention)")
        _check(self.head_dim % 2 == 0, f"model.head_dim={self.head_dim} must be even for RoPE")
        for name in ("dtype", "param_dtype"):
            _check(getattr(self, name) in _DTYPES,
                   f"model.{name}={getattr(self, name)!r}; choose one of {sorted(_DTYPES)}")

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, f, h = self.d_model, self.mlp_dim, self.head_dim
        attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    def flops_per_token(self, context_len: int = 0) -> int:
        """Forward FLOPs for one token attending to ``context_len`` positions.

        2 FLOPs per multiply-add of every matmul weight (attention projections, MLP and the
        output projection; the embedding lookup is free), plus the QK^T and PV products.
        """
        d, f, h = self.d_model, self.mlp_dim, self.head_dim
        attn_proj = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        matmul_params = self.num_layers * (attn_proj + 3 * d * f) + self.vocab_size * d
        attn = 2 * 2 * self.num_layers * self.num_heads * h * context_len
        return 2 * matmul_params + attn


T = TypeVar("T")


def _resolve_type(tp: Any) -> Any:
    if isinstance(tp, str):
        return eval(tp, globals())  # noqa: S307 - annotations of this module only
    return tp


def from_dict(cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Builds the dataclass ``cls`` from a (possibly nested) mapping, e.g. a ConfigDict.

    Unknown keys raise a ``ValueError`` listing the valid ones, so a typo in a command
    line override (``--config.model.dmodel=8``) fails at once.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: "
                         f"{sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        tp = _resolve_type(hints[name])
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and value is not None:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The inverse of :func:`from_dict`: plain nested dicts (JSON-serialisable)."""
    return dataclasses.asdict(cfg)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop.

    Attributes:
      seed: one seed for init and data; the data of step s is a pure function of (seed, s).
      batch_size: sequences per step.
      num_steps: total optimizer steps (may be raised when resuming to extend a run).
      learning_rate: peak AdamW learning rate (after linear warmup, cosine decay to
        ``end_lr_fraction`` of it).
      warmup_steps, end_lr_fraction, weight_decay, grad_clip (global norm; 0 = off),
      b1, b2: optimizer settings.
      ema_decay: exponential moving average of the weights (0 = off).
      difficulty_min, difficulty_max: training difficulties (inclusive).
      num_buckets: difficulties are split into this many contiguous groups; each step
        draws its batch from one group, so padding stays small.
      bucket_multiple: sequence widths are rounded up to a multiple of this (few shapes).
      save_every, keep_checkpoints: checkpoint cadence and retention.
      log_every, eval_every: metric cadence (eval = greedy accuracy on held-out problems).
      eval_problems: held-out problems per difficulty for the periodic eval.
      train_problems: 0 (default) draws fresh training problems every step (unlimited
        canonical data); N > 0 fixes a training set of N problems per difficulty (seeded
        by ``seed``) that every step samples from with replacement: the finite-data regime,
        where runs that differ only in their loss (e.g. scratch vs distilled) see the very
        same examples.
    """

    seed: int = 0
    batch_size: int = 64
    num_steps: int = 5000
    learning_rate: float = 3e-3
    warmup_steps: int = 200
    end_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.99
    ema_decay: float = 0.0
    difficulty_min: int = 1
    difficulty_max: int = 8
    num_buckets: int = 4
    bucket_multiple: int = 16
    save_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_every: int = 1000
    eval_problems: int = 50
    train_problems: int = 0

    def __post_init__(self):
        for name in ("batch_size", "num_steps", "save_every", "log_every", "num_buckets",
                     "bucket_multiple", "difficulty_min"):
            _check(getattr(self, name) >= 1, f"train.{name}={getattr(self, name)} must be >= 1")
        _check(self.difficulty_max >= self.difficulty_min,
               f"train.difficulty_max={self.difficulty_max} < difficulty_min="
               f"{self.difficulty_min}")
        _check(0.0 <= self.ema_decay < 1.0, f"train.ema_decay={self.ema_decay} must be in [0, 1)")
        _check(self.learning_rate > 0, f"train.learning_rate={self.learning_rate} must be > 0")
        _check(self.train_problems >= 0, f"train.train_problems={self.train_problems} must be "
               f">= 0 (0 = fresh problems every step)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape: data x model (tensor) x stage (pipeline) parallelism.

    The product must equal the number of devices used (checked by
    ``ttc_jax.parallel.make_mesh`` with the devices at hand).
    """

    data: int = 1
    model: int = 1
    stage: int = 1

    def __post_init__(self):
        for name in ("data", "model", "stage"):
            _check(getattr(self, name) >= 1, f"mesh.{name}={getattr(self, name)} must be >= 1")

    @property
    def size(self) -> int:
        return self.data * self.model * self.stage


SEARCH_METHODS = ("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts", "lookahead")
SEARCH_AGGREGATIONS = ("last", "min", "prod", "mean")
_TREE_METHODS = ("beam", "dvts", "lookahead")
# Selection rules of the tree methods (docs/search_and_learn.md): ttc_jax's own, or the
# exact rules of huggingface/search-and-learn's beam search and DVTS.
KV_CACHES = ("contiguous", "paged")
SEARCH_RULES = ("ttc_jax", "search_and_learn")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Test-time search over N candidate solutions per problem (``ttc_jax.search``).

    Attributes:
      method: one of ``SEARCH_METHODS``. ``majority``, ``best_of_n`` and
        ``weighted_best_of_n`` sample N whole solutions; ``beam``, ``dvts`` and
        ``lookahead`` (beam search whose scores look ``lookahead`` greedy steps ahead)
        grow solutions one step per iteration under the PRM.
      n: N, candidate rows per problem (the compute budget).
      beam_width: M. Beam search keeps the top N/M active beams and expands each into M;
        DVTS runs N/M independent subtrees of M candidates each. N % M == 0, M <= N.
      max_steps: search iterations of the tree methods; the last one generates every
        active beam to its end (as search-and-learn does). Unused by the sampling methods.
      max_step_tokens: per-step token cap (a step also ends at the step delimiter or eos);
        also the width of each incremental PRM scoring block.
      max_new_tokens: T, token budget of a whole solution (the static buffer size).
      aggregation: step scores -> solution score: last, min, prod or mean.
      temperature, top_p: sampling of the policy (top_p=1 disables the nucleus cut).
      lookahead: greedy steps rolled out (and scored) before a candidate step is ranked.
      filter_duplicates: beam search drops active beams whose text repeats an earlier one.
      seed: one seed for the run; the sample of problem p depends only on (seed, p's id).
      rules: ``ttc_jax`` (default) or ``search_and_learn``: the tree methods then follow
        huggingface/search-and-learn exactly (docs/search_and_learn.md): beam search keeps
        the FIRST N beams to finish, padded to N by repeating them, and never scores its
        lookahead; DVTS returns all M siblings of each subtree's last expansion and stops
        a subtree at ``boxed{``; a step cut by ``max_step_tokens`` (the last one too)
        finishes its row; rows end only on eos. Set max_step_tokens=2048 for the
        reference's step budget.
      kv_cache: ``contiguous`` (default; each row owns a full-capacity buffer: fastest on
        CPU) or ``paged`` (``models.paged``: fixed-size pages, a problem's prompt pages
        shared by its N rows, selection moves page tables, not keys and values; layers
        run under ``scan``; on TPU attention is JAX's ``ragged_paged_attention``).
      kv_page_size: tokens per page of the paged cache.
      kv_pool_fraction: the paged pool holds this fraction of the pages every row could
        need on its own (1: never runs short). Below 1 it relies on rows sharing history
        (beam/DVTS keep N/M parents per iteration); running short raises, with this name.
      prm_block_tokens: solution tokens per PRM scoring call (0: ``max_step_tokens``).
        An HF PRM adapter rewrites a block of C tokens into a stream up to C * span ids
        wide (its chat template around every possible step end), so at real shapes a
        smaller block bounds the PRM's activations (scores do not depend on it).
    """

    method: str = "best_of_n"
    n: int = 16
    beam_width: int = 4
    max_steps: int = 12
    max_step_tokens: int = 16
    max_new_tokens: int = 128
    aggregation: str = "last"
    temperature: float = 1.0
    top_p: float = 1.0
    lookahead: int = 0
    filter_duplicates: bool = False
    seed: int = 0
    rules: str = "ttc_jax"
    kv_cache: str = "contiguous"
    kv_page_size: int = 16
    kv_pool_fraction: float = 1.0
    prm_block_tokens: int = 0

    def __post_init__(self):
        _check(self.kv_cache in KV_CACHES,
               f"search.kv_cache={self.kv_cache!r} is unknown; choose one of {list(KV_CACHES)}")
        _check(self.kv_page_size >= 1 and self.kv_page_size & (self.kv_page_size - 1) == 0,
               f"search.kv_page_size={self.kv_page_size} must be a power of two (e.g. 16)")
        _check(0.0 < self.kv_pool_fraction <= 1.0,
               f"search.kv_pool_fraction={self.kv_pool_fraction} must be in (0, 1]")
        _check(self.prm_block_tokens >= 0,
               f"search.prm_block_tokens={self.prm_block_tokens} must be >= 0 (0: "
               f"max_step_tokens)")
        _check(self.rules in SEARCH_RULES,
               f"search.rules={self.rules!r} is unknown; choose one of {list(SEARCH_RULES)}")
        _check(self.method in SEARCH_METHODS,
               f"search.method={self.method!r} is unknown; choose one of {list(SEARCH_METHODS)}")
        _check(self.aggregation in SEARCH_AGGREGATIONS,
               f"search.aggregation={self.aggregation!r} is unknown; choose one of "
               f"{list(SEARCH_AGGREGATIONS)}")
        _check(self.n >= 1, f"search.n={self.n} must be >= 1")
        _check(self.beam_width >= 1, f"search.beam_width={self.beam_width} must be >= 1")
        if self.method in _TREE_METHODS:
            m = self.beam_width
            _check(m <= self.n, f"beam_width={m} > n={self.n}: a beam width larger than the "
                                f"number of beams; use beam_width <= {self.n} or raise n")
            if self.n % m:
                lo, hi = (self.n // m) * m, (self.n // m + 1) * m
                tries = f"n={lo} or n={hi}" if lo else f"n={hi}"
                raise ValueError(f"n={self.n} must be divisible by beam_width={m}; "
                                 f"try {tries}")
        _check(self.max_steps >= 1, f"search.max_steps={self.max_steps} must be >= 1 "
                                    f"(search iterations of the tree methods)")
        _check(self.max_step_tokens >= 1,
               f"search.max_step_tokens={self.max_step_tokens} must be >= 1")
        _check(self.max_new_tokens >= self.max_step_tokens,
               f"search.max_new_tokens={self.max_new_tokens} must be >= max_step_tokens="
               f"{self.max_step_tokens}")
        _check(self.temperature > 0, f"search.temperature={self.temperature} must be > 0")
        _check(0.0 < self.top_p <= 1.0, f"search.top_p={self.top_p} must be in (0, 1]")
        _check(self.lookahead >= 0, f"search.lookahead={self.lookahead} must be >= 0")
        _check(self.method != "lookahead" or self.lookahead >= 1,
               "method='lookahead' needs lookahead >= 1 (e.g. --config.search.lookahead=2); "
               "use method='beam' for plain beam search")
        _check(self.lookahead == 0 or self.method in _TREE_METHODS,
               f"lookahead={self.lookahead} only applies to beam, dvts and lookahead; "
               f"set lookahead=0 for method={self.method!r}")
