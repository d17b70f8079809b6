"""The draft model's own proposals: at each level, a node's children are the draft's top-ranked
tokens (greedy) or independent draws from its distribution (sampling)."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from types import SimpleNamespace

import torch

from specvlm.engine.drafter import Drafter, Proposal
from specvlm.engine.sampling import SamplingConfig, probabilities
from specvlm.engine.tree import DraftTree


def finish(passes: Generator[None, None, Proposal]) -> Proposal:
    """Run a drafting generator's remaining passes; its Proposal."""
    while True:
        try:
            next(passes)
        except StopIteration as done:
            return done.value


class ModelDrafter(Drafter):
    """Every level of the tree, one forward pass each (the last level is drafted, not run).

    Every pass has ``tree.draft_width`` rows (padding rows see only the prefix), so one compiled
    step serves the whole tree. On a GPU the whole proposal, every pass and every level's choice
    of tokens, is one captured CUDA graph per (tree, pending tokens, sampling), replayed each cycle
    from device buffers: the host launches one graph, not a few dozen kernels per level, and the
    device runs the levels back to back. Nothing here waits for the device unless ``keep_going``
    does (a drafter whose ``keep_going`` reads the device sets ``whole_graph = False``). The cache
    is left holding the pending tokens committed and the drafted levels written.
    """

    whole_graph = True

    def propose(self, tree: DraftTree, pending: list[int], root_position: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Proposal:  # fmt: skip
        ws = self.workspace
        if not (self.whole_graph and ws.graphs):
            return finish(self.drafting(tree, pending, root_position, sampling, generator))
        key = ("proposal", tree, len(pending), sampling)
        inputs = ws.buffers.get(key)
        if inputs is None:  # kept with the workspace, whose graph reads them
            device = self.device
            inputs = ws.buffers[key] = SimpleNamespace(
                tree=tree,  # its device tensors are read by the graph
                pending=torch.zeros(len(pending), dtype=torch.long, device=device),
                root=torch.zeros((), dtype=torch.long, device=device),
                noise=None if sampling.greedy else torch.empty(tree.num_nodes, self.adapter.vocab_size, device=device),
            )  # fmt: skip
        for i, t in enumerate(pending):
            inputs.pending[i].fill_(t)
        inputs.root.fill_(root_position)
        if inputs.noise is not None:
            draw_noise(inputs.noise, generator)
        root_slot = ws.cache.length + len(pending) - 1
        proposal = ws.captured(key, lambda: finish(self.drafting(tree, inputs.pending, inputs.root, sampling, None,
                                                                 noise=inputs.noise)))  # fmt: skip
        self.root_slot = root_slot
        return dataclasses.replace(proposal)

    def drafting(self, tree: DraftTree, pending, root_position, sampling: SamplingConfig,
                 generator: torch.Generator | None, noise: torch.Tensor | None = None
                 ) -> Generator[None, None, Proposal]:  # fmt: skip
        """``propose`` one pass at a time: yields once each forward pass is queued (on the stream
        current when it is resumed) and returns the Proposal. ``pending`` and ``root_position`` may
        be host values or device tensors ((k,) and 0-d); with a static cache nothing but the tree's
        shape is read from the host, so the whole run can be captured. Under sampling a node's
        children are drawn by the exponential race over ``noise`` ((N, V) Exp(1) draws, made here
        from ``generator`` when not given): child i of node j is argmax(q_j / noise_i), a draw
        from q_j."""
        ws, draft = self.workspace, self.adapter
        cache = ws.cache
        n_nodes, device, rows = tree.num_nodes, draft.device, tree.draft_width
        on = tree.on(device)
        tokens = torch.zeros(n_nodes, dtype=torch.long, device=device)
        step_tokens = torch.zeros(1, rows, dtype=torch.long, device=device)
        if isinstance(pending, torch.Tensor):  # (k,) on the device
            step_tokens[0, : len(pending)] = pending
            tokens[0] = pending[-1]
        else:
            for i, t in enumerate(pending):
                step_tokens[0, i].fill_(t)
            tokens[0].fill_(pending[-1])
        q = None
        if not sampling.greedy:
            q = torch.zeros(n_nodes, draft.vocab_size, device=device)
            if noise is None:
                noise = draw_noise(torch.empty(n_nodes, draft.vocab_size, device=device), generator)
        first = root_position - (len(pending) - 1)
        # a static cache takes the prefix from the device (capturable); a dynamic one from the host
        prefix = cache.length_tensor if cache.static else cache.length
        logits = ws.step(step_tokens, (on.draft_rows + first)[None], prefix, on.draft_patterns[len(pending) - 1])
        cache.commit(len(pending))
        self.root_slot = cache.length - 1
        root_slot = cache.length_tensor - 1 if cache.static else self.root_slot
        parent_logits = logits[0, len(pending) - 1 : len(pending)]  # (1, V): the root's logits
        passes = 1
        yield
        for depth in range(1, tree.depth + 1):
            parents = tree.level_slices[depth - 1]
            level = tree.level_slices[depth]
            child_parent = on.parent[level] - parents.start  # (len(level),) index into parents
            if sampling.greedy:
                top = torch.topk(parent_logits, min(tree.max_children, draft.vocab_size), dim=-1).indices
                tokens[level] = top[child_parent, on.rank[level]]
            else:
                dist = probabilities(parent_logits, sampling)  # (len(parents), V)
                q[parents] = dist
                tokens[level] = (dist[child_parent] / noise[level]).argmax(-1)
            if depth == tree.depth or not self.keep_going(depth, parent_logits, sampling):
                return Proposal(tokens=tokens, q=q, depth=depth, passes=passes)
            width = level.stop - level.start
            step_tokens[0, :width] = tokens[level]
            positions = (torch.zeros_like(on.draft_rows) + (root_position + depth))[None]
            logits = ws.step(step_tokens, positions, root_slot, on.draft_patterns[depth + 1])
            cache.commit(width)
            parent_logits = logits[0, :width]
            passes += 1
            yield
        raise AssertionError("unreachable")

    def keep_going(self, depth: int, parent_logits: torch.Tensor, sampling: SamplingConfig) -> bool:
        """Whether to draft the level below ``depth`` (``parent_logits``: the draft's logits at
        level ``depth - 1``, whose children level ``depth`` holds). Always, here."""
        return True


def draw_noise(noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fill ``noise`` with Exp(1) draws, none of them 0 (a 0 would make its token certain)."""
    return noise.exponential_(generator=generator).clamp_min_(torch.finfo(noise.dtype).tiny)
