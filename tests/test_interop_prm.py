"""HF PRM adapters against transformers: the full PRM-format sequence scored at once.

Token ids are raw (a 96-id vocabulary); the templates are arbitrary id tuples, so the
test checks the stream rewriting (prompt swap, delimiter -> read+after, eos dropped,
peek scores at block ends) and the score heads, independently of any tokenizer.
"""


import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import save_classifier_prm
from ttc_jax.interop import load_hf_model
from ttc_jax.interop.prm import TokenProbPRM, load_classifier_prm
from ttc_jax.models.cache import KVCache

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, DELIM, EOS, PLUS, MINUS = 96, 10, 2, 5, 6
POLICY = dict(policy_prefix=(80, 81, 82), policy_suffix=(83, 84), delimiter_ids=(DELIM,),
              eos_ids=(EOS,))
TOKEN_PROB = dict(POLICY, prm_prefix=(70, 71), prm_suffix=(72,), read=(60, 61, 62),
                  after=(PLUS, 63, 64, 65), plus_id=PLUS, minus_id=MINUS)
CLASSIFIER = dict(POLICY, prm_prefix=(70, 71, 76), prm_suffix=(73, 74, 75), read=(50,),
                  after=())
PROBLEMS = [[20, 21, 22, 23], [24, 25]]
SOLUTIONS = [  # steps; the last step ends with eos
    [[30, 31, 32], [33, 34], [35, 36, 37, 38, 39]],
    [[40, 41, 42, 43, 44, 45], [46]],
]
BLOCK = 4


def small_cfg(**kw):
    return dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                initializer_range=0.3, **kw)


def solution_tokens(steps):
    out = []
    for i, s in enumerate(steps):
        out += s + ([DELIM] if i < len(steps) - 1 else [EOS])
    return out


def reference_scores(score_fn, problem, steps, kw):
    """{solution position: P(positive)} at every step end and every block end, computed on
    the PRM-format sequence, one full forward per score (no cache)."""
    seq = list(kw["prm_prefix"]) + problem + list(kw["prm_suffix"])
    toks = solution_tokens(steps)
    out, pos = {}, 0
    for i, step in enumerate(steps):
        for j in range(len(step)):
            p = pos + j
            if (p + 1) % BLOCK == 0 or (i == len(steps) - 1 and j == len(step) - 1):
                out[p] = score_fn(seq + step[:j + 1] + list(kw["read"]))  # a peek
        pos += len(step)
        if i < len(steps) - 1:
            out[pos] = score_fn(seq + step + list(kw["read"]))  # the delimiter
            seq = seq + step + list(kw["read"]) + list(kw["after"])
            pos += 1
    assert pos + 1 == len(toks)
    return out


def run_adapter(prm, kw):
    """Drives prm.extend the way search does: the policy prompt, then blocks of BLOCK."""
    prompts = [list(kw["policy_prefix"]) + p + list(kw["policy_suffix"]) for p in PROBLEMS]
    width = max(map(len, prompts))
    ptoks = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ptoks[i, :len(p)] = p
    sols = [solution_tokens(s) for s in SOLUTIONS]
    n = max(map(len, sols))
    n = -(-n // BLOCK) * BLOCK
    stoks = np.zeros((len(sols), n), np.int32)
    for i, s in enumerate(sols):
        stoks[i, :len(s)] = s
    lens = np.asarray([len(s) for s in sols])

    @nnx.jit
    def call(model, tokens, cache, num_new):
        return model.extend(tokens, cache, num_new)

    cache = KVCache.init(prm.cfg, len(prompts), 48)  # widened to cache_len inside
    _, cache = call(prm, ptoks, cache, np.asarray([len(p) for p in prompts], np.int32))
    assert cache.capacity == prm.cache_len
    outs = []
    for k in range(0, n, BLOCK):
        num = np.clip(lens - k, 0, BLOCK).astype(np.int32)
        logits, cache = call(prm, stoks[:, k:k + BLOCK], cache, num)
        outs.append(np.asarray(logits))
    return 1 / (1 + np.exp(-np.concatenate(outs, axis=1)))


@pytest.mark.slow
def test_token_prob_prm_matches_transformers(tmp_path):
    torch.manual_seed(3)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small_cfg())).eval()
    ref.save_pretrained(tmp_path)

    def score(seq):
        with torch.no_grad():
            lg = ref(torch.tensor([seq])).logits[0, -1]
        p = torch.softmax(lg, -1)
        return float(p[PLUS] / (p[PLUS] + p[MINUS]))

    lm = load_hf_model(tmp_path, max_seq_len=128)
    prm = TokenProbPRM(lm, cache_len=128, **TOKEN_PROB)
    got = run_adapter(prm, TOKEN_PROB)
    for row, (problem, steps) in enumerate(zip(PROBLEMS, SOLUTIONS, strict=True)):
        want = reference_scores(score, problem, steps, TOKEN_PROB)
        assert len(want) >= 3
        for pos, p in want.items():
            np.testing.assert_allclose(got[row, pos], p, atol=2e-5, err_msg=f"{row} {pos}")
        assert len({round(p, 4) for p in want.values()}) > 2  # scores differ: not trivial


def test_classifier_prm_matches_transformers(tmp_path):

    torch.manual_seed(4)
    qcfg = transformers.Qwen2Config(**small_cfg(tie_word_embeddings=True))
    trunk = transformers.Qwen2Model(qcfg).eval()
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 2))
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
    save_classifier_prm(tmp_path, trunk, head, qcfg)

    def score(seq):
        with torch.no_grad():
            h = trunk(torch.tensor([seq])).last_hidden_state[0, -1]
            return float(torch.softmax(head(h), -1)[1])

    prm = load_classifier_prm(tmp_path, cache_len=96, **CLASSIFIER)
    got = run_adapter(prm, CLASSIFIER)
    for row, (problem, steps) in enumerate(zip(PROBLEMS, SOLUTIONS, strict=True)):
        want = reference_scores(score, problem, steps, CLASSIFIER)
        for pos, p in want.items():
            np.testing.assert_allclose(got[row, pos], p, atol=2e-5, err_msg=f"{row} {pos}")
        assert len({round(p, 4) for p in want.values()}) > 2


def test_classifier_prm_rejects_a_causal_lm_folder(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**small_cfg())).save_pretrained(
        tmp_path)
    with pytest.raises(ValueError, match="'LlamaForCausalLM' is not supported"):
        load_classifier_prm(tmp_path, **CLASSIFIER)


@pytest.mark.slow
def test_adapter_plugs_into_search(tmp_path):
    """Beam search runs with the adapter as its PRM (the contract search relies on)."""
    from ttc_jax.config import SearchConfig
    from ttc_jax.search import search
    from ttc_jax.search.tokens import SearchTokens

    torch.manual_seed(5)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**small_cfg())).save_pretrained(
        tmp_path)
    lm = load_hf_model(tmp_path, max_seq_len=128)
    prm = TokenProbPRM(lm, cache_len=160, **TOKEN_PROB)
    vocab = [b"\n\n" if i == DELIM else str(i - 11).encode() if 11 <= i < 21
             else f"<{i}>".encode() for i in range(V)]
    spec = SearchTokens.build(vocab=vocab, pad_id=0, bos_id=1, eos_ids=(EOS,),
                              answer_prefix=(90, 91))
    prompts = np.asarray([[80, 81, 82, 20, 21, 83, 84]], np.int32)
    cfg = SearchConfig(method="beam", n=4, beam_width=2, max_steps=3, max_step_tokens=4,
                       max_new_tokens=16, temperature=1.0, aggregation="min")
    res = search(lm, prm, prompts, np.asarray([7]), cfg, spec)
    scores = np.asarray(res.scores)
    assert np.all((scores >= 0) & (scores <= 1)) and np.isfinite(scores).all()
    assert jax.tree.leaves(res)  # ran end to end
