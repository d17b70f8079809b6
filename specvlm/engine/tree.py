"""Draft trees as plain data, compiled once.

A tree is a list of paths from the root, Medusa style: ``(0,)`` is the root's first child (the
draft's top token), ``(0, 1)`` that child's second child, and so on. Node 0 is the root: the last
accepted token, which neither model has processed yet. Nodes are numbered root first, then by depth,
then by path, so every level is one contiguous block and a node's parent always comes before it.

A chain of k tokens is the tree ``(0,), (0, 0), ..., (0,) * k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

# Medusa's "mc_sim_7b_63": 25 nodes + root, depth 5, the published default.
DEFAULT_TREE_PATHS: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1),
)  # fmt: skip


MAX_TREE_NODES = 1024  # the root included: one verification pass scores every node (the default tree has 26)
MAX_TREE_FILE_BYTES = 2**20


@dataclass(frozen=True)
class DraftTree:
    """A compiled draft tree. Every tensor field is indexed by node (root = 0)."""

    paths: tuple[tuple[int, ...], ...]  # node i >= 1 is paths[i - 1] after sorting

    def __post_init__(self):
        if len(self.paths) > MAX_TREE_NODES - 1:  # before any per-path work
            raise ValueError(f"a draft tree has at most {MAX_TREE_NODES - 1} nodes besides the root, got {len(self.paths)}")
        paths = tuple(tuple(int(r) for r in p) for p in self.paths)
        if not paths:
            raise ValueError("a draft tree needs at least one path")
        known = set(paths)
        if len(known) != len(paths):
            raise ValueError("draft tree paths must be unique")
        for p in paths:
            if not p or min(p) < 0:
                raise ValueError(f"a tree path is a non-empty list of child ranks >= 0, got {list(p)}")
            if len(p) > 1 and p[:-1] not in known:
                raise ValueError(f"tree path {list(p)} has no parent path {list(p[:-1])}")
            if p[-1] > 0 and p[:-1] + (p[-1] - 1,) not in known:
                raise ValueError(f"tree path {list(p)} skips rank {p[-1] - 1}: siblings must be ranks 0..n-1")
        object.__setattr__(self, "paths", tuple(sorted(paths, key=lambda p: (len(p), p))))

    @classmethod
    def chain(cls, k: int) -> "DraftTree":
        if not 1 <= k < MAX_TREE_NODES:
            raise ValueError(f"a chain needs 1 to {MAX_TREE_NODES - 1} draft tokens, got {k}")
        return cls(tuple((0,) * d for d in range(1, k + 1)))

    @classmethod
    def default(cls) -> "DraftTree":
        return cls(DEFAULT_TREE_PATHS)

    @classmethod
    def parse(cls, spec: str) -> "DraftTree":
        """'default', 'chain:K', or a file with one path per line ("0 1 2" or "[0, 1, 2]")."""
        if spec == "default":
            return cls.default()
        if spec.startswith("chain:"):
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"bad tree spec {spec!r}: expected chain:K with an integer K") from None
            return cls.chain(k)
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"bad tree spec {spec!r}: not 'default', 'chain:K' or an existing file of paths")
        if path.stat().st_size > MAX_TREE_FILE_BYTES:
            raise ValueError(f"{spec}: {path.stat().st_size:,} bytes, more than a tree file of at most "
                             f"{MAX_TREE_NODES - 1} paths needs ({MAX_TREE_FILE_BYTES:,})")  # fmt: skip
        paths = []
        for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip().strip("[](),")
            if not line:
                continue
            if len(paths) == MAX_TREE_NODES - 1:
                raise ValueError(f"{spec}: more than {MAX_TREE_NODES - 1} tree paths (a tree's nodes besides the root)")
            try:
                paths.append(tuple(int(x) for x in line.replace(",", " ").split()))
            except ValueError:
                raise ValueError(
                    f"{spec}:{lineno}: bad tree path {raw.strip()!r}: expected child ranks like '0 1' or '[0, 1]'"
                ) from None
        return cls(tuple(paths))

    @property
    def num_nodes(self) -> int:
        """Nodes including the root."""
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        return max(len(p) for p in self.paths)

    @cached_property
    def is_chain(self) -> bool:
        return all(p == (0,) * len(p) for p in self.paths)

    @cached_property
    def node_depth(self) -> torch.Tensor:  # (N,) long
        return torch.tensor([0] + [len(p) for p in self.paths])

    @cached_property
    def parent(self) -> torch.Tensor:  # (N,) long, root's parent is -1
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        return torch.tensor([-1] + [index.get(p[:-1], 0) for p in self.paths])

    @cached_property
    def rank(self) -> torch.Tensor:  # (N,) long, which of its parent's children a node is
        return torch.tensor([0] + [p[-1] for p in self.paths])

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:  # (N, N) bool, [i, j]: node i sees node j
        n = self.num_nodes
        mask = torch.eye(n, dtype=torch.bool)
        parent = self.parent.tolist()
        for i in range(1, n):
            mask[i] |= mask[parent[i]]
        return mask

    @cached_property
    def level_slices(self) -> tuple[slice, ...]:
        """Node ranges of each depth: level d is slice(level_slices[d])."""
        depths = self.node_depth.tolist()
        out = []
        for d in range(self.depth + 1):
            idx = [i for i, x in enumerate(depths) if x == d]
            out.append(slice(idx[0], idx[-1] + 1))
        return tuple(out)

    @cached_property
    def num_children(self) -> torch.Tensor:  # (N,) long
        return torch.bincount(self.parent[1:], minlength=self.num_nodes)

    @cached_property
    def max_children(self) -> int:
        return int(self.num_children.max())

    @cached_property
    def retrieve_paths(self) -> torch.Tensor:
        """(leaves, depth + 1) long: root-to-leaf node indices, padded with -1."""
        has_child = self.num_children > 0
        leaves = [i for i in range(1, self.num_nodes) if not has_child[i]]
        parent = self.parent.tolist()
        rows = []
        for leaf in leaves:
            path = [leaf]
            while path[-1] != 0:
                path.append(parent[path[-1]])
            path.reverse()
            rows.append(path + [-1] * (self.depth + 1 - len(path)))
        return torch.tensor(rows)

    @cached_property
    def draft_width(self) -> int:
        """Rows of every draft pass: the widest level the draft runs (levels 1..depth-1), at least 2
        (the root pass may hold an accepted leaf and the new root)."""
        widths = [s.stop - s.start for s in self.level_slices[1:-1]]
        return max([2, *widths])

    def draft_patterns(self) -> tuple[torch.Tensor, ...]:
        """(draft_width, num_nodes) bool visibility patterns of the draft's passes, all one shape:
        [0], [1]: the root pass with 1 or 2 pending tokens (causal among them); [d + 1]: level d's
        nodes over the block of nodes 0..N-1 (their ancestors). Padding rows see only the prefix."""
        rows, n = self.draft_width, self.num_nodes
        patterns = []
        for pending in (1, 2):
            p = torch.zeros(rows, n, dtype=torch.bool)
            p[:pending, :pending] = torch.ones(pending, pending, dtype=torch.bool).tril()
            patterns.append(p)
        for level in self.level_slices[1:-1]:
            p = torch.zeros(rows, n, dtype=torch.bool)
            p[: level.stop - level.start] = self.ancestor_mask[level]
            patterns.append(p)
        return tuple(patterns)

    @cached_property
    def _on_device(self) -> dict:
        return {}

    def on(self, device) -> SimpleNamespace:
        """The tensors the engine needs each cycle, copied to ``device`` once: parent, rank,
        node_depth, ancestor_mask, retrieve_paths, draft_patterns, the main path (nodes 0, 00, ...)."""
        device = torch.device(device)
        found = self._on_device.get(device)
        if found is None:
            main = list(self.main_path)
            found = self._on_device[device] = SimpleNamespace(
                parent=self.parent.to(device),
                rank=self.rank.to(device),
                node_depth=self.node_depth.to(device),
                ancestor_mask=self.ancestor_mask.to(device),
                retrieve_paths=self.retrieve_paths.to(device),
                draft_patterns=tuple(p.to(device) for p in self.draft_patterns()),
                draft_rows=torch.arange(self.draft_width, device=device),
                main_path=torch.tensor(main, device=device),
            )
        return found

    def proposed_children(self, depth: int | None, device) -> SimpleNamespace:
        """Each node's children among the levels proposed (all, or those above ``depth``), on
        ``device``, made once per (depth, device): ``matrix`` (N, max children), rank order, -1
        padded (a node at ``depth`` or below has none), and ``rows``: per sibling rank r, the nodes
        with a child of rank r (a sampled verdict tests each rank's candidates on those rows only)."""
        key = ("proposed_children", depth, torch.device(device))
        found = self._on_device.get(key)
        if found is None:
            kids = self.children_matrix
            if depth is not None and depth < self.depth:
                kids = kids.masked_fill((self.node_depth >= depth)[:, None], -1)
            found = self._on_device[key] = SimpleNamespace(
                matrix=kids.to(device), rows=tuple(r.to(device) for r in candidate_rows(kids >= 0))
            )
        return found

    @cached_property
    def main_path(self) -> tuple[int, ...]:
        """Nodes 0, 00, 000, ...: the root and every level's rank-0 child below it."""
        main, node = [0], 0
        while self.children(node):
            node = self.children(node)[0]
            main.append(node)
        return tuple(main)

    @cached_property
    def children_matrix(self) -> torch.Tensor:
        """(N, max children) long: each node's children in rank order, -1 padded."""
        rows = [self.children(i) for i in range(self.num_nodes)]
        width = max(1, self.max_children)
        return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)

    def children(self, node: int) -> list[int]:
        """Child node indices of ``node`` in rank order."""
        return [i for i in range(1, self.num_nodes) if int(self.parent[i]) == node]

    @cached_property
    def host_children(self) -> tuple[tuple[int, ...], ...]:
        """Every node's children in rank order, as host tuples (for per-cycle bookkeeping)."""
        return tuple(tuple(self.children(i)) for i in range(self.num_nodes))

    @cached_property
    def host_ranks(self) -> tuple[int, ...]:
        return tuple(self.rank.tolist())


@dataclass(frozen=True)
class TreeSchedule:
    """Draft trees by prompt length: a prompt takes the tree of the longest threshold it reaches.

    What pays depends on the context (benchmarks/tree_choice.py: for 7B/0.5B a 26-node tree 3 deep
    at 4k-16k, a 6-node one 2 deep at 64k-128k, where verification and the draft's passes cost
    more); a server that sees every length keeps one schedule. Any tree keeps the output the
    target's, so neither does a schedule change it."""

    steps: tuple[tuple[int, DraftTree], ...]  # (from this many prompt tokens, tree), ascending, the first from 0

    def __post_init__(self):
        steps = tuple((int(n), t) for n, t in self.steps)
        if not steps or steps[0][0] != 0:
            raise ValueError("a tree schedule starts at prompt length 0")
        if any(b[0] <= a[0] for a, b in zip(steps, steps[1:])):
            raise ValueError(f"a tree schedule's lengths ascend, got {[n for n, _ in steps]}")
        if not all(isinstance(t, DraftTree) for _, t in steps):
            raise TypeError("a tree schedule holds DraftTrees")
        object.__setattr__(self, "steps", steps)

    @property
    def depth(self) -> int:
        """The deepest of its trees."""
        return max(t.depth for _, t in self.steps)

    def for_context(self, length: int) -> DraftTree:
        tree = self.steps[0][1]
        for start, t in self.steps:
            if length >= start:
                tree = t
        return tree

    @classmethod
    def parse(cls, path: str | Path) -> "TreeSchedule":
        """A file of lines 'LENGTH TREE' (TREE: default, chain:K or a tree file, relative to the
        schedule's folder), e.g. '0 default' and '32768 trees/long.txt'."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"bad tree schedule {str(path)!r}: no such file")
        steps = []
        for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            start, _, spec = line.partition(" ")
            spec = spec.strip()
            try:
                length = int(start)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'LENGTH TREE', got {raw.strip()!r}") from None
            if not spec:
                raise ValueError(f"{path}:{lineno}: expected 'LENGTH TREE', got {raw.strip()!r}")
            if spec != "default" and not spec.startswith("chain:") and not Path(spec).is_absolute():
                spec = str(path.parent / spec)
            steps.append((length, DraftTree.parse(spec)))
        return cls(tuple(steps))


def tree_for(tree: "DraftTree | TreeSchedule", prompt_length: int) -> DraftTree:
    """The draft tree for a prompt of this many tokens: the tree itself, or a schedule's."""
    return tree.for_context(prompt_length) if isinstance(tree, TreeSchedule) else tree


def parse_tree(spec: str) -> "DraftTree | TreeSchedule":
    """'default', 'chain:K', a file of paths, or 'schedule:FILE' (a TreeSchedule)."""
    if spec.startswith("schedule:"):
        return TreeSchedule.parse(spec.split(":", 1)[1])
    return DraftTree.parse(spec)


def candidate_rows(valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N, C) host bool, each node's real candidates first -> for each rank, the nodes that have a
    real candidate there (each rank's rows within the previous rank's)."""
    return tuple(valid[:, i].nonzero()[:, 0] for i in range(valid.shape[1]))
