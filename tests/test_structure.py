"""The import structure: no circle between the models and the engine, no benchmark tooling in the
library (read from the source, every import statement at any depth)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "specvlm"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(*parts: str) -> list[Path]:
    return sorted((PACKAGE.joinpath(*parts)).rglob("*.py")) if parts else sorted(PACKAGE.rglob("*.py"))


def test_models_never_import_the_engine():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imports(p) if m.startswith("specvlm.engine"))
                 for p in modules("models")}  # fmt: skip
    assert not {k: v for k, v in offenders.items() if v}


def test_the_cache_the_layout_and_the_attention_entry_depend_on_nothing_of_ours():
    for name in ("cache.py", "layout.py", "attention.py"):
        assert not [m for m in imports(PACKAGE / name) if m.startswith("specvlm")], name


def test_the_library_never_imports_its_benchmark_tooling():
    tooling = ("specvlm.bench", "benchmarks")
    allowed = {PACKAGE / "cli.py", *modules("bench")}
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imports(p) if m.startswith(tooling))
                 for p in modules() if p not in allowed}  # fmt: skip
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_attention_entry_sets_a_models_attention_implementation():
    """Installed once at load (specvlm/attention.py); nothing flips it around a call."""
    setters = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            if any(isinstance(t, ast.Attribute) and t.attr == "_attn_implementation" for t in targets):
                setters.add(str(path.relative_to(PACKAGE)))
    assert setters == {"attention.py"}
