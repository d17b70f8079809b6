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
    # (depth + 1,) long on the device: accepted, then any nodes (or -1) as padding
    path: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def num_accepted(self) -> int:
        return len(self.accepted) - 1


def greedy_verdict(
    tree: DraftTree,
    tokens: torch.Tensor,  # (N,) long, node tokens (root included)
    target_argmax: torch.Tensor,  # (N,) long, the target's argmax at each node
    depth: int | None = None,  # levels proposed (default all): deeper nodes are not considered
) -> Verdict:
    """Longest path whose tokens all equal the target's argmax at their parents, then the bonus.

    Computed on the device; one transfer brings back the accepted length, the path and its tokens.
    """
    on = tree.on(tokens.device)
    target_argmax = target_argmax.to(tokens.device)
    correct = torch.zeros(tree.num_nodes + 1, dtype=torch.bool, device=tokens.device)  # last slot: padding
    correct[1:-1] = tokens[1:] == target_argmax[on.parent[1:]]
    if depth is not None and depth < tree.depth:
        correct[1:-1] &= on.node_depth[1:] <= depth
    paths = on.retrieve_paths  # (leaves, depth + 1), -1 padded
    along = correct[paths[:, 1:]]  # -1 indexes the False padding slot
    lengths = along.long().cumprod(dim=1).sum(dim=1)  # accepted draft tokens per path
    best = lengths.argmax()
    n = lengths[best]
    path = paths[best]
    last = path.gather(0, n.view(1))
    packed = torch.cat([n.view(1), target_argmax[last], path, tokens[path.clamp(min=0)]]).tolist()
    n, next_token, depth = packed[0], packed[1], tree.depth
    accepted = packed[2 : 2 + n + 1]
    tokens_along = packed[3 + depth + 1 : 3 + depth + 1 + n]
    return Verdict(accepted=accepted, next_token=next_token, recovered=False, accepted_tokens=tokens_along, path=path)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p where the difference has no mass (p == q)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), p)


def accept_candidates(
    candidates: torch.Tensor,  # (c,) long, drawn i.i.d. from q
    q: torch.Tensor,  # (V,) float32
    p: torch.Tensor,  # (V,) float32
    generator: torch.Generator | None,
) -> tuple[int | None, torch.Tensor]:
    """Recursive rejection over one node's candidates.

    Returns (index of the accepted candidate or None, the distribution to resample from when None).
    """
    u = torch.rand(candidates.numel(), generator=generator, device=p.device)
    for i, x in enumerate(candidates.tolist()):
        px, qx = float(p[x]), float(q[x])
        if qx > 0 and float(u[i]) * qx < px:  # u < p/q without dividing by a tiny q
            return i, p
        p = residual(p, q)
    return None, p


def sampled_verdict(
    tree: DraftTree,
    tokens: torch.Tensor,  # (N,) long
    q: torch.Tensor,  # (N, V) float32: q[i] is the draft distribution node i's children were drawn from
    p: torch.Tensor,  # (N, V) float32: the target distribution at each node
    generator: torch.Generator | None,
    depth: int | None = None,  # levels proposed (default all): nodes at this depth are leaves
) -> Verdict:
    """Walk down the tree accepting by recursive rejection; exact in distribution."""
    node = 0
    accepted = [0]
    while True:
        children = tree.children(node) if depth is None or len(accepted) <= depth else []
        if not children:
            token = torch.multinomial(p[node], 1, generator=generator)
            return Verdict(accepted=accepted, next_token=int(token), recovered=False,
                           accepted_tokens=tokens[accepted[1:]].tolist())
        index, dist = accept_candidates(tokens[children], q[node], p[node], generator)
        if index is None:
            token = torch.multinomial(dist, 1, generator=generator)
            return Verdict(accepted=accepted, next_token=int(token), recovered=True,
                           accepted_tokens=tokens[accepted[1:]].tolist())
        node = children[index]
        accepted.append(node)
