"""Hugging Face interop: Llama/Qwen2 checkpoints, tokenizers, chat prompts, HF PRMs and
MATH-style search with them.

Checkpoints need only numpy/jax (a built-in safetensors reader); tokenizers need the
``tokenizers`` library (the ``hf`` extra). transformers and torch are test-only references.
"""

from ttc_jax.interop.hf import HFModelInfo, load_hf_model, read_hf_config
from ttc_jax.interop.prm import (
    ChatPRMAdapter,
    ClassifierPRM,
    TokenProbPRM,
    classifier_prm_kwargs,
    load_classifier_prm,
    load_token_prob_prm,
    token_prob_prm_kwargs,
)
from ttc_jax.interop.safetensors import SafetensorsCheckpoint
from ttc_jax.interop.tokenizer import CHAT_FORMATS, HFTokenizer, render_chat

__all__ = [
    "CHAT_FORMATS", "ChatPRMAdapter", "ClassifierPRM", "HFModelInfo", "HFTokenizer",
    "SafetensorsCheckpoint", "TokenProbPRM", "classifier_prm_kwargs", "load_classifier_prm",
    "load_hf_model", "load_token_prob_prm", "read_hf_config", "render_chat",
    "token_prob_prm_kwargs",
]
