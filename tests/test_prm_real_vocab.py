"""The HF PRM adapters on the REAL vocabularies (Llama 3.2 policy / Llama 3.1 RLHFlow PRM,
Qwen2.5 policy / Qwen2.5-Math-PRM) against the references' own text construction.

The references build the PRM input from the decoded solution: RLHFlow
(search-and-learn ``RLHFlow._score_single``) splits it with ``text.split("\\n\\n")`` into
user turns (``question + " " + step0``, then one step each) answered by an assistant "+",
rendered by the PRM tokenizer's chat template; Qwen2.5-Math-PRM (its model card) writes
system + user + assistant ``"<extra_0>".join(steps) + "<extra_0>"``. The adapter's
token stream (``prm_token_stream``, the code its jitted ``extend`` runs) must equal those
tokens, with scores read where the references read them, whatever the block width.
"""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import save_classifier_prm
from ttc_jax.interop import prm as hp
from ttc_jax.interop.tokenizer import HFTokenizer
from ttc_jax.models.cache import KVCache

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATE = "26 Jul 2024"
POLICY_SYSTEM = ("Solve the following math problem efficiently and clearly:\n\n- For simple "
                 "problems (2 steps or fewer):\nProvide a concise solution with minimal "
                 "explanation.\n\nRegardless of the approach, always conclude with:\n\n"
                 "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.")
END = "Therefore, the final answer is: $\\boxed{%s}$. I hope it is correct."
CASES = [  # (question, solution): steps end in ".", ":", "$", ")", "}", "\n\n\n", ...
    ("What is $1+1$?", "## Step 1: Add the numbers\nWe have $1+1=2$.\n\n" + END % "2"),
    ("Solve for $x$: $2x+3=7$.",
     "## Step 1: Subtract 3 from both sides\n$2x = 4$\n\n## Step 2: Divide by 2:\n\n"
     "$x = 2$\n\n" + END % "2"),
    ("Find the area of a circle of radius $3$.",
     "To find the area, we use the formula $A = \\pi r^2$ (where $r$ is the radius)\n\n"
     "Substituting $r = 3$, we get $A = 9\\pi$.\n\n\n" + END % "9\\pi"),
    ("Compute $\\frac{6}{4}$ in lowest terms.",
     "## Step 1: Simplify the fraction\nThe fraction is $\\frac{6}{4}$, so we divide by "
     "the common factor $2$ (the gcd).\n\n## Step 2: The result is $\\frac{3}{2}$\n\n"
     + END % "\\frac{3}{2}"),
    ("How many primes are less than $10$?",
     "The primes less than $10$ are:\n\n$2, 3, 5, 7$.\n\nThere are $4$ of them "
     "(counting each once).\n\n" + END % "4"),
    ("Evaluate $\\sqrt{16}+\\sqrt{9}$.",
     "We have $\\sqrt{16} = 4$ and $\\sqrt{9} = 3$, so the sum is $\\boxed{7}$.\n\n"
     "Indeed, $4 + 3 = 7$:\n\n" + END % "7"),
    ("What is $10\\%$ of $50$?",
     "## Step 1: Convert the percent\n$10\\% = 0.1$.\n\n## Step 2: Multiply\n"
     "$0.1 \\times 50 = 5$)\n\n" + END % "5"),
    ("If $f(x) = x^2$, find $f(3)$.",
     "## Step 1:\n\nWe substitute: $f(3) = 3^2 = 9$.\n\n\n## Step 2: Check\n"
     "$f(3) = \\{9\\}$\n\n" + END % "9"),
    ("Simplify $(x+1)^2 - x^2$.",
     "Expanding, $(x+1)^2 = x^2 + 2x + 1$.\n\nSo the difference is $2x + 1$.\n\n"
     + END % "2x+1"),
    ("What is the sum of the angles of a triangle, in degrees?",
     "The angles of a triangle sum to $180^\\circ$; this is a standard fact...\n\n"
     "**Answer:** $180$\n\n" + END % "180"),
]
WIDTHS = (3, 5, 8)


@pytest.fixture(scope="module")
def llama(real_vocab):
    pol = HFTokenizer.from_folder(real_vocab["llama3.2-instruct"])
    prm = HFTokenizer.from_folder(real_vocab["llama3.1-prm"])
    kw = hp.token_prob_prm_kwargs(pol, prm, policy_format=None, policy_system=POLICY_SYSTEM,
                                  policy_date=DATE)
    ref = transformers.AutoTokenizer.from_pretrained(str(real_vocab["llama3.1-prm"]))
    return pol, prm, kw, ref


@pytest.fixture(scope="module")
def qwen(real_vocab):
    pol = HFTokenizer.from_folder(real_vocab["qwen2.5-instruct"])
    prm = HFTokenizer.from_folder(real_vocab["qwen2.5-math-prm"])
    kw = hp.classifier_prm_kwargs(pol, prm, policy_format=None, policy_system=POLICY_SYSTEM)
    ref = transformers.AutoTokenizer.from_pretrained(str(real_vocab["qwen2.5-math-prm"]))
    return pol, prm, kw, ref


def policy_ids(pol, question, solution):
    prompt = pol.encode(pol.render_chat(system=POLICY_SYSTEM, user=question, date=DATE))
    return prompt, pol.encode(solution) + [pol.eos_id]


def _ids(ref, text):
    return list(ref(text, add_special_tokens=False)["input_ids"])


def rlhflow_reference(ref, question, solution):
    """(ids of the whole conversation, the position each step's score is read at)."""
    steps = solution.split("\n\n")
    conv, reads = [], []
    for k, step in enumerate(steps):
        conv += [{"role": "user", "content": question + " " + step if k == 0 else step},
                 {"role": "assistant", "content": "+"}]
        ids = _ids(ref, ref.apply_chat_template(conv, tokenize=False))
        reads.append(len(ids) - 3)  # the reference reads logits[:, -3]
    return ids, reads


def qwen_reference(ref, question, solution):
    steps = solution.split("\n\n")
    msgs = [{"role": "system", "content": hp.QWEN_PRM_SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = _ids(ref, ref.apply_chat_template(msgs, tokenize=False))
    sep = ref.convert_tokens_to_ids("<extra_0>")
    return ids, [i for i, t in enumerate(ids) if t == sep]


def check_stream(adapter, pol, prm, question, solution, want, reads, width):
    prompt, sol = policy_ids(pol, question, solution)
    got = hp.prm_token_stream(adapter, prompt, sol, width=width)
    n = len(got.ids)
    if want[:n] != got.ids:
        bad = next(i for i, (a, b) in enumerate(zip(want, got.ids)) if a != b)
        show = lambda ids: prm.decode(ids[bad - 3:bad + 4], skip_special=False)  # noqa: E731
        raise AssertionError(f"width {width}: first difference at {bad}: reference "
                             f"{show(want)!r} vs adapter {show(got.ids)!r}")
    assert want[n:n + len(adapter.read)] == list(adapter.read)  # the final step's peek
    final = got.peeks[max(got.peeks)]
    assert max(got.peeks) == len(sol) - 2  # the last non-eos token
    assert sorted(got.reads.values()) + [final] == reads
    return got


def _adapter(cls, kw):
    """A stream-only adapter (a 1-layer stand-in trunk; tables are what is tested)."""
    from ttc_jax.config import ModelConfig
    from ttc_jax.models.transformer import Transformer

    v = int(max(np.max(kw["tables"]["head_ids"]), *kw["read"], *kw["prm_prefix"])) + 1
    cfg = ModelConfig(vocab_size=v, d_model=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=8, mlp_dim=8, max_seq_len=64)
    lm = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    extra = {k: kw[k] for k in ("plus_id", "minus_id") if k in kw}
    return cls(lm, **{k: v for k, v in kw.items() if k not in extra}, **extra)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_rlhflow_stream_is_the_reference_text(llama, case):
    pol, prm, kw, ref = llama
    adapter = _adapter(hp.TokenProbPRM, kw)
    question, solution = CASES[case]
    want, reads = rlhflow_reference(ref, question, solution)
    for width in WIDTHS:
        check_stream(adapter, pol, prm, question, solution, want, reads, width)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_qwen_prm_stream_is_the_reference_text(qwen, case):
    pol, prm, kw, ref = qwen
    adapter = _adapter(hp.ClassifierPRM, kw)
    question, solution = CASES[case]
    want, reads = qwen_reference(ref, question, solution)
    assert prm.token_to_id("<extra_0>") in want and pol.token_to_id("<extra_0>") is None
    for width in WIDTHS:
        check_stream(adapter, pol, prm, question, solution, want, reads, width)


def run_search_like(prm, pol, cases, width):
    """Drives prm.extend as search does (all rows at once): prompt, then blocks."""
    rows = [policy_ids(pol, q, s) for q, s in cases]
    scores, _ = feed_rows(prm, rows, width)
    return scores, rows


def feed_rows(prm, rows, width):
    """[(prompt ids, solution ids)] through prm.extend (prompt, then blocks of ``width``)
    -> (probabilities [R, padded length], the PRM cache after the last block)."""
    pw = max(len(p) for p, _ in rows)
    ptoks = np.zeros((len(rows), pw), np.int32)
    for i, (p, _) in enumerate(rows):
        ptoks[i, :len(p)] = p
    n = -(-max(len(s) for _, s in rows) // width) * width
    stoks = np.zeros((len(rows), n), np.int32)
    for i, (_, s) in enumerate(rows):
        stoks[i, :len(s)] = s
    lens = np.asarray([len(s) for _, s in rows])

    @nnx.jit
    def call(model, tokens, cache, num_new):
        return model.extend(tokens, cache, num_new)

    cache = KVCache.init(prm.cfg, len(rows), 64)
    _, cache = call(prm, ptoks, cache, np.asarray([len(p) for p, _ in rows], np.int32))
    outs = []
    for k in range(0, n, width):
        num = np.clip(lens - k, 0, width).astype(np.int32)
        logits, cache = call(prm, stoks[:, k:k + width], cache, num)
        outs.append(np.asarray(logits))
    return 1 / (1 + np.exp(-np.concatenate(outs, axis=1))), cache


def tiny(cls, vocab, **kw):
    return cls(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
               initializer_range=0.5, **kw)


def _check_scores(got, rows, pol, cases, ref_scores):
    for r, ((q, s), (_, sol)) in enumerate(zip(cases, rows, strict=True)):
        want = ref_scores(q, s)  # per step
        ends = [i for i, t in enumerate(sol) if hp.SEPARATOR in pol.vocab_bytes()[t]]
        np.testing.assert_allclose(got[r, ends + [len(sol) - 2]], want, atol=1e-4)
        assert len({round(float(x), 4) for x in want}) > 1


def _llama_prm(kw, tmp_path):
    """(a tiny random-init transformers Llama with the real vocabulary, its adapter)."""
    from ttc_jax.interop.prm import load_token_prob_prm

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny(transformers.LlamaConfig, 128256)).eval()
    model.save_pretrained(tmp_path)
    return model, load_token_prob_prm(tmp_path, cache_len=1024, **kw)


def _qwen_prm(kw, tmp_path):
    """(a tiny random-init Qwen2 trunk, its two-class head, the adapter of both)."""

    from ttc_jax.interop.prm import load_classifier_prm

    torch.manual_seed(1)
    qcfg = tiny(transformers.Qwen2Config, 151936, tie_word_embeddings=True)
    trunk = transformers.Qwen2Model(qcfg).eval()
    head = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    save_classifier_prm(tmp_path, trunk, head, qcfg)
    return trunk, head, load_classifier_prm(tmp_path, cache_len=1024, **kw)


def test_rlhflow_scores_match_transformers(llama, tmp_path):
    pol, prm, kw, ref = llama
    model, adapter = _llama_prm(kw, tmp_path)
    cases = CASES[:4]
    got, rows = run_search_like(adapter, pol, cases, width=5)

    def ref_scores(q, s):
        ids, reads = rlhflow_reference(ref, q, s)
        with torch.no_grad():
            lg = model(torch.tensor([ids])).logits[0, reads][:, [kw["plus_id"], kw["minus_id"]]]
        return torch.softmax(lg, -1)[:, 0].numpy()

    _check_scores(got, rows, pol, cases, ref_scores)


def test_qwen_prm_scores_match_transformers(qwen, tmp_path):
    pol, prm, kw, ref = qwen
    trunk, head, adapter = _qwen_prm(kw, tmp_path)
    cases = CASES[4:8]
    got, rows = run_search_like(adapter, pol, cases, width=8)

    def ref_scores(q, s):
        ids, reads = qwen_reference(ref, q, s)
        with torch.no_grad():
            h = trunk(torch.tensor([ids])).last_hidden_state[0, reads]
            return torch.softmax(head(h), -1)[:, 1].numpy()

    _check_scores(got, rows, pol, cases, ref_scores)


# -- the empty trailing step (search-and-learn's "last" after a final "\n\n") -------------

def _step_end_prefixes(cases):
    """(question, solution prefix) for every run of separators in the solutions: each
    prefix ends in "\n\n" (or "\n\n\n"), as an unfinished beam's text does. The policy's
    tokens of such prefixes end in ".\n\n", ":\n\n", "$\n\n", ")\n\n", "\n\n\n"..."""
    out = []
    for q, sol in cases:
        out += [(q, sol[:m.end()]) for m in re.finditer(r"\n\n+", sol)]
    return out


def _check_empty_step(adapter, pol, cases, reference, ref_prob, width):
    rows = [(policy_ids(pol, q, x)[0], pol.encode(x)) for q, x in cases]  # no eos
    assert all(hp.SEPARATOR in pol.vocab_bytes()[sol[-1]] for _, sol in rows)
    merged = {pol.vocab_bytes()[sol[-1]] for _, sol in rows}
    assert len(merged) >= 3 and merged - {b"\n\n"}  # merged step-end tokens too
    _, cache = feed_rows(adapter, rows, width)
    got = np.asarray(jax.nn.sigmoid(nnx.jit(lambda m, c: m.empty_step_logits(c))(
        adapter, cache)))
    want = []
    for (q, x), (prompt, sol) in zip(cases, rows, strict=True):
        ids, reads = reference(q, x)
        # the reference's last piece is the empty (or whitespace-only) step
        stream = hp.prm_token_stream(adapter, prompt, sol, width=width)
        assert stream.ids + list(adapter.read) == ids[:reads[-1] + 1], x
        assert sorted(stream.reads.values()) == reads[:-1]
        want.append(ref_prob(ids, reads[-1]))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert len({round(float(w), 4) for w in want}) > 1


def test_rlhflow_empty_trailing_step_matches_transformers(llama, tmp_path):
    """The adapter's ``empty_step_logits`` after a text ending in a step end is the
    reference's verdict on the empty user turn (+ vs - at index -3)."""
    pol, prm, kw, ref = llama
    model, adapter = _llama_prm(kw, tmp_path)
    cases = _step_end_prefixes(CASES[:4])

    def prob(ids, at):
        with torch.no_grad():
            lg = model(torch.tensor([ids])).logits[0, at][[kw["plus_id"], kw["minus_id"]]]
        return float(torch.softmax(lg, -1)[0])

    _check_empty_step(adapter, pol, cases, lambda q, x: rlhflow_reference(ref, q, x), prob,
                      width=5)


def test_qwen_prm_empty_trailing_step_matches_transformers(qwen, tmp_path):
    """For Qwen2.5-Math-PRM the reference (search-and-learn's ``Qwen_2_5_Math.score``:
    ``answer.replace("\n\n", "<extra_0>") + "<extra_0>"``) scores a text ending in
    "\n\n" at two consecutive ``<extra_0>``; the second is the empty step's verdict."""
    pol, prm, kw, ref = qwen
    trunk, head, adapter = _qwen_prm(kw, tmp_path)
    cases = _step_end_prefixes(CASES[4:8])
    sep = prm.token_to_id("<extra_0>")
    ids, reads = qwen_reference(ref, *cases[0])
    assert ids[reads[-1] - 1] == sep  # "<extra_0><extra_0>"

    def prob(ids, at):
        with torch.no_grad():
            h = trunk(torch.tensor([ids])).last_hidden_state[0, at]
            return float(torch.softmax(head(h), -1)[1])

    _check_empty_step(adapter, pol, cases, lambda q, x: qwen_reference(ref, q, x), prob,
                      width=8)


def test_incompatible_vocabularies_are_refused(real_vocab):
    llama = HFTokenizer.from_folder(real_vocab["llama3.2-instruct"])
    qwen_prm = HFTokenizer.from_folder(real_vocab["qwen2.5-math-prm"])
    with pytest.raises(ValueError, match="disagree"):
        hp.classifier_prm_kwargs(llama, qwen_prm)
    with pytest.raises(ValueError, match="disagree"):
        hp.token_prob_prm_kwargs(HFTokenizer.from_folder(real_vocab["qwen2.5-instruct"]),
                                 HFTokenizer.from_folder(real_vocab["llama3.1-prm"]))
    with pytest.raises(ValueError, match="<extra_0>"):  # the policy's own lacks it
        hp.classifier_prm_kwargs(HFTokenizer.from_folder(real_vocab["qwen2.5-instruct"]))
