"""A small bounded cache: least recently used first out, each entry until its own
deadline. For the hot paths' caches, which must never grow without limit."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `size` entries; `get` and `put` take the caller's clock reading (any
    monotonic seconds), so the cache itself never reads a clock."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        """The value, if present and not past its deadline (then it becomes the most
        recently used); else None."""
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: K, value: V, until: float) -> None:
        self._data[key] = (until, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)
