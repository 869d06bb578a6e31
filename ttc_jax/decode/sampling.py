"""Sampling strategies: small frozen dataclasses, hashable so they are jit-static.

Each strategy turns next-token logits into a distribution (``log_probs``) and draws from
it (``sample``). Exposing the processed distribution, not just a sample, is what
speculative decoding's acceptance rule needs.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -1e30


class SamplingStrategy(abc.ABC):
    """Maps logits [..., V] to a processed log-distribution and samples from it."""

    @abc.abstractmethod
    def log_probs(self, logits: jax.Array) -> jax.Array:
        """[..., V] logits -> [..., V] log-probabilities of the sampling distribution."""

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        """[..., V] logits -> [...] int32 token ids."""
        return jax.random.categorical(rng, self.log_probs(logits), axis=-1).astype(jnp.int32)


def _check_temperature(t: float) -> None:
    if not t > 0:
        raise ValueError(f"temperature={t} must be > 0; use strategy='greedy' for argmax")


@dataclasses.dataclass(frozen=True)
class Greedy(SamplingStrategy):
    """Always the most likely token (ties: the lowest id)."""

    def log_probs(self, logits):
        onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=bool)
        return jnp.where(onehot, 0.0, _NEG_INF)

    def sample(self, logits, rng):
        del rng
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature(SamplingStrategy):
    """softmax(logits / temperature)."""

    temperature: float = 1.0

    def __post_init__(self):
        _check_temperature(self.temperature)

    def log_probs(self, logits):
        return jax.nn.log_softmax(logits.astype(jnp.float32) / self.temperature, axis=-1)


@dataclasses.dataclass(frozen=True)
class TopK(SamplingStrategy):
    """The k most likely tokens, renormalised, at a temperature (ties at the k-th value kept)."""

    k: int
    temperature: float = 1.0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"top_k={self.k} must be >= 1")
        _check_temperature(self.temperature)

    def log_probs(self, logits):
        logits = logits.astype(jnp.float32) / self.temperature
        k = min(self.k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        return jax.nn.log_softmax(jnp.where(logits >= kth, logits, _NEG_INF), axis=-1)


@dataclasses.dataclass(frozen=True)
class TopP(SamplingStrategy):
    """Nucleus sampling: the smallest set of most likely tokens whose mass reaches p."""

    p: float
    temperature: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"top_p={self.p} must be in (0, 1]; 1.0 disables the cut")
        _check_temperature(self.temperature)

    def log_probs(self, logits):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32) / self.temperature, axis=-1)
        sorted_logp = jnp.sort(logp, axis=-1)[..., ::-1]  # descending
        # Mass strictly before each sorted token; keep a token if that mass is < p.
        mass_before = jnp.cumsum(jnp.exp(sorted_logp), axis=-1) - jnp.exp(sorted_logp)
        keep_sorted = mass_before < self.p
        # The smallest kept log-prob is the threshold (the top token is always kept).
        threshold = jnp.min(jnp.where(keep_sorted, sorted_logp, jnp.inf), axis=-1,
                            keepdims=True)
        return jax.nn.log_softmax(jnp.where(logp >= threshold, logp, _NEG_INF), axis=-1)


STRATEGIES = ("greedy", "temperature", "top_k", "top_p")


def get_strategy(name: str, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> SamplingStrategy:
    """Builds a strategy by name; an unknown name raises a ValueError listing valid ones."""
    if name == "greedy":
        return Greedy()
    if name == "temperature":
        return Temperature(temperature)
    if name == "top_k":
        return TopK(top_k, temperature)
    if name == "top_p":
        return TopP(top_p, temperature)
    raise ValueError(f"unknown sampling strategy {name!r}; choose one of {list(STRATEGIES)}")
