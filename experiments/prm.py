"""The process reward model: the teacher's trunk plus a step-score head, fine-tuned on the
small policy's own samples with exact step labels from the task's checker.

  python launch/train.py --config=experiments/prm.py --workdir=workdirs/prm
  python launch/train.py --config=experiments/prm.py --config.prm.labels=mc ...  # Math-Shepherd

It is larger than the policy and starts from a model that already does the arithmetic
(as the study paired a 1B policy with an 8B PRM). Targets: within-problem pairwise
ranking >= 0.8; PRM-weighted best-of-16 beats majority@16 by >= 5 points for k=3..8.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "prm"
    c.task = "arithmetic"
    # Used only when prm.init_from is empty (the PRM then starts from scratch).
    c.model = dict(vocab_size=21, d_model=96, num_layers=3, num_heads=6, num_kv_heads=3,
                   head_dim=16, mlp_dim=384, max_seq_len=192)
    c.prm = dict(
        policy="policy_small",   # shipped name or exported folder: whose samples to label
        init_from="teacher",     # trunk to start from ('' = random init)
        labels="exact",          # 'exact' (step checker) or 'mc' (Monte-Carlo rollouts)
        pooling="step_min",      # step score: min over the step's tokens ('last': delimiter)
        token_logprob=True,      # the head also reads the trunk's log-prob of each token
        mc_rollouts=8,
        num_problems=4000,
        samples_per_problem=8,
        temperature=1.0,
        eval_problems=25,
    )
    c.train = dict(seed=0, batch_size=32, num_steps=2000, learning_rate=1e-3, warmup_steps=100,
                   weight_decay=0.01, grad_clip=1.0, ema_decay=0.0, difficulty_min=1,
                   difficulty_max=8, num_buckets=1, bucket_multiple=16, save_every=250,
                   keep_checkpoints=3, log_every=50, eval_every=500, eval_problems=25)
    if variant == "local":
        c.prm.update(num_problems=16, samples_per_problem=2, eval_problems=2, mc_rollouts=2)
        c.train.update(num_steps=20, batch_size=8, save_every=10, log_every=5, eval_every=20)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'local'")
    return ml_collections.ConfigDict(c)
