"""The search strategies: frozen dataclasses (jit-static) with one method, ``run``.

Each ``run(policy, prm, state, keys, kernel)`` takes the prefilled :class:`SearchState`
over P problems x N rows and returns a :class:`SearchResult`; the tree methods are one
``lax.while_loop`` over steps. They differ only in how rows are selected and expanded
between calls of the shared step kernel (``ttc_jax.search.step``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.config import SearchConfig
from ttc_jax.decode.sampling import SamplingStrategy, Temperature, TopP
from ttc_jax.search.aggregate import aggregate
from ttc_jax.search.result import SearchResult, Trace
from ttc_jax.search.select import (
    Pool,
    beam_parents,
    beam_parents_in_row_order,
    duplicates,
    dvts_parents,
    dvts_parents_halting,
)
from ttc_jax.search.state import SearchState
from ttc_jax.search.step import fold_rows, step
from ttc_jax.search.tokens import _BOX_WORD, _LBRACE, SearchTokens, answer_ids, row_hash
from ttc_jax.search.vote import best_index, vote


@dataclasses.dataclass(frozen=True)
class Kernel:
    """How steps are generated: the sampler, the task's token ids, the per-step cap, and the
    PRM scoring block width (``SearchConfig.prm_block_tokens``; default the step cap)."""

    sampler: SamplingStrategy
    spec: SearchTokens
    step_tokens: int
    score_tokens: int = 0  # PRM scoring block (0: step_tokens)

    @property
    def score_width(self) -> int:
        return self.score_tokens or self.step_tokens


def _rows(x: jax.Array, p: int) -> jax.Array:
    """[R, ...] -> [P, N, ...]."""
    return x.reshape((p, -1) + x.shape[1:])


def _finish(p: int, tokens, lengths, step_scores, num_steps, ended, valid, scores, chosen,
            spec: SearchTokens, vocab, compute, trace=None) -> SearchResult:
    answers = answer_ids(tokens.reshape(-1, tokens.shape[-1]), lengths.reshape(-1),
                         spec, vocab).reshape(lengths.shape)
    answers = jnp.where(valid, answers, -1)
    answer = jnp.take_along_axis(answers, chosen[:, None], axis=1)[:, 0]
    return SearchResult(chosen=chosen, answer=answer, tokens=tokens, lengths=lengths,
                        answers=answers, scores=scores, step_scores=step_scores,
                        num_steps=num_steps, valid=valid, ended=ended, compute=compute,
                        trace=trace)


def _empty_step(rules: str, prm) -> bool:
    """Whether a search scores search-and-learn's empty trailing step: under its rules,
    with a PRM that can (the HF adapters' ``empty_step_logits``; native PRMs cannot)."""
    return rules == "search_and_learn" and hasattr(prm, "empty_step_logits")


def _with_empty_slot(s: SearchState, empty: bool) -> SearchState:
    """Gives ``s`` its ``empty_score`` field (-1: none yet) before a loop carries it."""
    if not empty or s.empty_score is not None:
        return s
    return s.replace(empty_score=jnp.full((s.rows,), -1.0, jnp.float32))


def _aggregate(s: SearchState, how: str, empty: bool) -> jax.Array:
    """[R] aggregated scores; with ``empty`` the empty trailing step counts as one more."""
    return aggregate(s.step_scores, s.num_steps, how, s.empty_score if empty else None)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """N whole solutions per problem, then one rule: 'majority' (vote over answers),
    'best_of_n' (highest aggregated PRM score) or 'weighted_best_of_n' (sum of aggregated
    scores per distinct answer, argmax).

    ``rules='search_and_learn'`` changes only the scores, with a PRM that has
    ``empty_step_logits``: a solution whose last real token ends a step (cut by the cap
    right after a step end, or a step end then eos) gets the empty trailing step's verdict
    as one more step (docs/search_and_learn.md)."""

    n: int
    rule: str
    aggregation: str = "last"
    rules: str = "ttc_jax"

    def run(self, policy, prm, s: SearchState, keys, kernel: Kernel) -> SearchResult:
        p, t = s.compute.policy_tokens.shape[0], s.tokens.shape[1]
        empty = _empty_step(self.rules, prm)
        s = _with_empty_slot(s, empty)
        active = jnp.ones((s.rows,), bool)
        s = step(policy, prm, s, fold_rows(keys, 0), active, strategy=kernel.sampler,
                 spec=kernel.spec, cap=t, stop_at_delimiter=False, width=kernel.score_width,
                 empty_step=empty)
        agg = _rows(_aggregate(s, self.aggregation, empty), p)
        tokens, lengths = _rows(s.tokens, p), _rows(s.num_tokens, p)
        answers = answer_ids(s.tokens, s.num_tokens, kernel.spec, s.vocab).reshape(p, -1)
        if self.rule == "majority":
            _, chosen = vote(answers)
        elif self.rule == "best_of_n":
            chosen = best_index(agg)
        elif self.rule == "weighted_best_of_n":
            _, chosen = vote(answers, agg)
        else:
            raise ValueError(f"unknown rule {self.rule!r}; use majority, best_of_n or "
                             f"weighted_best_of_n")
        return _finish(p, tokens, lengths, _rows(s.step_scores, p), _rows(s.num_steps, p),
                       _rows(s.ended, p), jnp.ones(lengths.shape, bool), agg, chosen,
                       kernel.spec, s.vocab, s.compute)


def _lookahead(policy, prm, s: SearchState, eligible, k: int, kernel: Kernel,
               aggregation: str) -> tuple[jax.Array, SearchState]:
    """Rolls eligible rows ``k`` steps further greedily, scoring each step, and returns
    ([R] aggregated score over real + lookahead steps, s with the rollout's compute added).
    The rollout itself is thrown away."""
    def body(_, la):
        return step(policy, prm, la, None, eligible, strategy=None, spec=kernel.spec,
                    cap=kernel.step_tokens, stop_at_delimiter=True, width=kernel.score_width)

    la = jax.lax.fori_loop(0, k, body, s)
    return aggregate(la.step_scores, la.num_steps, aggregation), s.replace(compute=la.compute)


# -- search-and-learn rules (docs/search_and_learn.md) ------------------------------------

def _last_token(s: SearchState) -> jax.Array:
    return jnp.take_along_axis(s.tokens, jnp.maximum(s.num_tokens - 1, 0)[:, None],
                               axis=1)[:, 0]


def _eos_only(spec: SearchTokens) -> SearchTokens:
    """The spec the generation kernel gets under search-and-learn rules: an answer prefix
    no token matches, so a row ends on eos only (never on a completed answer line)."""
    return dataclasses.replace(spec, answer_prefix=(-1,))


def _sal_rollout(policy, prm, s: SearchState, rows, k: int, kernel: Kernel,
                 aggregation: str, empty: bool = False) -> tuple[jax.Array, SearchState]:
    """search-and-learn's lookahead (``generate_k_steps``): ``rows`` roll ``k`` greedy steps
    further, each row only while its previous step ended on a step end (eos and the token
    cap end its rollout). With a PRM (DVTS) the rollout is scored and the [R] aggregated
    score returned (with ``empty``, the empty step after the rollout's text counts); with
    ``prm=None`` (beam search, which never scores its lookahead) only the compute is. The
    rollout's tokens are thrown away."""
    spec = _eos_only(kernel.spec)

    def body(_, carry):
        la, go = carry
        la = step(policy, prm, la, None, go, strategy=None, spec=spec,
                  cap=kernel.step_tokens, stop_at_delimiter=True, width=kernel.score_width,
                  empty_step=empty and prm is not None)
        return la, go & ~la.done & la.vocab.lookup(_last_token(la))

    la, _ = jax.lax.fori_loop(0, k, body, (s, rows))
    score = None if prm is None else _aggregate(la, aggregation, empty)
    return score, s.replace(compute=la.compute)


def box_opened(tokens: jax.Array, lengths: jax.Array, spec: SearchTokens,
               vocab) -> jax.Array:
    """[R] bool: the row's text holds ``boxed{`` (DVTS's stop rule), matched as the MATH
    answer reader matches a box opening: a token ending in "boxed" followed by a token
    starting with "{". Specs without box answers (digits) never match."""
    if spec.answer != "boxed":
        return jnp.zeros(tokens.shape[:1], bool)
    ids = jnp.clip(tokens, 0, vocab.answer.shape[0] - 1)
    word = vocab.answer[:, _BOX_WORD][ids] == 1  # [R, T]
    brace = vocab.answer[:, _LBRACE][ids] == 1
    inside = jnp.arange(tokens.shape[1])[None, 1:] < lengths[:, None]
    return jnp.any(word[:, :-1] & brace[:, 1:] & inside, axis=1)


def _empty_trace(steps: int, r: int) -> Trace:
    zf = jnp.zeros((steps, r), jnp.float32)
    zb = jnp.zeros((steps, r), bool)
    return Trace(active=zb, score=zf, select_score=zf, completed=zb,
                 hashes=jnp.zeros((steps, r), jnp.uint32),
                 parents=jnp.zeros((steps, r), jnp.int32), iterations=jnp.int32(0))


def _record(tr: Trace, i, **rows) -> Trace:
    return tr.replace(iterations=i + 1,
                      **{k: getattr(tr, k).at[i].set(v.reshape(-1)) for k, v in rows.items()})


def _trace_rows(tr: Trace, p: int) -> Trace:
    return jax.tree.map(lambda x: x.reshape(x.shape[0], p, -1) if x.ndim == 2 else x, tr)


@dataclasses.dataclass(frozen=True)
class TreeSearch:
    """PRM-guided step-level search.

    kind='beam' (ttc_jax's rules; ``rules`` below gives the reference's): each iteration
    every active beam generates one step and the PRM scores it; beams that ended go to the
    completed pool (best N kept); the top N/M remaining beams survive and each is expanded
    into M children.
    Stops when no beam is active or after ``max_steps`` iterations, the last of which
    writes every active beam to its end. The chosen candidate is the completed beam with
    the highest aggregated score.

    kind='dvts': N/M independent subtrees of M rows; each iteration every row of a live
    subtree generates one step and the subtree keeps its best row (copied to all M
    slots); a subtree whose best row ended is finished. Returns one finished candidate per
    subtree.

    ``lookahead`` > 0 ranks a candidate step by the aggregated score after rolling ``k``
    more steps out greedily (those tokens are then discarded).

    ``rules='search_and_learn'`` follows huggingface/search-and-learn instead
    (docs/search_and_learn.md): a row ends on eos only, and a step cut by the per-step cap
    (the last iteration's too) finishes it. Beam search keeps the first N beams to finish,
    in completion order, padded to N by repeating them; survivors fill the N rows in row
    order; the lookahead rollout is generated but never scored. DVTS stops a subtree whose
    chosen row finished or opened a ``boxed{``, and returns all N rows: the M siblings of
    each subtree's last expansion, scored with their lookahead. With an HF PRM adapter
    (``empty_step_logits``) a row whose last real token ends a step is scored as the
    reference scores ``text.split("\\n\\n")``: its empty trailing step counts as one more
    step (its verdict is ``last``), in the beam ranking, the pool, DVTS's choice and its
    returned scores.
    """

    kind: str
    n: int
    beam_width: int
    max_steps: int
    aggregation: str = "last"
    lookahead: int = 0
    filter_duplicates: bool = False
    rules: str = "ttc_jax"

    def run(self, policy, prm, s: SearchState, keys, kernel: Kernel) -> SearchResult:
        if prm is None:
            raise ValueError(f"{self.kind} search needs a PRM; pass prm=load_model('prm')")
        p, t, steps = s.compute.policy_tokens.shape[0], s.tokens.shape[1], s.step_scores.shape[1]
        n, m, c = self.n, self.beam_width, kernel.step_tokens
        if self.rules == "search_and_learn":
            return self._run_sal(policy, prm, s, keys, kernel)
        carry = (jnp.int32(0), s, Pool.empty(p, n, t, steps), _empty_trace(self.max_steps, p * n),
                 jnp.ones((p,), bool))

        def cond(carry):
            i, _, _, _, live = carry
            return (i < self.max_steps) & jnp.any(live)

        def body(carry):
            i, s, pool, tr, live = carry
            last = i == self.max_steps - 1
            active = ~s.done & jnp.repeat(live, n)
            s = step(policy, prm, s, fold_rows(keys, i), active, strategy=kernel.sampler,
                     spec=kernel.spec, cap=jnp.where(last, t, c), stop_at_delimiter=~last,
                     width=kernel.score_width)
            agg = aggregate(s.step_scores, s.num_steps, self.aggregation)  # [R]
            completed = active & (s.done | last)
            eligible = active & ~completed
            hashes = row_hash(s.tokens, s.num_tokens)
            if self.filter_duplicates:
                eligible = eligible & ~duplicates(_rows(hashes, p), _rows(s.num_tokens, p),
                                                  _rows(eligible, p)).reshape(-1)
            sel = agg
            if self.lookahead:
                sel, s = _lookahead(policy, prm, s, eligible, self.lookahead, kernel,
                                    self.aggregation)
            if self.kind == "beam":
                sel = jnp.where(eligible, sel, -jnp.inf)
                pool = pool.merge(s, _rows(completed, p), _rows(agg, p))
                parents, n_surv = beam_parents(_rows(sel, p), _rows(eligible, p), n // m)
                live = n_surv > 0
            else:
                # Finished rows compete with their final score; live ones by ``sel``.
                sel = jnp.where(active, jnp.where(completed, agg, sel), -jnp.inf)
                parents = dvts_parents(_rows(sel, p), _rows(active, p), m)
            rows = (jnp.arange(p, dtype=jnp.int32)[:, None] * n + parents).reshape(-1)
            s = s.gather(rows)
            if self.kind == "dvts":
                live = ~jnp.all(_rows(s.done, p), axis=1)
            tr = _record(tr, i, active=active, score=agg, select_score=sel,
                         completed=completed, hashes=hashes, parents=parents)
            return i + 1, s, pool, tr, live

        _, s, pool, tr, _ = jax.lax.while_loop(cond, body, carry)
        tr = _trace_rows(tr, p)
        if self.kind == "beam":
            chosen = best_index(pool.score, pool.valid)
            return _finish(p, pool.tokens, pool.num_tokens, pool.step_scores, pool.num_steps,
                           pool.ended, pool.valid, pool.score, chosen, kernel.spec,
                           s.vocab, s.compute, tr)
        g = n // m
        first = lambda x: _rows(x, p).reshape((p, g, m) + x.shape[1:])[:, :, 0]
        agg = first(aggregate(s.step_scores, s.num_steps, self.aggregation))
        chosen = best_index(agg)
        return _finish(p, first(s.tokens), first(s.num_tokens), first(s.step_scores),
                       first(s.num_steps), first(s.ended), jnp.ones((p, g), bool), agg,
                       chosen, kernel.spec, s.vocab, s.compute, tr)

    def _run_sal(self, policy, prm, s: SearchState, keys, kernel: Kernel) -> SearchResult:
        """``run`` under search-and-learn rules (see the class docstring)."""
        p, t, steps = s.compute.policy_tokens.shape[0], s.tokens.shape[1], s.step_scores.shape[1]
        n, m, c = self.n, self.beam_width, kernel.step_tokens
        r = p * n
        gen_spec = _eos_only(kernel.spec)
        empty = _empty_step(self.rules, prm)
        s = _with_empty_slot(s, empty)
        # halted: the row's DVTS subtree has stopped; final: each row's score at its last
        # expansion (DVTS returns every row with it)
        carry = (jnp.int32(0), s, Pool.empty(p, n, t, steps), _empty_trace(self.max_steps, r),
                 jnp.ones((p,), bool), jnp.zeros((r,), bool), jnp.zeros((r,), jnp.float32))

        def cond(carry):
            i, _, _, _, live = carry[:5]
            return (i < self.max_steps) & jnp.any(live)

        def body(carry):
            i, s, pool, tr, live, halted, final = carry
            last = i == self.max_steps - 1
            active = ~s.done & ~halted & jnp.repeat(live, n)
            # every step (the last one too) at most c tokens; the last writes past step ends
            s = step(policy, prm, s, fold_rows(keys, i), active, strategy=kernel.sampler,
                     spec=gen_spec, cap=c, stop_at_delimiter=~last, width=kernel.score_width,
                     empty_step=empty)
            agg = _aggregate(s, self.aggregation, empty)  # [R]
            cut = ~s.vocab.lookup(_last_token(s))  # the step did not end on a step end
            completed = active & (s.done | last | cut)
            eligible = active & ~completed
            hashes = row_hash(s.tokens, s.num_tokens)
            if self.kind == "beam":
                if self.filter_duplicates:
                    eligible = eligible & ~duplicates(_rows(hashes, p), _rows(s.num_tokens, p),
                                                      _rows(eligible, p)).reshape(-1)
                if self.lookahead:  # generated for every unfinished beam, never scored
                    _, s = _sal_rollout(policy, None, s, active & ~completed, self.lookahead,
                                        kernel, self.aggregation)
                sel = jnp.where(eligible, agg, -jnp.inf)
                pool = pool.append(s, _rows(completed, p), _rows(agg, p))
                parents, n_surv = beam_parents_in_row_order(_rows(sel, p), _rows(eligible, p),
                                                            n // m)
                live = n_surv > 0
                halts = jnp.zeros((p, n), bool)
            else:
                sel = agg
                if self.lookahead:  # scored: the text plus its rollout
                    sel, s = _sal_rollout(policy, prm, s, eligible, self.lookahead, kernel,
                                          self.aggregation, empty)
                sel = jnp.where(active, jnp.where(completed, agg, sel), -jnp.inf)
                stops = completed | box_opened(s.tokens, s.num_tokens, kernel.spec, s.vocab)
                parents, halts = dvts_parents_halting(_rows(sel, p), _rows(active, p),
                                                      _rows(stops, p), m)
                final = jnp.where(active, sel, final)
            rows = (jnp.arange(p, dtype=jnp.int32)[:, None] * n + parents).reshape(-1)
            s = s.gather(rows)
            final = final[rows]
            if self.kind == "dvts":
                halted = halted | halts.reshape(-1)
                live = ~jnp.all(_rows(halted | s.done, p), axis=1)
            tr = _record(tr, i, active=active, score=agg, select_score=sel,
                         completed=completed, hashes=hashes, parents=parents)
            return i + 1, s, pool, tr, live, halted, final

        _, s, pool, tr, _, _, final = jax.lax.while_loop(cond, body, carry)
        tr = _trace_rows(tr, p)
        if self.kind == "beam":
            pool = pool.repeat_to_full()
            chosen = best_index(pool.score, pool.valid)
            return _finish(p, pool.tokens, pool.num_tokens, pool.step_scores, pool.num_steps,
                           pool.ended, pool.valid, pool.score, chosen, kernel.spec,
                           s.vocab, s.compute, tr)
        scores = _rows(final, p)
        return _finish(p, _rows(s.tokens, p), _rows(s.num_tokens, p), _rows(s.step_scores, p),
                       _rows(s.num_steps, p), _rows(s.ended, p), jnp.ones((p, n), bool),
                       scores, best_index(scores), kernel.spec, s.vocab, s.compute, tr)


def make_strategy(cfg: SearchConfig) -> Sampling | TreeSearch:
    """The strategy object of a SearchConfig (hashable: one compiled program per value)."""
    if cfg.method in ("majority", "best_of_n", "weighted_best_of_n"):
        return Sampling(n=cfg.n, rule=cfg.method, aggregation=cfg.aggregation,
                        rules=cfg.rules)
    kind = "dvts" if cfg.method == "dvts" else "beam"
    return TreeSearch(kind=kind, n=cfg.n, beam_width=cfg.beam_width, max_steps=cfg.max_steps,
                      aggregation=cfg.aggregation, lookahead=cfg.lookahead,
                      filter_duplicates=cfg.filter_duplicates, rules=cfg.rules)


def make_sampler(cfg: SearchConfig) -> SamplingStrategy:
    if cfg.top_p < 1.0:
        return TopP(cfg.top_p, cfg.temperature)
    return Temperature(cfg.temperature)
