"""The draft tree that pays for a pair: the most expected tokens per millisecond, from the pair's
measured acceptance by depth and rank and its measured step costs.

Acceptance (``RankAcceptance``): ``p[d][r]``, the chance that, on a path the target has accepted
down to depth d, the target's next token is the draft's rank-r candidate at depth d + 1 (greedy:
its r-th most likely token; sampling: its r-th draw). The ranks of one node are exclusive events,
so a node's path is accepted with the product of its ranks' chances down from the root, and a tree
emits 1 + the sum of that over its nodes per cycle on average (the 1: the bonus or recovered token).
The engine's stats count it for any tree (``SpecStats.rank_acceptance``).

Costs (``StepCosts``): one draft pass (a depth-D tree takes D), and verification at a few measured
node counts, interpolated in between and never extrapolated: the search keeps to the largest
measured tree.

The search (as Sequoia's and EAGLE-2's expansions): for each depth, nodes are added best first (the
most likely path next, a node's next rank only after the one before it), and every tree along the
way is scored by expected tokens / (depth x draft pass + verification of its nodes). Verification
does not depend on the tree's shape, so the output does not either.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

from specvlm.engine.tree import DraftTree


@dataclass(frozen=True)
class RankAcceptance:
    p: tuple[tuple[float, ...], ...]  # p[d][r]: depth d + 1, rank r

    def __post_init__(self):
        rows = tuple(tuple(float(x) for x in row) for row in self.p)
        if not rows:
            raise ValueError("acceptance needs at least one depth")
        for d, row in enumerate(rows):
            if any(not 0.0 <= x <= 1.0 for x in row):
                raise ValueError(f"acceptance at depth {d + 1} must be probabilities in [0, 1], got {list(row)}")
            if sum(row) > 1.0 + 1e-6:
                raise ValueError(f"the ranks of one depth are exclusive: depth {d + 1} sums to {sum(row):.3f} > 1")
        object.__setattr__(self, "p", rows)

    @classmethod
    def main_path(cls, alphas) -> RankAcceptance:
        """Acceptance on the top-1 candidate only (rank 0 at every depth)."""
        return cls(tuple((float(a),) for a in alphas))

    def at(self, depth: int, rank: int) -> float:
        """The chance of rank ``rank`` at depth ``depth`` (1-based); 0 where nothing was measured."""
        row = self.p[depth - 1] if depth <= len(self.p) else ()
        return row[rank] if rank < len(row) else 0.0

    def path_probability(self, path) -> float:
        prob = 1.0
        for d, r in enumerate(path, 1):
            prob *= self.at(d, r)
        return prob

    def expected_tokens(self, tree: DraftTree) -> float:
        """Tokens a cycle of ``tree`` emits on average: 1 + the sum of its nodes' path chances."""
        return 1.0 + sum(self.path_probability(p) for p in tree.paths)


@dataclass(frozen=True)
class StepCosts:
    draft_pass_ms: float
    verify_ms: tuple[tuple[int, float], ...]  # (tree nodes with the root, ms), measured

    def __post_init__(self):
        points = tuple(sorted((int(n), float(ms)) for n, ms in self.verify_ms))
        if not points:
            raise ValueError("step costs need at least one measured verification")
        if self.draft_pass_ms < 0 or any(n < 1 or ms <= 0 for n, ms in points):
            raise ValueError(f"step costs must be positive: draft {self.draft_pass_ms}, verify {list(points)}")
        if len({n for n, _ in points}) != len(points):
            raise ValueError(f"one verification cost per node count, got {list(points)}")
        object.__setattr__(self, "verify_ms", points)

    @property
    def max_nodes(self) -> int:
        return self.verify_ms[-1][0]

    def verify(self, nodes: int) -> float:
        """Linear between measured node counts; the smallest measured cost below the first."""
        points = self.verify_ms
        if nodes > points[-1][0]:
            raise ValueError(f"verification is measured up to {points[-1][0]} nodes, not {nodes}")
        if nodes <= points[0][0]:
            return points[0][1]
        for (n0, c0), (n1, c1) in zip(points, points[1:]):
            if nodes <= n1:
                return c0 + (c1 - c0) * (nodes - n0) / (n1 - n0)
        raise AssertionError("unreachable")

    def cycle_ms(self, tree: DraftTree) -> float:
        return tree.depth * self.draft_pass_ms + self.verify(tree.num_nodes)


@dataclass(frozen=True)
class TreeChoice:
    tree: DraftTree
    tokens_per_cycle: float
    cycle_ms: float

    @property
    def ms_per_token(self) -> float:
        return self.cycle_ms / self.tokens_per_cycle

    def as_dict(self) -> dict:
        return {"nodes": self.tree.num_nodes, "depth": self.tree.depth, "tokens_per_cycle": self.tokens_per_cycle,
                "cycle_ms": self.cycle_ms, "ms_per_token": self.ms_per_token,
                "paths": [list(p) for p in self.tree.paths]}  # fmt: skip


def score(tree: DraftTree, acceptance: RankAcceptance, costs: StepCosts) -> TreeChoice:
    return TreeChoice(tree, acceptance.expected_tokens(tree), costs.cycle_ms(tree))


def best_tree(acceptance: RankAcceptance, costs: StepCosts, *, max_depth: int | None = None,
              max_nodes: int | None = None) -> TreeChoice:  # fmt: skip
    """The tree of at most ``max_nodes`` nodes (root included; default: the largest measured
    verification) and ``max_depth`` levels (default: the measured depths) with the fewest expected
    milliseconds per token."""
    max_depth = len(acceptance.p) if max_depth is None else max_depth
    max_nodes = costs.max_nodes if max_nodes is None else min(max_nodes, costs.max_nodes)
    if max_depth < 1 or max_nodes < 2:
        raise ValueError(f"a draft tree needs depth >= 1 and >= 2 nodes, got depth {max_depth}, nodes {max_nodes}")
    best = None
    for depth in range(1, max_depth + 1):
        for tree in _grown(acceptance, depth, max_nodes - 1):
            choice = score(tree, acceptance, costs)
            if best is None or choice.ms_per_token < best.ms_per_token - 1e-12:
                best = choice
    return best


def _grown(acceptance: RankAcceptance, depth: int, max_paths: int):
    """Trees of depth <= ``depth``, one more node each, best-first (ties: shallower, lower ranks).
    A node whose path has no chance of acceptance is never added (beyond the first): it would cost
    verification and emit nothing, however its cost was measured."""
    paths: list[tuple[int, ...]] = []
    frontier = [(-acceptance.at(1, 0), (0,))]
    while frontier and len(paths) < max_paths:
        chance, path = heapq.heappop(frontier)
        if chance == 0 and paths:
            return
        paths.append(path)
        yield DraftTree(tuple(paths))
        sibling = path[:-1] + (path[-1] + 1,)
        heapq.heappush(frontier, (-acceptance.path_probability(sibling), sibling))
        if len(path) < depth:
            child = path + (0,)
            heapq.heappush(frontier, (-acceptance.path_probability(child), child))


def write_tree(tree: DraftTree, path: Path) -> None:
    """One path per line, as ``DraftTree.parse`` (and ``--tree FILE``) reads it."""
    Path(path).write_text("".join(" ".join(map(str, p)) + "\n" for p in tree.paths))

