"""The main job of `make demo`: the shipped policy and PRM with every search method on
held-out problems; prints an accuracy x method x difficulty table.

  python launch/demo.py --n=16 --problems_per_k=10 --out=results/demo.json
"""

from absl import app, flags

from ttc_jax.eval.demo import METHODS, run_demo

_POLICY = flags.DEFINE_string("policy", "policy_small", "shipped model name or folder")
_PRM = flags.DEFINE_string("prm", "prm", "shipped PRM name or folder")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "search methods to run")
_N = flags.DEFINE_integer("n", 16, "candidates per problem (the budget)")
_M = flags.DEFINE_integer("beam_width", 4, "beam width M for beam search and DVTS")
_AGG = flags.DEFINE_enum("aggregation", "min", ["last", "min", "prod", "mean"],
                         "PRM step-score aggregation")
_PER_K = flags.DEFINE_integer("problems_per_k", 20, "held-out problems per difficulty")
_KMAX = flags.DEFINE_integer("max_k", 8, "difficulties 1..max_k")
_SEED = flags.DEFINE_integer("seed", 0, "one seed for problems and sampling")
_OUT = flags.DEFINE_string("out", "results/demo.json", "where to write the table (JSON)")


def main(argv):
    del argv
    run_demo(policy=_POLICY.value, prm=_PRM.value, methods=_METHODS.value, n=_N.value,
             beam_width=_M.value, aggregation=_AGG.value, problems_per_k=_PER_K.value,
             difficulties=range(1, _KMAX.value + 1), seed=_SEED.value, out=_OUT.value)


if __name__ == "__main__":
    app.run(main)
