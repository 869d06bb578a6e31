"""Test-time search over MATH-style problems with Hugging Face models.

    policy = load_hf_model(policy_dir, dtype="bfloat16", mesh=mesh)
    tok = HFTokenizer.from_folder(policy_dir)
    prm = load_prm("token_prob", prm_dir, tok, ...)
    rows = search_math(policy, prm, tok, MathTask(jsonl, tok), problems, cfg)

The on-device search (``ttc_jax.search.search``) generates and scores candidates; its
answer ids read digits after an answer marker, which MATH answers (``\\boxed{...}``
LaTeX) do not fit, so the final choice is made here on the host from the candidates'
texts and PRM scores, the three ways the Hugging Face study reports: ``naive`` (highest
score), ``weighted`` (answer with the largest score sum) and ``majority`` (most frequent
answer), answers grouped by ``tasks.math.is_equiv``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttc_jax.config import SearchConfig
from ttc_jax.eval.prm_quality import vote
from ttc_jax.search import SearchTokens, encode_prompts, search_batches
from ttc_jax.tasks.math import MathTask, is_equiv

ANSWER_MARKER = "Therefore, the final answer is"


def hf_search_tokens(tokenizer, answer_marker: str = ANSWER_MARKER) -> SearchTokens:
    """SearchTokens for a byte-level BPE tokenizer (digits are single tokens)."""
    if tokenizer.step_delimiter_id is None:
        raise ValueError("the tokenizer encodes '\\n\\n' as several tokens; step-level "
                         "search needs a single-token step delimiter")
    digits = [tokenizer.token_to_id(str(d)) for d in range(10)]
    if None in digits:
        raise ValueError("the tokenizer lacks single-digit tokens '0'..'9'")
    return SearchTokens(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                        eos_id=tokenizer.eos_id, delimiter_id=tokenizer.step_delimiter_id,
                        answer_prefix=tuple(tokenizer.encode(answer_marker)),
                        digit_ids=tuple(digits))


def load_prm(kind: str, path: str, tokenizer, *, policy_format: str, policy_system: str,
             dtype: str = "bfloat16", cache_len: int = 4096, mesh=None):
    """An HF PRM by kind: ``token_prob`` (RLHFlow style) or ``classifier`` (Qwen2.5-Math)."""
    from ttc_jax.interop import prm as hf_prm

    if kind == "token_prob":
        kw = hf_prm.token_prob_prm_kwargs(tokenizer, policy_format=policy_format,
                                          policy_system=policy_system)
        return hf_prm.load_token_prob_prm(path, dtype=dtype, cache_len=cache_len, mesh=mesh,
                                          **kw)
    if kind == "classifier":
        kw = hf_prm.classifier_prm_kwargs(tokenizer, policy_format=policy_format,
                                          policy_system=policy_system)
        return hf_prm.load_classifier_prm(path, dtype=dtype, cache_len=cache_len, mesh=mesh,
                                          **kw)
    raise ValueError(f"prm kind {kind!r}; choose 'token_prob' or 'classifier'")


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


def select_answers(answers: Sequence[str | None], scores: Sequence[float]) -> dict:
    """The naive / weighted / majority choices among candidates (None if no answers).

    Equivalent answers (``is_equiv``) vote together under the spelling seen first; the
    votes are ``eval.prm_quality.vote`` (ties go to the answer seen first)."""
    out = {"naive": None, "weighted": None, "majority": None}
    if not answers:
        return out
    out["naive"] = answers[int(np.argmax(scores))]
    groups = _groups(answers)
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    canon = [None if g < 0 else answers[first[g]] for g in groups]
    out["weighted"] = vote(canon, list(scores))
    out["majority"] = vote(canon)
    return out


def search_math(policy, prm, tokenizer, task: MathTask, problems: Sequence, cfg: SearchConfig,
                *, batch_size: int = 8, prompt_multiple: int = 64) -> list[dict]:
    """One JSON-ready row per problem: candidates, the three choices and their grades."""
    # the chat template carries its own bos
    prompts, lens = encode_prompts(task, problems, prompt_multiple, tokenizer=tokenizer,
                                   add_bos=False)
    rows = []
    for i, res, b in search_batches(policy, prm, prompts, lens, cfg,
                                    hf_search_tokens(tokenizer), batch_size=batch_size):
        p = problems[i]
        valid = np.flatnonzero(res.valid[b])
        texts = [tokenizer.decode_until_eos(res.tokens[b, j, :res.lengths[b, j]])
                 for j in valid]
        answers = [task.extract_answer(t) for t in texts]
        scores = [float(res.scores[b, j]) for j in valid]
        pick = select_answers(answers, scores)
        rows.append({
            "uid": p.uid, "level": p.difficulty, "method": cfg.method, "n": cfg.n,
            "beam_width": cfg.beam_width, "aggregation": cfg.aggregation,
            "reference": p.answer,
            **{f"pred_{k}": v for k, v in pick.items()},
            **{f"correct_{k}": is_equiv(v, p.answer) for k, v in pick.items()},
            "oracle": any(is_equiv(a, p.answer) for a in answers),
            "candidate_answers": answers, "candidate_scores": scores,
            "best_text": texts[int(np.argmax(scores))] if texts else "",
            "policy_tokens": float(res.compute.policy_tokens[b]),
            "policy_flops": float(res.compute.policy_flops[b]),
            "prm_tokens": float(res.compute.prm_tokens[b]),
            "prm_flops": float(res.compute.prm_flops[b]),
        })
    return rows


def run_sweep(c, out_dir) -> list[dict]:
    """The whole sweep of an experiment config (``experiments/math500_llama.py``): loads
    the policy, PRM, tokenizer and problems once, then runs every (method, n) and writes
    ``<out_dir>/<method>_n<n>.jsonl``. Returns one summary dict per (method, n)."""
    import json
    import logging
    import time
    from pathlib import Path

    from ttc_jax.config import MeshConfig, from_dict
    from ttc_jax.interop.hf import load_hf_model
    from ttc_jax.interop.tokenizer import HFTokenizer

    mesh = None
    if c.mesh.data * c.mesh.model * c.mesh.stage > 1:
        from ttc_jax.parallel import make_mesh

        mesh = make_mesh(from_dict(MeshConfig, c.mesh.to_dict()))
    tok = HFTokenizer.from_folder(c.policy)
    task = MathTask(c.data, tok, chat_format=c.chat_format)
    problems = task.all_problems()
    if c.levels:
        problems = [p for p in problems if p.difficulty in tuple(c.levels)]
    problems = problems[:c.num_problems] if c.num_problems else problems
    policy = load_hf_model(c.policy, dtype=c.dtype, max_seq_len=c.max_seq_len, mesh=mesh)
    prm = load_prm(c.prm_kind, c.prm, tok, policy_format=c.chat_format,
                   policy_system=task.system_prompt, dtype=c.dtype, cache_len=c.prm_cache_len,
                   mesh=mesh) if c.prm else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for method in c.methods:
        for n in c.budgets:
            fields = dict(c.search.to_dict(), method=method, n=n)
            fields["beam_width"] = min(fields["beam_width"], n)
            cfg = from_dict(SearchConfig, fields)
            t0 = time.perf_counter()
            rows = search_math(policy, prm, tok, task, problems, cfg, batch_size=c.batch_size)
            secs = time.perf_counter() - t0
            with (out_dir / f"{method}_n{n}.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            s = {"method": method, "n": n, "problems": len(rows), "seconds": secs,
                 **{f"acc_{k}": float(np.mean([r[f"correct_{k}"] for r in rows]))
                    for k in ("naive", "weighted", "majority")},
                 "oracle": float(np.mean([r["oracle"] for r in rows]))}
            logging.warning("%s", s)
            summary.append(s)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
