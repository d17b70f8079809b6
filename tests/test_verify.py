"""Tests for specvlm.engine.verify: greedy verdicts on synthetic trees, the sampling rule's pieces,
and statistical exactness of sampled verification (outputs follow the target's p).

Statistical tests draw with fixed torch.Generator seeds and compare empirical frequencies with the
target distribution in total variation (TV). An exact rule's expected TV is
0.5 * sum_i sqrt(2 p_i (1 - p_i) / (pi n)): 0.006 for the 6-token tests (20k samples) and 0.011 for
the 16-cell joint (16k samples), with a standard deviation near 0.002, so the bounds 0.02 and 0.025
leave a wide margin. Each test also runs a plausible wrong rule through the same harness (patched
into sampled_verdict) and asserts that it FAILS the bound by far.
"""

from __future__ import annotations

import random

import pytest
import torch

from specvlm.engine import verify
from specvlm.engine.tree import DraftTree, candidate_rows
from specvlm.engine.verify import (
    Verdict,
    accept_candidates,
    greedy_verdict,
    residual,
    sampled_verdict,
)

N_SAMPLES = 20_000
N_JOINT = 16_000
N_NAIVE = 2_000  # the wrong rules miss by 0.2-0.45 in TV; fewer samples suffice to show it
TV_BOUND = 0.02
TV_BOUND_JOINT = 0.025

# Target p and draft q for the first-token tests. p puts 0.45 of its mass on tokens where
# p <= q, which matters for the naive rules below.
P = torch.tensor([0.30, 0.25, 0.15, 0.12, 0.10, 0.08])
Q = torch.tensor([0.10, 0.10, 0.20, 0.20, 0.20, 0.20])
V = P.numel()


def tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    freq = counts.double() / counts.sum()
    return 0.5 * float((freq - p.double()).abs().sum())


# --------------------------------------------------------------------------------------- greedy


def reference_greedy(tree: DraftTree, tokens: list[int], argmax: list[int]) -> tuple[list[int], int]:
    """Independent reference: walk down from the root taking the child that matches the argmax."""
    node, accepted = 0, [0]
    while True:
        match = [c for c in tree.children(node) if tokens[c] == argmax[node]]
        if not match:
            return accepted, argmax[node]
        node = match[0]
        accepted.append(node)


@pytest.fixture(scope="module")
def default() -> DraftTree:
    return DraftTree.default()


def default_tokens() -> torch.Tensor:
    return torch.arange(26) + 100  # node i holds token 100 + i: siblings distinct


def greedy(tree, tokens, argmax) -> Verdict:
    return greedy_verdict(tree, torch.as_tensor(tokens), torch.as_tensor(argmax))


def test_greedy_no_match_gives_root_argmax(default):
    argmax = torch.arange(26) + 50  # no node token equals any argmax
    verdict = greedy(default, default_tokens(), argmax)
    assert verdict == Verdict(accepted=[0], next_token=50, recovered=False)
    assert verdict.num_accepted == 0


def test_greedy_full_match_down_the_deepest_path(default):
    tokens = default_tokens()
    argmax = torch.arange(26) + 50
    path = [0, 1, 5, 13, 21, 24]
    for parent, child in zip(path, path[1:]):
        argmax[parent] = tokens[child]
    argmax[24] = 999
    verdict = greedy(default, tokens, argmax)
    assert verdict.accepted == path and verdict.next_token == 999 and verdict.num_accepted == 5


def test_greedy_second_sibling_subtree(default):
    tokens = default_tokens()
    argmax = torch.arange(26) + 50
    for parent, child in [(0, 2), (2, 8), (8, 20)]:
        argmax[parent] = tokens[child]
    argmax[20] = 777
    # Decoys: matches below the rejected first child must not count.
    argmax[1] = tokens[5]
    argmax[5] = tokens[13]
    argmax[13] = tokens[21]
    verdict = greedy(default, tokens, argmax)
    assert verdict.accepted == [0, 2, 8, 20] and verdict.next_token == 777
    # what the engine uses without going back to the device: the tokens and the padded path
    assert verdict.accepted_tokens == tokens[[2, 8, 20]].tolist()
    assert verdict.path.tolist()[:4] == [0, 2, 8, 20] and verdict.path.numel() == default.depth + 1


def test_greedy_stops_inside_the_tree(default):
    tokens = default_tokens()
    argmax = torch.arange(26) + 50
    argmax[0], argmax[1], argmax[6] = tokens[1], tokens[6], 555  # (0) then (0,1), none of its children
    verdict = greedy(default, tokens, argmax)
    assert verdict.accepted == [0, 1, 6] and verdict.next_token == 555
    # The last rank of the root, whose subtree is a single line.
    argmax = torch.arange(26) + 50
    argmax[0], argmax[4], argmax[12] = tokens[4], tokens[12], 3
    assert greedy(default, tokens, argmax) == Verdict([0, 4, 12], 3, False)


@pytest.mark.parametrize(
    "argmax, accepted, bonus",
    [
        ([9, 9, 9, 9, 9], [0], 9),  # first draft token wrong
        ([11, 12, 9, 9, 9], [0, 1, 2], 9),  # two accepted, third wrong
        ([11, 12, 13, 14, 42], [0, 1, 2, 3, 4], 42),  # all four accepted + bonus
        ([11, 9, 13, 14, 42], [0, 1], 9),  # a later match after a miss does not count
    ],
)
def test_greedy_chain(argmax, accepted, bonus):
    tokens = [10, 11, 12, 13, 14]  # root token 10, drafts 11..14
    verdict = greedy(DraftTree.chain(4), tokens, argmax)
    assert verdict.accepted == accepted and verdict.next_token == bonus and not verdict.recovered


def test_greedy_chain_of_one():
    tree = DraftTree.chain(1)
    assert greedy(tree, [5, 6], [6, 8]) == Verdict([0, 1], 8, False)
    assert greedy(tree, [5, 6], [7, 8]) == Verdict([0], 7, False)


def test_greedy_matches_a_reference_walk_on_random_cases(default):
    rng = random.Random(0)
    for _ in range(300):
        # Small vocabulary so that matches are frequent; siblings distinct as a drafter's top-k are.
        tokens = [0] * 26
        for node in range(26):
            kids = default.children(node)
            for kid, tok in zip(kids, rng.sample(range(6), len(kids))):
                tokens[kid] = tok
        argmax = [rng.randrange(6) for _ in range(26)]
        accepted, bonus = reference_greedy(default, tokens, argmax)
        verdict = greedy(default, tokens, argmax)
        assert (verdict.accepted, verdict.next_token) == (accepted, bonus)


# ------------------------------------------------------------------------------ rule pieces


def test_residual_known_values():
    p = torch.tensor([0.4, 0.4, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(residual(p, q), torch.tensor([2 / 3, 1 / 3, 0.0]))
    one_sided = residual(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3]))
    assert torch.allclose(one_sided, torch.tensor([1.0, 0, 0]))
    # p == q: no residual mass, falls back to p (row-wise for batches).
    assert torch.equal(residual(p, p), p)
    batch = residual(torch.stack([p, p]), torch.stack([p, q]))
    assert torch.equal(batch[0], p)
    assert torch.allclose(batch[1], torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(residual(P, Q).sum(), torch.tensor(1.0))


def accept_one(candidates, q, p, g):
    """accept_candidates for one node: (index of the accepted candidate or None, resample dist)."""
    c = candidates.numel()
    u = torch.rand(1, c, generator=g)
    first, end = accept_candidates(candidates[None], candidate_rows(torch.ones(1, c, dtype=torch.bool)), q[None], p[None], u)
    return (None if int(first[0]) < 0 else int(first[0])), end[0]


def test_accept_candidates_batches_nodes_with_different_candidate_counts():
    """One call over many nodes (padding candidates ignored) decides each node as a call of its own."""
    g = torch.Generator().manual_seed(5)
    n, c = 40, 3
    q = torch.softmax(torch.randn(n, V, generator=g), -1)
    p = torch.softmax(torch.randn(n, V, generator=g), -1)
    candidates = torch.randint(0, V, (n, c), generator=g)
    counts = torch.randint(0, c + 1, (n,), generator=g)
    valid = torch.arange(c)[None] < counts[:, None]
    u = torch.rand(n, c, generator=g)
    first, end = accept_candidates(candidates, candidate_rows(valid), q, p, u)
    for i in range(n):
        k = int(counts[i])
        alone, alone_end = accept_candidates(candidates[i : i + 1, :k], candidate_rows(valid[i : i + 1, :k]), q[i : i + 1], p[i : i + 1],
                                             u[i : i + 1, :k])  # fmt: skip
        assert int(first[i]) == int(alone[0])
        if int(first[i]) < 0:
            assert torch.allclose(end[i], alone_end[0])
            want = p[i]
            for _ in range(k):
                want = residual(want, q[i])
            assert torch.allclose(end[i], want)


def test_accept_candidates_on_a_trees_rows_decides_as_every_row_would():
    """Testing each rank on the nodes that have a candidate there (tree.proposed_children) decides
    exactly as testing every node at every rank with the padding masked out, draw for draw."""
    g = torch.Generator().manual_seed(7)
    tree = DraftTree.default()
    n, c = tree.num_nodes, tree.children_matrix.shape[1]
    for depth in (None, 1, 3):
        kids = tree.children_matrix
        if depth is not None:
            kids = kids.masked_fill((tree.node_depth >= depth)[:, None], -1)
        valid = kids >= 0
        for _ in range(20):
            q = torch.softmax(torch.randn(n, V, generator=g), -1)
            p = torch.softmax(torch.randn(n, V, generator=g) + 2 * q, -1)
            candidates = torch.multinomial(q, c, replacement=True, generator=g)
            u = torch.rand(n, c, generator=g)
            first, end = accept_candidates(candidates, tree.proposed_children(depth, "cpu").rows, q, p, u)
            want, dist, want_end = torch.full((n,), -1), p, p  # every row, every rank, padding masked
            for i in range(c):
                x = candidates[:, i : i + 1]
                px, qx = dist.gather(1, x)[:, 0], q.gather(1, x)[:, 0]
                take = valid[:, i] & (want < 0) & (qx > 0) & (u[:, i] * qx < px)
                want = torch.where(take, i, want)
                dist = residual(dist, q)
                want_end = torch.where(valid[:, i : i + 1], dist, want_end)
            assert torch.equal(first, want)
            torch.testing.assert_close(end, want_end)
        children = tree.proposed_children(depth, "cpu")
        assert torch.equal(children.matrix, kids)
        assert [r.tolist() for r in children.rows] == [valid[:, i].nonzero()[:, 0].tolist() for i in range(c)]


def test_accept_candidates_p_equals_q_accepts_the_first():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        p = torch.softmax(torch.randn(V, generator=g), -1)
        candidates = torch.multinomial(p, 3, replacement=True, generator=g)
        index, _ = accept_one(candidates, p, p, g)
        assert index == 0


def test_accept_candidates_rejects_a_token_the_target_never_emits():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.0, 0.0, 0.0, 1.0])  # all draft mass on token 3, which p gives 0
    g = torch.Generator().manual_seed(0)
    for c in (1, 3):
        for _ in range(50):
            index, dist = accept_one(torch.full((c,), 3), q, p, g)
            assert index is None
            assert torch.allclose(dist, torch.tensor([0.5, 0.3, 0.2, 0.0]))  # norm(max(0, p - q))
    p2 = torch.tensor([0.4, 0.2, 0.1, 0.3])
    q2 = torch.tensor([0.1, 0.1, 0.2, 0.6])
    # Token 2 has p < q; whenever it is rejected the returned distribution is the residual.
    seen_reject = False
    for _ in range(100):
        index, dist = accept_one(torch.tensor([2]), q2, p2, g)
        if index is None:
            seen_reject = True
            assert torch.allclose(dist, torch.tensor([0.3 / 0.4, 0.1 / 0.4, 0.0, 0.0]))
    assert seen_reject


def test_accept_candidates_walks_the_residual_over_siblings():
    q = torch.tensor([0.5, 0.5, 0.0])
    p = torch.tensor([0.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        index, _ = accept_one(torch.tensor([0, 1]), q, p, g)
        assert index == 1  # token 0 impossible under p; token 1 certain under the residual
    # A token rejected once has no residual mass, so a later duplicate candidate is never accepted
    # (a rule that reused the original p would accept it about a third of the time).
    q = torch.tensor([0.75, 0.25])
    p = torch.tensor([0.25, 0.75])
    indices = [accept_one(torch.tensor([0, 0]), q, p, g)[0] for _ in range(600)]
    assert indices.count(1) == 0
    assert 150 < indices.count(0) < 250  # accepted at the first try with p/q = 1/3


# ------------------------------------------------------------------------ sampled, deterministic


def onehot(i: int, n: int = V) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), n).float()


def test_sampled_certain_acceptance_then_bonus():
    tree = DraftTree.chain(3)
    tokens = torch.tensor([0, 2, 4, 1])
    q = torch.stack([onehot(2), onehot(4), onehot(1), onehot(0)])
    p = torch.stack([onehot(2), onehot(4), onehot(1), onehot(5)])
    verdict = sampled_verdict(tree, tokens, q, p, torch.Generator().manual_seed(0))
    assert verdict == Verdict([0, 1, 2, 3], 5, False)


def test_sampled_certain_rejection_is_recovered():
    tree = DraftTree.chain(2)
    tokens = torch.tensor([0, 2, 4])
    q = torch.stack([onehot(2), onehot(4), onehot(0)])
    p = torch.stack([onehot(2), onehot(3), onehot(0)])  # the second draft token is impossible
    verdict = sampled_verdict(tree, tokens, q, p, torch.Generator().manual_seed(0))
    assert verdict == Verdict([0, 1], 3, True)


def test_sampled_multi_candidate_takes_the_matching_sibling():
    tree = DraftTree(((0,), (1,), (2,), (2, 0)))
    tokens = torch.tensor([0, 1, 3, 5, 2])
    uniform3 = torch.tensor([0.0, 1, 0, 1, 0, 1]) / 3
    q = torch.stack([uniform3, onehot(0), onehot(0), onehot(2), onehot(0)])
    p = torch.stack([onehot(5), onehot(0), onehot(0), onehot(4), onehot(2)])
    for seed in range(20):
        # Tokens 1 and 3 are impossible under p; 5 is certain under the residual. Below it, the
        # draft's token 2 is impossible under p[3], so 4 is recovered.
        verdict = sampled_verdict(tree, tokens, q, p, torch.Generator().manual_seed(seed))
        assert verdict == Verdict([0, 3], 4, True)
    p[3] = onehot(2)  # now the third sibling's child (token 2) is certain too
    verdict = sampled_verdict(tree, tokens, q, p, torch.Generator().manual_seed(0))
    assert verdict == Verdict([0, 3, 4], 2, False)


def test_sampled_is_deterministic_under_a_seed(default):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, V, (26,), generator=g)
    q = torch.softmax(torch.randn(26, V, generator=g), -1)
    p = torch.softmax(torch.randn(26, V, generator=g), -1)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return [sampled_verdict(default, tokens, q, p, gen) for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert isinstance(sampled_verdict(default, tokens, q, p, None), Verdict)  # global RNG allowed


# ------------------------------------------------------------------------ sampled, statistical


def mask_of(rows, candidates):
    """The (N, C) mask of real candidates from accept_candidates' per-rank rows."""
    valid = torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    for i, r in enumerate(rows):
        valid[r, i] = True
    return valid


def naive_accept_if_p_above_q(candidates, rows, q, p, u):
    """WRONG rule: accept the first candidate with p(x) > q(x), else resample from the residual.
    For P, Q above it never emits tokens 2..5 via acceptance, and the residual only covers tokens
    0 and 1: TV to P is exactly p({p <= q}) = 0.45."""
    take = mask_of(rows, candidates) & (p.gather(1, candidates) > q.gather(1, candidates))
    first = torch.where(take.any(1), take.long().argmax(1), -1)
    return first, residual(p, q)


def naive_no_residual_update(candidates, rows, q, p, u):
    """WRONG multi-candidate rule: every sibling is tested against the original p (the residual
    is only used for the final resample). With 3 candidates and P, Q above, TV to P is 0.21."""
    take = mask_of(rows, candidates) & (u * q.gather(1, candidates) < p.gather(1, candidates))
    first = torch.where(take.any(1), take.long().argmax(1), -1)
    return first, residual(p, q)


def first_token_counts(tree: DraftTree, n: int, seed: int) -> torch.Tensor:
    """Counts of the first output token of one cycle whose root children are i.i.d. from Q."""
    g = torch.Generator().manual_seed(seed)
    c = len(tree.children(0))
    assert tree.children(0) == list(range(1, c + 1)) and tree.depth == 1
    drafts = torch.multinomial(Q, n * c, replacement=True, generator=g).view(n, c)
    uniform = torch.full((V,), 1 / V)
    q = torch.stack([Q] + [uniform] * c)
    p = torch.stack([P] + [uniform] * c)  # leaves: the bonus distribution, irrelevant here
    counts = [0] * V
    for tokens in torch.cat([torch.zeros(n, 1, dtype=torch.long), drafts], dim=1):
        verdict = sampled_verdict(tree, tokens, q, p, g)
        first = int(tokens[verdict.accepted[1]]) if verdict.num_accepted else verdict.next_token
        counts[first] += 1
    return torch.tensor(counts)


def test_chain_of_one_first_token_follows_p(monkeypatch):
    """Standard speculative sampling: accept x ~ q with min(1, p/q), else resample from
    norm(max(0, p - q)). The first output token must follow P."""
    tree = DraftTree.chain(1)
    assert tv(first_token_counts(tree, N_SAMPLES, seed=0), P) < TV_BOUND
    monkeypatch.setattr(verify, "accept_candidates", naive_accept_if_p_above_q)
    assert tv(first_token_counts(tree, N_NAIVE, seed=0), P) > 0.3


def test_three_iid_candidates_first_token_follows_p(monkeypatch):
    """Recursive rejection over 3 siblings drawn i.i.d. from Q: the first output token follows P."""
    tree = DraftTree(((0,), (1,), (2,)))
    assert tv(first_token_counts(tree, N_SAMPLES, seed=1), P) < TV_BOUND
    monkeypatch.setattr(verify, "accept_candidates", naive_no_residual_update)
    assert tv(first_token_counts(tree, N_NAIVE, seed=1), P) > 0.15


# Two-step target and draft over 4 tokens: P2[a] / Q2[a] are the distributions of the second
# token given the first token a, so a rule that mixes up nodes or conditions shows in the joint.
P1 = torch.tensor([0.40, 0.30, 0.20, 0.10])
Q1 = torch.tensor([0.10, 0.20, 0.30, 0.40])
P2 = torch.tensor(
    [
        [0.70, 0.10, 0.10, 0.10],
        [0.05, 0.05, 0.30, 0.60],
        [0.25, 0.25, 0.25, 0.25],
        [0.10, 0.60, 0.20, 0.10],
    ]
)
Q2 = torch.tensor(
    [
        [0.10, 0.40, 0.40, 0.10],
        [0.40, 0.30, 0.20, 0.10],
        [0.10, 0.10, 0.40, 0.40],
        [0.25, 0.25, 0.25, 0.25],
    ]
)


def first_two_counts(n: int, seed: int) -> torch.Tensor:
    """Joint counts of the first two output tokens. A cycle on a 2-chain gives one to three
    tokens; when it gives only one, a second cycle (a 1-chain drafted from Q2[y1]) supplies the
    second token, as the decode loop would."""
    g = torch.Generator().manual_seed(seed)
    chain2, chain1 = DraftTree.chain(2), DraftTree.chain(1)
    uniform = torch.full((4,), 0.25)
    # Per first token a: the (q, p) rows of the 2-chain, and of the 1-chain of a second cycle.
    q2 = [torch.stack([Q1, Q2[a], uniform]) for a in range(4)]
    p2 = [torch.stack([P1, P2[a], uniform]) for a in range(4)]
    q1 = [torch.stack([Q2[a], uniform]) for a in range(4)]
    p1 = [torch.stack([P2[a], uniform]) for a in range(4)]
    x1 = torch.multinomial(Q1, n, replacement=True, generator=g)
    x2 = torch.multinomial(Q2[x1], 1, generator=g)[:, 0]  # x2 ~ Q2[x1], row by row
    retry = torch.multinomial(Q2, n, replacement=True, generator=g)  # retry[a, i] ~ Q2[a]
    counts = torch.zeros(4, 4)
    for i, tokens in enumerate(torch.stack([torch.zeros_like(x1), x1, x2], dim=1)):
        a = int(tokens[1])
        verdict = sampled_verdict(chain2, tokens, q2[a], p2[a], g)
        out = tokens[verdict.accepted[1:]].tolist() + [verdict.next_token]
        if len(out) == 1:
            y1 = out[0]
            draft = retry[y1, i : i + 1]
            again = sampled_verdict(chain1, torch.cat([draft.new_zeros(1), draft]), q1[y1], p1[y1], g)
            out.append(int(draft) if again.num_accepted else again.next_token)
        counts[out[0], out[1]] += 1
    return counts


def test_two_chain_second_token_follows_conditional_p(monkeypatch):
    """(y1, y2) ~ P1(y1) * P2[y1](y2): the second token follows the target's conditional."""
    joint = P1[:, None] * P2
    counts = first_two_counts(N_JOINT, seed=2)
    assert tv(counts.flatten(), joint.flatten()) < TV_BOUND_JOINT
    # Conditionals separately, for the well-populated first tokens.
    for a in range(3):
        assert tv(counts[a], P2[a]) < 0.04, f"second token given {a}"
    monkeypatch.setattr(verify, "accept_candidates", naive_accept_if_p_above_q)
    assert tv(first_two_counts(N_NAIVE, seed=2).flatten(), joint.flatten()) > 0.2
