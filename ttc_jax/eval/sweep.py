"""Sweeps: method x budget N x difficulty x seed, one JSONL row per problem and config.

The sampling methods (majority, best-of-N, weighted best-of-N) are sampled once at the
largest N and subsampled: the first n of the N_max candidates give the n-candidate result
(candidates are i.i.d., so a prefix is a fair sample, as huggingface/search-and-learn
does); their FLOPs are counted per candidate (:func:`candidate_flops`) and checked
against the search's own counters. Beam search and DVTS run once per (N, beam width).

Rows are appended in whole units (one compiled call's problems) with one ``write`` and an
``fsync``; a restarted sweep reads the file, drops a torn last line, skips every key it
holds and appends the rest, so a killed and restarted sweep ends with exactly the rows of
an uninterrupted one (the randomness of a problem depends only on its uid and the seed).

Splits: ``test`` is the held-out evaluation set; ``val`` is a disjoint set of held-out
prompts (same task split, another problem seed, uids of ``test`` removed) on which the
compute-optimal selector and the adaptive thresholds are fitted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jax
import numpy as np

from ttc_jax.config import ModelConfig, SearchConfig
from ttc_jax.eval.generate import sample_solutions
from ttc_jax.eval.prm_quality import vote
from ttc_jax.search import NO_ANSWER, SearchTokens, answer_id_of_text, encode_prompts, search
from ttc_jax.search.state import flops_line
from ttc_jax.tasks import Problem, get_task

SAMPLING_METHODS = ("majority", "best_of_n", "weighted_best_of_n")
TREE_METHODS = ("beam", "dvts")
ALL_METHODS = SAMPLING_METHODS + TREE_METHODS
SAMPLES = "samples"  # the per-candidate row of a sampling unit (method name in the JSONL)
GREEDY = "greedy"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs.

    Attributes:
      methods: subset of ``ALL_METHODS``.
      ns: budgets N (candidates per problem). Sampling methods use every N; beam/DVTS use
        the N that are multiples of a beam width M <= N.
      tree_ns: the N of beam/DVTS (default: ``ns``); each compiled program costs
        seconds to build, so a short sweep runs fewer.
      beam_widths: M values for beam search and DVTS.
      difficulties: problem difficulties k; problems_per_k: test problems per k.
      val_problems_per_k: validation problems per k (0: no validation split).
      seeds: sampling seeds; every method runs once per seed.
      splits: the splits this process runs (e.g. ('val',) in one process and ('test',)
        in another, each with its own JSONL); 'val' needs val_problems_per_k > 0.
      problem_seed / val_problem_seed: seeds that draw the test / validation problems.
      greedy_models: shipped model names whose greedy decode is recorded on every split
        (e.g. the policy and the teacher), for the small-vs-large comparison.
      max_rows: at most this many rows (problems x N) per compiled call.
      aggregation, max_steps, max_step_tokens, max_new_tokens, temperature: passed to
        :class:`SearchConfig`.
    """

    policy: str = "policy_small"
    prm: str = "prm"
    task: str = "arithmetic"
    methods: tuple[str, ...] = ALL_METHODS
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    tree_ns: tuple[int, ...] = ()
    beam_widths: tuple[int, ...] = (4,)
    difficulties: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    problems_per_k: int = 20
    val_problems_per_k: int = 0
    seeds: tuple[int, ...] = (0,)
    splits: tuple[str, ...] = ("test", "val")
    problem_seed: int = 0
    val_problem_seed: int = 1
    greedy_models: tuple[str, ...] = ("policy_small", "teacher")
    max_rows: int = 512
    aggregation: str = "min"
    max_steps: int = 12
    max_step_tokens: int = 16
    max_new_tokens: int = 128
    temperature: float = 1.0

    def __post_init__(self):
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad:
            raise ValueError(f"unknown sweep method(s) {bad}; choose from {list(ALL_METHODS)}")
        if not self.ns or any(n < 1 for n in self.ns):
            raise ValueError(f"ns={self.ns} must be a non-empty list of budgets >= 1")
        if any(m < 1 for m in self.beam_widths):
            raise ValueError(f"beam_widths={self.beam_widths} must all be >= 1")
        if self.problems_per_k < 1 or self.val_problems_per_k < 0:
            raise ValueError(f"problems_per_k={self.problems_per_k} must be >= 1 and "
                             f"val_problems_per_k={self.val_problems_per_k} >= 0")
        if not self.splits or any(s not in ("test", "val") for s in self.splits):
            raise ValueError(f"splits={self.splits}; use a non-empty subset of ('test', 'val')")
        if not self.seeds:
            raise ValueError("seeds is empty; give at least one sampling seed, e.g. (0,)")
        if self.max_rows < max(self.ns):
            raise ValueError(f"max_rows={self.max_rows} < max N={max(self.ns)}: one problem's "
                             f"N rows must fit in a call; raise max_rows")

    def search_config(self, method: str, n: int, beam_width: int, seed: int) -> SearchConfig:
        return SearchConfig(method=method, n=n, beam_width=beam_width,
                            max_steps=self.max_steps, max_step_tokens=self.max_step_tokens,
                            max_new_tokens=self.max_new_tokens, aggregation=self.aggregation,
                            temperature=self.temperature, seed=seed)

    def tree_configs(self) -> list[tuple[str, int, int]]:
        """(method, n, beam_width) of every tree-search run, cheapest first."""
        out = [(meth, n, m) for n in sorted(self.tree_ns or self.ns) for meth in self.methods
               if meth in TREE_METHODS for m in self.beam_widths if m <= n and n % m == 0]
        return out


def row_key(split: str, seed: int, method: str, n: int, beam_width: int, uid: str,
            model: str = "") -> str:
    """The identity of one row: a restarted sweep skips keys already in the file."""
    return f"{split}|{seed}|{method}|{n}|{beam_width}|{model}|{uid}"


def problem_int(uid: str) -> int:
    """A stable int id of a problem (its randomness depends only on this and the seed)."""
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=4).digest(), "big") >> 1


# ----------------------------------------------------------------------------- compute


def candidate_flops(cfg: ModelConfig, prompt_len, num_tokens, *, lm_head: bool = True):
    """Forward FLOPs of ``num_tokens`` generated (or scored) tokens after a prompt of
    ``prompt_len``: token j attends to prompt_len + j + 1 positions. Arrays broadcast."""
    base, slope = flops_line(cfg, lm_head=lm_head)
    L = np.asarray(num_tokens, np.float64)
    p = np.asarray(prompt_len, np.float64)
    return L * base + slope * (L * p + L * (L + 1) / 2)


def prefill_flops(cfg: ModelConfig, prompt_len, *, lm_head: bool = True):
    """Forward FLOPs of the prompt prefill: token t attends to t + 1 positions."""
    base, slope = flops_line(cfg, lm_head=lm_head)
    p = np.asarray(prompt_len, np.float64)
    return p * base + slope * p * (p + 1) / 2


# ----------------------------------------------------------------------------- JSONL


class JsonlWriter:
    """Appends rows to a JSONL file atomically per call, and knows the keys it holds.

    On open, a torn last line (a kill mid-write) is cut off the file, so the next append
    starts on a clean line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()
        self.rows: list[dict] = []
        if self.path.exists():
            self.rows, good_bytes = _read_valid_prefix(self.path)
            if good_bytes != self.path.stat().st_size:
                with self.path.open("r+b") as f:
                    f.truncate(good_bytes)
            dup = len(self.rows) - len({r["key"] for r in self.rows})
            if dup:
                raise ValueError(f"{self.path} holds {dup} duplicate keys; it was not written "
                                 f"by this sweep. Move it away or pass another --out")
            self.keys = {r["key"] for r in self.rows}

    def append(self, rows: Sequence[dict]) -> None:
        rows = [r for r in rows if r["key"] not in self.keys]
        if not rows:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.keys.update(r["key"] for r in rows)
        self.rows.extend(rows)


def _read_valid_prefix(path: Path) -> tuple[list[dict], int]:
    """Rows of the complete, parseable lines, and the byte length they span."""
    rows, good = [], 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(row, dict) or "key" not in row:
                raise ValueError(f"{path}: line {len(rows) + 1} is not a sweep row (no 'key')")
            rows.append(row)
            good += len(line)
    return rows, good


def load_rows(path: str | Path) -> list[dict]:
    """Every complete row of a sweep's JSONL (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run launch/sweep.py first")
    return _read_valid_prefix(path)[0]


# ----------------------------------------------------------------------------- units


@dataclasses.dataclass(frozen=True)
class Unit:
    """One compiled call: ``kind`` is 'sample' (N_max candidates per problem, subsampled
    into every sampling method and N), 'tree' or 'greedy'."""

    split: str
    seed: int
    kind: str
    method: str
    n: int
    beam_width: int
    start: int  # first problem index in the split
    size: int   # problems in this call
    pad: int    # the call's batch (filler rows repeat the last problem): one shape per config
    model: str = ""

    def keys(self, cfg: SweepConfig, problems: Sequence[Problem]) -> list[str]:
        out = []
        for p in problems[self.start:self.start + self.size]:
            if self.kind == "sample":
                out.append(row_key(self.split, self.seed, SAMPLES, self.n, 0, p.uid))
                for meth in cfg.methods:
                    if meth in SAMPLING_METHODS:
                        out += [row_key(self.split, self.seed, meth, n, 0, p.uid)
                                for n in sorted(cfg.ns)]
            elif self.kind == "tree":
                out.append(row_key(self.split, self.seed, self.method, self.n,
                                   self.beam_width, p.uid))
            else:
                out.append(row_key(self.split, 0, GREEDY, 1, 0, p.uid, self.model))
        return out


def sweep_problems(cfg: SweepConfig) -> dict[str, list[Problem]]:
    """{'test': [...], 'val': [...]}: validation problems share no uid with test ones."""
    task = get_task(cfg.task)
    ks = list(cfg.difficulties)
    test = task.sample_problems("test", ks, cfg.problems_per_k, cfg.problem_seed)
    out = {"test": test}
    if cfg.val_problems_per_k:
        if cfg.val_problem_seed == cfg.problem_seed:
            raise ValueError("val_problem_seed must differ from problem_seed, else the "
                             "validation problems are the test problems")
        seen = {p.uid for p in test}
        val = task.sample_problems("test", ks, cfg.val_problems_per_k, cfg.val_problem_seed)
        out["val"] = [p for p in val if p.uid not in seen]
    return out


def plan_units(cfg: SweepConfig, problems: dict[str, list[Problem]]) -> list[Unit]:
    """Every call of the sweep, in order: greedy, sampling, then tree search by growing N."""
    units = []
    splits = [s for s in problems if s in cfg.splits]
    most = max(len(ps) for ps in problems.values())
    for split in splits:
        for model in cfg.greedy_models:
            units += _chunks(split, 0, "greedy", GREEDY, 1, 0, len(problems[split]),
                             min(64, most), model)
    n_max = max(cfg.ns)
    if any(m in SAMPLING_METHODS for m in cfg.methods):
        bs = min(most, max(1, cfg.max_rows // n_max))
        for seed in cfg.seeds:
            for split in splits:
                units += _chunks(split, seed, "sample", SAMPLES, n_max, 0,
                                 len(problems[split]), bs)
    for meth, n, m in cfg.tree_configs():
        bs = min(most, max(1, cfg.max_rows // n))
        for seed in cfg.seeds:
            for split in splits:
                units += _chunks(split, seed, "tree", meth, n, m, len(problems[split]), bs)
    return units


def _chunks(split, seed, kind, method, n, m, count, bs, model="") -> list[Unit]:
    return [Unit(split, seed, kind, method, n, m, s, min(bs, count - s), bs, model)
            for s in range(0, count, bs)]


# ----------------------------------------------------------------------------- running


class Runner:
    """Holds the models, the encoded prompts (one width for the whole sweep, so a problem's
    result never depends on its batch) and runs units into rows."""

    def __init__(self, cfg: SweepConfig, problems: dict[str, list[Problem]], models=None):
        from ttc_jax.models.io import load_model

        self.cfg = cfg
        self.task = get_task(cfg.task)
        self.spec = SearchTokens.from_task(self.task)
        self.problems = problems
        models = dict(models or {})
        if "policy" not in models:
            models["policy"] = load_model(cfg.policy, kind="policy")
        if "prm" not in models:
            models["prm"] = load_model(cfg.prm, kind="prm")
        for name in cfg.greedy_models:
            if name not in models:
                models[name] = (models["policy"] if name == cfg.policy
                                else load_model(name, kind="policy"))
        self.models = models
        everything = [p for ps in problems.values() for p in ps]
        prompts, lens = encode_prompts(self.task, everything, 32)
        self.width = prompts.shape[1]
        self.encoded = {}
        i = 0
        for split, ps in problems.items():
            self.encoded[split] = (prompts[i:i + len(ps)], lens[i:i + len(ps)])
            i += len(ps)

    def run(self, unit: Unit) -> list[dict]:
        if unit.kind == "greedy":
            return self._greedy(unit)
        return self._search(unit)

    def _batch(self, unit: Unit, bs: int):
        prompts, lens = self.encoded[unit.split]
        idx = np.minimum(np.arange(unit.start, unit.start + bs), unit.start + unit.size - 1)
        probs = self.problems[unit.split]
        ids = np.asarray([problem_int(probs[i].uid) for i in idx], np.int32)
        return prompts[idx], lens[idx], ids, probs[unit.start:unit.start + unit.size]

    def _search(self, unit: Unit) -> list[dict]:
        cfg = self.cfg
        method = "weighted_best_of_n" if unit.kind == "sample" else unit.method
        scfg = cfg.search_config(method, unit.n, max(unit.beam_width, 1) if
                                 unit.kind == "tree" else 1, unit.seed)
        prompts, lens, ids, probs = self._batch(unit, unit.pad)
        pol, prm = self.models["policy"], self.models["prm"]
        res = search(pol, prm, prompts, lens, scfg, self.spec, problem_ids=ids,
                     capacity=self.width + cfg.max_new_tokens)
        res = jax.tree.map(np.asarray, res)
        rows = []
        for b, p in enumerate(probs):
            ref = answer_id_of_text(p.answer)
            base = {"split": unit.split, "seed": unit.seed, "uid": p.uid,
                    "difficulty": p.difficulty, "reference": ref,
                    "prompt_len": int(lens[b])}
            if unit.kind == "sample":
                rows += self._sampling_rows(base, res, b, int(lens[b]))
            else:
                valid = res.valid[b]
                answers = res.answers[b][valid]
                ans = int(res.answer[b])
                c = res.compute
                rows.append(dict(
                    base, key=row_key(unit.split, unit.seed, unit.method, unit.n,
                                      unit.beam_width, p.uid),
                    method=unit.method, n=unit.n, beam_width=unit.beam_width,
                    answer=None if ans == NO_ANSWER else ans, correct=bool(ans == ref),
                    oracle=bool(np.any(answers == ref)),
                    policy_tokens=float(c.policy_tokens[b]),
                    policy_flops=float(c.policy_flops[b]),
                    prm_tokens=float(c.prm_tokens[b]), prm_flops=float(c.prm_flops[b]),
                    flops=float(c.policy_flops[b]) + float(c.prm_flops[b])))
        return rows

    def _sampling_rows(self, base: dict, res, b: int, plen: int) -> list[dict]:
        cfg = self.cfg
        pol_cfg, prm_cfg = self.models["policy"].cfg, self.models["prm"].cfg
        lengths = res.lengths[b].astype(np.int64)  # [C]
        answers = [None if a == NO_ANSWER else int(a) for a in res.answers[b]]
        scores = res.scores[b].astype(np.float64)
        correct = [a is not None and a == base["reference"] for a in answers]
        pol_c = candidate_flops(pol_cfg, plen, lengths)
        prm_c = candidate_flops(prm_cfg, plen, lengths, lm_head=False)
        pol_pre = float(prefill_flops(pol_cfg, plen))
        prm_pre = float(prefill_flops(prm_cfg, plen, lm_head=False))
        # The per-candidate count must add up to the search's own counters.
        for name, mine, theirs in (
                ("policy", pol_pre + pol_c.sum(), res.compute.policy_flops[b]),
                ("prm", prm_pre + prm_c.sum(), res.compute.prm_flops[b]),
                ("policy tokens", lengths.sum(), res.compute.policy_tokens[b])):
            if not np.isclose(mine, float(theirs), rtol=1e-4):
                raise RuntimeError(f"{name} FLOPs per candidate add up to {mine:.6g} but the "
                                   f"search counted {float(theirs):.6g}")
        n_max = len(answers)
        seed, split, uid = base["seed"], base["split"], base["uid"]
        rows = [dict(base, key=row_key(split, seed, SAMPLES, n_max, 0, uid), method=SAMPLES,
                     n=n_max, beam_width=0, answers=answers,
                     scores=[float(s) for s in scores], correct_list=correct,
                     lengths=[int(x) for x in lengths], policy_prefill_flops=pol_pre,
                     prm_prefill_flops=prm_pre,
                     policy_flops_list=[float(x) for x in pol_c],
                     prm_flops_list=[float(x) for x in prm_c])]
        for meth in cfg.methods:
            if meth not in SAMPLING_METHODS:
                continue
            for n in sorted(cfg.ns):
                ans = choose(meth, answers[:n], scores[:n])
                uses_prm = meth != "majority"
                pf = pol_pre + float(pol_c[:n].sum())
                qf = (prm_pre + float(prm_c[:n].sum())) if uses_prm else 0.0
                rows.append(dict(
                    base, key=row_key(split, seed, meth, n, 0, uid), method=meth, n=n,
                    beam_width=0, answer=ans, correct=ans is not None and
                    ans == base["reference"], oracle=bool(any(correct[:n])),
                    policy_tokens=float(lengths[:n].sum()), policy_flops=pf,
                    prm_tokens=float(lengths[:n].sum()) if uses_prm else 0.0,
                    prm_flops=qf, flops=pf + qf))
        return rows

    def _greedy(self, unit: Unit) -> list[dict]:
        model = self.models[unit.model]
        probs = self.problems[unit.split][unit.start:unit.start + unit.size]
        s = sample_solutions(model, self.task, probs, n=1, rng=jax.random.key(0),
                             max_new_tokens=self.cfg.max_new_tokens,
                             batch_size=unit.pad, prompt_multiple=self.width)
        prompts, lens = self.encoded[unit.split]
        rows = []
        for i, p in enumerate(probs):
            plen = int(lens[unit.start + i])
            n_tok = int(s.lengths[i, 0])
            ans = self.task.extract_answer(s.texts[i][0])
            ref = answer_id_of_text(p.answer)
            ans_id = None if ans is None else answer_id_of_text(ans)
            pf = float(prefill_flops(model.cfg, plen) + candidate_flops(model.cfg, plen, n_tok))
            rows.append({
                "key": row_key(unit.split, 0, GREEDY, 1, 0, p.uid, unit.model),
                "split": unit.split, "seed": 0, "uid": p.uid, "difficulty": p.difficulty,
                "reference": ref, "prompt_len": plen, "method": GREEDY, "model": unit.model,
                "n": 1, "beam_width": 0, "answer": ans_id,
                "correct": bool(self.task.grade(p, s.texts[i][0])), "oracle": None,
                "policy_tokens": float(n_tok), "policy_flops": pf, "prm_tokens": 0.0,
                "prm_flops": 0.0, "flops": pf})
        return rows


def choose(method: str, answers: Sequence[int | None], scores: Sequence[float]) -> int | None:
    """The answer a sampling method picks from these candidates (host twin of the kernels:
    ties go to the answer seen first; a missing answer never wins a vote)."""
    if method == "majority":
        return vote(answers)
    if method == "weighted_best_of_n":
        return vote(answers, list(scores))
    if method == "best_of_n":
        return answers[int(np.argmax(scores))]
    raise ValueError(f"{method!r} is not a sampling method; use one of {SAMPLING_METHODS}")


def run_sweep(cfg: SweepConfig, out: str | Path, *, models: dict | None = None,
              progress: bool = True,
              on_unit: Callable[[Unit, list[dict]], None] | None = None) -> list[dict]:
    """Runs (or resumes) the sweep into ``out`` and returns every row in the file."""
    from tqdm import tqdm

    writer = JsonlWriter(out)
    problems = sweep_problems(cfg)
    units = plan_units(cfg, problems)
    todo = [u for u in units if not set(u.keys(cfg, problems[u.split])) <= writer.keys]
    runner = None
    bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="call",
               desc="sweep", disable=not progress, dynamic_ncols=True)
    for u in todo:
        if runner is None:
            runner = Runner(cfg, problems, models)
        bar.set_postfix_str(f"{u.split} {u.method} N={u.n}" +
                            (f" M={u.beam_width}" if u.kind == "tree" else "") +
                            (f" {u.model}" if u.model else ""))
        rows = runner.run(u)
        writer.append(rows)
        if on_unit is not None:
            on_unit(u, rows)
        bar.update(1)
    bar.close()
    planned = {k for u in units for k in u.keys(cfg, problems[u.split])}
    return [r for r in writer.rows if r["key"] in planned]


def complete_rows(rows: Sequence[dict]) -> list[dict]:
    """Drops the search configs (method, n, beam width, seed) that do not cover every
    problem of every split that has rows (an interrupted sweep's last configs), so that
    every method is compared on the same problems."""
    uids: dict[str, set] = {}
    cover: dict[tuple, dict[str, set]] = {}
    for r in rows:
        uids.setdefault(r["split"], set()).add(r["uid"])
        if r["method"] in ALL_METHODS:
            c = (r["method"], r["n"], r["beam_width"], r["seed"])
            cover.setdefault(c, {}).setdefault(r["split"], set()).add(r["uid"])
    done = {c for c, per in cover.items() if all(per.get(s, set()) >= u for s, u in uids.items())}
    return [r for r in rows if r["method"] not in ALL_METHODS
            or (r["method"], r["n"], r["beam_width"], r["seed"]) in done]


def select_rows(rows: Iterable[dict], **where) -> list[dict]:
    """Rows whose fields equal every ``where`` value."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]
