"""Which video tokens the draft keeps: pure selection rules, no model.

What this module promises:

* ``select(config, layout, scores)`` returns a :class:`Selection`: exactly ``budget`` indices into
  the layout, sorted ascending (so the kept tokens stay in their original order), and for each a
  flag saying whether Stage I (the score ranking) chose it. It reads only the layout's length and
  the scores; it never touches a model, a device or the global RNG.
* The budget is ``keep_budget(n, ratio)`` (``none`` keeps all ``n`` whatever the ratio). Rounding:
  ``floor((1 - ratio) * n + 1/2)`` (round half up), computed exactly on the ratio's decimal form,
  so ``ratio=0.9`` means 9/10 rather than the float just above it; ratio 0 keeps all, ratio 1 keeps
  none. A budget of 0 is allowed: the draft then sees the prompt's text but no video token.
* ``scores`` are the target's attention mass per video token, ``(n,)`` finite and non-negative.
  They are required by the strategies in ``needs_scores`` (whatever the ratio) and validated
  whenever given. Ties in a ranking go to the lower index (stable sorts), so results are
  deterministic; ``random`` depends only on ``config.seed``.

Strategies (``STRATEGIES``), the publication's method and the baselines it compares:

* ``specvlm``: Stage I ranks tokens by score and keeps the shortest prefix whose scores sum to at
  least ``stage1_mass`` of the total (capped at the budget). With ``stage1_mass > 0`` and any
  positive score that is at least one token; with ``stage1_mass == 0`` or all-zero scores Stage I
  keeps nothing. Stage II fills the rest of the budget with evenly spaced picks over the tokens
  Stage I left, in their original order.
* ``uniform``: Stage II alone over all tokens. Layouts list tokens frame-major and row-major, so
  even spacing over that order spreads picks over time and, within a frame, over rows (the
  publication's rule: a 1D linspace, not a 2D lattice).
* ``random``: a subset drawn with a ``torch.Generator`` seeded from ``config.seed``.
* ``window-front`` / ``window-middle`` / ``window-back``: ``budget`` consecutive tokens at the
  start, centred (the odd one left over goes after the window), or at the end.
* ``attention``: the ``budget`` highest scores. ``reversed-attention``: the lowest.
* ``none``: every token (plain speculative decoding).

Even spacing of ``r`` picks over ``m`` tokens is ``torch.linspace(0, m - 1, r).round()`` (round half
to even, as torch rounds), computed in integers so it is exact for any ``m`` and never repeats an
index (the step ``(m-1)/(r-1)`` is at least 1 whenever ``r <= m``).

``Selection.stage1`` is True for tokens chosen by the score ranking: Stage I of ``specvlm`` and
every token of ``attention`` / ``reversed-attention``; False for position-based picks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

import torch

from specvlm.engine.sampling import SEED_RANGE

if TYPE_CHECKING:  # only len(layout) is read; importing specvlm.models would load transformers
    from specvlm.layout import VideoTokenLayout

__all__ = [
    "STRATEGIES",
    "PruneConfig",
    "Selection",
    "keep_budget",
    "needs_scores",
    "select",
]

STRATEGIES: tuple[str, ...] = (
    "specvlm",
    "uniform",
    "random",
    "window-front",
    "window-middle",
    "window-back",
    "attention",
    "reversed-attention",
    "none",
)

_SCORED: frozenset[str] = frozenset({"specvlm", "attention", "reversed-attention"})


def _check_fraction(name: str, value: object) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not 0 <= float(value) <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {name}={value!r}")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune the draft's video tokens (one field per CLI flag)."""

    strategy: str = "specvlm"
    ratio: float = 0.9  # fraction of video tokens REMOVED: 0 keeps all, 1 keeps none
    stage1_mass: float = 0.4  # P: Stage I keeps top tokens until they hold P of the score mass
    seed: int = 0  # for "random"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown pruning strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        _check_fraction("ratio", self.ratio)
        _check_fraction("stage1_mass", self.stage1_mass)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got seed={self.seed!r}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2**63, 2**64 - 1] (what torch takes), got seed={self.seed!r}")


@dataclass(frozen=True)
class Selection:
    """The video tokens the draft keeps."""

    kept: torch.Tensor  # (k,) long, ascending indices into the layout
    stage1: torch.Tensor  # (k,) bool, True where the score ranking (Stage I) chose the token
    budget: int  # == k

    def __post_init__(self):
        if self.kept.ndim != 1 or self.stage1.shape != self.kept.shape:
            raise ValueError(
                f"Selection.kept and .stage1 must both be (k,), got {tuple(self.kept.shape)} "
                f"and {tuple(self.stage1.shape)}"
            )

    def __len__(self) -> int:
        return int(self.kept.numel())

    @property
    def num_stage1(self) -> int:
        return int(self.stage1.sum())

    @property
    def num_stage2(self) -> int:
        return len(self) - self.num_stage1


def keep_budget(n: int, ratio: float) -> int:
    """How many of ``n`` video tokens the draft keeps: ``(1 - ratio) * n`` rounded half up.

    Exact on the ratio's decimal form (``0.9`` is 9/10), clamped to ``[0, n]``: ratio 0 -> n,
    ratio 1 -> 0 (the draft then sees no video token, only text).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got n={n!r}")
    _check_fraction("ratio", ratio)
    keep = (1 - Fraction(repr(float(ratio)))) * int(n)
    return min(max(math.floor(keep + Fraction(1, 2)), 0), int(n))


def needs_scores(strategy: str) -> bool:
    """Whether ``strategy`` ranks tokens by the target's attention (so the prefill must capture it)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pruning strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy in _SCORED


# ---------------------------------------------------------------------------------------- helpers


def _even_picks(m: int, r: int) -> torch.Tensor:
    """``torch.linspace(0, m - 1, r).round()`` as exact integers: r distinct ascending picks of m."""
    if not 0 <= r <= m:
        raise ValueError(f"cannot pick {r} of {m} tokens")
    if r <= 1:
        return torch.zeros(r, dtype=torch.long)
    j = torch.arange(r, dtype=torch.long)
    num, den = j * (m - 1), r - 1  # pick j sits at num / den
    low, rem = num // den, num % den
    # Round half to even, like torch.round.
    up = (2 * rem > den) | ((2 * rem == den) & (low % 2 == 1))
    return low + up.long()


def _rank(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    # Stable sort: equal scores keep index order, so ties go to the lower index.
    return torch.sort(scores, descending=descending, stable=True).indices


def _stage1_count(scores: torch.Tensor, order: torch.Tensor, mass: float) -> int:
    """Length of the shortest prefix of ``order`` whose scores reach ``mass`` of the total."""
    if scores.numel() == 0:
        return 0
    cumsum = torch.cumsum(scores[order], dim=0)
    # The total is the cumsum's own end, so mass 1 stops exactly at the last positive score.
    target = mass * float(cumsum[-1])
    if target <= 0:  # mass 0 or all-zero scores: Stage I keeps nothing
        return 0
    return int((cumsum < target).sum()) + 1


# ------------------------------------------------------------------------------------- strategies
# Each takes (n tokens, budget, scores (n,) float64 or None, config) and returns
# (kept (budget,) long in any order, stage1 (budget,) bool aligned with it).

_Result = tuple[torch.Tensor, torch.Tensor]


def _position_only(kept: torch.Tensor) -> _Result:
    return kept, torch.zeros(kept.numel(), dtype=torch.bool)


def _specvlm(n: int, budget: int, scores: torch.Tensor | None, config: PruneConfig) -> _Result:
    assert scores is not None
    order = _rank(scores, descending=True)
    c = min(_stage1_count(scores, order, config.stage1_mass), budget)
    first = order[:c]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    rest = (~taken).nonzero().flatten()  # original order
    second = rest[_even_picks(rest.numel(), budget - c)]
    stage1 = torch.cat([torch.ones(c, dtype=torch.bool), torch.zeros(budget - c, dtype=torch.bool)])
    return torch.cat([first, second]), stage1


def _uniform(n: int, budget: int, scores, config) -> _Result:
    return _position_only(_even_picks(n, budget))


def _random(n: int, budget: int, scores, config) -> _Result:
    generator = torch.Generator().manual_seed(int(config.seed))
    return _position_only(torch.randperm(n, generator=generator)[:budget])


def _window_front(n: int, budget: int, scores, config) -> _Result:
    return _position_only(torch.arange(budget))


def _window_middle(n: int, budget: int, scores, config) -> _Result:
    return _position_only(torch.arange(budget) + (n - budget) // 2)


def _window_back(n: int, budget: int, scores, config) -> _Result:
    return _position_only(torch.arange(n - budget, n))


def _attention(n: int, budget: int, scores, config) -> _Result:
    return _rank(scores, descending=True)[:budget], torch.ones(budget, dtype=torch.bool)


def _reversed_attention(n: int, budget: int, scores, config) -> _Result:
    return _rank(scores, descending=False)[:budget], torch.ones(budget, dtype=torch.bool)


def _none(n: int, budget: int, scores, config) -> _Result:
    return _position_only(torch.arange(n))


_STRATEGY_FNS: dict[str, Callable[[int, int, torch.Tensor | None, PruneConfig], _Result]] = {
    "specvlm": _specvlm,
    "uniform": _uniform,
    "random": _random,
    "window-front": _window_front,
    "window-middle": _window_middle,
    "window-back": _window_back,
    "attention": _attention,
    "reversed-attention": _reversed_attention,
    "none": _none,
}
assert tuple(_STRATEGY_FNS) == STRATEGIES


def _check_scores(scores: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor of shape ({n},), got {type(scores).__name__}")
    if tuple(scores.shape) != (n,):
        raise ValueError(f"scores must have shape ({n},) (one per video token), got {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    # float64 on CPU: sums of many small attention weights, and results independent of device.
    s = scores.detach().to("cpu", torch.float64)
    if torch.isnan(s).any():
        raise ValueError(f"scores contain NaN at video token(s) {_first_few(torch.isnan(s))}")
    if torch.isinf(s).any():
        raise ValueError(f"scores contain inf at video token(s) {_first_few(torch.isinf(s))}")
    if (s < 0).any():
        raise ValueError(
            f"scores must be non-negative attention mass, got negative values at video token(s) "
            f"{_first_few(s < 0)}"
        )
    return s


def _first_few(mask: torch.Tensor, k: int = 5) -> str:
    idx = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, idx[:k])) + (f", ... ({len(idx)} in all)" if len(idx) > k else "")


def select(config: PruneConfig, layout: VideoTokenLayout, scores: torch.Tensor | None = None) -> Selection:
    """The video tokens the draft keeps under ``config``; see the module docstring.

    ``scores``: (n,) non-negative attention mass per video token of ``layout``; required when
    ``needs_scores(config.strategy)``. The result's tensors are on the CPU.
    """
    n = len(layout)
    if scores is not None:
        scores = _check_scores(scores, n)
    elif needs_scores(config.strategy):
        raise ValueError(
            f"pruning strategy {config.strategy!r} ranks video tokens by the target's attention: "
            f"pass scores of shape ({n},)"
        )
    budget = n if config.strategy == "none" else keep_budget(n, config.ratio)
    kept, stage1 = _STRATEGY_FNS[config.strategy](n, budget, scores, config)
    kept, perm = torch.sort(kept.long())
    return Selection(kept=kept, stage1=stage1[perm], budget=budget)
