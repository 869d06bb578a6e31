"""On-device test-time search: majority voting, best-of-N, weighted best-of-N, PRM beam
search, DVTS and lookahead, as jit-compiled kernels over P problems x N rows."""

from ttc_jax.search.aggregate import AGGREGATIONS, aggregate
from ttc_jax.search.api import (
    encode_prompts,
    problem_keys,
    search,
    search_batches,
    search_problems,
)
from ttc_jax.search.result import SearchResult, Trace
from ttc_jax.search.select import Pool, beam_parents, duplicates, dvts_parents
from ttc_jax.search.state import Compute, SearchState, init_state
from ttc_jax.search.step import generate, score_new, step
from ttc_jax.search.strategies import Kernel, Sampling, TreeSearch, make_sampler, make_strategy
from ttc_jax.search.tokens import (
    ANSWER_MOD,
    NO_ANSWER,
    SearchTokens,
    answer_id_of_text,
    answer_ids,
    row_hash,
)
from ttc_jax.search.vote import best_index, vote, vote_totals

__all__ = [
    "AGGREGATIONS", "ANSWER_MOD", "NO_ANSWER", "Compute", "Kernel", "Pool", "Sampling",
    "SearchResult", "SearchState", "SearchTokens", "Trace", "TreeSearch", "aggregate",
    "answer_id_of_text", "answer_ids", "beam_parents", "best_index", "duplicates",
    "dvts_parents", "encode_prompts", "generate", "init_state", "make_sampler",
    "make_strategy", "problem_keys", "row_hash", "score_new", "search", "search_batches",
    "search_problems",
    "step", "vote", "vote_totals",
]
