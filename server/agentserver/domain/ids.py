"""Sortable, unguessable ids: time-ordered (microseconds) then random."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """`<prefix>_<14 hex of µs since epoch><10 hex random>`; sorts by creation time."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"
