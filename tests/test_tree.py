"""Tests for specvlm.engine.tree: paths compiled to parent / depth / rank / masks / retrieve paths.

The expected values for the published default tree are written out by hand below, so a change in
node numbering or in any derived tensor shows up as a diff against this table.
"""

from __future__ import annotations

import random

import pytest
import torch

from specvlm.engine.tree import DEFAULT_TREE_PATHS, DraftTree

# Node numbering of the default tree (root 0, then by depth, then by path):
#  1:(0)  2:(1)  3:(2)  4:(3)
#  5:(0,0)  6:(0,1)  7:(0,2)  8:(1,0)  9:(1,1)  10:(2,0)  11:(2,1)  12:(3,0)
#  13:(0,0,0) 14:(0,0,1) 15:(0,0,2) 16:(0,1,0) 17:(0,1,1) 18:(0,2,0) 19:(0,2,1) 20:(1,0,0)
#  21:(0,0,0,0) 22:(0,0,0,1) 23:(0,0,0,2)
#  24:(0,0,0,0,0) 25:(0,0,0,0,1)
DEFAULT_PARENT = [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 5, 5, 6, 6, 7, 7, 8, 13, 13, 13, 21, 21]
DEFAULT_DEPTH = [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 5, 5]
DEFAULT_RANK = [0, 0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 2, 0, 1]
DEFAULT_RETRIEVE = {
    (0, 2, 9, -1, -1, -1),
    (0, 3, 10, -1, -1, -1),
    (0, 3, 11, -1, -1, -1),
    (0, 4, 12, -1, -1, -1),
    (0, 1, 5, 14, -1, -1),
    (0, 1, 5, 15, -1, -1),
    (0, 1, 6, 16, -1, -1),
    (0, 1, 6, 17, -1, -1),
    (0, 1, 7, 18, -1, -1),
    (0, 1, 7, 19, -1, -1),
    (0, 2, 8, 20, -1, -1),
    (0, 1, 5, 13, 22, -1),
    (0, 1, 5, 13, 23, -1),
    (0, 1, 5, 13, 21, 24),
    (0, 1, 5, 13, 21, 25),
}


def ancestors(parent: list[int], i: int) -> set[int]:
    out = {i}
    while parent[i] != -1:
        i = parent[i]
        out.add(i)
    return out


@pytest.fixture(scope="module")
def default() -> DraftTree:
    return DraftTree.default()


def test_default_tree_shape(default):
    assert default.num_nodes == 26
    assert default.depth == 5
    assert not default.is_chain
    assert len(default.paths) == 25


def test_default_node_order_is_root_then_depth_then_path(default):
    assert default.paths[0] == (0,)
    assert default.paths[4:8] == ((0, 0), (0, 1), (0, 2), (1, 0))
    assert default.paths[-2:] == ((0, 0, 0, 0, 0), (0, 0, 0, 0, 1))
    assert default.node_depth.tolist() == DEFAULT_DEPTH
    # The numbering does not depend on the order the paths are given in.
    shuffled = list(DEFAULT_TREE_PATHS)
    random.Random(0).shuffle(shuffled)
    assert DraftTree(tuple(shuffled)).paths == default.paths


def test_default_parent_and_rank(default):
    assert default.parent.tolist() == DEFAULT_PARENT
    assert default.rank.tolist() == DEFAULT_RANK
    # Each path's parent node is the node of the path with its last rank dropped.
    for i, path in enumerate(default.paths, start=1):
        parent = int(default.parent[i])
        assert (default.paths[parent - 1] if parent else ()) == path[:-1]


def test_default_children(default):
    assert default.num_children.tolist()[:9] == [4, 3, 2, 2, 1, 3, 2, 2, 1]
    assert default.max_children == 4
    assert default.children(0) == [1, 2, 3, 4]
    assert default.children(13) == [21, 22, 23]
    assert default.children(21) == [24, 25]
    assert default.children(25) == []


def test_default_ancestor_mask(default):
    mask = default.ancestor_mask
    assert mask.shape == (26, 26) and mask.dtype == torch.bool
    for i in range(26):
        seen = {j for j in range(26) if mask[i, j]}
        assert seen == ancestors(DEFAULT_PARENT, i), f"row {i}"
    assert {j for j in range(26) if mask[25, j]} == {0, 1, 5, 13, 21, 25}
    assert mask[0].tolist() == [True] + [False] * 25
    # Siblings never see each other.
    assert not mask[2, 1] and not mask[1, 2] and not mask[22, 21]


def test_default_retrieve_paths(default):
    paths = default.retrieve_paths
    assert paths.shape == (15, 6) and paths.dtype == torch.long
    rows = [tuple(r) for r in paths.tolist()]
    assert len(set(rows)) == len(rows)  # every leaf exactly once
    assert set(rows) == DEFAULT_RETRIEVE
    leaves = {i for i in range(1, 26) if default.num_children[i] == 0}
    assert {max(r) for r in rows} == leaves


def test_default_level_slices(default):
    assert default.level_slices == (
        slice(0, 1), slice(1, 5), slice(5, 13), slice(13, 21), slice(21, 24), slice(24, 26)
    )  # fmt: skip
    for d, s in enumerate(default.level_slices):
        assert (default.node_depth[s] == d).all()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_chain_is_a_line(k):
    tree = DraftTree.chain(k)
    assert tree.is_chain
    assert tree.num_nodes == k + 1 and tree.depth == k
    assert tree.parent.tolist() == [-1] + list(range(k))
    assert tree.node_depth.tolist() == list(range(k + 1))
    assert tree.rank.tolist() == [0] * (k + 1)
    assert tree.retrieve_paths.tolist() == [list(range(k + 1))]
    assert torch.equal(tree.ancestor_mask, torch.ones(k + 1, k + 1, dtype=torch.bool).tril())
    assert tree.level_slices == tuple(slice(d, d + 1) for d in range(k + 1))
    assert tree.max_children == 1


def test_small_tree_with_second_sibling_subtree():
    tree = DraftTree(((1, 0), (0,), (1,)))
    assert tree.paths == ((0,), (1,), (1, 0))
    assert tree.parent.tolist() == [-1, 0, 0, 2]
    assert sorted(tree.retrieve_paths.tolist()) == [[0, 1, -1], [0, 2, 3]]


def test_parse_default_and_chain(default):
    assert DraftTree.parse("default") == default
    chain = DraftTree.parse("chain:3")
    assert chain == DraftTree.chain(3)
    assert chain.paths == ((0,), (0, 0), (0, 0, 0))


def test_parse_file(tmp_path):
    spec = tmp_path / "tree.txt"
    spec.write_text("# a small tree\n0\n[1]\n\n0 0\n[0, 1]\n  # indented comment\n(1, 0)\n0 1 0  # inline comment\n")
    tree = DraftTree.parse(str(spec))
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 1, 0))


@pytest.mark.parametrize(
    "paths, match",
    [
        ((), "at least one path"),
        (((0,), (0,)), "unique"),
        (((0,), (0, 0, 0)), r"\[0, 0, 0\] has no parent path \[0, 0\]"),
        (((0,), (2,)), r"\[2\] skips rank 1"),
        (((0,), (0, 1)), r"\[0, 1\] skips rank 0"),
        (((0,), (0, -1)), r"child ranks >= 0, got \[0, -1\]"),
        (((),), "non-empty"),
    ],
)
def test_bad_paths(paths, match):
    with pytest.raises(ValueError, match=match):
        DraftTree(paths)


def test_tree_size_is_bounded():
    assert DraftTree.chain(1023).num_nodes == 1024
    with pytest.raises(ValueError, match="at most 1023 nodes besides the root, got 1024"):
        DraftTree(tuple((i,) for i in range(1024)))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("chain:0", "1 to 1023 draft tokens, got 0"),
        ("chain:-2", "1 to 1023 draft tokens, got -2"),
        ("chain:100000", "1 to 1023 draft tokens, got 100000"),  # refused at once, not built
        ("chain:x", "chain:K with an integer K"),
        ("chain:", "chain:K with an integer K"),
        ("no/such/tree.txt", "not 'default', 'chain:K' or an existing file"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        DraftTree.parse(spec)


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match="at least one path"):
        DraftTree.parse(str(empty))
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("0\n0 x\n")
    with pytest.raises(ValueError, match=r"garbage.txt:2: bad tree path '0 x'"):
        DraftTree.parse(str(garbage))
    many = tmp_path / "many.txt"  # a file of more paths than a tree may have: refused as it is read
    many.write_text("".join(f"{i}\n" for i in range(3000)))
    with pytest.raises(ValueError, match="more than 1023 tree paths"):
        DraftTree.parse(str(many))
    big = tmp_path / "big.txt"
    big.write_text("0 " * 2**20)
    with pytest.raises(ValueError, match="more than a tree file"):
        DraftTree.parse(str(big))
    orphan = tmp_path / "orphan.txt"
    orphan.write_text("0\n1 0\n")
    with pytest.raises(ValueError, match=r"\[1, 0\] has no parent path \[1\]"):
        DraftTree.parse(str(orphan))
