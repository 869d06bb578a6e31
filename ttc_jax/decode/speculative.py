"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model
proposes γ tokens, the target scores all γ+1 positions in one ``extend``, and a rejection
rule keeps the output distributed exactly as the target's.

Per iteration, for every active row (all rows in parallel, static shapes):

1. the draft samples d_0..d_{γ-1} from its processed distributions q_0..q_{γ-1};
2. the target runs ``extend([x_last, d_0, .., d_{γ-1}])`` once -> p_0..p_γ;
3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); n = number of leading
   accepts (per row);
4. one more token: from norm(max(0, p_n - q_n)) if n < γ (a rejection), else from p_γ
   (the bonus token). The row commits n + 1 tokens, cut at a stop token or the budget.

With ``Greedy`` both distributions are one-hots, a draft token is accepted iff it is the
target's argmax, and the output is the target's greedy output.

Cache invariant (between iterations): the committed sequence is x. The target cache holds
x[:-1] and ``pending`` = x[-1] is fed first in the next verification call. The draft
cache holds x[:-1] too, or one token less (``draft_lag``: when all γ drafts were accepted
the last draft token d_{γ-1} was never fed to the draft; it is fed together with the
pending token, a 2-token ``extend`` with a per-row count). Rejections rewind ``lengths``;
the slots past it hold stale keys/values that attention masks out (it reads positions
< length + new) and the next write overwrites.

``speculative_sample`` is the one-jit entry point (prefill both models, ``while_loop``);
``speculative_generate_step`` is a step generator with the contract of
``ttc_jax.search.step.generate`` (extend rows until the step delimiter / eos / answer line
/ cap) for test-time search with a draft model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.decode.sampler import check_request
from ttc_jax.decode.sampling import SamplingStrategy
from ttc_jax.models.cache import CONTIGUOUS, CacheLayout, KVCache
from ttc_jax.models.transformer import hoist_layers

_NEG_INF = -1e30


@flax.struct.dataclass
class SpecState:
    """Fixed-size buffers of R rows under speculative decoding.

    Attributes:
      target_cache: KVCache holding x[:-1] of every row (x = prompt + generated so far).
      draft_cache: KVCache holding x[:-1], or x[:-2] where ``draft_lag``.
      pending: [R] int32, x[-1] (not yet in either cache).
      draft_prev: [R] int32, x[-2] (fed to the draft first where ``draft_lag``).
      draft_lag: [R] bool.
      tokens: [R, T] int32 generated tokens (pad 0 past ``num_tokens``).
      logprobs: [R, T] float32 target log-probs (temperature 1) of the generated tokens.
      num_tokens: [R] int32; done: [R] bool.
      proposed: [R] int32 draft tokens proposed to the target; accepted: [R] int32
        accepted draft tokens; iterations: [R] int32 verification calls per row.
    """

    target_cache: KVCache
    draft_cache: KVCache
    pending: jax.Array
    draft_prev: jax.Array
    draft_lag: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    num_tokens: jax.Array
    done: jax.Array
    proposed: jax.Array
    accepted: jax.Array
    iterations: jax.Array

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]


@flax.struct.dataclass
class SpecOutput:
    """N samples for each of B prompts, plus acceptance statistics.

    tokens, logprobs: [B, N, T]; lengths, done: [B, N]; proposed, accepted, iterations:
    [B, N] (acceptance rate = accepted / proposed).
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array
    proposed: jax.Array
    accepted: jax.Array
    iterations: jax.Array


# -- the acceptance rule ----------------------------------------------------------------


def accept_and_correct(p_logp: jax.Array, q_logp: jax.Array, drafts: jax.Array,
                       keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rejection rule of speculative sampling.

    Args:
      p_logp: [R, γ+1, V] target log-probs (processed by the sampling strategy).
      q_logp: [R, γ, V] draft log-probs the drafts were sampled from.
      drafts: [R, γ] int32 draft tokens.
      keys: [R] per-row keys.
    Returns:
      n [R] int32 accepted draft tokens (leading accepts), and the next token [R]: from
      norm(max(0, p_n - q_n)) after a rejection, from p_γ when all were accepted.
    """
    r, g1, v = p_logp.shape
    g = g1 - 1
    k_u = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    k_t = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    p_d = jnp.take_along_axis(p_logp[:, :g], drafts[..., None], axis=-1)[..., 0]  # [R, γ]
    q_d = jnp.take_along_axis(q_logp, drafts[..., None], axis=-1)[..., 0]
    u = jax.vmap(lambda k: jax.random.uniform(k, (g,), minval=jnp.finfo(jnp.float32).tiny))(
        k_u)
    # accept iff u < p/q, i.e. log u < log p - log q (q(d) > 0: d was drawn from q)
    ok = jnp.log(u) < p_d - q_d
    n = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)  # [R]
    p_n = jnp.take_along_axis(jnp.exp(p_logp), n[:, None, None], axis=1)[:, 0]  # [R, V]
    q_full = jnp.concatenate([jnp.exp(q_logp), jnp.zeros((r, 1, v), q_logp.dtype)], axis=1)
    q_n = jnp.take_along_axis(q_full, n[:, None, None], axis=1)[:, 0]
    resid = jnp.maximum(p_n - q_n, 0.0)
    # p == q leaves no residual mass (then a rejection has probability 0): fall back to p.
    resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, p_n)
    nxt = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(k_t, jnp.log(resid))
    return n.astype(jnp.int32), nxt.astype(jnp.int32)


# -- one iteration ------------------------------------------------------------------------

# (state, block [R, γ+1] committed candidates) -> (stop_after [R, γ+1], ended [R, γ+1]):
# the row stops after block token j; it stops because its sequence ended (eos, ...).
StopFn = Callable[["SpecState", jax.Array], tuple[jax.Array, jax.Array]]


def _ban(logits: jax.Array, banned: tuple[int, ...]) -> jax.Array:
    if not banned:
        return logits
    return logits.at[..., jnp.asarray(banned)].set(_NEG_INF)


def _draft(draft, s: SpecState, active: jax.Array, keys: jax.Array, gamma: int,
           strategy: SamplingStrategy, banned: tuple[int, ...]):
    """γ draft tokens per row. Returns (drafts [R, γ], q_logp [R, γ, V], draft cache)."""
    first = jnp.stack([jnp.where(s.draft_lag, s.draft_prev, s.pending),
                       jnp.where(s.draft_lag, s.pending, 0)], axis=1)  # [R, 2]
    num = jnp.where(active, 1 + s.draft_lag.astype(jnp.int32), 0)
    logits, cache = draft.extend(first, s.draft_cache, num)  # [R, 2, V]
    logits = jnp.where(s.draft_lag[:, None], logits[:, 1], logits[:, 0])
    act = active.astype(jnp.int32)

    def propose(logits, i):
        q = strategy.log_probs(_ban(logits, banned))  # [R, V]
        ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        d = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(ks, q).astype(jnp.int32)
        return d, q

    d0, q0 = propose(logits, 0)

    def body(carry, i):
        d, cache = carry
        logits, cache = draft.extend(d[:, None], cache, act)
        d, q = propose(logits[:, 0], i)
        return (d, cache), (d, q)

    (_, cache), (ds, qs) = jax.lax.scan(body, (d0, cache), jnp.arange(1, gamma))
    drafts = jnp.concatenate([d0[:, None], ds.T], axis=1)  # [R, γ]
    q_logp = jnp.concatenate([q0[:, None], qs.transpose(1, 0, 2)], axis=1)  # [R, γ, V]
    return drafts, q_logp, cache


def spec_iteration(target, draft, s: SpecState, keys: jax.Array, active: jax.Array, *,
                   gamma: int, strategy: SamplingStrategy, stop_fn: StopFn,
                   budget: jax.Array, banned: tuple[int, ...] = ()):
    """One draft-verify-accept iteration for the ``active`` rows (others are unchanged).

    Args:
      keys: [R] per-row keys of this iteration.
      stop_fn: see ``StopFn`` (evaluated on the candidate block).
      budget: [R] int32 most tokens each row may still commit in this call (>= 1 where
        active).
      banned: token ids never sampled (set to -inf in both models' logits).
    Returns:
      (state, block [R, γ+1] candidates, m [R] tokens committed (block[:, :m]),
      stopped [R] bool: the row stopped on stop_fn, ended [R] bool: ...because it ended).
    """
    r, width = s.tokens.shape
    k_draft = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    k_acc = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    drafts, q_logp, draft_cache = _draft(draft, s, active, k_draft, gamma, strategy, banned)
    block_in = jnp.concatenate([s.pending[:, None], drafts], axis=1)  # [R, γ+1]
    t_logits, target_cache = target.extend(block_in, s.target_cache,
                                           jnp.where(active, gamma + 1, 0))  # [R, γ+1, V]
    p_logp = strategy.log_probs(_ban(t_logits, banned))
    n, nxt = accept_and_correct(p_logp, q_logp, drafts, k_acc)
    j = jnp.arange(gamma + 1)[None, :]
    # committed candidates: d_0..d_{n-1}, then the corrected / bonus token at index n
    block = jnp.where(j < n[:, None], jnp.pad(drafts, ((0, 0), (0, 1))), nxt[:, None])
    stop_after, ended_at = stop_fn(s, block)
    stop_after = stop_after & (j <= n[:, None])
    first_stop = jnp.min(jnp.where(stop_after, j, gamma + 1), axis=1)  # [R]
    m = jnp.minimum(jnp.minimum(n + 1, first_stop + 1), budget)
    m = jnp.where(active, jnp.maximum(m, 0), 0)
    stopped = active & (m > 0) & (first_stop + 1 == m)
    ended = stopped & jnp.take_along_axis(ended_at, jnp.minimum(first_stop, gamma)[:, None],
                                          axis=1)[:, 0]
    # write the committed tokens and their target log-probs (temperature 1)
    raw = jax.nn.log_softmax(t_logits, axis=-1)
    lp = jnp.take_along_axis(raw, block[..., None], axis=-1)[..., 0]  # [R, γ+1]
    rows = jnp.arange(r)[:, None]
    cols = jnp.where(j < m[:, None], s.num_tokens[:, None] + j, width)
    tokens = s.tokens.at[rows, cols].set(block, mode="drop")
    logprobs = s.logprobs.at[rows, cols].set(lp, mode="drop")
    # rewind: x' = x + block[:m]; target holds x'[:-1] (old length + m), draft at most
    # x + d_0..d_{γ-2} (old target length + γ): it lags by one when m - 1 == γ.
    last = jnp.take_along_axis(block, jnp.maximum(m - 1, 0)[:, None], axis=1)[:, 0]
    prev = jnp.take_along_axis(block, jnp.maximum(m - 2, 0)[:, None], axis=1)[:, 0]
    prev = jnp.where(m >= 2, prev, s.pending)
    base = s.target_cache.lengths
    moved = active & (m > 0)
    lag = moved & (m - 1 == gamma)
    s = s.replace(
        target_cache=target_cache.replace(lengths=jnp.where(moved, base + m, base)),
        draft_cache=draft_cache.replace(lengths=jnp.where(
            moved, jnp.minimum(base + m, base + gamma), s.draft_cache.lengths)),
        pending=jnp.where(moved, last, s.pending),
        draft_prev=jnp.where(lag, prev, s.draft_prev),
        draft_lag=jnp.where(moved, lag, s.draft_lag),
        tokens=tokens, logprobs=logprobs, num_tokens=s.num_tokens + m,
        proposed=s.proposed + jnp.where(active, gamma, 0),
        accepted=s.accepted + jnp.where(active, n, 0),
        iterations=s.iterations + active.astype(jnp.int32))
    return s, block, m, stopped, ended


def row_keys(rng: jax.Array, r: int) -> jax.Array:
    """[R] keys: row i gets fold_in(rng, i)."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(r))


# -- whole samples ----------------------------------------------------------------------


def spec_prefill(target, draft, prompts: jax.Array, prompt_lens: jax.Array, *, n: int,
                 capacity: int, max_new_tokens: int, gamma: int = 4,
                 layout: CacheLayout = CONTIGUOUS) -> SpecState:
    """Both caches hold prompt[:-1]; the last prompt token is pending. Rows b*n + i."""
    b, w = prompts.shape
    last = jnp.take_along_axis(prompts, (prompt_lens - 1)[:, None], axis=1)[:, 0]
    _, t_cache = target.extend(prompts, layout.init(target.cfg, b, capacity, w),
                               prompt_lens - 1)
    _, d_cache = draft.extend(prompts, layout.init(draft.cfg, b, capacity, w),
                              prompt_lens - 1)
    r = b * n
    zeros = jnp.zeros((r,), jnp.int32)
    own = capacity - w + gamma + 1  # verification writes up to gamma + 1 slots ahead
    return SpecState(
        target_cache=layout.repeat(t_cache, n, own), draft_cache=layout.repeat(d_cache, n, own),
        pending=jnp.repeat(last, n), draft_prev=zeros, draft_lag=jnp.zeros((r,), bool),
        tokens=jnp.zeros((r, max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((r, max_new_tokens), jnp.float32), num_tokens=zeros,
        done=jnp.zeros((r,), bool), proposed=zeros, accepted=zeros, iterations=zeros)


def spec_decode(target, draft, s: SpecState, rng: jax.Array, *, gamma: int,
                strategy: SamplingStrategy, stop_tokens: Sequence[int]) -> SpecState:
    """Iterates until every row has a stop token or a full buffer (row r's iteration i
    uses ``fold_in(fold_in(rng, r), i)``)."""
    width = s.tokens.shape[1]
    stops = jnp.asarray(tuple(stop_tokens), jnp.int32)

    def stop_fn(s, block):
        hit = jnp.isin(block, stops)
        return hit, hit

    keys = row_keys(rng, s.rows)

    def cond(c):
        return ~jnp.all(c[1].done)

    def body(c):
        i, s = c
        active = ~s.done
        ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        s, _, _, stopped, _ = spec_iteration(target, draft, s, ks, active, gamma=gamma,
                                             strategy=strategy, stop_fn=stop_fn,
                                             budget=width - s.num_tokens)
        return i + 1, s.replace(done=s.done | stopped | (s.num_tokens >= width))

    _, s = jax.lax.while_loop(cond, body, (jnp.int32(0), s))
    return s


@functools.partial(jax.jit, static_argnames=("t_def", "d_def", "n", "capacity",
                                             "max_new_tokens", "gamma", "strategy",
                                             "stop_tokens", "layout"))
def _spec_jit(t_def, t_params, d_def, d_params, prompts, prompt_lens, rng, *, n, capacity,
              max_new_tokens, gamma, strategy, stop_tokens, layout=CONTIGUOUS):
    target, draft = nnx.merge(t_def, t_params), nnx.merge(d_def, d_params)
    hoist_layers(target, draft)  # per-layer params sliced once, outside the loops
    s = spec_prefill(target, draft, prompts, prompt_lens, n=n, capacity=capacity,
                     max_new_tokens=max_new_tokens, gamma=gamma, layout=layout)
    s = spec_decode(target, draft, s, rng, gamma=gamma, strategy=strategy,
                    stop_tokens=stop_tokens)
    b = prompts.shape[0]
    last = jnp.take_along_axis(s.tokens, jnp.maximum(s.num_tokens - 1, 0)[:, None],
                               axis=1)[:, 0]
    ended = (s.num_tokens > 0) & jnp.isin(last, jnp.asarray(stop_tokens, jnp.int32))
    shape = lambda x: x.reshape(b, n, *x.shape[1:])
    return SpecOutput(tokens=shape(s.tokens), logprobs=shape(s.logprobs),
                      lengths=shape(s.num_tokens), done=shape(ended),
                      proposed=shape(s.proposed), accepted=shape(s.accepted),
                      iterations=shape(s.iterations))


def speculative_sample(target, draft, prompts, *, n: int, rng: jax.Array, max_new_tokens: int,
                       strategy: SamplingStrategy, stop_tokens: Sequence[int], gamma: int = 4,
                       capacity: int | None = None, pad_id: int = 0,
                       layout: CacheLayout = CONTIGUOUS) -> SpecOutput:
    """Like ``ttc_jax.decode.sample`` (same arguments, same output distribution) with a
    draft model proposing ``gamma`` tokens per target call. One jit call.

    The draft must share the target's vocabulary; ``capacity`` (default: the target's
    max_seq_len) must hold prompt + max_new_tokens (verification writes up to γ slots past
    the last committed token; writes past the capacity are dropped, and those tokens can
    never be committed). ``layout=CacheLayout(paged=True)``: paged caches for both models.
    """
    if gamma < 1:
        raise ValueError(f"gamma={gamma} draft tokens per iteration must be >= 1")
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"draft vocab_size={draft.cfg.vocab_size} != target vocab_size="
                         f"{target.cfg.vocab_size}; the draft must share the tokenizer")
    tokens, lens, capacity = check_request(prompts, n=n, max_new_tokens=max_new_tokens,
                                           strategy=strategy, capacity=capacity,
                                           max_seq_len=target.cfg.max_seq_len, pad_id=pad_id)
    t_def, t_params = nnx.split(target)
    d_def, d_params = nnx.split(draft)
    return _spec_jit(t_def, t_params, d_def, d_params, jnp.asarray(tokens), jnp.asarray(lens),
                     rng, n=n, capacity=capacity, max_new_tokens=max_new_tokens, gamma=gamma,
                     strategy=strategy, stop_tokens=tuple(int(t) for t in stop_tokens),
                     layout=layout)


def acceptance_rate(out: SpecOutput) -> float:
    """Accepted / proposed draft tokens over all rows."""
    return float(np.sum(out.accepted) / max(1, np.sum(out.proposed)))


# -- a step generator for test-time search ------------------------------------------------


def speculative_generate_step(policy, draft, s, draft_cache: KVCache, prompt_last: jax.Array,
                              keys: jax.Array | None, active: jax.Array, *,
                              strategy: SamplingStrategy | None, spec, cap,
                              stop_at_delimiter, gamma: int = 4):
    """``ttc_jax.search.step.generate`` with a draft model: same contract, same stopping
    rules (step delimiter, eos, a completed answer line, the per-step cap, a full buffer)
    and the same output distribution; rows advance up to γ+1 tokens per target call.

    Args:
      policy: the target; draft: the draft model (same vocabulary).
      s: a ``ttc_jax.search.state.SearchState`` (its cache holds every token of each row
        and ``logits`` predict the next one).
      draft_cache: the draft's KVCache over the same R rows holding the same tokens
        (prefill it with the prompts next to the policy's and reorder it with the same
        ``gather`` as the SearchState).
      prompt_last: [R] int32 each row's last prompt token (the last token of a row that has
        generated nothing yet).
      keys: [R] per-row keys of this step (iteration i uses fold_in(key, i)); None for
        greedy. strategy: the sampler, or None for greedy.
      cap: at most this many tokens per row in this call; stop_at_delimiter: as generate.
    Returns:
      (state, draft_cache, start [R]): ``start`` is each row's ``num_tokens`` before the
      step. The policy's compute counters add the committed tokens (``policy_tokens``)
      and the FLOPs of every verified position of the target plus every draft position
      (``policy_flops``).
    """
    from ttc_jax.decode.sampling import Greedy
    from ttc_jax.search.state import flops_line, per_problem

    strategy = Greedy() if strategy is None else strategy
    r, width = s.tokens.shape
    p = s.compute.policy_tokens.shape[0]
    if keys is None:
        keys = row_keys(jax.random.key(0), r)
    start = s.num_tokens
    last = jnp.take_along_axis(s.tokens, jnp.maximum(s.num_tokens - 1, 0)[:, None],
                               axis=1)[:, 0]
    last = jnp.where(s.num_tokens > 0, last, prompt_last)
    running = active & ~s.done
    # Both caches give back their last token: it becomes the pending one.
    t_cache = s.cache.replace(lengths=s.cache.lengths - 1)
    d_cache = draft_cache.replace(lengths=draft_cache.lengths - 1)
    zeros = jnp.zeros((r,), jnp.int32)
    ss = SpecState(target_cache=t_cache, draft_cache=d_cache, pending=last, draft_prev=zeros,
                   draft_lag=jnp.zeros((r,), bool), tokens=s.tokens,
                   logprobs=jnp.zeros(s.tokens.shape, jnp.float32), num_tokens=s.num_tokens,
                   done=s.done, proposed=zeros, accepted=zeros, iterations=zeros)
    prefix = jnp.asarray(spec.answer_prefix, jnp.int32)
    k = len(spec.answer_prefix)
    t_base, t_slope = flops_line(policy.cfg)
    d_base, d_slope = flops_line(draft.cfg)
    j = jnp.arange(gamma + 1)[None, :]

    def line_starts(line_start, num_tokens, block):
        """[R, γ+1]: where the line of block token j starts (after the last delimiter
        before it, in the block or earlier)."""
        pos = num_tokens[:, None] + j
        after = jnp.where(s.vocab.lookup(block), pos + 1, 0)
        before = jnp.pad(jax.lax.cummax(after, axis=1)[:, :-1], ((0, 0), (1, 0)))
        return jnp.maximum(line_start[:, None], before), pos

    def make_stop_fn(line_start):
        def stop_fn(st, block):
            ls, pos = line_starts(line_start, st.num_tokens, block)
            rows = jnp.arange(r)[:, None]
            tmp = st.tokens.at[rows, pos].set(block, mode="drop")
            idx = jnp.clip(ls[..., None] + jnp.arange(k), 0, width - 1)  # [R, γ+1, k]
            line = jnp.take_along_axis(tmp[:, None, :], idx, axis=2)
            answer_line = jnp.all(line == prefix, axis=-1) & (ls + k < pos + 1)
            is_delim = s.vocab.lookup(block)
            ended = spec.is_eos(block) | (is_delim & answer_line)
            return ended | (is_delim & stop_at_delimiter), ended
        return stop_fn

    def cond(c):
        i, _, _, _, _, running = c
        return jnp.any(running) & (i < width)

    def body(c):
        i, ss, line_start, compute, ended_rows, running = c
        made = ss.num_tokens - start
        budget = jnp.minimum(width - ss.num_tokens, cap - made)
        go = running & (budget > 0)
        ks = jax.vmap(lambda kk: jax.random.fold_in(kk, i))(keys)
        ctx = ss.target_cache.lengths.astype(jnp.float32)
        ss, block, m, stopped, ended = spec_iteration(
            policy, draft, ss, ks, go, gamma=gamma, strategy=strategy,
            stop_fn=make_stop_fn(line_start), budget=jnp.maximum(budget, 1),
            banned=spec.banned())
        ls, pos = line_starts(line_start, ss.num_tokens - m, block)
        committed = j < m[:, None]
        last_delim = jnp.max(jnp.where(committed & s.vocab.lookup(block), pos + 1, 0),
                             axis=1)
        line_start = jnp.maximum(line_start, last_delim)
        f = go.astype(jnp.float32)
        g = float(gamma)
        # verified positions ctx+1..ctx+γ+1 (target) and drafted ones (draft, ~same ctx)
        flops = f * ((g + 1) * t_base + t_slope * ((g + 1) * ctx + (g + 1) * (g + 2) / 2)
                     + g * d_base + d_slope * (g * ctx + g * (g + 1) / 2))
        compute = compute.replace(
            policy_tokens=compute.policy_tokens + per_problem(m.astype(jnp.float32), p),
            policy_flops=compute.policy_flops + per_problem(flops, p))
        full = go & (ss.num_tokens >= width)
        ss = ss.replace(done=ss.done | (ended & go) | full)
        keep = go & ~stopped & ~full & (ss.num_tokens - start < cap)
        return i + 1, ss, line_start, compute, ended_rows | (ended & go), keep

    _, ss, line_start, compute, ended_rows, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), ss, s.line_start, s.compute, s.ended, running))
    # Give both caches their pending token back (the SearchState invariant).
    logits, t_cache = policy.extend(ss.pending[:, None], ss.target_cache,
                                    jnp.ones((r,), jnp.int32))
    first = jnp.stack([jnp.where(ss.draft_lag, ss.draft_prev, ss.pending),
                       jnp.where(ss.draft_lag, ss.pending, 0)], axis=1)
    _, d_cache = draft.extend(first, ss.draft_cache, 1 + ss.draft_lag.astype(jnp.int32))
    touched = ss.num_tokens > start
    s = s.replace(cache=t_cache, logits=jnp.where(touched[:, None], logits[:, 0], s.logits),
                  tokens=ss.tokens, num_tokens=ss.num_tokens, line_start=line_start,
                  done=ss.done, ended=ended_rows, compute=compute)
    return s, d_cache, start
