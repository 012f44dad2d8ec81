"""Typed configs: frozen dataclasses built from YAML presets and ``--set a.b=c`` overrides.

Unknown keys fail loudly with the list of valid ones, so a typo in a preset, a sweep spec or a
command line never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESET_DIR = Path(__file__).resolve().parent / "presets"  # package data: ships in the wheel


class ConfigError(ValueError):
    """A config key or value that does not fit the dataclass tree."""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(tp: Any, value: Any, path: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{path}: null is not allowed here (expected {getattr(tp, '__name__', tp)})")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
            if not math.isfinite(number):
                raise ConfigError(f"{path}: expected a finite number, got {value!r}")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys raise ConfigError naming valid ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(f'{path}.{k}' if path else k) for k in unknown)} "
            f"in {where}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_ranges(cfg: Any, positive: Sequence[str], fractions: Sequence[str], signed: Sequence[str],
                 path: str = "") -> None:
    """Every int/float field (and number inside a tuple field) of a dataclass tree is ≥ 0, > 0 when
    its dotted path matches a ``positive`` pattern, in [0, 1] for ``fractions``, any sign for
    ``signed``; raises ConfigError naming the first that is not (NaN and infinities are refused)."""
    for f in dataclasses.fields(cfg):
        name = f"{path}.{f.name}" if path else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, positive, fractions, signed, name)
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ConfigError(f"{name}={v}: must be a finite number")
            if _matches(name, signed):
                continue
            if _matches(name, fractions) and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}={value}: must lie in [0, 1]")
            if _matches(name, positive) and v <= 0:
                raise ConfigError(f"{name}={value}: must be > 0")
            if v < 0:
                raise ConfigError(f"{name}={value}: must be ≥ 0")


def to_dict(cfg: Any) -> Any:
    """Dataclass tree → plain dict/list values (tuples become lists) for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.steps=100"`` → ``{"train": {"steps": 100}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    for key in reversed(keys):
        value = {key: value}
    return value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{getattr(exc, 'problem', None) or exc}"


def load_preset_dict(preset: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset by name (``pipeline/presets/<name>.yaml``) or path; ``inherit: <preset>`` chains presets.
    Unreadable YAML and inherit loops raise one-line ConfigErrors naming the file."""
    path = Path(preset)
    if not path.suffix:
        path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"config preset {str(preset)!r} not found ({path}); presets: {', '.join(names)}")
    if path.resolve() in _chain:
        loop = " → ".join(p.name for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: inherit loop ({loop})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("inherit", None)
    if parent:
        parent_path = Path(parent)
        if parent_path.suffix and not parent_path.is_absolute():
            parent = path.parent / parent_path  # a YAML path is relative to the file that inherits it
        data = deep_merge(load_preset_dict(parent, (*_chain, path.resolve())), data)
    return data


def replace(cfg: T, **overrides: Any) -> T:
    """``dataclasses.replace`` with dotted keys: ``replace(cfg, **{"train.steps": 5})``."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        data = deep_merge(data, _nest(dotted, value))
    return from_dict(type(cfg), data)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    for key in reversed(dotted.split(".")):
        value = {key: value}
    return value  # type: ignore[return-value]
