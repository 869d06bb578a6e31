"""The teacher: a larger policy, clearly stronger than the small one (>= 10 points greedy
accuracy averaged over k=1..8). It is also the trunk the PRM starts from.

  python launch/train.py --config=experiments/teacher.py --workdir=workdirs/teacher
"""

import importlib.util
import pathlib

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "policy_small", pathlib.Path(__file__).with_name("policy_small.py"))
policy_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(policy_small)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = policy_small.get_config(variant)
    if variant != "local":
        c.model.update(d_model=96, num_layers=3, num_heads=6, num_kv_heads=3, head_dim=16,
                       mlp_dim=384)
        c.train.update(num_steps=5000, learning_rate=2e-3, seed=1)
    return c
