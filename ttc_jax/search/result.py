"""What a search returns: candidates, choice, compute spent, and a trace of its selections."""

from __future__ import annotations

import flax.struct
import jax

from ttc_jax.search.state import Compute


@flax.struct.dataclass
class Trace:
    """Every selection a tree search made, for tests and analysis: [I, P, N] each
    (I = max_steps; iterations past ``iterations`` are zero).

    Attributes:
      active: rows that generated a step in the iteration.
      score: their aggregated PRM score after the step.
      select_score: the score they were ranked by (with lookahead: after the greedy
        rollout); -inf for rows not eligible to survive.
      completed: rows that ended in the iteration (moved to the completed pool).
      hashes: uint32 fingerprint of each row's text after the step.
      parents: the row (within its problem) each new row was copied from.
      iterations: scalar, iterations run.
    """

    active: jax.Array
    score: jax.Array
    select_score: jax.Array
    completed: jax.Array
    hashes: jax.Array
    parents: jax.Array
    iterations: jax.Array


@flax.struct.dataclass
class SearchResult:
    """C candidates for each of P problems (C = N; N/M for DVTS, N for DVTS under
    ``rules='search_and_learn'``).

    Attributes:
      chosen: [P] int32 index of the chosen candidate; answer: [P] its answer id
        (``tokens.NO_ANSWER`` when none). Decode ``tokens[p, chosen[p]]`` for the text.
      tokens: [P, C, T] int32 solution tokens; lengths: [P, C].
      answers: [P, C] answer ids; scores: [P, C] aggregated PRM scores.
      step_scores: [P, C, S] per-step PRM probabilities (valid below num_steps [P, C]).
      valid: [P, C] the slot holds a candidate (beam search's completed pool may hold
        fewer than N); ended: [P, C] the candidate ended on eos or an answer line.
      compute: per-problem tokens and FLOPs (policy and PRM separately).
      trace: the tree methods' selections (None for the sampling methods).
    """

    chosen: jax.Array
    answer: jax.Array
    tokens: jax.Array
    lengths: jax.Array
    answers: jax.Array
    scores: jax.Array
    step_scores: jax.Array
    num_steps: jax.Array
    valid: jax.Array
    ended: jax.Array
    compute: Compute
    trace: Trace | None = None
