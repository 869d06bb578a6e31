"""The student: a quarter of the teacher's parameters (d64 L2, mlp 192: 99,968 vs 417,408),
distilled from the shipped teacher, and the same architecture trained from scratch on the
same data for the same number of steps (the baseline distillation must beat).

  python launch/distill.py --config=experiments/student.py --workdir=workdirs/student
  python launch/train.py --config=experiments/student.py:scratch --workdir=workdirs/student_scratch
  python launch/distill.py --config=experiments/student.py:local --workdir=/tmp/s  # seconds

Variants: '' (logit distillation, forward KL at τ=2 mixed 50/50 with CE), 'scratch'
(kind=policy: plain cross-entropy), 'on_policy' (GKD: half the steps on student samples,
generalized JSD β=0.5), 'local' / 'on_policy_local' (CPU smoke runs), and the 10,000-step
pair 'scratch_long' (the shipped ``student``) / 'long' (forward KL at τ=1, α=0.5: the
shipped ``student_distilled``), and the finite-data trio 'finite_scratch' / 'finite'
(forward KL τ=1) / 'finite_on_policy' (GKD), all on the same fixed training set of
FINITE_PROBLEMS problems per difficulty (``train.train_problems``), and 'hidden' /
'hidden_ce' (hidden-state distillation, ``distill.hidden_weight=1``, with forward KL τ=1
α=0.5 / with cross-entropy only; 'hidden_long': 'hidden' on the 10,000-step schedule).
Shorter budgets: ``--config.train.num_steps=1500``.

  python launch/train.py --config=experiments/student.py:scratch_long \
      --workdir=workdirs/student10k_scratch
  python launch/distill.py --config=experiments/student.py:long --workdir=workdirs/student10k_kd
  python launch/distill.py --config=experiments/student.py:hidden --workdir=workdirs/h_kd
  python launch/distill.py --problems_per_k=300 \
      --compare=scratch=workdirs/student_scratch/model,hidden=workdirs/h_kd/model
"""

import importlib.util
import pathlib

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "policy_small", pathlib.Path(__file__).with_name("policy_small.py"))
policy_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(policy_small)

VARIANTS = ("", "scratch", "on_policy", "local", "scratch_local", "on_policy_local",
            "scratch_long", "long", "finite_scratch", "finite", "finite_on_policy", "hidden",
            "hidden_ce", "hidden_long")
FINITE_PROBLEMS = 128  # per difficulty: the fixed training set of the 'finite*' variants


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    local = variant.endswith("local")
    c = policy_small.get_config("local" if local else "")
    c.model.update(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   mlp_dim=192)
    c.train.update(num_steps=3000, batch_size=32, learning_rate=3e-3, seed=0, save_every=250,
                   keep_checkpoints=3, eval_every=1000)
    if local:
        c.model.update(d_model=32, num_layers=1, mlp_dim=64)
        c.train.update(num_steps=30, batch_size=8, save_every=10, log_every=10,
                       eval_every=30, eval_problems=4, warmup_steps=5)
    if variant in ("scratch_long", "long", "hidden_long"):
        c.train.update(num_steps=10000, eval_every=2500, eval_problems=100, save_every=500)
    if variant.startswith("finite"):
        c.train.update(train_problems=FINITE_PROBLEMS, eval_problems=100)
    if variant.startswith("scratch") or variant == "finite_scratch":
        c.kind = "policy"
        return c
    c.kind = "distill"
    c.distill = dict(mode="logit", teacher="teacher", loss="forward_kl", temperature=2.0,
                     alpha=0.5, beta=0.5, on_policy_fraction=0.5, sample_temperature=1.0,
                     hidden_weight=0.0, init="")
    if variant in ("long", "finite", "hidden", "hidden_ce", "hidden_long"):
        c.distill.update(temperature=1.0)
    if variant.startswith("hidden"):  # + the teacher's block outputs through learned maps
        c.distill.update(hidden_weight=1.0, alpha=0.0 if variant == "hidden_ce" else 0.5)
        c.train.update(eval_problems=100)
    if variant.startswith("on_policy") or variant == "finite_on_policy":
        c.distill.update(mode="on_policy", loss="jsd", temperature=1.0, alpha=0.5)
    return c
