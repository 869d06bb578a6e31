"""Sequence-level distillation from search ("search and learn"): the teacher + the shipped
PRM run weighted best-of-N on training problems; the selected solutions (no grader) fine-tune
the distilled student. Variant 'expert': expert iteration, the student searches for itself
for two rounds; 'from_scratch': start from the student trained from scratch (same search
data); 'from_scratch_replay': the same with half the steps on the canonical training data,
300 steps at a lower learning rate (600 steps on 480 solutions over-fit them); 'self':
expert iteration without a teacher or a grader, the student trained from scratch for 3,000
steps searches for itself (weighted best-of-16 with the PRM on 4,000 training problems),
keeps the selected solutions the PRM is confident in (min-aggregated score >= 0.9) and is
fine-tuned on them, for two rounds.

  python launch/distill.py --config=experiments/distill_search.py --workdir=workdirs/distill_search
  python launch/distill.py --config=experiments/distill_search.py:local --workdir=/tmp/ds
"""

import importlib.util
import pathlib

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "student", pathlib.Path(__file__).with_name("student.py"))
student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(student)

VARIANTS = ("", "expert", "from_scratch", "from_scratch_replay", "self", "local")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    c = student.get_config("local" if variant == "local" else "")
    del c["model"]  # the student's own (from distill.init)
    c.distill.update(mode="sequence", init="workdirs/student/model", search_policy="teacher",
                     prm="prm", search_problems=60, rounds=1,
                     search=dict(method="weighted_best_of_n", n=8, aggregation="min",
                                 max_new_tokens=128, temperature=1.0, seed=0))
    c.train.update(num_steps=600, learning_rate=5e-4, warmup_steps=50, save_every=100,
                   eval_every=600, seed=0)
    if variant.startswith("from_scratch"):  # start from the scratch-trained student
        c.distill.update(init="workdirs/student_scratch/model")
    if variant == "from_scratch_replay":  # half the steps on canonical data, fewer steps
        c.distill.update(replay_fraction=0.5)
        c.train.update(num_steps=300, learning_rate=3e-4, warmup_steps=30, eval_every=300)
    if variant == "expert":
        c.distill.update(search_policy="student", rounds=2)
    if variant == "self":  # the 3,000-step scratch student improves on its own search
        c.distill.update(init="workdirs/student_scratch/model", search_policy="student",
                         search_problems=500, rounds=2, min_score=0.9,
                         search=dict(method="weighted_best_of_n", n=16, aggregation="min",
                                     max_new_tokens=128, temperature=1.0, seed=0))
        c.train.update(num_steps=400, learning_rate=1e-3, warmup_steps=40, eval_every=400,
                       eval_problems=100)
    if variant == "local":
        c.distill.update(search_problems=2, search=dict(method="weighted_best_of_n", n=2,
                                                        aggregation="min", max_new_tokens=96))
        c.train.update(num_steps=10, batch_size=4, save_every=5, log_every=5, eval_every=10,
                       eval_problems=2, warmup_steps=2)
    return c
