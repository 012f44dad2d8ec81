"""The layering rule, checked on every import of every module (function-level imports included):
``model/`` knows nothing of data preparation, Ray or storage; ``preprocessing/`` knows nothing of
Ray or of the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "model": ("preprocessing", "pipeline", "jobs", "bench", "ray"),
    "preprocessing": ("pipeline", "jobs", "bench", "ray"),
    "pipeline": ("jobs", "bench"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports are resolved."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def forbidden_edges() -> list[str]:
    edges = []
    for layer, banned in FORBIDDEN.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for line, name in imported_modules(path):
                if name.split(".")[0] in banned:
                    edges.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return edges


def test_no_module_imports_a_layer_above_it():
    assert not forbidden_edges(), "\n".join(forbidden_edges())


def test_relative_imports_are_resolved():
    names = {name for _, name in imported_modules(ROOT / "pipeline" / "eval" / "data.py")}
    assert {"pipeline", "pipeline.shard_reader", "preprocessing.sample_format"} <= names  # from .. / from ..x / absolute
