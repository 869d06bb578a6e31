"""The TPU planning tool (ttc_jax.eval.plan, launch/plan.py): compile-only TPU topologies."""

import dataclasses
import importlib.util
import re

import pytest

from ttc_jax.eval import plan as p

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason=f"libtpu is not installed ({p.LIBTPU_INSTALL})")

TINY = p.Setup(topology="v5e:2x2", mesh=(2, 2, 1), policy="tiny", prm="tiny", dtype="float32",
               batch_size=2, prompt_len=16, prm_cache_len=64,
               search=dict(method="best_of_n", n=2, beam_width=2, max_steps=3,
                           max_step_tokens=4, max_new_tokens=16, temperature=0.8))


@needs_libtpu
def test_tiny_plan_hbm_is_memory_analysis_of_the_same_program():
    lines = []
    out = p.plan(TINY, ["best_of_n"], [2], num_problems=10, compile_timeout_s=240,
                 unit_rows=(2, 2), log=lines.append)
    (row,) = out["rows"]
    assert row["status"] == "ok", row
    # the tiny search compiled for v5e:2x2 in a subprocess; compile it here too
    compiled = p.lower_search(TINY, "best_of_n", 2).compile()
    want = p.memory_figures(compiled)
    for k in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes"):
        assert row[k] == want[k], k
    # (a program this small may keep every temporary on chip: temp_bytes can be 0)
    assert want["total_bytes"] >= want["argument_bytes"] > 0
    assert row["fits"] and out["results"]["plan_fits_all"] == 1
    assert out["results"]["plan_max_hbm_gib_per_chip"] == round(want["total_bytes"] / p.GIB, 2)
    assert row["peak_host_bytes"] > 0 and row["compile_s"] > 0
    assert set(out["units"]) == {"decode@2", "prm_block@2", "prefill_policy@2",
                                 "prefill_prm@2"}
    assert row["estimate"]["problem_s"] > 0
    assert any(ln.startswith("RESULT plan_fits_all=1") for ln in lines)
    assert any(ln.startswith("RESULT plan_sweep_hours_estimate=") for ln in lines)


@needs_libtpu
def test_paged_search_compiles_for_tpu_with_the_ragged_kernel():
    """A paged beam search whose PRM has 128-wide heads compiles for v5e with JAX's
    ``ragged_paged_attention`` inside (the policy's 16-wide heads take the jnp path), and
    its pools are sharded: heads over ``model``, page groups over ``data``."""
    s = dataclasses.replace(TINY, prm="tiny128", dtype="bfloat16",
                            search={**TINY.search, "kv_cache": "paged", "kv_page_size": 16,
                                    "prm_block_tokens": 2})
    lowered = p.lower_search(s, "beam", 4)
    assert "ragged_paged_attention" in lowered.as_text()
    compiled = lowered.compile()
    assert p.memory_figures(compiled)["total_bytes"] > 0
    hlo = compiled.as_text()
    # PRM pool [L, G, pages, 16, 2K*H]: G=2 over data, 2*2*128 over model=2 -> [2,1,.,16,256]
    assert re.search(r"bf16\[2,1,\d+,16,256\]", hlo)


def test_unknown_topology_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"v5e:2x4.*v6e:2x2"):
        p.chip_of("v9z:2x2")
    with pytest.raises(ValueError, match="not a TPU topology name"):
        p.chip_of("v5e")


@needs_libtpu
def test_topology_libtpu_refuses_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"not available.*v5e:2x4"):
        p.get_topology("v5e:1x1")


def test_mesh_that_does_not_divide_the_devices_lists_the_choices():
    with pytest.raises(ValueError, match=r"has 3 devices but topology v5e:2x2 has 4.*'2,2,1'"
                                         r".*'4,1,1'"):
        p.check_mesh((3, 1, 1), 4, "v5e:2x2")
    with pytest.raises(ValueError, match="three positive ints"):
        p.parse_mesh("4,2")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown model preset 'Llama-9B'.*Llama-3\.2-1B-Instruct"
                                         r".*Qwen2\.5-Math-PRM-7B"):
        p.model_config("Llama-9B")
    cfg = p.model_config("Llama-3.1-8B")
    assert (cfg.d_model, cfg.num_layers, cfg.num_kv_heads, cfg.mlp_dim) == (4096, 32, 8, 14336)
    assert 7.9e9 < cfg.num_params() < 8.1e9
    assert 1.2e9 < p.model_config("Llama-3.2-1B-Instruct").num_params() < 1.3e9
