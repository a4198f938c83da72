"""A tiny name -> factory registry, shared by models, data sets and methods."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from gemdeploy.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
