"""Test-time search over MATH-style problems with Hugging Face models.

    policy = load_hf_model(policy_dir, dtype="bfloat16", mesh=mesh)
    tok = HFTokenizer.from_folder(policy_dir)
    prm = load_prm("token_prob", prm_dir, tok, ...)
    rows = search_math(policy, prm, tok, MathTask(jsonl, tok), problems, cfg)

The on-device search (``ttc_jax.search.search``) generates and scores candidates: a step
ends at any token holding "\\n\\n" (the tokenizer's ``step_delimiter_ids``), a solution at
any eos id, and each candidate's answer id is a hash of its last ``\\boxed{...}`` content
(equal text, equal id; ``candidate_answer_ids`` in the rows). The final choice is made here
on the host from the candidates' texts and PRM scores, the three ways the Hugging Face
study reports: ``naive`` (highest score), ``weighted`` (answer with the largest score sum)
and ``majority`` (most frequent answer), equivalent answers (``tasks.math.is_equiv``:
``\\frac12`` and ``0.5``) grouped together. Each choice is graded twice: ``correct_*`` by
``is_equiv``, ``study_correct_*`` by the study's grader ``tasks.math.study_equal``.

Prompts are bucketed by length (``prompt_buckets``), so a few programs are compiled and a
short prompt is not padded to the longest; a problem that cannot fit gets an error row.
``run_sweep`` writes rows as problems finish and resumes an interrupted sweep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ttc_jax.config import SearchConfig
from ttc_jax.eval.prm_quality import vote
from ttc_jax.search import SearchTokens, search
from ttc_jax.tasks.math import MathTask, is_equiv

ANSWER_MARKER = "Therefore, the final answer is"
CHOICES = ("naive", "weighted", "majority")


def hf_search_tokens(tokenizer, vocab_size: int | None = None,
                     answer_marker: str = ANSWER_MARKER) -> SearchTokens:
    """SearchTokens for a MATH search with a Hugging Face tokenizer: a step ends at every
    token whose text holds "\\n\\n" (``tokenizer.step_delimiter_ids``: ".\\n\\n" too), a
    solution at every eos id, and each row's on-device answer is a hash of its last
    ``\\boxed{...}`` content (equal text, equal id; the host groups equivalent answers).
    ``vocab_size``: the policy's (its embedding may be larger than the tokenizer)."""
    return SearchTokens.from_tokenizer(tokenizer, answer="boxed", answer_marker=answer_marker,
                                       separator=MathTask.step_delimiter,
                                       vocab_size=vocab_size)


def load_prm(kind: str, path: str, tokenizer, *, policy_format: str, policy_system: str,
             dtype: str = "bfloat16", cache_len: int = 4096, mesh=None):
    """An HF PRM by kind: ``token_prob`` (RLHFlow style) or ``classifier`` (Qwen2.5-Math).
    The PRM's own tokenizer (and chat template) is read from its folder when it has one;
    ``tokenizer`` is the policy's."""
    from ttc_jax.interop import prm as hf_prm

    loaders = {"token_prob": hf_prm.load_token_prob_prm,
               "classifier": hf_prm.load_classifier_prm}
    if kind not in loaders:
        raise ValueError(f"prm kind {kind!r}; choose 'token_prob' or 'classifier'")
    return loaders[kind](path, tokenizer, dtype=dtype, cache_len=cache_len, mesh=mesh,
                         policy_format=policy_format, policy_system=policy_system)


def _groups(answers: Sequence[str | None]) -> list[int]:
    """Group index per answer (equivalent answers share one); None -> -1."""
    reps: list[str] = []
    out = []
    for a in answers:
        if a is None:
            out.append(-1)
            continue
        g = next((i for i, r in enumerate(reps) if is_equiv(a, r)), None)
        if g is None:
            reps.append(a)
            g = len(reps) - 1
        out.append(g)
    return out


def select_indices(answers: Sequence[str | None], scores: Sequence[float]) -> dict:
    """The candidate index behind each choice (None if no candidates): ``naive`` the
    top-scored one, ``weighted`` / ``majority`` the first candidate of the winning group."""
    out = {"naive": None, "weighted": None, "majority": None}
    if not answers:
        return out
    out["naive"] = int(np.argmax(scores))
    groups = _groups(answers)
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    canon = [None if g < 0 else answers[first[g]] for g in groups]
    for k, w in (("weighted", list(scores)), ("majority", None)):
        win = vote(canon, w)
        out[k] = None if win is None else canon.index(win)
    return out


def select_answers(answers: Sequence[str | None], scores: Sequence[float]) -> dict:
    """The naive / weighted / majority choices among candidates (None if no answers).

    Equivalent answers (``is_equiv``) vote together under the spelling seen first; the
    votes are ``eval.prm_quality.vote`` (ties go to the answer seen first)."""
    return {k: None if i is None else answers[i]
            for k, i in select_indices(answers, scores).items()}


def prompt_buckets(lens: Sequence[int], *, multiple: int, limit: int
                   ) -> tuple[dict[int, list[int]], list[int]]:
    """Prompts sorted into a few width buckets.

    Each prompt of ``lens[i]`` tokens goes to the bucket of width ``lens[i]`` rounded up
    to ``multiple`` (capped at ``limit``, the widest prompt that still leaves room for the
    token budget), so only one program per bucket is compiled and a short prompt is not
    padded to the longest one. Returns ({width: prompt indices in file order}, indices
    of the prompts longer than ``limit``)."""
    if multiple < 1:
        raise ValueError(f"prompt_multiple={multiple} must be >= 1")
    buckets: dict[int, list[int]] = {}
    too_long = []
    for i, n in enumerate(lens):
        if n > limit:
            too_long.append(i)
            continue
        width = min(-(-int(n) // multiple) * multiple, limit)
        buckets.setdefault(width, []).append(i)
    return dict(sorted(buckets.items())), too_long


def too_long_error(prompt_len: int, cfg: SearchConfig, max_seq_len: int) -> str:
    return (f"prompt of {prompt_len} tokens + {cfg.max_new_tokens} new tokens > max_seq_len "
            f"{max_seq_len}")


def _study_equal(pred: str | None, reference: str) -> bool:
    if pred is None:
        return False
    from ttc_jax.tasks.math import study_equal

    return bool(study_equal(pred, reference))


def _grades(answers: Sequence[str | None], raw: Sequence[str | None], pick: dict,
            p) -> dict:
    """Both graders' verdicts: ``correct_*`` is ``is_equiv`` on normalized answers,
    ``study_correct_*`` the study's ``study_equal`` on the raw ``\\boxed`` content and
    the raw reference (as the Qwen2.5-Math evaluation compares them)."""
    ref_raw = str(p.meta.get("raw_answer", p.answer)) if p.meta else p.answer
    return {
        **{f"pred_{k}": None if i is None else answers[i] for k, i in pick.items()},
        **{f"correct_{k}": i is not None and is_equiv(answers[i], p.answer)
           for k, i in pick.items()},
        **{f"study_correct_{k}": i is not None and _study_equal(raw[i], ref_raw)
           for k, i in pick.items()},
        "oracle": any(is_equiv(a, p.answer) for a in answers),
        "study_oracle": any(_study_equal(a, ref_raw) for a in raw),
    }


def _row_head(p, cfg: SearchConfig, prompt_len: int) -> dict:
    return {"uid": p.uid, "level": p.difficulty, "method": cfg.method, "n": cfg.n,
            "beam_width": cfg.beam_width, "aggregation": cfg.aggregation,
            "reference": p.answer, "prompt_len": int(prompt_len)}


def error_row(p, cfg: SearchConfig, prompt_len: int, error: str) -> dict:
    """The row of a problem that was not searched (graded wrong, with the reason)."""
    return {**_row_head(p, cfg, prompt_len), "error": error,
            **_grades([], [], select_indices([], []), p),
            "candidate_answers": [], "candidate_raw_answers": [], "candidate_scores": [],
            "candidate_answer_ids": [], "candidate_num_steps": [], "best_text": "",
            "policy_tokens": 0.0, "policy_flops": 0.0, "prm_tokens": 0.0, "prm_flops": 0.0}


def result_row(task: MathTask, tokenizer, p, res, b: int, cfg: SearchConfig,
               prompt_len: int) -> dict:
    """The row of problem ``p`` from row ``b`` of a host SearchResult: the candidates'
    texts are decoded and their answers grouped on the host (``select_indices``)."""
    from ttc_jax.tasks.math import extract_raw_answer

    valid = np.flatnonzero(res.valid[b])
    texts = [tokenizer.decode_until_eos(res.tokens[b, j, :res.lengths[b, j]]) for j in valid]
    answers = [task.extract_answer(t) for t in texts]
    raw = [extract_raw_answer(t) for t in texts]
    scores = [float(res.scores[b, j]) for j in valid]
    pick = select_indices(answers, scores)
    return {
        **_row_head(p, cfg, prompt_len), "error": None, **_grades(answers, raw, pick, p),
        "candidate_answers": answers, "candidate_raw_answers": raw,
        "candidate_scores": scores,
        "candidate_answer_ids": [int(res.answers[b, j]) for j in valid],  # on device
        "candidate_num_steps": [int(res.num_steps[b, j]) for j in valid],
        "best_text": texts[pick["naive"]] if texts else "",
        "policy_tokens": float(res.compute.policy_tokens[b]),
        "policy_flops": float(res.compute.policy_flops[b]),
        "prm_tokens": float(res.compute.prm_tokens[b]),
        "prm_flops": float(res.compute.prm_flops[b]),
    }


def iter_results(policy, prm, tokenizer, task: MathTask, problems: Sequence,
                 cfg: SearchConfig, *, batch_size: int = 8, prompt_multiple: int = 128,
                 mesh=None):
    """Yields (index into ``problems``, prompt length, host SearchResult of its batch or
    None, row in that batch or the error message) as each problem finishes.

    Prompts are bucketed by length (:func:`prompt_buckets`); each bucket is searched in
    batches of ``batch_size`` padded to its own width (the last batch filled with copies
    of its last prompt), so one program per bucket width serves all its batches. A
    problem whose prompt + ``cfg.max_new_tokens`` exceeds the policy's ``max_seq_len`` is
    yielded with its error (first, without a search). A problem's randomness depends only
    on (seed, uid), not on its batch."""
    from ttc_jax.eval.sweep import problem_int

    problems = list(problems)
    max_len = policy.cfg.max_seq_len
    limit = max_len - cfg.max_new_tokens
    # the chat template carries its own bos
    seqs = [tokenizer.encode(task.prompt_text(p), add_bos=False) for p in problems]
    lens = [len(s) for s in seqs]
    buckets, too_long = prompt_buckets(lens, multiple=prompt_multiple, limit=limit)
    for i in too_long:
        yield i, lens[i], None, too_long_error(lens[i], cfg, max_len)
    if not buckets:
        return
    spec = hf_search_tokens(tokenizer, vocab_size=policy.cfg.vocab_size)
    for width, members in buckets.items():
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            take = idx + [idx[-1]] * (batch_size - len(idx))  # filler rows repeat the last
            prompts = np.full((batch_size, width), tokenizer.pad_id, np.int32)
            for r, i in enumerate(take):
                prompts[r, :lens[i]] = seqs[i]
            res = search(policy, prm, prompts, np.asarray([lens[i] for i in take], np.int32),
                         cfg, spec, problem_ids=[problem_int(problems[i].uid) for i in take],
                         mesh=mesh)
            res = jax.tree.map(np.asarray, res)
            for b, i in enumerate(idx):
                yield i, lens[i], res, b


def iter_search_math(policy, prm, tokenizer, task: MathTask, problems: Sequence,
                     cfg: SearchConfig, *, batch_size: int = 8, prompt_multiple: int = 128,
                     mesh=None):
    """Yields (index into ``problems``, row) as each problem finishes (see
    :func:`iter_results`; a too-long problem gets an :func:`error_row`)."""
    problems = list(problems)
    for i, plen, res, b in iter_results(policy, prm, tokenizer, task, problems, cfg,
                                        batch_size=batch_size,
                                        prompt_multiple=prompt_multiple, mesh=mesh):
        if res is None:
            yield i, error_row(problems[i], cfg, plen, b)
        else:
            yield i, result_row(task, tokenizer, problems[i], res, b, cfg, plen)


def search_math(policy, prm, tokenizer, task: MathTask, problems: Sequence, cfg: SearchConfig,
                *, batch_size: int = 8, prompt_multiple: int = 128, mesh=None) -> list[dict]:
    """One JSON-ready row per problem, in the order of ``problems``: candidates, the three
    choices and both graders' verdicts (``correct_*``: ``is_equiv``; ``study_correct_*``:
    ``study_equal``); ``error`` is None or why the problem was not searched."""
    out: dict[int, dict] = dict(iter_search_math(
        policy, prm, tokenizer, task, problems, cfg, batch_size=batch_size,
        prompt_multiple=prompt_multiple, mesh=mesh))
    return [out[i] for i in range(len(problems))]


# -- resumable JSONL (mirrors eval.sweep.JsonlWriter, keyed by uid) -------------------------


class RowLog:
    """The rows of one (method, n) run in a JSONL file, appended (and fsynced) as each
    problem finishes; a restarted run skips the uids the file already holds.

    On open, a torn last line (a kill mid-write) is cut off. Every row carries
    ``run_id``, a fingerprint of the settings that change results; a file holding rows of
    other settings is refused rather than mixed.
    """

    def __init__(self, path, run_id: str):
        import os  # noqa: F401 - used by append

        self.path = Path(path)
        self.run_id = run_id
        self.rows: dict[str, dict] = {}
        if not self.path.exists():
            return
        good = 0
        with self.path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                where = f"{self.path} line {len(self.rows) + 1}"
                if not isinstance(row, dict) or "uid" not in row:
                    raise ValueError(f"{where} is not a row of this sweep (no 'uid'); move "
                                     f"the file away or pass another --out")
                if row.get("run_id") != run_id:
                    raise ValueError(
                        f"{where} was written with other settings (run_id "
                        f"{row.get('run_id')!r}, now {run_id!r}: search config, models or "
                        f"prompt format changed); move the file away or pass another --out "
                        f"to start over")
                if row["uid"] in self.rows:
                    raise ValueError(f"{where}: uid {row['uid']!r} repeats; the file was not "
                                     f"written by this sweep. Move it away or pass another "
                                     f"--out")
                self.rows[row["uid"]] = row
                good += len(line)
        if good != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good)

    def append(self, row: dict) -> None:
        import os

        if row["uid"] in self.rows:
            return
        row = {**row, "run_id": self.run_id}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write((json.dumps(row) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["uid"]] = row

    def reorder(self, uids: Sequence[str]) -> None:
        """Rewrites the file (atomically) with the rows of ``uids`` first, in that order."""
        import os

        order = [u for u in uids if u in self.rows]
        order += [u for u in self.rows if u not in set(order)]
        if order == list(self.rows):
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("wb") as f:
            f.write("".join(json.dumps(self.rows[u]) + "\n" for u in order).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.rows = {u: self.rows[u] for u in order}


def run_id(c, cfg: SearchConfig) -> str:
    """A short fingerprint of what a row's result depends on."""
    import hashlib

    from ttc_jax.config import to_dict

    key = {"search": to_dict(cfg), "policy": Path(c.policy).name,
           "prm": Path(c.prm).name if c.prm else "", "prm_kind": c.prm_kind,
           "chat_format": c.chat_format, "dtype": c.dtype, "max_seq_len": c.max_seq_len,
           "chat_date": c.get("chat_date") or ""}
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()


def summarize(rows: Sequence[dict]) -> dict:
    """Accuracies over every row (an error row counts as wrong) and the error count."""
    def mean(key):
        return float(np.mean([bool(r[key]) for r in rows])) if rows else 0.0

    return {"problems": len(rows), "errors": sum(r.get("error") is not None for r in rows),
            **{f"acc_{k}": mean(f"correct_{k}") for k in CHOICES},
            **{f"study_acc_{k}": mean(f"study_correct_{k}") for k in CHOICES},
            "oracle": mean("oracle"), "study_oracle": mean("study_oracle")}


def run_sweep(c, out_dir) -> list[dict]:
    """The whole sweep of an experiment config (``experiments/math500_llama.py``): loads
    the policy, PRM, tokenizer and problems once, then runs every (method, n) into
    ``<out_dir>/<method>_n<n>.jsonl``, one row written as each problem finishes; a
    restarted sweep skips the problems already in the files. Returns one summary dict
    per (method, n) (also written to ``summary.json``)."""
    import logging
    import time

    from ttc_jax.config import MeshConfig, from_dict
    from ttc_jax.interop.hf import load_hf_model, read_hf_config
    from ttc_jax.interop.tokenizer import HFTokenizer

    # bad inputs fail here, naming the file, before any model is loaded
    read_hf_config(c.policy)
    if c.prm:
        read_hf_config(c.prm, architectures=None)
    mesh = None
    if c.mesh.data * c.mesh.model * c.mesh.stage > 1:
        from ttc_jax.parallel import make_mesh

        mesh = make_mesh(from_dict(MeshConfig, c.mesh.to_dict()))
    tok = HFTokenizer.from_folder(c.policy)
    tok.chat_date = c.get("chat_date") or None  # Llama 3.1+ templates print a date line
    task = MathTask(c.data, tok, chat_format=c.chat_format)
    problems = task.all_problems()
    if c.levels:
        problems = [p for p in problems if p.difficulty in tuple(c.levels)]
    problems = problems[:c.num_problems] if c.num_problems else problems
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for method in c.methods:
        for n in c.budgets:
            fields = dict(c.search.to_dict(), method=method, n=n)
            fields["beam_width"] = min(fields["beam_width"], n)
            cfg = from_dict(SearchConfig, fields)
            log = RowLog(out_dir / f"{method}_n{n}.jsonl", run_id(c, cfg))
            runs.append((cfg, log, [p for p in problems if p.uid not in log.rows]))
    policy = prm = None
    summary = []
    for cfg, log, todo in runs:
        t0 = time.perf_counter()
        if todo and policy is None:
            policy = load_hf_model(c.policy, dtype=c.dtype, max_seq_len=c.max_seq_len,
                                   mesh=mesh)
            prm = load_prm(c.prm_kind, c.prm, tok, policy_format=c.chat_format,
                           policy_system=task.system_prompt, dtype=c.dtype,
                           cache_len=c.prm_cache_len, mesh=mesh) if c.prm else None
        if todo:
            for _, row in iter_search_math(policy, prm, tok, task, todo, cfg,
                                           batch_size=c.batch_size,
                                           prompt_multiple=c.get("prompt_multiple", 128),
                                           mesh=mesh):
                log.append(row)
        log.reorder([p.uid for p in problems])  # file order, whatever order they finished
        rows = [log.rows[p.uid] for p in problems]
        s = {"method": cfg.method, "n": cfg.n, **summarize(rows),
             "new_rows": len(todo), "seconds": time.perf_counter() - t0}
        logging.warning("%s", s)
        summary.append(s)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
