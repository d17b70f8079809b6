"""Tests for specvlm.pruning.strategies: pure selection rules on synthetic layouts and scores."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from specvlm.layout import grid_layout
from specvlm.pruning import STRATEGIES, PruneConfig, Selection, keep_budget, needs_scores, select

RATIOS = (0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 1.0)
GRIDS = ((1, 1, 1), (1, 3, 3), (2, 3, 5), (4, 7, 7), (8, 14, 14))


def layout(grid: tuple[int, int, int], offset: int = 3):
    t, h, w = grid
    return grid_layout(torch.arange(offset, offset + t * h * w), grid)


def rand_scores(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) ** 6  # long-tailed, like attention


def heavy_head(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """10% of tokens (scattered) hold 60% of the mass, each 6/100; the rest share 40%."""
    heavy = torch.arange(3, n, 10)  # 10 tokens
    scores = torch.full((n,), 40.0 / (n - heavy.numel()), dtype=torch.float64)
    scores[heavy] = 60.0 / heavy.numel()
    return scores, heavy


def is_evenly_spaced(idx: torch.Tensor) -> bool:
    gaps = idx.diff()
    return gaps.numel() == 0 or int(gaps.max() - gaps.min()) <= 1


def assert_valid(sel: Selection, n: int, budget: int) -> None:
    assert sel.budget == budget
    assert sel.kept.dtype == torch.long and sel.stage1.dtype == torch.bool
    assert sel.kept.shape == sel.stage1.shape == (budget,)
    assert torch.equal(sel.kept, sel.kept.sort().values)  # original order
    assert sel.kept.unique().numel() == budget
    if budget:
        assert 0 <= int(sel.kept.min()) and int(sel.kept.max()) < n


# ------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    "n, ratio, expected",
    [
        (100, 0.0, 100), (100, 1.0, 0), (100, 0.9, 10), (100, 0.95, 5), (100, 0.5, 50),
        (10, 0.95, 1),  # 0.5 rounds up
        (30, 0.95, 2),  # 1.5 rounds up
        (10, 0.85, 2),  # 1.5 rounds up (in floats 0.15 * 10 is 1.5000000000000002)
        (10, 0.65, 4),  # 3.5 rounds up (in floats (1 - 0.65) * 10 is 3.4999999999999996)
        (7, 0.9, 1), (3, 0.9, 0), (12544, 0.9, 1254), (0, 0.5, 0), (1, 0.5, 1), (1, 0.6, 0),
    ],
)  # fmt: skip
def test_keep_budget_rounds_half_up_on_the_decimal_ratio(n, ratio, expected):
    assert keep_budget(n, ratio) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.9", True])
def test_keep_budget_rejects_bad_ratio(bad):
    with pytest.raises(ValueError, match="ratio"):
        keep_budget(10, bad)


def test_keep_budget_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        keep_budget(-1, 0.5)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_every_strategy_keeps_exactly_the_budget(strategy, grid, ratio):
    lay = layout(grid)
    n = len(lay)
    sel = select(PruneConfig(strategy=strategy, ratio=ratio), lay, rand_scores(n))
    assert_valid(sel, n, n if strategy == "none" else keep_budget(n, ratio))


def test_none_keeps_all_whatever_the_ratio():
    lay = layout((2, 3, 5))
    sel = select(PruneConfig(strategy="none", ratio=1.0), lay)
    assert torch.equal(sel.kept, torch.arange(30)) and not sel.stage1.any()


# ------------------------------------------------------------------------------------- specvlm


def test_stage1_takes_exactly_the_heavy_tokens_needed_to_reach_the_mass():
    scores, heavy = heavy_head()
    sel = select(PruneConfig(ratio=0.9, stage1_mass=0.4), layout((1, 10, 10)), scores)
    # 40% of the mass = 6.67 heavy tokens -> 7, all heavy ones, lowest indices first among ties.
    first = sel.kept[sel.stage1]
    assert torch.equal(first, heavy[:7])
    assert sel.num_stage1 == 7 and sel.num_stage2 == 3
    # Stage II: 3 evenly spaced picks over the 93 untouched tokens, in their original order.
    rest = torch.tensor([i for i in range(100) if i not in set(heavy[:7].tolist())])
    assert torch.equal(sel.kept[~sel.stage1], rest[torch.tensor([0, 46, 92])])


def test_stage1_mass_exactly_reached_stops_there():
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])  # 40% of 10 is reached exactly by the first token
    sel = select(PruneConfig(ratio=0.0, stage1_mass=0.4), layout((1, 2, 2)), scores)
    assert sel.kept[sel.stage1].tolist() == [0]


def test_stage1_is_capped_at_the_budget():
    scores, heavy = heavy_head()
    # mass 0.55 needs 10 heavy tokens, but the budget is 5: the 5 heaviest (lowest index on ties).
    sel = select(PruneConfig(ratio=0.95, stage1_mass=0.55), layout((1, 10, 10)), scores)
    assert sel.budget == 5 and sel.stage1.all()
    assert torch.equal(sel.kept, heavy[:5])


def test_stage1_mass_one_takes_every_positive_score_then_stage2_fills():
    scores = torch.zeros(20)
    scores[[2, 9, 15]] = torch.tensor([0.5, 0.25, 0.25])
    sel = select(PruneConfig(ratio=0.5, stage1_mass=1.0), layout((1, 4, 5)), scores)
    assert sel.kept[sel.stage1].tolist() == [2, 9, 15]
    assert sel.num_stage2 == 7


def test_stage1_keeps_at_least_one_token_for_any_positive_mass():
    scores = rand_scores(50)
    sel = select(PruneConfig(ratio=0.5, stage1_mass=1e-9), layout((2, 5, 5)), scores)
    assert sel.num_stage1 == 1 and sel.kept[sel.stage1].item() == int(scores.argmax())


def test_stage1_mass_zero_is_uniform():
    lay, scores = layout((4, 7, 7)), rand_scores(196)
    a = select(PruneConfig(ratio=0.9, stage1_mass=0.0), lay, scores)
    b = select(PruneConfig(strategy="uniform", ratio=0.9), lay)
    assert torch.equal(a.kept, b.kept) and not a.stage1.any()


def test_all_zero_scores_leave_stage1_empty_and_stage2_fills():
    lay = layout((4, 7, 7))
    sel = select(PruneConfig(ratio=0.9), lay, torch.zeros(196))
    assert sel.num_stage1 == 0 and sel.budget == 20
    assert torch.equal(sel.kept, select(PruneConfig(strategy="uniform", ratio=0.9), lay).kept)


def test_all_equal_scores_rank_by_index():
    lay = layout((1, 4, 5))
    scores = torch.full((20,), 0.05)
    sel = select(PruneConfig(ratio=0.5, stage1_mass=0.4), lay, scores)
    assert sel.kept[sel.stage1].tolist() == list(range(8))  # 8 * 0.05 = 0.4
    assert select(PruneConfig(strategy="attention", ratio=0.75), lay, scores).kept.tolist() == [0, 1, 2, 3, 4]
    assert select(PruneConfig(strategy="reversed-attention", ratio=0.75), lay, scores).kept.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.95])
def test_stage2_is_evenly_spaced_over_the_tokens_stage1_left(ratio):
    lay, scores = layout((8, 14, 14)), rand_scores(8 * 14 * 14, seed=3)
    sel = select(PruneConfig(ratio=ratio), lay, scores)
    taken = set(sel.kept[sel.stage1].tolist())
    rest = torch.tensor([i for i in range(len(lay)) if i not in taken])
    positions = torch.searchsorted(rest, sel.kept[~sel.stage1])  # ranks among the leftovers
    assert torch.equal(rest[positions], sel.kept[~sel.stage1])
    assert is_evenly_spaced(positions)
    if sel.num_stage2:
        assert positions[0] == 0 and (sel.num_stage2 < 2 or positions[-1] == rest.numel() - 1)
    assert select(PruneConfig(ratio=0.5), lay, scores).num_stage2 > 0  # the check above bites


# ------------------------------------------------------------------------------------- baselines


def test_uniform_is_the_publications_linspace_exactly_and_never_repeats():
    checked = 0
    for m in range(1, 65):
        lay = layout((1, 1, m))
        for r in range(0, m + 1):
            picks = select(PruneConfig(strategy="uniform", ratio=1 - r / m), lay).kept
            if picks.numel() != r:  # the ratio did not round-trip to r; the budget rule is tested above
                continue
            checked += 1
            # linspace(0, m-1, r).round() in exact arithmetic (Python rounds Fractions half to even)
            exact = [round(Fraction(j * (m - 1), r - 1)) for j in range(r)] if r > 1 else [0] * r
            assert picks.tolist() == exact, (m, r)
            # float linspace agrees except at exact halves, where its rounding error decides
            approx = torch.linspace(0, m - 1, r, dtype=torch.float64).round().long()
            ties = [r > 1 and (2 * j * (m - 1)) % (r - 1) == 0 and (j * (m - 1)) % (r - 1) != 0 for j in range(r)]
            assert all(t or int(a) == e for a, e, t in zip(approx, exact, ties)), (m, r)
            assert picks.unique().numel() == r and is_evenly_spaced(picks)
    assert checked > 2000


def test_uniform_spreads_over_frames():
    lay = layout((8, 14, 14))
    sel = select(PruneConfig(strategy="uniform", ratio=0.9), lay)
    per_frame = torch.bincount(lay.frame[sel.kept], minlength=8)
    assert int(per_frame.max() - per_frame.min()) <= 1


def test_windows():
    lay = layout((1, 2, 5))  # n = 10
    cfg = dict(ratio=0.7)  # budget 3
    assert select(PruneConfig("window-front", **cfg), lay).kept.tolist() == [0, 1, 2]
    assert select(PruneConfig("window-middle", **cfg), lay).kept.tolist() == [3, 4, 5]
    assert select(PruneConfig("window-back", **cfg), lay).kept.tolist() == [7, 8, 9]
    assert select(PruneConfig("window-middle", ratio=0.6), lay).kept.tolist() == [3, 4, 5, 6]


def test_attention_and_reversed_attention_rank_by_score():
    scores = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.9, 0.2, 0.4, 0.8, 0.6, 0.7])
    lay = layout((1, 2, 5))
    top = select(PruneConfig("attention", ratio=0.7), lay, scores)
    assert top.kept.tolist() == [4, 7, 9] and top.stage1.all()
    bottom = select(PruneConfig("reversed-attention", ratio=0.7), lay, scores)
    assert bottom.kept.tolist() == [0, 2, 5] and bottom.stage1.all()


def test_position_strategies_do_not_mark_stage1():
    lay = layout((2, 3, 5))
    for strategy in ("uniform", "random", "window-front", "window-middle", "window-back", "none"):
        assert not select(PruneConfig(strategy, ratio=0.5), lay).stage1.any()


def test_random_depends_on_the_seed_only_and_leaves_the_global_rng_alone():
    lay = layout((8, 14, 14))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = select(PruneConfig("random", ratio=0.9, seed=7), lay)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)
    b = select(PruneConfig("random", ratio=0.9, seed=7), lay, rand_scores(len(lay)))
    c = select(PruneConfig("random", ratio=0.9, seed=8), lay)
    assert torch.equal(a.kept, b.kept) and not torch.equal(a.kept, c.kept)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic(strategy):
    lay, scores = layout((4, 7, 7)), rand_scores(196, seed=5)
    cfg = PruneConfig(strategy, ratio=0.8)
    a, b = select(cfg, lay, scores), select(cfg, lay, scores.clone())
    assert torch.equal(a.kept, b.kept) and torch.equal(a.stage1, b.stage1)


# ------------------------------------------------------------------------------------- edges


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_zero_and_full(strategy):
    lay, scores = layout((2, 3, 5)), rand_scores(30)
    empty = select(PruneConfig(strategy, ratio=1.0), lay, scores)
    full = select(PruneConfig(strategy, ratio=0.0), lay, scores)
    assert full.kept.tolist() == list(range(30))
    if strategy != "none":
        assert empty.budget == 0 and empty.kept.numel() == 0 and empty.stage1.numel() == 0


def test_specvlm_full_budget_marks_stage1_then_stage2():
    scores, heavy = heavy_head()
    sel = select(PruneConfig(ratio=0.0), layout((1, 10, 10)), scores)
    assert sel.kept.tolist() == list(range(100))
    assert torch.equal(sel.kept[sel.stage1], heavy[:7])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_token_and_single_frame(strategy):
    one = select(PruneConfig(strategy, ratio=0.5), layout((1, 1, 1)), torch.tensor([0.3]))
    assert one.kept.tolist() == [0]
    frame = select(PruneConfig(strategy, ratio=0.9), layout((1, 14, 14)), rand_scores(196))
    assert_valid(frame, 196, 196 if strategy == "none" else 20)


def test_empty_layout():
    lay = grid_layout(torch.arange(0), (0, 3, 3))
    sel = select(PruneConfig(ratio=0.5), lay, torch.zeros(0))
    assert sel.budget == 0 and sel.kept.numel() == 0


def test_scores_on_any_float_dtype_and_ints():
    lay = layout((1, 2, 5))
    base = select(PruneConfig("attention", ratio=0.7), lay, torch.arange(10.0)).kept
    for scores in (torch.arange(10, dtype=torch.float16), torch.arange(10, dtype=torch.bfloat16), torch.arange(10)):
        assert torch.equal(select(PruneConfig("attention", ratio=0.7), lay, scores).kept, base)


# ------------------------------------------------------------------------------------- errors


def test_needs_scores():
    assert {s for s in STRATEGIES if needs_scores(s)} == {"specvlm", "attention", "reversed-attention"}
    with pytest.raises(ValueError, match="unknown pruning strategy"):
        needs_scores("fastv")


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown pruning strategy 'fastv'.*specvlm, uniform, random"):
        PruneConfig("fastv")
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\], got ratio=1.2"):
        PruneConfig(ratio=1.2)
    with pytest.raises(ValueError, match="ratio"):
        PruneConfig(ratio=float("nan"))
    with pytest.raises(ValueError, match="stage1_mass"):
        PruneConfig(stage1_mass=-0.1)
    with pytest.raises(ValueError, match="seed"):
        PruneConfig(seed=1.5)
    with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64 - 1\]"):
        PruneConfig(strategy="random", seed=2**64)  # torch's manual_seed would fail at the selection


@pytest.mark.parametrize("strategy", ["specvlm", "attention", "reversed-attention"])
def test_missing_scores(strategy):
    with pytest.raises(ValueError, match=f"{strategy}.*pass scores of shape \\(30,\\)"):
        select(PruneConfig(strategy), layout((2, 3, 5)))


@pytest.mark.parametrize(
    "scores, message",
    [
        (torch.ones(29), r"shape \(30,\).*got \(29,\)"),
        (torch.ones(1, 30), r"shape \(30,\).*got \(1, 30\)"),
        (torch.tensor([float("nan")] + [1.0] * 29), "NaN at video token"),
        (torch.tensor([1.0] * 29 + [float("inf")]), "inf at video token"),
        (torch.tensor([1.0, -0.5] + [1.0] * 28), "non-negative.*token\\(s\\) 1"),
        (torch.ones(30, dtype=torch.bool), "real numbers"),
    ],
)
def test_bad_scores(scores, message):
    with pytest.raises(ValueError, match=message):
        select(PruneConfig(), layout((2, 3, 5)), scores)
    # validated even when the strategy does not need them: a wrong tensor is a bug upstream
    with pytest.raises(ValueError, match=message):
        select(PruneConfig("uniform"), layout((2, 3, 5)), scores)
