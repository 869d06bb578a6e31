"""HF checkpoint import, checked against transformers on tiny random models.

torch and transformers are test-only references (setup.py's ``test`` extra); one
module-scoped fixture imports them once and builds every checkpoint.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.config import ModelConfig, RopeScaling, from_dict, to_dict
from ttc_jax.decode import Greedy, sample
from ttc_jax.interop import SafetensorsCheckpoint, load_hf_model, read_hf_config
from ttc_jax.models.transformer import rope_frequencies

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
MODELS = {
    # name: (family, extra config)
    "llama_gqa_untied_llama3rope": ("llama", dict(tie_word_embeddings=False,
                                                  rope_scaling=LLAMA3_ROPE,
                                                  rope_theta=500_000.0)),
    "llama_tied": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "qwen2_tied_bias": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_untied_bias": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=1)),
}


def build_hf(family: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              initializer_range=0.2, rms_norm_eps=1e-6)
    kw.update(extra)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
        with torch.no_grad():  # biases start at zero: make them matter
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, (family, extra)) in enumerate(MODELS.items()):
        model = build_hf(family, seed=i, **extra)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


def _tokens(b=3, t=24, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (b, t))


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_transformers(hf_models, name):
    ref_model, path = hf_models[name]
    x = _tokens()
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
    ours = load_hf_model(path, max_seq_len=64)
    got = np.asarray(ours(jnp.asarray(x)))
    assert np.abs(ref).max() > 1.0  # not near-uniform: the comparison has teeth
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # the cached path (prefill in two blocks) gives the same logits
    from ttc_jax.models.cache import KVCache
    cache = KVCache.init(ours.cfg, x.shape[0], 64)
    a, cache = ours.extend(jnp.asarray(x[:, :10]), cache)
    b, _ = ours.extend(jnp.asarray(x[:, 10:]), cache)
    np.testing.assert_allclose(np.concatenate([a, b], 1), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa_untied_llama3rope", "qwen2_tied_bias"])
def test_32_greedy_tokens_match_transformers(hf_models, name):
    ref_model, path = hf_models[name]
    prompts = _tokens(b=2, t=8, seed=1)
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor(prompts), max_new_tokens=32, min_new_tokens=32,
                                 do_sample=False, pad_token_id=0)
    ref = ref[:, prompts.shape[1]:].numpy()
    ours = load_hf_model(path, max_seq_len=64)
    out = sample(ours, [list(p) for p in prompts], n=1, rng=jax.random.key(0),
                 max_new_tokens=32, strategy=Greedy(), stop_tokens=())
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), ref)


def test_config_forms_old_and_new_read_alike(hf_models, tmp_path):
    _, path = hf_models["llama_gqa_untied_llama3rope"]
    new_cfg, info = read_hf_config(path)
    assert new_cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 64)
    assert new_cfg.rope_theta == 500_000.0 and not new_cfg.tie_embeddings
    assert info.model_type == "llama"
    old = tmp_path / "old"
    shutil.copytree(path, old)
    raw = json.loads((old / "config.json").read_text())
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = params
    (old / "config.json").write_text(json.dumps(raw))
    old_cfg, _ = read_hf_config(old)
    assert old_cfg == new_cfg
    assert from_dict(ModelConfig, to_dict(new_cfg)) == new_cfg  # export round trip


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500_000.0,
                                   rope_scaling=dict(LLAMA3_ROPE,
                                                     original_max_position_embeddings=8192),
                                   max_position_embeddings=131072)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = rope_frequencies(128, 500_000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 8192))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-6)


def test_sharded_index_checkpoint_loads(hf_models, tmp_path):
    ref_model, _ = hf_models["qwen2_untied_bias"]
    ref_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    x = _tokens()
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
    got = np.asarray(load_hf_model(tmp_path, max_seq_len=64)(jnp.asarray(x)))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_bf16_load(hf_models):
    ref_model, path = hf_models["llama_tied"]
    x = _tokens()
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
    ours = load_hf_model(path, dtype="bfloat16", max_seq_len=64)
    assert ours.embed[...].dtype == jnp.bfloat16
    got = np.asarray(ours(jnp.asarray(x)))
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


def _rewrite(src, dst, edit):
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    ck = SafetensorsCheckpoint(dst)
    tensors = {n: np.array(ck.get(n)) for n in ck.names()}
    del ck
    edit(tensors)
    (dst / "model.safetensors").unlink()
    save_file(tensors, str(dst / "model.safetensors"))


def test_missing_tensor_is_named(hf_models, tmp_path):
    _, path = hf_models["llama_tied"]
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite(path, tmp_path / "m", lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"tensor '{name}' is missing"):
        load_hf_model(tmp_path / "m")


def test_wrong_shape_is_named(hf_models, tmp_path):
    _, path = hf_models["qwen2_tied_bias"]
    name = "model.layers.0.self_attn.k_proj.bias"

    def edit(t):
        t[name] = np.zeros(5, np.float32)
    _rewrite(path, tmp_path / "m", edit)
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \[5\].*implies \[16\]"):
        load_hf_model(tmp_path / "m")


def test_unsupported_architecture_and_extra_tensors(hf_models, tmp_path):
    _, path = hf_models["llama_tied"]
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="'GPT2LMHeadModel' is not supported"):
        load_hf_model(bad)
    _rewrite(path, tmp_path / "extra",
             lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(32, "f4")}))
    with pytest.raises(ValueError, match="o_proj.bias"):
        load_hf_model(tmp_path / "extra")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_model(tmp_path / "nowhere")


@pytest.mark.parametrize("with_eos", [False, True])
def test_beam_search_matches_transformers(hf_models, with_eos):
    from ttc_jax.decode.beam import beam_search

    ref_model, path = hf_models["llama_tied"]
    prompts = _tokens(b=2, t=6, seed=2)
    kw = dict(max_new_tokens=12, num_beams=4, do_sample=False, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True, early_stopping=False)
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor(prompts), min_new_tokens=12, **kw)
    eos = None
    if with_eos:  # a token the best beam emits mid-way: hypotheses do end on it
        eos = int(ref.sequences[0, prompts.shape[1] + 4])
        with torch.no_grad():
            ref = ref_model.generate(torch.tensor(prompts), eos_token_id=eos, **kw)
    ours = load_hf_model(path, max_seq_len=64)
    out = beam_search(ours, [list(p) for p in prompts], num_beams=4, max_new_tokens=12,
                      eos_ids=() if eos is None else (eos,))
    ref_seq = ref.sequences[:, prompts.shape[1]:].numpy()
    for i in range(2):
        n = int(out.lengths[i, 0])
        got = np.asarray(out.tokens[i, 0, :n])
        want = ref_seq[i][:n]
        np.testing.assert_array_equal(got, want)
        assert set(ref_seq[i][n:].tolist()) <= {0, eos}  # transformers' row ends there too
    np.testing.assert_allclose(np.asarray(out.scores[:, 0]), ref.sequences_scores.numpy(),
                               atol=1e-4)
    if with_eos:
        assert int(out.lengths[0, 0]) < 12  # the best hypothesis of row 0 ended on eos


@pytest.mark.slow
def test_load_onto_2x2x2_mesh_matches_transformers(hf_models):
    """Each tensor is placed on its rules-table sharding at load; logits and 32 greedy
    tokens under the (data, model, stage) = (2, 2, 2) mesh (pipeline over stage) equal
    transformers'."""
    from jax.sharding import PartitionSpec as P

    from ttc_jax.config import MeshConfig
    from ttc_jax.parallel import make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    ref_model, path = hf_models["llama_gqa_untied_llama3rope"]
    mesh = make_mesh(MeshConfig(data=2, model=2, stage=2))
    ours = load_hf_model(path, max_seq_len=64, mesh=mesh)
    q = ours.layers.attn.q[...]
    assert q.sharding.spec == P("stage", None, "model", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (1, 32, 2, 8)
    x = _tokens(b=2, t=16)
    with torch.no_grad():
        ref = ref_model(torch.tensor(x)).logits.numpy()
        ref_gen = ref_model.generate(torch.tensor(x), max_new_tokens=32, min_new_tokens=32,
                                     do_sample=False, pad_token_id=0)[:, 16:].numpy()
    with jax.set_mesh(mesh):
        got = np.asarray(nnx.jit(lambda m, t: m(t))(ours, jnp.asarray(x)))
        out = sample(ours, [list(r) for r in x], n=1, rng=jax.random.key(0),
                     max_new_tokens=32, strategy=Greedy(), stop_tokens=())
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), ref_gen)


def test_write_random_weights_loads_in_transformers_and_here(tmp_path):
    from ttc_jax.interop.hf import write_random_weights

    raw = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=VOCAB,
               hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
               max_position_embeddings=64)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    write_random_weights(tmp_path, seed=1)
    ref = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    x = _tokens(b=2, t=8)
    with torch.no_grad():
        want = ref(torch.tensor(x)).logits.numpy()
    got = np.asarray(load_hf_model(tmp_path, max_seq_len=16)(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
