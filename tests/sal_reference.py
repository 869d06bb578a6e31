"""Plain-Python transcriptions of huggingface/search-and-learn's search rules (no JAX).

Each function mirrors one loop of the reference (``src/sal/search/beam_search.py``,
``diverse_verifier_tree_search.py``, ``utils.py``, ``src/sal/utils/score.py``,
``src/sal/models/reward_models.py``), written from the rules, not copied. They take what a
search recorded per iteration (texts or text fingerprints, completion flags, aggregated
scores) and return what the reference would keep, prune or return, so the jit-compiled
``rules="search_and_learn"`` kernels can be checked against them
(``tests/test_search_rules.py``). ``docs/search_and_learn.md`` states every rule.

A "row" is a dict with ``text`` (a str, or any hashable fingerprint of the text),
``completed`` (beam search: the step stopped on eos, on the token cap, or was empty) or
``stopped`` (DVTS: the same, for one of the M siblings), and ``score`` (the aggregated PRM
score the reference ranks by).
"""

from __future__ import annotations

import math

import numpy as np

STEP_SEPARATOR = "\n\n"  # the reference's stop string (include_stop_str_in_output=True)
DVTS_STOP = "boxed{"  # a DVTS subtree whose text contains this is pruned


# -- scores ------------------------------------------------------------------------------

def aggregate(scores: list[float], how: str) -> float:
    """``sal.utils.score.aggregate_scores``: min, prod or last of a step-score list."""
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "last":
        return scores[-1]
    raise ValueError(f"Invalid aggregation strategy: {how}")


def prm_steps(text: str) -> list[str]:
    """The steps the default PRM (RLHFlow ``_score_batched`` / ``_score_single``) scores:
    ``text.split("\\n\\n")``, one PRM verdict each. A text ending in the separator (every
    step of an unfinished beam does) leaves an EMPTY last step, which is scored too."""
    return text.split(STEP_SEPARATOR)


def last_score(step_scores: list[float], text: str) -> float:
    """The reference's "last" aggregation of ``text``: the verdict on its last PRM step,
    which is the empty trailing step when ``text`` ends with "\\n\\n".

    ``step_scores`` must hold one verdict per element of :func:`prm_steps` (text)."""
    steps = prm_steps(text)
    if len(step_scores) != len(steps):
        raise ValueError(f"{len(step_scores)} scores for {len(steps)} PRM steps {steps!r}")
    return step_scores[-1]


def ttc_jax_step_count(text: str) -> int:
    """How many step scores ttc_jax records for ``text``: one per separator plus one for
    a non-empty unterminated last line (no empty trailing step)."""
    steps = prm_steps(text)
    return len(steps) - (steps[-1] == "")


# -- beam search -------------------------------------------------------------------------

def top_rows(scores: list[float], k: int) -> list[int]:
    """Positions of the top ``k`` scores as ``np.argsort(scores)[-k:]`` picks them, with
    the stable sort (ties at the boundary: the LATER position survives). The reference
    uses numpy's default sort kind, whose order among equal scores is unspecified."""
    if not scores:
        return []
    return sorted(int(i) for i in np.argsort(np.asarray(scores, np.float64),
                                             kind="stable")[-k:])


def beam_next_rows(rows: list[dict], n: int, beam_width: int,
                   filter_duplicates: bool = False) -> list[int]:
    """One iteration of ``_beam_search`` after scoring: which of this iteration's ``n``
    rows (list positions) each of the next iteration's ``n`` beams is a copy of.

    Completed rows leave; with ``filter_duplicates`` only the first row of each text stays;
    the top ``n // beam_width`` by score survive (the others are pruned); the survivors,
    in LIST order, are repeated cyclically to n (``(active * repeats)[:n]``). [] when no
    row is left (the reference stops)."""
    live = [r for r, row in enumerate(rows) if not row["completed"]]
    if filter_duplicates:
        first: dict = {}
        for r in live:
            first.setdefault(rows[r]["text"], r)
        live = list(first.values())
    if not live:
        return []
    keep = top_rows([rows[r]["score"] for r in live], n // beam_width)
    survivors = [live[j] for j in keep]  # list order
    return [survivors[j % len(survivors)] for j in range(n)]


def beam_completed_pool(iterations: list[list[dict]], n: int,
                        sort_completed: bool = False) -> list[tuple[int, int]]:
    """The ``n`` beams ``_beam_search`` returns, as (iteration, row) pairs.

    Completed beams are appended in completion order (iteration, then row order); without
    ``sort_completed`` (the default and the beam-search recipes) the FIRST n are kept,
    with it the n best (a stable sort: ties keep completion order). Fewer than n are
    padded to n by repeating the kept list: slot j holds kept[j % len(kept)]."""
    done = [(i, r) for i, rows in enumerate(iterations) for r, row in enumerate(rows)
            if row["completed"]]
    if sort_completed:
        done = sorted(done, key=lambda ir: iterations[ir[0]][ir[1]]["score"],
                      reverse=True)
    done = done[:n]
    if not done:
        raise ZeroDivisionError("no completed beam (the reference divides by zero here)")
    return [done[j % len(done)] for j in range(n)]


def beam_choice(pool_scores: list[float]) -> int:
    """``beam_search``'s pred: the first pool entry with the highest aggregated score."""
    return int(np.argmax(pool_scores))


# -- DVTS --------------------------------------------------------------------------------

def dvts_stopped(text: str) -> bool:
    """``_dvts``'s text rule: a subtree whose text (after its chosen step) contains
    ``"boxed{"`` is pruned, whether or not it ended."""
    return DVTS_STOP in text


def dvts_pool(iterations: list[dict[int, list[dict]]], n_subtrees: int, m: int, *,
              stopped=dvts_stopped) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """What ``_dvts`` returns, as (iteration, subtree, sibling) triples, N = n_subtrees*M.

    ``iterations[i]`` maps each subtree expanded at iteration i to its M sibling rows:
    ``text`` (the subtree's text with that sibling's step), ``stopped`` (that step ended on
    eos / the token cap, or was empty) and ``score`` (aggregated over the text AND its
    lookahead rollout). Each expanded subtree takes its first best sibling; it is pruned
    when that sibling stopped or its text contains "boxed{". The output holds, for every
    subtree, all M siblings of its LAST expansion (finished or not), with their scores.

    Returns (pool, expanded): expanded[i] the subtrees the reference expands at iteration
    i; raises when the recording expands others."""
    pruned = [False] * n_subtrees
    last = [None] * n_subtrees
    expanded = []
    for i, subtrees in enumerate(iterations):
        live = [g for g in range(n_subtrees) if not pruned[g]]
        if not live:
            break
        if sorted(subtrees) != live:
            raise AssertionError(f"iteration {i}: recorded subtrees {sorted(subtrees)}, "
                                 f"the reference expands {live}")
        expanded.append(live)
        for g in live:
            sibs = subtrees[g]
            if len(sibs) != m:
                raise ValueError(f"subtree {g} has {len(sibs)} siblings, expected {m}")
            best = int(np.argmax([s["score"] for s in sibs]))
            last[g] = i
            if sibs[best]["stopped"] or stopped(sibs[best]["text"]):
                pruned[g] = True
    pool = [(last[g], g, j) for g in range(n_subtrees) for j in range(m)]
    return pool, expanded


def dvts_choice(pool_scores: list[float]) -> int:
    """``dvts``'s pred: the first of the N outputs with the highest aggregated score."""
    return int(np.argmax(pool_scores))


# -- lookahead ---------------------------------------------------------------------------

def lookahead_scored_text(method: str, current_text: str, next_text: str,
                          lookahead_text: str) -> str:
    """The text the PRM scores to rank a candidate step (``generate_k_steps`` returns
    ``next_text``, the sampled step, and ``lookahead_text`` = next_text + the greedy
    rollout). Beam search scores ``current_text + next_text`` (its rollout is generated,
    never scored); DVTS scores ``current_text + lookahead_text``."""
    if not lookahead_text.startswith(next_text):
        raise ValueError("lookahead_text starts with the sampled step")
    if method == "beam":
        return current_text + next_text
    if method == "dvts":
        return current_text + lookahead_text
    raise ValueError(f"method {method!r}: beam or dvts")


def lookahead_rounds(stopped_on_separator: list[bool], lookahead: int) -> int:
    """Generation rounds of one candidate in ``generate_k_steps``: round 0 (sampled) always,
    then up to ``lookahead`` greedy rounds, each only while the previous round stopped on
    the "\\n\\n" stop string (eos and the token cap both read as "EOS" there).
    ``stopped_on_separator[j]``: round j stopped on the separator. The last iteration of a
    search uses lookahead 0."""
    rounds = 1
    while rounds <= lookahead and stopped_on_separator[rounds - 1]:
        rounds += 1
    return rounds
