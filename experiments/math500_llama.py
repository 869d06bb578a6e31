"""MATH-500 test-time search with Hugging Face checkpoints (the Hugging Face study's set-up:
Llama-3.2-1B-Instruct policy, RLHFlow Llama3.1-8B-PRM), on a TPU VM with local files.

  python launch/search_hf.py --config=experiments/math500_llama.py \
      --config.policy=/ckpt/Llama-3.2-1B-Instruct \
      --config.prm=/ckpt/Llama3.1-8B-PRM-Deepseek-Data \
      --config.data=/data/math500.jsonl --out=results/math500_llama
  # Qwen2.5-Math-PRM as the verifier (a Qwen policy, same tokenizer):
  #   --config.prm_kind=classifier --config.chat_format=qwen ...
  python launch/search_hf.py --config=experiments/math500_llama.py:local ...  # a smoke run
  python launch/search_hf.py --config=experiments/math500_llama.py:reference ...  # 2048/step

Every (method, n) pair of ``methods`` x ``budgets`` writes ``<out>/<method>_n<n>.jsonl``
(one row per problem with the naive / weighted / majority choices, graded by ``is_equiv``
(``correct_*``) and by the study's grader ``study_equal`` (``study_correct_*``)) and
``summary.json``. Rows are appended as problems finish: an interrupted sweep, rerun with
the same command, skips the problems already written (changed settings are refused).
Prompts are bucketed by length (multiples of ``prompt_multiple``), one compiled program per
bucket; a problem whose prompt + ``search.max_new_tokens`` exceeds ``max_seq_len`` gets a
row with ``error`` (graded wrong, counted in the summary's ``errors``), not a crash.

Token budgets: the study (search-and-learn) allows up to 2048 tokens per step and 2048 in
all; ``:reference`` sets both (``--config.search.max_step_tokens=2048`` alone also works;
the default 64 per step is much cheaper, as every step buffer is that wide).
No network access: every path is local.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.policy = ""            # folder: config.json, *.safetensors, tokenizer.json
    c.prm = ""               # folder of the PRM ('' = majority voting only)
    c.prm_kind = "token_prob"  # 'token_prob' (RLHFlow +/-) or 'classifier' (Qwen2.5-Math)
    c.data = ""              # MATH-500 JSONL: problem, answer, level, unique_id
    c.chat_format = "llama3"   # 'llama3' or 'qwen' (used when a folder has no chat template)
    c.chat_date = "26 Jul 2024"  # the Llama 3.1+ template's date line ('' = today)
    c.dtype = "bfloat16"
    c.max_seq_len = 2560     # policy cache: prompt + max_new_tokens (longer: an error row)
    c.prm_cache_len = 3072   # PRM cache: its prompt + steps + templates
    c.mesh = dict(data=1, model=1, stage=1)  # e.g. data=4, model=2 on a v5e-8
    c.levels = ()            # () = every level
    c.num_problems = 0       # 0 = all
    c.batch_size = 4         # problems per compiled call
    c.prompt_multiple = 128  # prompt length buckets (one compiled program per bucket)
    c.methods = ("best_of_n", "beam", "dvts")
    c.budgets = (4, 16, 64, 256)
    c.search = dict(method="best_of_n", n=4, beam_width=4, max_steps=40, max_step_tokens=64,
                    max_new_tokens=2048, aggregation="last", temperature=0.8, top_p=1.0,
                    lookahead=0, filter_duplicates=True, seed=0,
                    rules="ttc_jax",  # search_and_learn: the study's exact rules
                    kv_cache="contiguous",  # paged: shared prompt pages (TPU; see plan.md)
                    kv_page_size=16, kv_pool_fraction=1.0,
                    prm_block_tokens=0)  # 0: max_step_tokens; 16 at real scale (plan.md)
    if variant == "local":  # a few problems, tiny budgets, short solutions
        c.dtype = "float32"
        c.num_problems = 4
        c.batch_size = 2
        c.max_seq_len = 1024
        c.prm_cache_len = 1280
        c.methods = ("best_of_n", "beam")
        c.budgets = (4,)
        c.search.update(max_steps=6, max_step_tokens=32, max_new_tokens=256)
    elif variant == "reference":  # the study's token budgets: 2048 per step, 2048 in all
        c.search.update(max_step_tokens=2048, max_new_tokens=2048)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '', 'local' or 'reference'")
    return ml_collections.ConfigDict(c)
