"""The shipped models load and reproduce their model card."""

import json

import numpy as np
import pytest

from ttc_jax.eval.generate import Samples, greedy_accuracy
from ttc_jax.eval.model_card import KS
from ttc_jax.eval.prm_quality import aggregate_np, score_samples
from ttc_jax.models.io import ASSETS, load_model
from ttc_jax.tasks import get_task

TASK = get_task("arithmetic")
CARDS = {p.parent.name: json.loads(p.read_text()) for p in sorted(ASSETS.glob("*/card.json"))}
POLICIES = [n for n, c in CARDS.items() if c["kind"] == "policy"]
PRMS = [n for n, c in CARDS.items() if c["kind"] == "prm"]


def test_the_embedded_default_models_are_shipped():
    assert {"policy_small", "teacher"} <= set(POLICIES) and "prm" in PRMS


@pytest.mark.parametrize("name", POLICIES)
def test_shipped_policy_reproduces_its_cards_greedy_accuracy_on_the_fixed_slice(name):
    card = CARDS[name]["greedy_slice"]
    model = load_model(name, kind="policy")
    acc = greedy_accuracy(model, TASK, KS, card["per_k"], seed=card["seed"])
    for k in KS:
        assert abs(acc[k] - card["acc"][str(k)]) <= 1 / card["per_k"] + 1e-9, (k, acc[k])


@pytest.mark.parametrize("name", PRMS)
def test_shipped_prm_prefers_the_right_solution_over_a_corrupted_one(name):
    from tests.test_prm import corrupt_step

    prm = load_model(name, kind="prm")
    problems = TASK.sample_problems("test", [2, 4, 6], 10, seed=5)
    texts = [[TASK.solution_text(p), corrupt_step(p, i % p.difficulty)]
             for i, p in enumerate(problems)]
    p = len(problems)
    samples = Samples(problems=problems, texts=texts, tokens=np.zeros((p, 2, 1)),
                      lengths=np.zeros((p, 2)), logprobs=np.zeros((p, 2, 1)),
                      ended=np.ones((p, 2), bool))
    scores = score_samples(prm, TASK, samples)
    wins = [aggregate_np(s[0], "min") > aggregate_np(s[1], "min") for s in scores]
    assert np.mean(wins) >= 0.8, np.mean(wins)
