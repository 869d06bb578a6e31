"""Run one test-time search method over held-out problems; one JSONL row per problem.

  python launch/search.py --config=experiments/search.py --out=results/beam.jsonl \
      --config.search.method=beam --config.search.n=16
"""

import json
import logging
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ttc_jax.config import MeshConfig, SearchConfig, from_dict
from ttc_jax.models.io import load_model
from ttc_jax.parallel import is_writer, make_mesh, shard_model
from ttc_jax.parallel.launch_flags import init_from_flags
from ttc_jax.search import search_problems
from ttc_jax.tasks import get_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/search.py[:local]")
_OUT = flags.DEFINE_string("out", "results/search.jsonl", "JSONL output, one row per problem")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    init_from_flags()  # multi-host: join the other processes first
    c = _CONFIG.value
    cfg = from_dict(SearchConfig, c.search.to_dict())
    task = get_task(c.task)
    problems = task.sample_problems(c.split, list(c.difficulties), c.problems_per_difficulty,
                                    c.problem_seed)
    policy = load_model(c.policy, kind="policy")
    prm = load_model(c.prm, kind="prm") if c.prm else None
    mesh = None
    if c.get("mesh") and from_dict(MeshConfig, c.mesh.to_dict()).size > 1:
        mesh = make_mesh(from_dict(MeshConfig, c.mesh.to_dict()))
        policy = shard_model(policy, mesh)
        prm = shard_model(prm, mesh) if prm is not None else None
    draft = load_model(c.draft, kind="policy") if c.get("draft") else None
    rows = search_problems(policy, prm, task, problems, cfg, batch_size=c.batch_size,
                           mesh=mesh, draft=draft, gamma=c.get("gamma", 4))
    if not is_writer():  # every process searched; one writes
        return
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    acc = sum(r["correct"] for r in rows) / len(rows)
    logging.warning("%s n=%d: accuracy %.3f on %d problems -> %s", cfg.method, cfg.n, acc,
                    len(rows), out)


if __name__ == "__main__":
    app.run(main)
