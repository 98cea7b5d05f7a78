"""YAML + dotted ``key=value`` overrides -> nested dict -> small per-component dataclasses.

Only the CLI/config layer reads YAML; constructors everywhere else take keyword arguments.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

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


class ConfigError(ValueError):
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
    """Build dataclass ``cls`` from ``d``; unknown keys are an error that names them."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in section '{where or cls.__name__}'; allowed: {sorted(names)}"
        )
    return cls(**d)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    from medalign.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
