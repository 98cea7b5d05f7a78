"""Small name -> constructor registries, filled by decorators in the module that defines the thing."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``@REG.register("name")`` on a class or factory; ``REG.build("name", **kwargs)``.

    ``None`` keyword arguments are dropped before the call so that constructor defaults
    survive a config that leaves a field unset (as timm's factory does).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
