"""The seam between the loop and whatever proposes tokens: a ``Drafter``.

A drafter owns its model's workspace (KV cache and steps). Per request it is ``start``-ed on its
prepared prompt; per cycle it ``propose``-s a tree of tokens rooted at the last accepted token, may work while the
target verifies it (``during_verify``), and after the target's verdict it ``accept``-s the accepted
path (its cache keeps that path only).
Whatever a drafter proposes, the target's verification decides the output: greedy output stays the
target's own and sampled output exactly distributed, as long as, under sampling, every candidate
of a node is drawn from the ``q`` the proposal reports for it. A proposal may stop short of the
tree's depth (``Proposal.depth``): the levels below are not verified.

A new drafting rule is one new file in ``specvlm/engine/drafters``, registered in ``DRAFTERS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.static import Workspace
from specvlm.engine.tree import DraftTree
from specvlm.engine.verify import Verdict
from specvlm.models.base import PreparedInputs, VideoLMAdapter


@dataclass
class Proposal:
    tokens: torch.Tensor  # (N,) long on the drafter's device; node 0 is the root
    q: torch.Tensor | None  # (N, V) float32: the distribution node i's children were drawn from (sampling)
    depth: int  # levels proposed; nodes deeper than this are padding and are not verified
    passes: int  # forward passes of the draft model
    overlapped: bool = False  # drafted while the target verified the cycle before


class Drafter(ABC):
    """Proposes draft trees for one target; see the module docstring."""

    def __init__(self, adapter: VideoLMAdapter):
        self.adapter = adapter
        self.workspace: Workspace | None = None
        self.root_slot = 0

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def start(self, inputs: PreparedInputs, room: int, *, static: bool, compile: bool) -> None:
        """Take a workspace for ``inputs`` plus ``room`` slots and prefill it."""
        self.workspace = Workspace.reuse(self.adapter, inputs.length + room, role="draft", static=static,
                                         compile=compile)  # fmt: skip
        self.adapter.prefill(inputs, self.workspace.cache)

    @abstractmethod
    def propose(self, tree: DraftTree, pending: list[int], root_position: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Proposal:  # fmt: skip
        """A tree rooted at ``pending[-1]``. ``pending`` are accepted tokens the drafter has not
        processed yet (the root last); ``root_position`` is the root's rotary position in the
        drafter's own prompt."""

    def during_verify(self, tree: DraftTree, proposal: Proposal, root_position: int, sampling: SamplingConfig,
                      generator: torch.Generator | None, proposed: "torch.cuda.Event | None",
                      verified: "torch.cuda.Event | None" = None) -> None:  # fmt: skip
        """Called once the target's verification of ``proposal`` is queued, before its verdict is
        read: a drafter may queue work of its own meanwhile (see drafters/overlap.py), after the
        event ``proposed`` (recorded on the target's GPU once the proposal's tokens were final,
        before the verification; None off the GPU). ``verified``, recorded on the target's GPU
        after the verification, is reached when it is done (None off the GPU). Nothing, here."""

    def accept(self, verdict: Verdict, proposal: Proposal) -> int:
        """Keep the accepted path (``verdict.path``: (depth + 1,) node indices, -1 padded, on the
        target's device) in the cache, queued without waiting; returns how many accepted tokens the
        drafter has processed (it never runs its last proposed level)."""
        cache, root = self.workspace.cache, self.root_slot
        path = verdict.path.to(self.device)
        processed = min(verdict.num_accepted, proposal.depth - 1)
        cache.rollback(root + 1)  # node i sits at root_slot + i
        cache.move(path[1 : len(path) - 1].clamp(min=0) + root, root + 1)
        cache.commit(processed)
        return processed
