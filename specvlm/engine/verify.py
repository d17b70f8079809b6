"""Acceptance rules: pure functions on tensors, shared by chains and trees.

Glossary: the target's distribution is p, the draft's q. A cycle's output is the *accepted* draft
tokens plus one token from the target: the *bonus* token when the accepted path ends at a node the
target has scored with no rejected candidate (greedy: always the target's argmax there), or the
*recovered* token, resampled from the residual after every candidate of a node was rejected.

Greedy: a node is accepted when its token equals the target's argmax at its parent; the accepted
path is the longest root-to-leaf prefix of accepted nodes (siblings hold distinct tokens, so at most
one child of a node can match). Output equals target-only greedy decoding exactly.

Sampling: recursive rejection over the siblings of each node (SpecInfer's multi-candidate rule; a
chain is the one-candidate case, standard speculative sampling). Candidates of a node must be drawn
independently from q at that node. Candidate x is accepted with probability min(1, p(x) / q(x));
after a rejection p becomes norm(max(0, p - q)) for the next sibling. Exact in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specvlm.engine.tree import DraftTree


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one tree."""

    accepted: list[int]  # node indices root-first: [0, a1, ..., am]; m accepted draft tokens
    next_token: int  # bonus or recovered token
    recovered: bool  # True when next_token was resampled after a rejection
    accepted_tokens: list[int] | None = field(default=None, compare=False)  # tokens of accepted[1:]
    # (depth + 1,) long on the device: accepted, then -1 as padding
    path: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def num_accepted(self) -> int:
        return len(self.accepted) - 1


# A decision is one long tensor on the device, the verdict packed for one transfer (and, under tensor
# parallelism, one broadcast): [m, next token, recovered, path (depth + 1, -1 padded), path tokens].


def read_verdict(decision: torch.Tensor, depth: int) -> Verdict:
    """The Verdict of a decision: one transfer to the host."""
    values = decision.tolist()
    n = values[0]
    return Verdict(accepted=values[3 : 4 + n], next_token=values[1], recovered=bool(values[2]),
                   accepted_tokens=values[5 + depth : 5 + depth + n], path=decision[3 : 4 + depth])  # fmt: skip


def _pack(n: torch.Tensor, next_token: torch.Tensor, recovered: torch.Tensor, path: torch.Tensor,
          tokens: torch.Tensor) -> torch.Tensor:  # fmt: skip
    return torch.cat([n.view(1), next_token.view(1), recovered.long().view(1), path, tokens[path.clamp(min=0)]])


def greedy_decision(
    tree: DraftTree,
    tokens: torch.Tensor,  # (N,) long, node tokens (root included)
    target_argmax: torch.Tensor,  # (N,) long, the target's argmax at each node
    depth: int | None = None,  # levels proposed (default all): deeper nodes are not considered
) -> torch.Tensor:
    """Longest path whose tokens all equal the target's argmax at their parents, then the bonus;
    on the device, nothing waits for it."""
    on = tree.on(tokens.device)
    target_argmax = target_argmax.to(tokens.device)
    correct = torch.zeros(tree.num_nodes + 1, dtype=torch.bool, device=tokens.device)  # last slot: padding
    correct[1:-1] = tokens[1:] == target_argmax[on.parent[1:]]
    if depth is not None and depth < tree.depth:
        correct[1:-1] &= on.node_depth[1:] <= depth
    paths = on.retrieve_paths  # (leaves, depth + 1), -1 padded
    along = correct[paths[:, 1:]]  # -1 indexes the False padding slot
    lengths = along.long().cumprod(dim=1).sum(dim=1)  # accepted draft tokens per path
    # (1,) tensors, never 0-d ones: indexing with a 0-d tensor reads it on the host (a sync)
    best = lengths.argmax().view(1)
    n = lengths.index_select(0, best)
    path = torch.where(torch.arange(tree.depth + 1, device=tokens.device) <= n, paths.index_select(0, best)[0], -1)
    last = path.gather(0, n)
    return _pack(n, target_argmax[last], torch.zeros((), dtype=torch.bool, device=tokens.device), path, tokens)


def greedy_verdict(tree: DraftTree, tokens: torch.Tensor, target_argmax: torch.Tensor,
                   depth: int | None = None) -> Verdict:  # fmt: skip
    return read_verdict(greedy_decision(tree, tokens, target_argmax, depth), tree.depth)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p where the difference has no mass (p == q)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), p)


def accept_candidates(
    candidates: torch.Tensor,  # (N, C) long: each node's candidates in order, drawn i.i.d. from its q
    rows: tuple[torch.Tensor, ...],  # per rank i, the nodes with a real candidate i (tree.proposed_children)
    q: torch.Tensor,  # (N, V) float32
    p: torch.Tensor,  # (N, V) float32
    u: torch.Tensor,  # (N, C) uniform draws in [0, 1)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection over every node's candidates at once (one batch per sibling rank, on
    the nodes that have a candidate of that rank: the deeper ranks of a tree have few).

    Returns (N,) the index of each node's accepted candidate or -1, and (N, V) the distribution to
    resample from where none was: the residual after all of the node's candidates (p for a node
    without candidates).
    """
    accepted = torch.full(p.shape[:1], -1, dtype=torch.long, device=p.device)
    dist = p.clone()
    for i, r in enumerate(rows):
        if r.numel() == 0:
            continue
        x = candidates[r, i : i + 1]
        d, qr = dist[r], q[r]
        px, qx = d.gather(1, x)[:, 0], qr.gather(1, x)[:, 0]
        before = accepted[r]
        take = (before < 0) & (qx > 0) & (u[r, i] * qx < px)  # u < p/q without dividing by a tiny q
        accepted[r] = torch.where(take, i, before)
        dist[r] = residual(d, qr)
    return accepted, dist


def sampled_decision(
    tree: DraftTree,
    tokens: torch.Tensor,  # (N,) long
    q: torch.Tensor,  # (N, V) float32: q[i] is the draft distribution node i's children were drawn from
    p: torch.Tensor,  # (N, V) float32: the target distribution at each node
    generator: torch.Generator | None,
    depth: int | None = None,  # levels proposed (default all): nodes at this depth are leaves
) -> torch.Tensor:
    """Recursive rejection down the tree, exact in distribution, on the device without waiting.

    Every node's candidates are tested at once, each node with its own independent draws; the walk
    from the root then reads off the accepted path, and the closing token is drawn at the node where
    it ends, from that node's distribution (its residual, or p at a leaf): one vocabulary-wide draw,
    not one per node. A node's outcome depends only on its own draws, so the path, and the token
    drawn where it ends, follow the same law as a walk that draws at each visited node only.
    """
    device = p.device
    children = tree.proposed_children(depth, device)
    kids = children.matrix  # (N, C) child node indices in rank order, -1 padded
    valid = kids >= 0
    candidates = tokens[kids.clamp(min=0)]
    u = torch.rand(kids.shape, generator=generator, device=device)
    first, end = accept_candidates(candidates, children.rows, q, p, u)
    child = torch.where(first >= 0, kids.gather(1, first.clamp(min=0)[:, None])[:, 0], -1)
    node = torch.zeros(1, dtype=torch.long, device=device)  # (1,), not 0-d: 0-d indices sync with the host
    alive = torch.ones(1, dtype=torch.bool, device=device)
    path = [node]
    for _ in range(tree.depth):
        nxt = child[node]
        alive = alive & (nxt >= 0)
        path.append(torch.where(alive, nxt, -1))
        node = torch.where(alive, nxt, node)
    path = torch.cat(path)
    n = (path[1:] >= 0).sum()
    closing = torch.multinomial(end[node], 1, generator=generator)[:, 0]  # the token after the verdict
    return _pack(n, closing, valid[node].any(), path, tokens)


def sampled_verdict(tree: DraftTree, tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                    generator: torch.Generator | None, depth: int | None = None) -> Verdict:  # fmt: skip
    return read_verdict(sampled_decision(tree, tokens, q, p, generator, depth), tree.depth)
