"""Search on the REAL Llama 3 and Qwen2 vocabularies: step ends, eos ids, on-device answers.

A scripted policy (its next-token distribution is a table keyed by (position, token),
built from step-formatted MATH-style solutions tokenized by the real tokenizer) writes
real text through ``search()``: rows branch where the scripts share a (position, token)
and stop at whichever eos id their script ends with. Every claim is checked against a
plain-Python reading of the decoded texts: where steps end, which eos stopped a row, the
answer ids (``last_boxed`` bytes hashed; digits read whole), and the majority / weighted
votes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.config import ModelConfig, SearchConfig
from ttc_jax.models.prm import ProcessRewardModel
from ttc_jax.search import NO_ANSWER, SearchTokens, answer_id_of_text, answer_ids, search
from ttc_jax.tasks.math import last_boxed

pytest.importorskip("tokenizers")

SOLUTIONS = [
    "## Step 1: Set up the equation\nWe have $3x = 14$.\n\n## Step 2: Solve\nDivide: "
    "$x = \\frac{14}{3}$.\n\nTherefore, the final answer is: $\\boxed{\\frac{14}{3}}$. "
    "I hope it is correct.",
    "## Step 1: Read the problem\nThe sum is $(1+2)$:\n\n## Step 2: Add\n$1+2=3$\n\n\n"
    "Therefore, the final answer is: $\\boxed{3}$. I hope it is correct.",
    "We compute the set [a, b]\n\nso $x \\in \\{1, 2\\}$)\n\n"
    "Therefore, the final answer is: $\\boxed{\\{1,2\\}}$. I hope it is correct.",
    "## Step 1: Simplify\n$\\frac{28}{6} = \\frac{14}{3}$}\n\n"
    "Therefore, the final answer is: $\\boxed{\\frac{14}{3}}$. I hope it is correct.",
    "## Step 1: Count\nThere are 123456 ways.\n\nTherefore, the final answer is: "
    "$\\boxed{123456}$. I hope it is correct.",
]
FOLDERS = {"llama": ("llama3.2-instruct", 128256), "qwen": ("qwen2.5-instruct", 151936)}


def _key(pos, prev, tok):
    """A uint32 hash of (position, previous token, token); the same on host and device."""
    return (pos * 1_000_003 + (prev + 1) * 7_919 + tok) & 0xFFFFFFFF


class ScriptedLM(nnx.Module):
    """A policy whose next-token log-probs come from a table keyed by (position, previous
    token, token).

    Positions are absolute (all prompts share one length), so scripts diverge only where
    they differ; a key the scripts never saw predicts ``fallback``. The previous token of
    a call's first token rides in the cache's ``carry``.
    """

    def __init__(self, cfg: ModelConfig, scripts, prompt_len: int, fallback: int, k: int = 4):
        table: dict[int, dict[int, float]] = {}
        for seq, prev0, weight in scripts:
            for j in range(len(seq) - 1):
                key = _key(prompt_len + j, seq[j - 1] if j else prev0, seq[j])
                nxt = table.setdefault(key, {})
                nxt[seq[j + 1]] = nxt.get(seq[j + 1], 0.0) + weight
        keys = np.array(sorted(table), np.uint32)
        ids = np.full((len(keys), k), fallback, np.int32)
        logw = np.full((len(keys), k), -1e9, np.float32)
        for r, key in enumerate(keys):
            items = sorted(table[int(key)].items())
            assert len(items) <= k
            for c, (i, w) in enumerate(items):
                ids[r, c], logw[r, c] = i, np.log(w)
        self.cfg = cfg
        self.fallback = fallback
        self.keys = nnx.Variable(jnp.asarray(keys))
        self.ids = nnx.Variable(jnp.asarray(ids))
        self.logw = nnx.Variable(jnp.asarray(logw))

    def extend(self, tokens, cache, num_new=None):
        b, t = tokens.shape
        num_new = jnp.full((b,), t, jnp.int32) if num_new is None else num_new
        pos = cache.lengths[:, None] + jnp.arange(t)[None, :]  # [B, T]
        first_prev = jnp.where(jnp.isfinite(cache.carry), cache.carry, -1).astype(jnp.int32)
        prev = jnp.concatenate([first_prev[:, None], tokens[:, :-1]], axis=1)
        u = lambda x: x.astype(jnp.uint32)
        key = u(pos) * jnp.uint32(1_000_003) + u(prev + 1) * jnp.uint32(7_919) + u(tokens)
        keys = self.keys[...]
        at = jnp.clip(jnp.searchsorted(keys, key), 0, keys.shape[0] - 1)
        found = keys[at] == key
        ids = jnp.where(found[..., None], self.ids[...][at], self.fallback)  # [B, T, K]
        logw = jnp.where(found[..., None], self.logw[...][at],
                         jnp.where(jnp.arange(ids.shape[-1]) == 0, 0.0, -1e9))
        logits = jnp.full((b, t, self.cfg.vocab_size), -1e9, jnp.float32)
        bi, ti = jnp.meshgrid(jnp.arange(b), jnp.arange(t), indexing="ij")
        logits = logits.at[bi[..., None], ti[..., None], ids].max(logw)
        last = jnp.take_along_axis(tokens, jnp.maximum(num_new - 1, 0)[:, None], axis=1)[:, 0]
        carry = jnp.where(num_new > 0, last.astype(jnp.float32), cache.carry)
        return logits, cache.replace(lengths=cache.lengths + num_new, carry=carry)


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def setup(request, real_vocab):
    from ttc_jax.interop.tokenizer import HFTokenizer

    name, model_vocab = FOLDERS[request.param]
    tok = HFTokenizer.from_folder(real_vocab[name])
    spec = SearchTokens.from_tokenizer(tok, answer="boxed", vocab_size=model_vocab,
                                       answer_marker="Therefore, the final answer is")
    eos = tok.eos_ids
    scripts = []
    for i, text in enumerate(SOLUTIONS):
        ids = tok.encode(text) + [eos[i % len(eos)]]  # every eos id ends some script
        scripts.append((ids, 1.0 + i))
    prompt = tok.encode(tok.render_chat(user="What is x?", date="01 Dec 2026"))
    # the prompt's last token starts every script: a key at the last prompt position
    lead = [([prompt[-1]] + s, prompt[-2], w) for s, w in scripts]
    cfg = ModelConfig(vocab_size=model_vocab, d_model=16, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=8, mlp_dim=16, max_seq_len=len(prompt) + 96)
    policy = ScriptedLM(cfg, lead, len(prompt) - 1, fallback=eos[0])
    prm_cfg = ModelConfig(vocab_size=model_vocab, d_model=16, num_layers=1, num_heads=2,
                          num_kv_heads=1, head_dim=8, mlp_dim=32, max_seq_len=len(prompt) + 96)
    prm = ProcessRewardModel(prm_cfg, rngs=nnx.Rngs(0))
    prm.score_w[...] = jax.random.normal(jax.random.key(1), (16,))
    return tok, spec, policy, prm, prompt, scripts


def _search(setup, **kw):
    tok, spec, policy, prm, prompt, _ = setup
    cfg = SearchConfig(**{**dict(method="majority", n=8, beam_width=2, max_steps=8,
                                 max_step_tokens=48, max_new_tokens=80, temperature=1.0,
                                 seed=3), **kw})
    prompts = np.asarray([prompt, prompt], np.int32)
    res = search(policy, prm, prompts, np.asarray([len(prompt)] * 2), cfg, spec)
    return jax.tree.map(np.asarray, res)


def _texts(tok, res, p):
    return [tok.decode_until_eos(res.tokens[p, c, :res.lengths[p, c]])
            for c in np.flatnonzero(res.valid[p])]


@pytest.fixture(scope="module")
def sampled(setup):
    return {m: _search(setup, method=m, n=16) for m in
            ("majority", "weighted_best_of_n", "best_of_n")}


def test_every_eos_id_stops_a_row(setup, sampled):
    tok = setup[0]
    res = sampled["majority"]
    eos = set(tok.eos_ids)
    seen_eos = set()
    for p in range(2):
        for c in range(16):
            row = [int(x) for x in res.tokens[p, c, :res.lengths[p, c]]]
            assert row[-1] in eos and not eos & set(row[:-1]), tok.decode(row)
            assert res.ended[p, c]
            seen_eos.add(row[-1])
    assert seen_eos == set(tok.eos_ids)  # each eos id stopped some row


def test_majority_and_weighted_votes_on_boxed_answers_match_python(setup, sampled):
    tok = setup[0]
    for method, res in sampled.items():
        for p in range(2):
            texts = _texts(tok, res, p)
            boxed = [last_boxed(t) for t in texts]
            ids = [answer_id_of_text(b, "boxed") for b in boxed]
            assert list(res.answers[p]) == ids
            assert all(i != NO_ANSWER for i in ids)
            if method == "best_of_n":
                want = ids[int(np.argmax(res.scores[p]))]
            else:
                w = np.ones(16) if method == "majority" else res.scores[p]
                totals: dict[str, float] = {}
                for b, x in zip(boxed, w):
                    totals[b] = totals.get(b, 0.0) + float(x)
                best = max(totals.values())
                want = answer_id_of_text(next(b for b in boxed if totals[b] == best), "boxed")
            assert int(res.answer[p]) == want, (method, boxed)


@pytest.mark.parametrize("method", ["beam", "dvts"])
def test_tree_search_steps_end_at_real_step_boundaries(setup, method):
    tok, spec, *_ = setup
    res = _search(setup, method=method, n=4, beam_width=2)
    delims = set(spec.delimiter_ids)
    checked = 0
    for p in range(2):
        for c in np.flatnonzero(res.valid[p]):
            toks = res.tokens[p, c, :res.lengths[p, c]]
            text = tok.decode_until_eos(toks)
            want_steps = text.count("\n\n")
            # a step score sits at every token that holds a "\n\n", then one at the end
            assert res.num_steps[p, c] == want_steps + 1, text
            checked += 1
    assert checked >= 4
    # the first step of every candidate is the first "\n\n"-holding token, not id 271 only
    merged = {i for i in delims if tok.vocab_bytes()[i] != b"\n\n"}
    assert merged & {int(t) for t in res.tokens.reshape(-1)}


def _device_answers(tok, spec, texts) -> np.ndarray:
    """answer_ids of each text's tokens (rows right-padded into one array)."""
    seqs = [tok.encode(t) for t in texts]
    arr = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, s in enumerate(seqs):
        arr[i, :len(s)] = s
    return np.asarray(answer_ids(jnp.asarray(arr), jnp.asarray([len(s) for s in seqs]),
                                 spec, spec.tables()))


def test_boxed_answer_ids_equal_the_host_twin_on_tricky_text(setup):
    tok, spec, *_ = setup
    texts = ["\\boxed{\\frac{14}{3}}$.", "so \\boxed{3} then \\boxed{\\{1,2\\}}$",
             "\\boxed{x^{2}}}", "\\boxed{\\left(1,\\frac{\\sqrt{3}}{2}\\right)}.",
             "no box here", "\\boxed{unclosed", "\\boxed{}", "\\boxed{√2 ünï}",
             "\\boxed{a}{b}", "$\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}$\n\n"]
    got = _device_answers(tok, spec, texts)
    want = [answer_id_of_text(last_boxed(t), "boxed") for t in texts]
    assert list(got) == want
    assert got[4] == got[5] == got[6] == NO_ANSWER and len(set(got[:4])) == 4


def test_multi_digit_tokens_give_whole_numbers(setup):
    tok, *_ = setup
    spec = SearchTokens.from_tokenizer(tok, answer="digits", answer_marker="A:",
                                       separator="\n\n")
    texts = ["A:123456\n\n", "A:7", "x\n\nA:0012.\n\n", "A:12a\n\n", "A:\n\n",
             "A:99999999999", "A:1\n\nA:4242"]
    got = list(_device_answers(tok, spec, texts))
    assert got == [123456, 7, 12, NO_ANSWER, NO_ANSWER, 99999999999 % 2**31, 4242]
