"""The main job of `make demo`: the shipped policy (and PRM) on held-out problems.

  python launch/demo.py --n=16 --problems_per_k=20 --out=results/demo.json
"""

from absl import app, flags

from ttc_jax.eval.demo import run_demo

_POLICY = flags.DEFINE_string("policy", "policy_small", "shipped model name or folder")
_PRM = flags.DEFINE_string("prm", "prm", "shipped PRM name or folder ('' for none)")
_N = flags.DEFINE_integer("n", 16, "samples per problem")
_PER_K = flags.DEFINE_integer("problems_per_k", 20, "held-out problems per difficulty")
_KMAX = flags.DEFINE_integer("max_k", 8, "difficulties 1..max_k")
_SEED = flags.DEFINE_integer("seed", 0, "one seed for problems and sampling")
_OUT = flags.DEFINE_string("out", "results/demo.json", "where to write the table (JSON)")


def main(argv):
    del argv
    run_demo(policy=_POLICY.value, prm=_PRM.value or None, n=_N.value,
             problems_per_k=_PER_K.value, difficulties=range(1, _KMAX.value + 1),
             seed=_SEED.value, out=_OUT.value)


if __name__ == "__main__":
    app.run(main)
