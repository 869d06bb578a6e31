"""Import Hugging Face Llama 2/3 and Qwen2/2.5 checkpoints from a local folder.

    model = load_hf_model("/ckpt/Llama-3.2-1B-Instruct", dtype="bfloat16", mesh=mesh)

reads ``config.json`` (the transformers 5.x ``rope_parameters`` form and the older
``rope_theta`` + ``rope_scaling`` form) and the safetensors weights (one file, or shards
listed by ``model.safetensors.index.json``), converts each tensor to our layout
(``[out, in]`` torch linears -> ``[in, ...]`` einsum weights; layers stacked on a leading
L axis) and places it directly with the parameter's sharding when a mesh is given
(one tensor at a time: each device receives only its shard).

Layout map (HF -> ours), per layer l, stacked over l:
  q_proj.weight [N*H, D] -> attn.q [D, N, H]     k/v_proj.weight [K*H, D] -> [D, K, H]
  o_proj.weight [D, N*H] -> attn.o [N, H, D]     q/k/v_proj.bias [N*H] -> [N, H] ([K, H])
  gate/up_proj.weight [F, D] -> [D, F]           down_proj.weight [D, F] -> [F, D]
  input_layernorm -> attn_norm.scale             post_attention_layernorm -> mlp_norm.scale
  embed_tokens.weight [V, D] -> embed            lm_head.weight [V, D] -> lm_head [D, V]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig, RopeScaling
from ttc_jax.interop.files import read_json
from ttc_jax.interop.safetensors import SafetensorsCheckpoint
from ttc_jax.models.transformer import Transformer

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
# Tensors a checkpoint may carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class HFModelInfo:
    """What ``config.json`` says beyond the ModelConfig.

    Attributes:
      architecture: ``architectures[0]`` of the config.
      model_type: ``llama`` or ``qwen2``.
      bos_token_id: int or None.
      eos_token_ids: every end-of-sequence id (the config may list several).
      max_position_embeddings: the model's context length.
    """

    architecture: str
    model_type: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int


def _rope(raw: dict, where: Path) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either config form."""
    params = raw.get("rope_parameters")
    if params is None:  # transformers < 5: rope_theta + rope_scaling at the top level
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10_000.0))
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]  # per-layer-type form; all layers are full here
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10_000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_len=int(params["original_max_position_embeddings"]))
    raise ValueError(f"{where}: rope type {kind!r} is not supported (supported: default, "
                     f"linear, llama3)")


def read_json_file(where: Path, what: str = "file") -> dict:
    """The JSON object in ``where`` (``interop.files.read_json``: errors name the file)."""
    return read_json(where, what)


# config.json keys every Llama/Qwen2 config has (the shapes of the weights)
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")


def read_hf_config(path: str | Path, *, dtype: str = "float32", max_seq_len: int | None = None,
                   architectures: tuple[str, ...] | None = ARCHITECTURES,
                   tie_embeddings: bool | None = None) -> tuple[ModelConfig, HFModelInfo]:
    """ModelConfig + HFModelInfo from ``<path>/config.json``.

    Args:
      dtype: parameter and activation dtype, ``float32`` or ``bfloat16``.
      max_seq_len: the default KV-cache length (default: the model's context, at most 4096).
      architectures: the ``architectures`` accepted (the PRM loaders widen it; None: any).
      tie_embeddings: override ``tie_word_embeddings`` (None: read it from the config).
    """
    where = Path(path) / "config.json"
    if not where.exists():
        raise FileNotFoundError(f"no config.json in {path}; point at a local Hugging Face "
                                f"checkpoint folder (config.json + *.safetensors)")
    raw = read_json_file(where, "config.json")
    arch = (raw.get("architectures") or ["?"])[0]
    if architectures is not None and arch not in architectures:
        raise ValueError(f"{where}: architecture {arch!r} is not supported; supported: "
                         f"{list(architectures)} (Llama 2/3 and Qwen2/2.5 decoders)")
    model_type = raw.get("model_type", "")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={raw['hidden_act']!r}; only silu (SwiGLU) "
                         f"is supported")
    if raw.get("mlp_bias", False):
        raise ValueError(f"{where}: mlp_bias=true is not supported")
    if model_type == "qwen2":
        if raw.get("use_sliding_window", False):
            raise ValueError(f"{where}: use_sliding_window=true is not supported; this "
                             f"importer runs full attention on every layer")
        qkv_bias = True
    else:
        if raw.get("attention_bias", False):
            raise ValueError(f"{where}: attention_bias=true (a bias on o_proj too) is not "
                             f"supported for {model_type!r}")
        qkv_bias = False
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{where} has no {missing}; a Llama/Qwen2 config.json names "
                         f"{list(_REQUIRED)}: use the checkpoint's own config.json (a "
                         f"generation_config.json or a config stripped of its model fields "
                         f"will not do)")
    bad = [k for k in _REQUIRED + ("num_key_value_heads", "head_dim")
           if raw.get(k) is not None and (not isinstance(raw[k], int) or isinstance(raw[k], bool)
                                          or raw[k] < 1)]
    if bad:
        raise ValueError(f"{where}: {', '.join(f'{k}={raw[k]!r}' for k in bad)} must be "
                         f"positive integers; is config.json from this checkpoint?")
    d, n = raw["hidden_size"], raw["num_attention_heads"]
    theta, scaling = _rope(raw, where)
    max_pos = int(raw.get("max_position_embeddings", 4096))
    tie = raw.get("tie_word_embeddings", False) if tie_embeddings is None else tie_embeddings
    cfg = ModelConfig(
        vocab_size=raw["vocab_size"], d_model=d, num_layers=raw["num_hidden_layers"],
        num_heads=n, num_kv_heads=raw.get("num_key_value_heads") or n,
        head_dim=raw.get("head_dim") or d // n, mlp_dim=raw["intermediate_size"],
        max_seq_len=max_seq_len or min(max_pos, 4096), rope_theta=theta,
        rope_scaling=scaling, norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(tie), qkv_bias=qkv_bias, dtype=dtype, param_dtype=dtype)
    eos = raw.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
    info = HFModelInfo(architecture=arch, model_type=model_type,
                       bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos,
                       max_position_embeddings=max_pos)
    return cfg, info


# -- tensor conversion -------------------------------------------------------------------

def _layer_specs(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, tuple, Callable]]:
    """our key path -> (HF name with {l}, HF shape, HF array -> our per-layer array)."""
    d, n, k, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    a = "model.layers.{l}.self_attn."
    m = "model.layers.{l}.mlp."
    specs = {
        ("attn", "q"): (a + "q_proj.weight", (n * h, d), lambda w: w.T.reshape(d, n, h)),
        ("attn", "k"): (a + "k_proj.weight", (k * h, d), lambda w: w.T.reshape(d, k, h)),
        ("attn", "v"): (a + "v_proj.weight", (k * h, d), lambda w: w.T.reshape(d, k, h)),
        ("attn", "o"): (a + "o_proj.weight", (d, n * h), lambda w: w.T.reshape(n, h, d)),
        ("mlp", "gate"): (m + "gate_proj.weight", (f, d), lambda w: w.T),
        ("mlp", "up"): (m + "up_proj.weight", (f, d), lambda w: w.T),
        ("mlp", "down"): (m + "down_proj.weight", (d, f), lambda w: w.T),
        ("attn_norm", "scale"): ("model.layers.{l}.input_layernorm.weight", (d,), lambda w: w),
        ("mlp_norm", "scale"): ("model.layers.{l}.post_attention_layernorm.weight", (d,),
                                lambda w: w),
    }
    if cfg.qkv_bias:
        specs[("attn", "q_bias")] = (a + "q_proj.bias", (n * h,), lambda b: b.reshape(n, h))
        specs[("attn", "k_bias")] = (a + "k_proj.bias", (k * h,), lambda b: b.reshape(k, h))
        specs[("attn", "v_bias")] = (a + "v_proj.bias", (k * h,), lambda b: b.reshape(k, h))
    return specs


def _top_specs(cfg: ModelConfig, prefix: str = "model.") -> dict:
    d, v = cfg.d_model, cfg.vocab_size
    specs = {("embed",): (prefix + "embed_tokens.weight", (v, d), lambda w: w),
             ("final_norm", "scale"): (prefix + "norm.weight", (d,), lambda w: w)}
    if not cfg.tie_embeddings:
        specs[("lm_head",)] = ("lm_head.weight", (v, d), lambda w: w.T)
    return specs


def read_tensor(ckpt: SafetensorsCheckpoint, name: str, shape: tuple,
                cfg: ModelConfig) -> np.ndarray:
    if name not in ckpt:
        raise ValueError(f"tensor {name!r} is missing from the checkpoint at {ckpt.path} "
                         f"(the config implies it: {_cfg_line(cfg)})")
    got = ckpt.shape(name)
    if got != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {list(got)} in the checkpoint at "
                         f"{ckpt.path}, but config.json implies {list(shape)} "
                         f"({_cfg_line(cfg)}); are config and weights from the same model?")
    return ckpt.get(name)


def _cfg_line(cfg: ModelConfig) -> str:
    return (f"vocab={cfg.vocab_size} d_model={cfg.d_model} heads={cfg.num_heads} "
            f"kv_heads={cfg.num_kv_heads} head_dim={cfg.head_dim} mlp={cfg.mlp_dim} "
            f"layers={cfg.num_layers}")


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> dict:
    """Pure dict of ``NamedSharding`` for every parameter of ``state``, from its logical
    axis names through the one rules table (``ttc_jax.parallel.rules``), which also
    checks that each sharded dimension divides by its mesh axis."""
    from ttc_jax.parallel.rules import tree_shardings

    return nnx.to_pure_dict(tree_shardings(state, mesh))


def fill_params(abstract: nnx.Module, values: Callable[[tuple[str, ...]], np.ndarray], *,
                dtype, mesh: jax.sharding.Mesh | None = None) -> nnx.Module:
    """Materialises the abstract module ``abstract`` (``nnx.eval_shape``): every Param at
    key path p gets ``values(p)`` (a host array), cast to ``dtype`` and placed on its
    sharding (or the default device) one tensor at a time, so the host holds at most one
    converted tensor besides the memory-mapped files."""
    graphdef, state = nnx.split(abstract)
    params = nnx.state(abstract, nnx.Param)
    pure = nnx.to_pure_dict(params)
    shardings = param_shardings(params, mesh) if mesh is not None else None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    out = []
    for path, leaf in leaves:
        key = tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        arr = np.asarray(values(key))
        if arr.shape != tuple(leaf.shape):
            raise ValueError(f"parameter {'/'.join(key)}: converted shape {arr.shape}, model "
                             f"expects {tuple(leaf.shape)}")
        arr = arr.astype(dtype)
        if shardings is not None:
            sh = shardings
            for p in key:
                sh = sh[p]
            # each device receives only its slice (also across hosts: every process
            # reads the same file and fills its own devices)
            out.append(jax.make_array_from_callback(arr.shape, sh, lambda idx, a=arr: a[idx]))
        else:
            out.append(jnp.asarray(arr))
    nnx.replace_by_pure_dict(params, jax.tree_util.tree_unflatten(treedef, out))
    model = nnx.merge(graphdef, state)
    nnx.update(model, params)
    return model


def transformer_values(ckpt: SafetensorsCheckpoint, cfg: ModelConfig, prefix: str = "model."
                       ) -> tuple[Callable[[tuple[str, ...]], np.ndarray], set[str]]:
    """(key path -> our-layout array, the set of HF tensor names it reads).

    ``prefix`` is where the decoder lives in the checkpoint (``model.``)."""
    layer = {k: (v[0].replace("model.", prefix, 1), *v[1:])
             for k, v in _layer_specs(cfg).items()}
    top = _top_specs(cfg, prefix)
    used = {v[0] for v in top.values()}
    used |= {v[0].format(l=i) for v in layer.values() for i in range(cfg.num_layers)}

    def values(key: tuple[str, ...]) -> np.ndarray:
        if key[0] == "layers":
            name, shape, fn = layer[key[1:]]
            return np.stack([fn(read_tensor(ckpt, name.format(l=i), shape, cfg))
                             for i in range(cfg.num_layers)])
        name, shape, fn = top[key]
        return fn(read_tensor(ckpt, name, shape, cfg))

    return values, used


def check_unused(ckpt: SafetensorsCheckpoint, used: set[str]) -> None:
    """Tensors the model would silently drop mean a different architecture: fail."""
    extra = [n for n in ckpt.names() if n not in used and not n.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"the checkpoint at {ckpt.path} has tensors this model does not use: "
                         f"{extra[:6]}{' ...' if len(extra) > 6 else ''}; the architecture "
                         f"differs from what config.json describes")


def load_hf_model(path: str | Path, *, dtype: str = "float32", max_seq_len: int | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> Transformer:
    """A Transformer holding the weights of a local HF Llama/Qwen2 checkpoint folder.

    Args:
      path: folder with ``config.json`` and ``model.safetensors`` (or the sharded index).
      dtype: ``float32`` or ``bfloat16`` (parameters and activations).
      max_seq_len: default KV-cache length (default: min(context, 4096)).
      mesh: place each tensor directly on its sharding over this mesh.
    """
    cfg, _ = read_hf_config(path, dtype=dtype, max_seq_len=max_seq_len)
    ckpt = SafetensorsCheckpoint(path)
    values, used = transformer_values(ckpt, cfg)
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # some tied checkpoints store a copy of the embedding
    check_unused(ckpt, used)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return fill_params(abstract, values, dtype=cfg.jnp_param_dtype, mesh=mesh)


def write_random_weights(path: str | Path, *, seed: int = 0, scale: float = 0.2,
                         prm_head: bool = False) -> Path:
    """Writes ``<path>/model.safetensors``: random weights in the HF layout for the
    decoder ``<path>/config.json`` describes (for tests and demos on tiny shapes; no torch
    needed). ``prm_head`` adds the Qwen2.5-Math-PRM ``score.0``/``score.2`` head (and
    ties the embeddings, as that loader does)."""
    from ttc_jax.interop.safetensors import save_safetensors

    path = Path(path)
    cfg, _ = read_hf_config(path, architectures=None,
                            tie_embeddings=True if prm_head else None)
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, _ in _top_specs(cfg).values():
        out[name] = shape
    for name, shape, _ in _layer_specs(cfg).values():
        for i in range(cfg.num_layers):
            out[name.format(l=i)] = shape
    if prm_head:
        d = cfg.d_model
        out.update({"score.0.weight": (d, d), "score.0.bias": (d,), "score.2.weight": (2, d),
                    "score.2.bias": (2,)})
    tensors = {}
    for name, shape in out.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    save_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    return path / "model.safetensors"



TINY_SHAPES = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=8)


def tiny_hf_folder(src: str | Path, dst: str | Path, *, seed: int = 0, prm_head: bool = False,
                   **shapes) -> Path:
    """A copy of the HF folder ``src`` (tokenizer files, generation_config, config.json)
    with tiny decoder shapes (``TINY_SHAPES``, overridden by ``shapes``; the vocabulary
    and special ids stay) and random weights (:func:`write_random_weights`). With
    ``prm_head`` it is a Qwen2.5-Math-PRM stand-in (``Qwen2ForProcessRewardModel``).
    An existing ``dst`` is replaced."""
    import shutil

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    raw = read_json_file(dst / "config.json", "config.json")
    raw.update(TINY_SHAPES, **shapes)
    if prm_head:
        raw["architectures"] = ["Qwen2ForProcessRewardModel"]
        raw["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    write_random_weights(dst, seed=seed, prm_head=prm_head)
    return dst
