"""Pruning the draft's video tokens: selection strategies (pure) and a picture of a selection."""

from specvlm.pruning.picture import render_selection
from specvlm.pruning.strategies import (
    STRATEGIES,
    PruneConfig,
    Selection,
    keep_budget,
    needs_scores,
    select,
)

__all__ = [
    "STRATEGIES",
    "PruneConfig",
    "Selection",
    "keep_budget",
    "needs_scores",
    "render_selection",
    "select",
]
