"""Drafting rules, one per file (see specvlm/engine/drafter.py for the interface)."""

from specvlm.engine.drafters.adaptive import AdaptiveDrafter
from specvlm.engine.drafters.model import ModelDrafter
from specvlm.engine.drafters.overlap import OverlapDrafter

DRAFTERS = {"model": ModelDrafter, "adaptive": AdaptiveDrafter, "overlap": OverlapDrafter}


def make_drafter(spec, adapter):
    """A Drafter from a name of DRAFTERS ("adaptive:0.3" sets the adaptive drafter's threshold), a
    Drafter class, or a Drafter already made."""
    from specvlm.engine.drafter import Drafter

    if isinstance(spec, Drafter):
        return spec
    if isinstance(spec, type) and issubclass(spec, Drafter):
        return spec(adapter)
    name, _, arg = str(spec).partition(":")
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {spec!r}: one of {', '.join(DRAFTERS)} (adaptive:P sets its threshold)")
    if not arg:
        return DRAFTERS[name](adapter)
    if name != "adaptive":
        raise ValueError(f"drafter {name!r} takes no argument, got {spec!r}")
    try:
        return AdaptiveDrafter(adapter, threshold=float(arg))
    except ValueError as error:
        raise ValueError(f"bad drafter {spec!r}: {error}") from None


__all__ = ["DRAFTERS", "AdaptiveDrafter", "ModelDrafter", "OverlapDrafter", "make_drafter"]
