"""Ship a trained model: copy workdir/model into ttc_jax/assets/<name>, evaluate it on the
held-out split and update ttc_jax/assets/MODEL_CARD.md.

  python launch/ship.py --workdir=workdirs/policy_small --name=policy_small \
      --command="python launch/train.py --config=experiments/policy_small.py ..."
"""

from absl import app, flags

from ttc_jax.eval.model_card import ship

_WORKDIR = flags.DEFINE_string("workdir", None, "a finished training workdir")
_NAME = flags.DEFINE_string("name", None, "asset name, e.g. policy_small")
_COMMAND = flags.DEFINE_string("command", None, "the exact command that trained it")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "stored dtype")
_EVAL = flags.DEFINE_integer("eval_problems", 100, "held-out problems per difficulty")
_STEP = flags.DEFINE_integer("step", None, "ship this checkpoint step instead of workdir/model")
_NOTE = flags.DEFINE_string("note", "", "a line for the model card (e.g. why this step)")
flags.mark_flags_as_required(["workdir", "name", "command"])


def main(argv):
    del argv
    card = ship(_WORKDIR.value, _NAME.value, command=_COMMAND.value, dtype=_DTYPE.value,
                eval_problems=_EVAL.value, step=_STEP.value, note=_NOTE.value)
    print({k: v for k, v in card.items() if k != "config"})


if __name__ == "__main__":
    app.run(main)
