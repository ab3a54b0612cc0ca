"""Sortable, unguessable ids: time-ordered (microseconds) then random."""

from __future__ import annotations

import os
import time

_POOL_BYTES = 4096
_pool = b""
_offset = 0
_pid = 0  # a forked child must not reuse its parent's random bytes


def _random_hex(n: int) -> str:
    """`n` random bytes as hex, from a buffer of os.urandom refilled in bulk (one
    system call per few hundred ids instead of one per id)."""
    global _pool, _offset, _pid  # noqa: PLW0603 - a process-wide buffer is the point
    if _offset + n > len(_pool) or _pid != os.getpid():
        _pool, _offset, _pid = os.urandom(_POOL_BYTES), 0, os.getpid()
    chunk = _pool[_offset : _offset + n]
    _offset += n
    return chunk.hex()


def new_id(prefix: str) -> str:
    """`<prefix>_<14 hex of µs since epoch><10 hex random>`; sorts by creation time."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{_random_hex(5)}"
