"""Drafting that stops early when the draft's own confidence drops (in the spirit of AdaEDL and
EAGLE-2's dynamic trees): after each level, the probability the draft gives its main path so far
(the product of its top-1 probabilities down the rank-0 children); below ``threshold`` the deeper
levels are not drafted, and not verified. Verification is unchanged, so the output is too; what
changes is how many draft passes a cycle costs. Reading the confidence waits for the device once
per level."""

from __future__ import annotations

import torch

from specvlm.engine.drafters.model import ModelDrafter
from specvlm.engine.sampling import SamplingConfig, probabilities


class AdaptiveDrafter(ModelDrafter):
    whole_graph = False  # keep_going reads the device after each level

    def __init__(self, adapter, threshold: float = 0.3):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the adaptive drafter's threshold is a probability in [0, 1], got {threshold}")
        super().__init__(adapter)
        self.threshold = threshold
        self.confidence = 1.0

    def keep_going(self, depth: int, parent_logits: torch.Tensor, sampling: SamplingConfig) -> bool:
        if depth == 1:
            self.confidence = 1.0
        # level depth - 1's first node is on the main path (nodes are sorted by path, rank 0 first)
        dist = probabilities(parent_logits[:1], sampling) if not sampling.greedy else torch.softmax(parent_logits[:1], -1)
        self.confidence *= float(dist.max())
        return self.confidence >= self.threshold
