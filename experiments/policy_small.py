"""The small policy: the model test-time search is meant to lift.

  python launch/train.py --config=experiments/policy_small.py --workdir=workdirs/policy_small
  python launch/train.py --config=experiments/policy_small.py:local --workdir=/tmp/p  # seconds

Target regime (held-out split): greedy >= 80% at k=1 and <= 50% at k=8.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "policy"
    c.task = "arithmetic"
    c.model = dict(vocab_size=21, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, mlp_dim=256, max_seq_len=192)
    c.train = dict(seed=0, batch_size=32, num_steps=7000, learning_rate=3e-3, warmup_steps=200,
                   weight_decay=0.01, grad_clip=1.0, ema_decay=0.0, difficulty_min=1,
                   difficulty_max=8, num_buckets=4, bucket_multiple=16, save_every=500,
                   keep_checkpoints=20, log_every=100, eval_every=1000, eval_problems=50)
    # data x model x stage devices (ttc_jax.parallel); e.g. --config.mesh.data=8 on a v4-8.
    c.mesh = dict(data=1, model=1, stage=1)
    if variant == "local":  # a CPU smoke run in seconds
        c.model.update(d_model=32, num_layers=1, mlp_dim=64)
        c.train.update(num_steps=60, batch_size=16, save_every=20, log_every=10,
                       eval_every=60, eval_problems=8, warmup_steps=10)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'local'")
    return ml_collections.ConfigDict(c)
