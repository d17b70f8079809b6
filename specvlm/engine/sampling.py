"""Turning logits into the distribution that decoding samples from.

Temperature, top-k and top-p are applied the same way to the target's p and the draft's q, so the
speculative rules stay exact for the processed target distribution. Probabilities are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEED_RANGE = (-(2**63), 2**64 - 1)  # the seeds torch.Generator.manual_seed takes
MIN_SAMPLING = 1e-6  # the least positive temperature or top_p: smaller ones overflow or underflow the float32 sampler


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy decoding; top_k / top_p None means no truncation."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities after temperature, top-k and top-p."""
    if config.greedy:
        raise ValueError("greedy decoding has no sampling distribution")
    scores = logits.float() / config.temperature
    if config.top_k is not None and config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the top token always stays.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of (..., V) probabilities."""
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator)
    return out.reshape(probs.shape[:-1])


def next_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax or a sample from the processed distribution; (..., V) -> (...)."""
    if config.greedy:
        return logits.argmax(-1)
    return sample(probabilities(logits, config), generator)
