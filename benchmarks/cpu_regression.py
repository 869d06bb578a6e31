"""CPU before/after: this checkout's code against a base revision, alternating in one run.

The paged-cache work (issue 17) touched the model's cached calls, the decode loop and the
search step kernel. The CPU is where the tests and the demo run, so the CPU path must not
slow down. For each workload the base revision's code (a ``git worktree`` of ``--base``)
and this checkout's code run in fresh subprocesses, alternately, ``--repeats`` times (the
figures are the best of them; each timed figure is itself the best of 10 calls after the
compile: calls of ~0.1 s on this shared 2-core machine vary by +-20% from run to run):

* ``decode``: ``sample`` of 16 rows x 128 tokens on a tiny model (tokens/s, after compile);
* ``search``: beam search (N=8, M=4) and best-of-N (N=8) over 8 arithmetic problems on the
  shipped models (seconds per call, after compile);
* ``demo``: ``launch/demo.py``, the main job of ``make demo`` (wall seconds, compile
  included);
* ``search_paged``: this checkout only, the same beam search on the paged cache.

  RESULT cpu_decode_tokens_per_s_ratio=<ours / base>   (> 1: faster)
  RESULT cpu_search_beam_s_ratio=<ours / base>         (< 1: faster)
  RESULT cpu_search_bon_s_ratio=<ours / base>
  RESULT cpu_demo_s_ratio=<ours / base>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(kind: str) -> dict:
    import jax
    import numpy as np

    import ttc_jax
    from ttc_jax.config import ModelConfig, SearchConfig
    from ttc_jax.decode import Temperature, sample
    from ttc_jax.models import init_model, load_model
    from ttc_jax.search import SearchTokens, encode_prompts, search
    from ttc_jax.tasks import get_task

    out = {"code": str(Path(ttc_jax.__file__).parent.parent)}

    def timed(fn, reps=10):
        jax.block_until_ready(fn())  # compile
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t)
        return min(ts)

    if kind == "decode":
        cfg = ModelConfig(vocab_size=21, d_model=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=256, max_seq_len=192)
        model = init_model(cfg)
        prompt = [1, 18, 19, 4, 5, 6, 13, 7, 20]
        s = timed(lambda: sample(model, [prompt], n=16, rng=jax.random.key(0),
                                 max_new_tokens=128, strategy=Temperature(1.0),
                                 stop_tokens=(21,), capacity=len(prompt) + 128).tokens)
        out["decode_tokens_per_s"] = 16 * 128 / s
    elif kind.startswith("search"):
        task = get_task("arithmetic")
        policy, prm = load_model("policy_small"), load_model("prm")
        problems = task.sample_problems("test", [2, 3, 4, 5], 2, seed=0)
        prompts = encode_prompts(task, problems)
        spec = SearchTokens.from_task(task, vocab_size=policy.cfg.vocab_size)
        extra = {"kv_cache": "paged"} if kind == "search_paged" else {}
        for name, kw in (("beam", dict(method="beam", n=8, beam_width=4)),
                         ("bon", dict(method="best_of_n", n=8))):
            cfg = SearchConfig(**kw, max_new_tokens=96, **extra)
            out[f"search_{name}_s"] = timed(
                lambda cfg=cfg: np.asarray(search(policy, prm, *prompts, cfg, spec).tokens))
    return out


def _run(tree: Path, kind: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    if kind == "demo":
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "launch/demo.py", f"--out_dir={d}"], cwd=tree,
                           env=env, check=True, capture_output=True)
            return {"demo_s": time.perf_counter() - t}
    res = subprocess.run([sys.executable, __file__, "--worker", kind], cwd=tree, env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="831e8b8", help="revision to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="decode,search,demo")
    ap.add_argument("--worker", default="")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker)))
        return
    base = Path(tempfile.mkdtemp(prefix="ttc_base_"))
    subprocess.run(["git", "worktree", "add", "--detach", str(base), a.base], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        figures: dict[str, dict[str, list]] = {"base": {}, "ours": {}}
        for _ in range(a.repeats):
            for kind in a.kinds.split(","):
                for who, tree in (("base", base), ("ours", ROOT)):
                    for k, v in _run(tree, kind).items():
                        if k != "code":
                            figures[who].setdefault(k, []).append(v)
        if "search" in a.kinds:
            for k, v in _run(ROOT, "search_paged").items():
                if k != "code":
                    figures["ours"].setdefault(f"paged_{k}", []).append(v)
        print(f"{'figure':28s} {'base':>10s} {'ours':>10s}  ratio (best of {a.repeats})")
        best = {}
        for k in figures["base"]:
            pick = max if "per_s" in k else min
            b, o = pick(figures["base"][k]), pick(figures["ours"][k])
            best[k] = o / b
            print(f"{k:28s} {b:10.3f} {o:10.3f}  {o / b:.3f}")
        for k, v in figures["ours"].items():
            if k.startswith("paged_"):
                print(f"{k:28s} {'':>10s} {min(v):10.3f}  (ours only: kv_cache=paged)")
        names = {"decode_tokens_per_s": "cpu_decode_tokens_per_s_ratio",
                 "search_beam_s": "cpu_search_beam_s_ratio",
                 "search_bon_s": "cpu_search_bon_s_ratio", "demo_s": "cpu_demo_s_ratio"}
        for k, name in names.items():
            if k in best:
                print(f"RESULT {name}={best[k]:.3f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                       capture_output=True)


if __name__ == "__main__":
    main()
