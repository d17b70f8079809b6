"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the threads fight
# each other (a 10-token speculative run went from 0.1 s to 6 s). One thread keeps runs predictable.
torch.set_num_threads(1)

_REPO_ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without `pip install -e .`
    import specvlm  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(_REPO_ROOT))


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("e2e")``: benchmarks/e2e.py loaded as a module, once per session, so a
    test calls its functions (or its ``main`` under a patched argv) without a new interpreter."""
    import importlib.util

    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"{name}_bench", _REPO_ROOT / "benchmarks" / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


class TinyPairs:
    """Tiny (target, draft) checkpoint pairs, built once per session on first use.

    ``tiny_pairs(family)`` and ``tiny_pairs[family]`` both return ``(target_dir, draft_dir)``;
    iterating / ``dict(tiny_pairs.items())`` builds every family.
    """

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[Path, Path]] = {}

    def __call__(self, family: str) -> tuple[Path, Path]:
        from specvlm.testing.tiny import build_tiny_pair

        if family not in self._cache:
            self._cache[family] = build_tiny_pair(family, self.root / family)
        return self._cache[family]

    __getitem__ = __call__

    def keys(self):
        from specvlm.testing.tiny import FAMILIES

        return FAMILIES

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def items(self):
        return [(family, self(family)) for family in self.keys()]


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory) -> TinyPairs:
    """``tiny_pairs(family) -> (target_dir, draft_dir)``: tiny random checkpoints of the real
    architectures (see ``specvlm.testing.tiny``), built lazily once per session."""
    return TinyPairs(tmp_path_factory.mktemp("tiny"))
