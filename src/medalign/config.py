"""YAML + dotted ``key=value`` overrides -> nested dict -> small per-component dataclasses.

Only the CLI/config layer reads YAML; constructors everywhere else take keyword arguments.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medalign.errors import MedAlignError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads '1e-3' as a float, as YAML 1.2 does (1.1 keeps it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with medalign's loader (safe; YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


class ConfigError(MedAlignError, ValueError):
    """A config file or override that cannot be applied."""


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML file (``_base_: other.yaml`` is merged first) and apply overrides."""
    cfg: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        base = raw.pop("_base_", None)
        if base is not None:
            cfg = load_config(path.parent / base)
        cfg = merge(cfg, raw)
    for ov in overrides or []:
        apply_override(cfg, ov)
    return cfg


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``b`` wins."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_override(cfg: dict[str, Any], override: str) -> None:
    """``train.lr=0.001`` -> cfg['train']['lr'] = 0.001 (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.path=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{p}' is not a section")
    node[parts[-1]] = _parse_value(value)


def _parse_value(text: str) -> Any:
    """A YAML scalar or flow value: '1e-3' -> 0.001, '[8,32,32]' -> list, 'abc' -> 'abc'."""
    return yaml_load(text)


def from_dict(cls: type[T], d: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``d``, checking every value against the field's type hint.

    Unknown keys and values of the wrong type are a :class:`ConfigError` that names the key
    (``train.lr: expected a number, got 'abc'``), so a typo fails before a run folder is made.
    Lists become tuples where the hint says tuple; ints are accepted for floats.
    """
    import typing

    where = where or cls.__name__
    d = dict(d or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(names))
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hint = "; ".join(f"'{k}' -> did you mean '{m[0]}'?" for k, m in close.items() if m)
        raise ConfigError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}" + (f" ({hint})" if hint else "")
                          + f"; allowed: {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` coerced to ``hint`` (Optional, Literal, tuple/list, dict, int, float, bool, str) or ConfigError."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {list(value)}")
            items = [_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [_check_type(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def require(ok: bool, key: str, message: str) -> None:
    """Range checks in ``__post_init__``: ``require(lr > 0, "train.lr", "must be > 0")``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    from medalign.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
