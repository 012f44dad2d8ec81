"""Every config key does something: each field of the config tree (every preset loads the same
tree) is read by the code outside the config definitions, or is one of the documented exceptions.
A key nobody reads would break the promise that unknown keys fail loudly: it would be accepted and
silently change nothing."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from pipeline.config import ExperimentConfig, load_config
from pipeline.configtools import PRESET_DIR

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "preprocessing", "pipeline", "jobs", "bench")
DEFINITIONS = {"model/config.py", "preprocessing/config.py", "pipeline/config.py"}

# Fields read only as a whole section, by name in a string, or by a library — with the reason.
EXCEPTIONS: dict[str, str] = {
    "name": "the run's name (run_names.run_name reads cfg.name)",
}


def leaf_fields(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(default) or (tp is not None and dataclasses.is_dataclass(tp)):
            out += leaf_fields(type(default) if dataclasses.is_dataclass(default) else tp, path)
        else:
            out.append(path)
    return out


def names_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in DEFINITIONS:
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # prose does not count
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    # dotted keys in strings, e.g. replace(cfg, **{"train.storage_path": ...})
                    names.update(part for part in node.value.split(".") if part.isidentifier())
    return names


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_config_field_is_read_somewhere(preset):
    load_config(preset)  # every preset is valid
    read = names_read_by_the_code()
    unread = [f for f in leaf_fields(ExperimentConfig) if f.rsplit(".", 1)[-1] not in read and f not in EXCEPTIONS]
    assert not unread, f"config fields no code reads: {unread}"


def test_the_check_notices_an_unread_field():
    assert "no_such_field_anywhere" not in names_read_by_the_code()
    assert "train.steps" in leaf_fields(ExperimentConfig) and "model.backbone.depth" in leaf_fields(ExperimentConfig)
