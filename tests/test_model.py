"""The decoder: incremental decode with a KV cache must reproduce the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.models import KVCache, Transformer, apply_rope, init_model

CFG = ModelConfig(vocab_size=21, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, max_seq_len=40)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return init_model(CFG, seed=0)


def _tokens(seed, shape):
    return jax.random.randint(jax.random.key(seed), shape, 3, CFG.vocab_size)


def test_param_count_matches_config():
    for cfg in (CFG, ModelConfig(tie_embeddings=False, qkv_bias=True)):
        m = init_model(cfg)
        counted = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
        assert counted == cfg.num_params()


def test_every_param_has_logical_axis_names(model):
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    allowed = {"layers", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab"}
    assert flat
    for spec in flat:
        assert spec and set(spec) <= allowed
    layer_q = nnx.state(model, nnx.Param)["layers"]["attn"]["q"]
    assert layer_q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")


def test_prefill_then_one_token_decode_matches_full_forward(model):
    tokens = _tokens(1, (3, 20))
    full = model(tokens)
    cache = KVCache.init(CFG, 3, CFG.max_seq_len)
    logits, cache = model.extend(tokens[:, :7], cache)
    chunks = [logits]
    for t in range(7, 20):
        logits, cache = model.extend(tokens[:, t:t + 1], cache)
        chunks.append(logits)
    np.testing.assert_allclose(jnp.concatenate(chunks, 1), full, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache.lengths, [20, 20, 20])


def test_padded_batch_of_different_lengths_matches_each_prompt_alone(model):
    lengths = [5, 12, 1, 9]
    seqs = [np.asarray(_tokens(10 + i, (n,))) for i, n in enumerate(lengths)]
    batch = np.zeros((4, 12), np.int32)
    for i, s in enumerate(seqs):
        batch[i, :len(s)] = s
    cache = KVCache.init(CFG, 4, CFG.max_seq_len)
    logits, cache = model.extend(jnp.asarray(batch), cache, jnp.asarray(lengths))
    # Then three decode steps, rows at different positions.
    nxt = _tokens(99, (4, 3))
    steps = []
    for t in range(3):
        lg, cache = model.extend(nxt[:, t:t + 1], cache)
        steps.append(lg)
    for i, s in enumerate(seqs):
        alone = model(jnp.concatenate([jnp.asarray(s), nxt[i]])[None])[0]
        np.testing.assert_allclose(logits[i, :len(s)], alone[:len(s)], atol=1e-5, rtol=0)
        for t in range(3):
            np.testing.assert_allclose(steps[t][i, 0], alone[len(s) + t], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache.lengths, np.asarray(lengths) + 3)


def test_extend_with_num_new_zero_leaves_row_unchanged(model):
    tokens = _tokens(2, (2, 6))
    cache = KVCache.init(CFG, 2, 16)
    _, cache = model.extend(tokens, cache)
    _, after = model.extend(tokens[:, :2], cache, jnp.asarray([0, 2]))
    np.testing.assert_array_equal(after.lengths, [6, 8])
    np.testing.assert_array_equal(after.k[:, 0], cache.k[:, 0])
    assert not np.allclose(after.k[:, 1, :, 6:8], cache.k[:, 1, :, 6:8])


def test_cache_repeat_and_gather_move_whole_rows(model):
    cache = KVCache.init(CFG, 2, 8)
    _, cache = model.extend(_tokens(3, (2, 4)), cache, jnp.asarray([4, 2]))
    rep = cache.repeat(3)
    np.testing.assert_array_equal(rep.lengths, [4, 4, 4, 2, 2, 2])
    np.testing.assert_array_equal(rep.k[:, 4], cache.k[:, 1])
    g = rep.gather(jnp.asarray([5, 0]))
    np.testing.assert_array_equal(g.lengths, [2, 4])
    np.testing.assert_array_equal(g.v[:, 0], cache.v[:, 1])


def test_rope_matches_rotate_half_reference():
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 3, 2, 8)))
    pos = np.asarray([[0, 5, 17]])
    inv = 10_000.0 ** (-np.arange(0, 8, 2) / 8)
    ang = pos[..., None] * inv
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, :, None]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, :, None]
    rot = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(pos), 10_000.0),
                               x * cos + rot * sin, atol=1e-5)



def _attention_reference(q, k, v, mask):
    """Plain numpy grouped-query attention: query head n reads kv head n // (N / K)."""
    b, t, n, h = q.shape
    g = n // k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for bi, ti, ni in np.ndindex(b, t, n):
        logits = k[bi, ni // g] @ q[bi, ti, ni] / np.sqrt(h)  # [S]
        logits = np.where(mask[bi, ti], logits, -np.inf)
        if not mask[bi, ti].any():  # a fully masked (padding) query: uniform weights
            logits = np.zeros_like(logits)
        w = np.exp(logits - logits.max())
        out[bi, ti, ni] = (w / w.sum()) @ v[bi, ni // g]
    return out


@pytest.mark.parametrize("heads, kv_heads, t, s", [(4, 2, 3, 7), (3, 3, 1, 5), (6, 1, 4, 4)])
def test_attention_matches_numpy_grouped_query_reference(heads, kv_heads, t, s):
    """attend (heads folded into the query axis, softmax normalised after PV) is plain
    grouped-query attention, including a fully masked query row."""
    from ttc_jax.models.transformer import attend

    rng = np.random.RandomState(heads * 10 + t)
    q = rng.randn(2, t, heads, 8).astype(np.float32)
    k, v = (rng.randn(2, kv_heads, s, 8).astype(np.float32) for _ in range(2))
    mask = rng.rand(2, t, s) < 0.6
    mask[:, :, 0] = True
    mask[1, -1] = False  # padding query: attends to nothing
    got = jax.jit(attend)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
    np.testing.assert_allclose(got, _attention_reference(q, k, v, mask), atol=1e-5)

def test_untied_and_bias_variant_also_decodes_incrementally():
    cfg = ModelConfig(vocab_size=21, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=8, mlp_dim=32, max_seq_len=16, tie_embeddings=False,
                      qkv_bias=True)
    m = init_model(cfg, seed=3)
    tokens = _tokens(4, (2, 10))
    cache = KVCache.init(cfg, 2, 16)
    a, cache = m.extend(tokens[:, :4], cache)
    b, cache = m.extend(tokens[:, 4:], cache)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), m(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=3, num_kv_heads=2), "multiple of"),
    (dict(head_dim=7), "even"),
    (dict(dtype="float64"), "choose one of"),
    (dict(d_model=0), "must be >= 1"),
])
def test_bad_model_config_raises_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_cached_attention_reads_only_the_bucket_covering_every_row():
    """attend_cached over the first bucket >= bound equals attention over the whole cache
    (slots past the bound are masked for every row), in every bucket."""
    from ttc_jax.models.transformer import attend, attend_cached, bucket_sizes

    cap = 200
    assert bucket_sizes(cap) == (64, 96, 128, 192, 200) and bucket_sizes(48) == (48,)
    assert bucket_sizes(4096)[-6:] == (768, 1024, 1536, 2048, 3072, 4096)
    rng = np.random.RandomState(0)
    q = jnp.asarray(rng.randn(3, 2, 4, 8), jnp.float32)
    k_all = jnp.asarray(rng.randn(2, 3, 2, cap, 8), jnp.float32)
    v_all = jnp.asarray(rng.randn(2, 3, 2, cap, 8), jnp.float32)
    fn = jax.jit(attend_cached)
    for lengths in ([5, 30, 60], [80, 2, 90], [70, 3, 120], [70, 3, 127], [199, 0, 150]):
        pos = jnp.asarray(lengths)[:, None] + jnp.arange(2)[None, :]  # [B, T]
        mask = jnp.arange(cap)[None, None, :] <= pos[:, :, None]
        bound = jnp.max(pos) + 1
        for layer in (0, 1):
            want = attend(q, k_all[layer], v_all[layer], mask)
            np.testing.assert_allclose(fn(q, k_all, v_all, layer, mask, bound), want,
                                       atol=1e-6)


def test_hoisted_layers_give_the_same_decode_as_the_stacked_layers(model):
    """hoist_layers (per-layer params sliced once, Python loop) is the same computation as
    the scan over stacked layers: prefill + 3 decode steps inside one jit, both ways."""
    graphdef, params = nnx.split(model)
    tokens = jnp.asarray(np.random.RandomState(1).randint(1, model.cfg.vocab_size, (2, 7)))

    def run(params, hoist):
        m = nnx.merge(graphdef, params)
        if hoist:
            m.hoist_layers()
        cache = KVCache.init(m.cfg, 2, 80)
        logits, cache = m.extend(tokens[:, :4], cache, jnp.asarray([4, 3]))
        outs = [logits]
        for t in range(4, 7):
            logits, cache = m.extend(tokens[:, t:t + 1], cache)
            outs.append(logits)
        return jnp.concatenate(outs, axis=1), cache.k

    a, b = jax.jit(run, static_argnums=1)(params, True), jax.jit(run, static_argnums=1)(
        params, False)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
