"""Decoding: sampling strategies and the jit-compiled prefill + while_loop sampler."""

from ttc_jax.decode.sampler import DecodeState, SampleOutput, decode, prefill, sample
from ttc_jax.decode.sampling import (
    STRATEGIES,
    Greedy,
    SamplingStrategy,
    Temperature,
    TopK,
    TopP,
    get_strategy,
)
from ttc_jax.decode.speculative import (
    SpecOutput,
    SpecState,
    speculative_generate_step,
    speculative_sample,
)

__all__ = [
    "STRATEGIES", "DecodeState", "Greedy", "SampleOutput", "SamplingStrategy", "Temperature",
    "TopK", "TopP", "decode", "get_strategy", "prefill", "sample",
    "SpecOutput", "SpecState", "speculative_generate_step", "speculative_sample",
]
