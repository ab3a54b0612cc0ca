"""Which lower-layer failures mean "the database (or the network to it) is away for a
moment": answered UNAVAILABLE, so a client retries, never INTERNAL.

A database that is restarting shows up in many shapes: asyncpg's own exceptions on
the hot paths; the same wrapped by SQLAlchemy, often as a plain `DBAPIError` whose
original carries the SQLSTATE (class 08 connection exceptions; 57P01 admin shutdown,
57P02 crash shutdown, 57P03 cannot connect now); asyncpg's client-side
`InterfaceError` on a connection broken mid-operation ("another operation is in
progress", "connection is closed"); SQLite's "database is locked"
(`OperationalError`); and plain socket errors and timeouts. One classifier for all
of them, used wherever an error is turned into a status.
"""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc

_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
_BROKEN_CONNECTION_WORDS = (
    "another operation",  # "another operation is in progress", "... (2) is in progress"
    "connection is closed",
    "connection was closed",
    "underlying connection is closed",
    "pool is closed",
    "pool is closing",
)

# asyncpg's client-side errors, and SQLAlchemy's wrapping of them: unavailable only
# when the words say the connection broke mid-operation.
_CLIENT_SIDE = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    sqlalchemy.exc.DBAPIError,
)

_ALWAYS = (
    OSError,
    TimeoutError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)


def _sqlstate(err: BaseException) -> str:
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return state if isinstance(state, str) else ""


def _one(err: BaseException) -> bool:
    if isinstance(err, _ALWAYS):
        return True
    state = _sqlstate(err)
    if state.startswith("08") or state in _GONE_SQLSTATES:
        return True
    if isinstance(err, _CLIENT_SIDE):
        if getattr(err, "connection_invalidated", False):
            return True
        text = str(err).lower()
        return any(words in text for words in _BROKEN_CONNECTION_WORDS)
    return False


def is_unavailable(err: BaseException) -> bool:
    """True when `err`, or what it wraps, means the database is away for a moment."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _one(current):
            return True
        orig = getattr(current, "orig", None)
        # Only what was wrapped on purpose (`raise ... from`, SQLAlchemy's `orig`): a bug
        # raised while handling an outage is still a bug.
        stack += [current.__cause__, orig if isinstance(orig, BaseException) else None]
    return False
