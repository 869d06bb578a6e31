"""Will a sweep fit a TPU topology? Compiles every program for it here, on CPU (no TPU).

  JAX_PLATFORMS=cpu python launch/plan.py --config=experiments/math500_llama.py \
      --topology=v5e:2x4 --mesh=4,2,1 --policy=Llama-3.2-1B-Instruct --prm=Llama-3.1-8B

Prints, per (method, n) of the config, the per-chip HBM of the compiled search program
(arguments, outputs, temporaries) and whether it fits, compile seconds and peak host
memory, and a wall-time estimate from unit programs; then ``RESULT`` lines. Models are
shape presets (``ttc_jax.eval.plan.PRESETS``) or local folders with a config.json. Needs
libtpu (``pip install -e ".[tpu]"``). See docs/plan.md.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x4", "TPU topology, e.g. v5e:2x4, v6e:2x2, "
                                "v5p:2x2x1, v4:2x2x1")
_MESH = flags.DEFINE_string("mesh", "", "data,model,stage (default: the config's mesh)")
_POLICY = flags.DEFINE_string("policy", "Llama-3.2-1B-Instruct", "policy preset or folder")
_PRM = flags.DEFINE_string("prm", "Llama-3.1-8B", "PRM trunk preset or folder")
_METHODS = flags.DEFINE_list("methods", None, "methods (default: the config's)")
_BUDGETS = flags.DEFINE_list("budgets", None, "N values (default: the config's)")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 0, "prompt width (default: config "
                                   "max_seq_len - max_new_tokens)")
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", 500, "problems in the sweep (estimate)")
_TIMEOUT = flags.DEFINE_float("compile_timeout_s", 300, "per-program compile timeout")
_UNIT_TIMEOUT = flags.DEFINE_float("unit_timeout_s", 0, "compile timeout of each unit "
                                   "program (default: --compile_timeout_s)")
_MEM = flags.DEFINE_float("child_mem_gb", 0, "address-space cap per compile subprocess "
                          "(GB; 0 = none)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from ttc_jax.eval import plan as p

    c = _CONFIG.value
    try:
        p.require_libtpu()
        s = p.setup_from_config(c, topology=_TOPOLOGY.value,
                                mesh=p.parse_mesh(_MESH.value) if _MESH.value else None,
                                policy=_POLICY.value, prm=_PRM.value,
                                prompt_len=_PROMPT_LEN.value or None)
        p.plan(s, _METHODS.value or list(c.methods),
               [int(b) for b in (_BUDGETS.value or c.budgets)],
               num_problems=_NUM_PROBLEMS.value or c.num_problems or 500,
               compile_timeout_s=_TIMEOUT.value, unit_timeout_s=_UNIT_TIMEOUT.value or None,
               mem_limit_bytes=int(_MEM.value * 1e9))
    except (ValueError, RuntimeError) as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
