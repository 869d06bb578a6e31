"""Data, tensor and pipeline parallelism on 8 simulated CPU devices, each against the
single-device path: forward logits, gradients, one trainer step and search results are
the same on every (data, model, stage) mesh; parameters are sharded as the rules say; the
compiled programs really communicate (all-reduce for tensor parallelism,
collective-permute for the pipeline); the GPipe schedule equals its sequential twin.

The (2, 2, 2) mesh (all three kinds at once) runs in the fast suite; the other meshes of
the matrix compile the same programs again and are marked slow.
"""

import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax.config import MeshConfig, ModelConfig, SearchConfig, TrainConfig
from ttc_jax.decode import Greedy, sample
from ttc_jax.models import init_model
from ttc_jax.models.cache import KVCache
from ttc_jax.models.prm import init_prm
from ttc_jax.parallel import (
    RULES,
    bubble_fraction,
    cache_sharding,
    choose_microbatches,
    logical_to_spec,
    make_mesh,
    param_shardings,
    pipeline,
    pipeline_microbatches,
    shard_batch,
    shard_cache,
    shard_model,
    shard_tree,
)
from ttc_jax.search import SearchTokens, encode_prompts, search
from ttc_jax.tasks import get_task
from ttc_jax.train.trainer import create_state, fit, lm_loss, make_optimizer, make_train_step

ROOT = Path(__file__).resolve().parents[1]
# heads, kv_heads, mlp, vocab and layers all divide by 4.
CFG = ModelConfig(vocab_size=24, d_model=32, num_layers=4, num_heads=4, num_kv_heads=4,
                  head_dim=8, mlp_dim=64, max_seq_len=48, tie_embeddings=False)
# Adam's first step is lr * g / (|g| + eps): a tiny gradient's rounding (~1e-9, from a
# different summation order) can move its update by up to ~1% of lr, so lr stays small
# enough that this is below the tolerance.
TRAIN = TrainConfig(batch_size=8, num_steps=10, learning_rate=3e-4, warmup_steps=0,
                    grad_clip=0.0)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4), (1, 1, 1)]
FAST = {(2, 2, 2)}
TOL = 1e-5


def _meshes():
    return [pytest.param(s, id="x".join(map(str, s)),
                         marks=() if s in FAST else pytest.mark.slow) for s in MESHES]


def mesh_of(shape):
    cfg = MeshConfig(*shape)
    return make_mesh(cfg, jax.devices()[:cfg.size])


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (8, 13)).astype(np.int32)
    lens = np.array([12, 12, 9, 5, 12, 7, 12, 3])
    mask = (np.arange(12)[None, :] < lens[:, None]).astype(np.float32)
    return {"tokens": tokens, "mask": mask}


def _check_fn(graphdef, tx):
    """One jit: logits, loss gradient and the trainer's step (one compile per mesh)."""
    train_step = make_train_step(graphdef, lm_loss, tx)

    @jax.jit
    def check(state, batch):
        logits = nnx.merge(graphdef, state.params)(batch["tokens"][:, :-1])
        grads = jax.grad(lambda p: lm_loss(nnx.merge(graphdef, p), batch)[0])(state.params)
        new_state, _ = train_step(state, batch)
        return logits, grads, new_state.params

    return check


def _run_check(mesh):
    """(logits, grads, new params, compiled HLO text, the placed state) on ``mesh``."""
    tx = make_optimizer(TRAIN)
    graphdef, state = create_state(init_model(CFG, seed=0), TRAIN, tx)
    batch = _batch()
    check = _check_fn(graphdef, tx)
    if mesh is None:
        compiled = check.lower(state, batch).compile()
        return (*jax.device_get(compiled(state, batch)), compiled.as_text(), state)
    state = shard_tree(state, mesh)
    with jax.set_mesh(mesh):
        batch = shard_batch(batch, mesh)
        compiled = check.lower(state, batch).compile()
        out = compiled(state, batch)
    return (*jax.device_get(out), compiled.as_text(), state)


@pytest.fixture(scope="module")
def reference():
    return _run_check(None)


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# -- the rules ---------------------------------------------------------------------------


def test_rules_table_maps_each_logical_axis_to_its_mesh_axis():
    assert dict(RULES) == {"batch": "data", "heads": "model", "kv_heads": "model",
                           "mlp": "model", "vocab": "model", "layers": "stage",
                           "embed": None, "head_dim": None, "length": None}
    assert logical_to_spec(("layers", "embed", "heads", "head_dim")) == P(
        "stage", None, "model", None)
    with pytest.raises(ValueError, match="no rule"):
        logical_to_spec(("bogus",))


def test_param_shardings_are_what_the_rules_say():
    mesh = mesh_of((2, 2, 2))
    model = shard_model(init_model(CFG, seed=0), mesh)
    want = {
        "embed": P("model", None),
        "lm_head": P(None, "model"),
        "final_norm/scale": P(None),
        "layers/attn/q": P("stage", None, "model", None),  # column-parallel
        "layers/attn/k": P("stage", None, "model", None),
        "layers/attn/v": P("stage", None, "model", None),
        "layers/attn/o": P("stage", "model", None, None),  # row-parallel
        "layers/mlp/gate": P("stage", None, "model"),
        "layers/mlp/up": P("stage", None, "model"),
        "layers/mlp/down": P("stage", "model", None),
        "layers/attn_norm/scale": P("stage", None),
    }
    state = nnx.state(model, nnx.Param)
    placed = param_shardings(model, mesh)
    flat = {"/".join(str(k) for k in path): v for path, v in nnx.to_flat_state(state)}
    flat_want = {"/".join(str(k) for k in path): v.get_value().spec
                 for path, v in nnx.to_flat_state(placed)}
    for name, spec in want.items():
        arr = flat[name].get_value()
        assert arr.sharding.spec == spec, name
        assert flat_want[name] == spec, name
        # The shard each device holds is the array divided along the named axes.
        shard = arr.addressable_shards[0].data.shape
        expect = tuple(d // (mesh.shape[a] if a else 1)
                       for d, a in zip(arr.shape, tuple(spec) + (None,) * arr.ndim))
        assert shard == expect, name


@pytest.mark.parametrize("field,value,axis,msg", [
    ("num_heads", 6, "model", "heads=6 (model.num_heads) is not divisible by mesh.model=4"),
    ("num_kv_heads", 2, "model", "kv_heads=2 (model.num_kv_heads) is not divisible"),
    ("mlp_dim", 66, "model", "mlp=66 (model.mlp_dim) is not divisible by mesh.model=4"),
    ("vocab_size", 21, "model", "vocab=21 (model.vocab_size) is not divisible"),
    ("num_layers", 3, "stage", "layers=3 (model.num_layers) is not divisible by mesh.stage=4"),
])
def test_shard_model_says_which_axis_does_not_divide(field, value, axis, msg):
    over = {field: value}
    if field == "num_heads":
        over["num_kv_heads"] = 2
    cfg = ModelConfig(**{**CFG.__dict__, **over})
    mesh = mesh_of((2, 4, 1) if axis == "model" else (2, 1, 4))
    abstract = nnx.eval_shape(lambda: init_model(cfg, seed=0))  # checked before placing
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        shard_model(abstract, mesh)


def test_make_mesh_rejects_a_product_that_is_not_the_device_count():
    with pytest.raises(ValueError, match=r"data\*model\*stage=2\*2\*1=4 but 8 devices"):
        make_mesh(MeshConfig(2, 2, 1))


def test_kv_cache_is_split_by_layer_stage_batch_data_and_heads_model():
    mesh = mesh_of((2, 2, 2))
    assert cache_sharding(mesh)["k"] == P("stage", "data", "model", None, None)
    cache = shard_cache(KVCache.init(CFG, 4, 16), mesh)
    assert cache.k.sharding.spec == P("stage", "data", "model", None, None)
    assert cache.k.addressable_shards[0].data.shape == (2, 2, 2, 16, 8)
    assert cache.lengths.sharding.spec == P("data")
    with pytest.raises(ValueError, match="batch=3"):
        shard_cache(KVCache.init(CFG, 3, 16), mesh)


# -- the pipeline on its own, against its sequential twin ---------------------------------


def _toy_stack(w, x, rope, mask, kv, slots):
    """A stack of tanh(x @ W_l) layers; its 'cache' records each layer's input."""
    del rope, mask, slots

    def body(x, xs):
        wl, c = xs
        c = c + x if kv is not None else c
        return jnp.tanh(x @ wl), c

    caches = kv[0] if kv is not None else jnp.zeros((w.shape[0],) + x.shape)
    x, caches = jax.lax.scan(body, x, (w, caches))
    return x, ((caches, caches) if kv is not None else None)


@pytest.mark.parametrize("shape,m", [((1, 1, 8), 4), ((2, 1, 4), 2),
                                     pytest.param((1, 2, 4), 1, marks=pytest.mark.slow)])
def test_gpipe_schedule_equals_running_the_layers_in_order(shape, m):
    w = jax.random.normal(jax.random.key(0), (8, 16, 16)) * 0.3
    x = jax.random.normal(jax.random.key(1), (8, 3, 16))
    rope = (jnp.zeros((8, 3, 1, 2)), jnp.ones((8, 3, 1, 2)))
    mask = jnp.ones((8, 3, 3), bool)
    kv0 = (jnp.zeros((8, 8, 3, 16)),) * 2

    def loss(w, x, fn):
        y, kv = fn(w, x)
        return jnp.sum(y ** 2) + jnp.sum(kv[0] * 0.1), (y, kv)

    seq = lambda w, x: _toy_stack(w, x, rope, mask, kv0, None)
    (ref_loss, (ref_y, ref_kv)), ref_g = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        w, x, seq)
    mesh = mesh_of(shape)
    pipe = lambda w, x: pipeline(_toy_stack, w, x, rope, mask, kv0, None, microbatches=m)
    with jax.set_mesh(mesh):
        (p_loss, (p_y, p_kv)), p_g = jax.jit(
            jax.value_and_grad(lambda w, x: loss(w, x, pipe), (0, 1), has_aux=True))(w, x)
        hlo = jax.jit(lambda w, x: pipe(w, x)[0]).lower(w, x).compile().as_text()
    np.testing.assert_allclose(p_y, ref_y, atol=TOL)
    np.testing.assert_allclose(p_kv[0], ref_kv[0], atol=TOL)
    np.testing.assert_allclose(p_loss, ref_loss, rtol=1e-6)
    assert _max_diff(p_g, ref_g) < TOL
    assert "collective-permute" in hlo


def test_microbatches_and_the_bubble_formula():
    assert bubble_fraction(4, 2) == pytest.approx(1 / 5)
    assert bubble_fraction(1, 4) == pytest.approx(3 / 4)
    assert choose_microbatches(8, 2) == 4
    assert choose_microbatches(6, 4) == 6
    assert choose_microbatches(7, 2) == 1
    with pipeline_microbatches(2):
        assert choose_microbatches(8, 4) == 2
    with pytest.raises(ValueError, match="must be >= 1"):
        with pipeline_microbatches(0):
            pass


# -- the model on every mesh -------------------------------------------------------------


@pytest.mark.parametrize("shape", _meshes())
def test_logits_gradients_and_train_step_equal_one_device(shape, reference):
    ref_logits, ref_grads, ref_params, _, ref_state = reference
    assert _max_diff(ref_params, ref_state.params) > 10 * TOL  # the step moves the params
    logits, grads, params, hlo, state = _run_check(mesh_of(shape))
    np.testing.assert_allclose(logits, ref_logits, atol=TOL)
    assert _max_diff(grads, ref_grads) < TOL
    assert _max_diff(params, ref_params) < TOL
    # The state really is sharded by the rules (optimizer moments follow the params).
    d, m, s = shape
    q = state.params["layers"]["attn"]["q"].get_value()
    moments = [v.get_value() for path, v in jax.tree_util.tree_flatten_with_path(
        state.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
        if "mu" in str(path) and "'q'" in str(path)]
    assert len(moments) == 1
    for arr in (q, moments[0]):
        assert arr.sharding.spec == P("stage", None, "model", None)
        assert arr.addressable_shards[0].data.shape == (4 // s, 32, 4 // m, 8)
    if s > 1:
        assert "collective-permute" in hlo  # activations pass between stages
    if m > 1 or d > 1:
        assert "all-reduce" in hlo or "reduce-scatter" in hlo


@pytest.mark.parametrize("shape", [(2, 2, 2), pytest.param((1, 2, 4), marks=pytest.mark.slow)])
def test_greedy_decode_with_the_pipelined_kv_cache_equals_one_device(shape):
    model = init_model(CFG, seed=3)
    prompts = [[1, 5, 7, 2], [1, 9], [1, 4, 4, 4, 8, 3], [1, 2, 3]]
    kw = dict(n=2, rng=jax.random.key(0), max_new_tokens=10, strategy=Greedy(),
              stop_tokens=(), capacity=24)
    ref = sample(model, prompts, **kw)
    mesh = mesh_of(shape)
    sharded = shard_model(init_model(CFG, seed=3), mesh)
    with jax.set_mesh(mesh):
        out = sample(sharded, prompts, **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))


@pytest.mark.slow
def test_fit_on_a_2x2x2_mesh_ends_with_the_params_of_one_device(tmp_path):
    """trainer.fit(mesh=...): rules-placed state, pipelined + tensor-parallel steps,
    checkpoints of the sharded state; two steps equal the single-device run."""
    cfg = TrainConfig(batch_size=8, num_steps=2, learning_rate=3e-4, warmup_steps=0,
                      log_every=1, eval_every=0, save_every=1)
    batch_fn = lambda step: {k: np.roll(v, step, axis=0) for k, v in _batch().items()}
    run = {"test": "fit"}
    ref, _ = fit(init_model(CFG, seed=0), loss_fn=lm_loss, batch_fn=batch_fn, cfg=cfg,
                 workdir=tmp_path / "one", run_config=run)
    mesh = mesh_of((2, 2, 2))
    out, state = fit(init_model(CFG, seed=0), loss_fn=lm_loss, batch_fn=batch_fn, cfg=cfg,
                     workdir=tmp_path / "mesh", run_config=run, mesh=mesh)
    down = state.params["layers"]["mlp"]["down"].get_value()
    assert down.sharding.is_equivalent_to(NamedSharding(mesh, P("stage", "model", None)), 3)
    assert _max_diff(nnx.state(out, nnx.Param), nnx.state(ref, nnx.Param)) < TOL


# -- search on every mesh ----------------------------------------------------------------

TASK = get_task("arithmetic")
SPEC = SearchTokens.from_task(TASK)
SEARCH = SearchConfig(method="beam", n=4, beam_width=2, max_steps=2, max_step_tokens=4,
                      max_new_tokens=12, aggregation="min")


def _search_models():
    policy = init_model(CFG, seed=0)
    prm = init_prm(CFG, seed=1)
    prm.score_w[...] = 0.2 * jax.random.normal(jax.random.key(2), (CFG.d_model,))
    return policy, prm


@pytest.fixture(scope="module")
def search_reference():
    prompts = encode_prompts(TASK, TASK.sample_problems("test", [2, 3], 1, seed=0))
    return prompts, jax.tree.map(np.asarray, search(*_search_models(), *prompts, SEARCH, SPEC))


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_search_returns_the_same_tokens_on_every_mesh(shape, search_reference):
    prompts, ref = search_reference
    mesh = mesh_of(shape)
    policy, prm = (shard_model(m, mesh) for m in _search_models())
    out = jax.tree.map(np.asarray, search(policy, prm, *prompts, SEARCH, SPEC, mesh=mesh))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.chosen, ref.chosen)
    np.testing.assert_array_equal(out.answer, ref.answer)
    np.testing.assert_allclose(out.scores, ref.scores, atol=TOL)


# -- TPU VM launcher ---------------------------------------------------------------------


def test_tpu_vm_dry_run_prints_every_command():
    out = subprocess.run(
        ["bash", str(ROOT / "launch/tpu_vm.sh"), "--dry-run", "--name=ttc-test",
         "--zone=us-central2-b", "--type=v4-16", "--script=launch/search.py",
         "--args=--config=experiments/search.py", "--results=results", "--delete"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    joined = "\n".join(lines)
    assert "gcloud compute tpus tpu-vm create ttc-test --zone=us-central2-b " \
           "--accelerator-type=v4-16" in joined
    assert "gcloud compute tpus tpu-vm scp" in joined and "--worker=all" in joined
    assert "pip install" in joined and " -e ." in joined
    run = [ln for ln in lines if "launch/search.py" in ln]
    assert run and "--worker=all" in run[0] and "--config=experiments/search.py" in run[0]
    assert "--worker=0" in joined  # results come back from the writer host
    assert "tpu-vm delete ttc-test" in lines[-1]
    # The order: create, copy, install, run, fetch, delete.
    order = [next(i for i, ln in enumerate(lines) if key in ln)
             for key in ("tpu-vm create", "tpu-vm scp", "pip install", "launch/search.py",
                         "--worker=0", "tpu-vm delete")]
    assert order == sorted(order)


def test_tpu_vm_refuses_unknown_flags():
    res = subprocess.run(["bash", str(ROOT / "launch/tpu_vm.sh"), "--dry-run", "--bogus=1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0 and "unknown option --bogus" in res.stderr
