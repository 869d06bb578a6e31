"""Test-time search with the shipped policy and PRM on held-out arithmetic problems.

  python launch/search.py --config=experiments/search.py --out=results/search_beam.jsonl \
      --config.search.method=beam --config.search.n=16
  python launch/search.py --config=experiments/search.py:local --out=/tmp/s.jsonl  # seconds

``search`` holds every SearchConfig field (ttc_jax.config); methods: majority, best_of_n,
weighted_best_of_n, beam, dvts, lookahead.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "arithmetic"
    c.policy = "policy_small"  # shipped name or exported folder
    c.prm = "prm"              # '' runs majority voting without a PRM
    c.draft = ""               # e.g. 'student': speculative steps (exact policy distribution)
    c.gamma = 4                # draft tokens per policy call when a draft is given
    c.split = "test"
    c.difficulties = (1, 2, 3, 4, 5, 6, 7, 8)
    c.problems_per_difficulty = 20
    c.problem_seed = 0
    c.batch_size = 16          # problems per compiled call
    c.search = dict(method="beam", n=16, beam_width=4, max_steps=12, max_step_tokens=16,
                    max_new_tokens=128, aggregation="min", temperature=1.0, top_p=1.0,
                    lookahead=0, filter_duplicates=False, seed=0,
                    rules="ttc_jax")  # or search_and_learn (docs/search_and_learn.md)
    # data x model x stage devices (ttc_jax.parallel), e.g. --config.mesh.data=8. The
    # shipped models (vocab 21, 2-3 layers) shard along data only; larger ones on all three.
    c.mesh = dict(data=1, model=1, stage=1)
    if variant == "local":  # a CPU smoke run: a few problems, small budget
        c.difficulties = (2, 3)
        c.problems_per_difficulty = 2
        c.batch_size = 4
        c.search.update(n=4, beam_width=2, max_steps=4, max_new_tokens=64)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'local'")
    return ml_collections.ConfigDict(c)
