"""SQLite for the async engine, run on the event loop's own thread.

aiosqlite runs each call (cursor, execute, fetch, close, commit) on a worker thread
and wakes the event loop when it is done: four thread hops for a statement that SQLite
itself answers in tens of microseconds. A hop costs two context switches and a GIL
handover, about 30-110 µs on the development machine, so a Process call (some
seventeen statements) spent most of its time handing work to that thread and back.

Here the same calls run in place, after one turn of the event loop per statement
(so that concurrent calls still gather into group commits). What may wait goes back
to the event loop instead of blocking it:
- The connection's busy timeout is 0. When another process holds the write lock,
  SQLite answers SQLITE_BUSY at once; the statement did not run, so it is tried
  again after an `asyncio.sleep` (growing steps, up to `busy_timeout_s`), and the
  server goes on serving meanwhile.
- The write-ahead log is not checkpointed at commit (SQLite would copy pages into
  the database file and sync both, on this thread: up to 10 ms on the development
  machine). `WalCheckpoints` does that on a worker thread with a connection of its
  own, at most once a second while commits come in.

The object handed to SQLAlchemy (`async_creator`) has the shape of an
`aiosqlite.Connection`, the driver the `sqlite+aiosqlite` dialect adapts; the URL
stays `sqlite+aiosqlite:///...`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

SQLITE_BUSY = 5
# A read transaction that would have to upgrade to a write over a newer snapshot:
# the statement will never succeed in this transaction, so it is not retried.
SQLITE_BUSY_SNAPSHOT = 517
_BACKOFF_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def connect_args(url: str) -> tuple[list[Any], dict[str, Any]]:
    """`sqlite3.connect` arguments for a SQLAlchemy SQLite URL (file, :memory:, URI)."""
    args, kwargs = SQLiteDialect_pysqlite().create_connect_args(make_url(url))
    return list(args), dict(kwargs)


def _busy(err: sqlite3.OperationalError) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == SQLITE_BUSY and code != SQLITE_BUSY_SNAPSHOT


async def _retry_busy(fn: Callable[[], Any], busy_timeout_s: float) -> Any:
    """`fn()` now; while SQLite answers SQLITE_BUSY, again after a growing pause."""
    deadline: float | None = None
    attempt = 0
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as err:
            if not _busy(err):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + busy_timeout_s
            if now >= deadline:
                raise
            # As SQLite's busy handler would wait: 1 ms, then growing to 100 ms.
            await asyncio.sleep(min(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], deadline - now))
            attempt += 1


class InlineCursor:
    """An aiosqlite-shaped cursor over a `sqlite3.Cursor`, run in place."""

    __slots__ = ("_busy_timeout_s", "_cursor")

    def __init__(self, cursor: sqlite3.Cursor, busy_timeout_s: float) -> None:
        self._cursor = cursor
        self._busy_timeout_s = busy_timeout_s

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Any:
        cursor = self._cursor
        # One turn of the loop first, as an awaited driver call would give: other calls
        # move on meanwhile and gather at the group commits (domain/batching.py), which
        # form batches only from what is submitted while one is in flight.
        await asyncio.sleep(0)
        return await _retry_busy(lambda: cursor.execute(sql, parameters), self._busy_timeout_s)

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any] | dict[str, Any]]) -> Any:
        rows = list(seq)  # a retry needs the parameters again
        cursor = self._cursor
        return await _retry_busy(lambda: cursor.executemany(sql, rows), self._busy_timeout_s)

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        if size is None:
            return self._cursor.fetchmany()
        return self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None

    async def nextset(self) -> None:
        return None


class InlineConnection:
    """An aiosqlite-shaped connection over a `sqlite3.Connection`, run in place.

    Used by one task at a time: the engine's pool holds one connection and
    SQLAlchemy's adapter serialises the statements on it."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        busy_timeout_s: float,
        checkpoints: WalCheckpoints | None = None,
    ) -> None:
        self._connection: sqlite3.Connection | None = conn
        self.busy_timeout_s = busy_timeout_s
        self.checkpoints = checkpoints

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor(), self.busy_timeout_s)

    async def commit(self) -> None:
        conn = self._conn
        await _retry_busy(conn.commit, self.busy_timeout_s)
        if (checkpoints := self.checkpoints) is not None:
            if checkpoints.restart_due:
                await checkpoints.restart(conn)
            checkpoints.after_commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class WalCheckpoints:
    """Copies the write-ahead log into the database file off the event loop.

    After a commit, at most once every `every_s` and never two at once, a worker
    thread opens its own connection and runs a PASSIVE checkpoint: it copies what no
    reader still needs and waits for no one, while writers go on (WAL). When the log
    held 1,000 pages or more, the next commit restarts it (`restart`), so that it
    stays about a second of writes long. Between checkpoints the log holds the newest
    pages, read from there; when the last connection closes, SQLite checkpoints and
    removes the log itself."""

    def __init__(self, args: Sequence[Any], kwargs: dict[str, Any], every_s: float = 1.0) -> None:
        self._args = list(args)
        self._kwargs = dict(kwargs)
        self.every_s = every_s
        # SQLite's own checkpoint threshold, in pages of log.
        self.restart_frames = 1000
        self.restart_due = False
        self._last: float | None = None
        self.running: asyncio.Future[None] | None = None

    def after_commit(self) -> None:
        now = time.monotonic()
        if self.running is not None or (self._last is not None and now - self._last < self.every_s):
            return
        self._last = now
        self.running = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        self.running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        conn = sqlite3.connect(*self._args, **self._kwargs)
        try:
            ((_busy, frames, _copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()
        # Writes that came in while it copied keep the log from starting over, so under
        # steady writes it would grow for good (`restart`).
        self.restart_due = frames >= self.restart_frames

    async def restart(self, conn: sqlite3.Connection) -> None:
        """After a commit, on the writing connection itself (no other writer here to
        wait for): copy the rest of the log and have the next write begin it again.
        Most of the log was copied by the PASSIVE checkpoint already; what is left, and
        the sync, run on a worker thread while the connection stays checked out."""
        self.restart_due = False
        done = asyncio.get_running_loop().run_in_executor(None, _restart_log, conn)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.wait([done])  # the connection is the thread's until then
            raise
        except Exception as err:  # the commit stands; a later one tries again
            log.warning("restarting the SQLite write-ahead log failed: %s", err)

    def _done(self, future: asyncio.Future[None]) -> None:
        self.running = None
        if not future.cancelled() and (err := future.exception()) is not None:
            # The next commit a second later tries again; the log keeps every page.
            log.warning("checkpointing the SQLite write-ahead log failed: %s", err)


def _restart_log(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


async def truncate_log(conn: InlineConnection) -> None:
    """Copy the whole write-ahead log into the database file and empty the log.

    Waits, as for a lock (`_retry_busy`), while a checkpoint under way
    (`WalCheckpoints`) or a reader of another process keeps it from finishing: SQLite
    reports that as a row (busy = 1), not as an error."""
    raw = conn._conn

    def once() -> None:
        ((busy, _frames, _copied),) = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if busy:
            err = sqlite3.OperationalError("database is locked: the write-ahead log stays")
            err.sqlite_errorcode = SQLITE_BUSY
            raise err

    await _retry_busy(once, conn.busy_timeout_s)


def async_creator(url: str, busy_timeout_s: float) -> Callable[[], Awaitable[InlineConnection]]:
    """The engine's `async_creator`: a new in-place connection to the URL's database,
    autocommit at the driver (SQLAlchemy emits BEGIN itself), busy timeout 0 (waits are
    taken in `_retry_busy`), no checkpoint at commit (see `WalCheckpoints`)."""
    args, kwargs = connect_args(url)
    kwargs["timeout"] = 0
    kwargs["check_same_thread"] = False  # closed by the pool, possibly from another thread
    kwargs["isolation_level"] = None

    async def create() -> InlineConnection:
        conn = sqlite3.connect(*args, **kwargs)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return InlineConnection(conn, busy_timeout_s, WalCheckpoints(args, kwargs))

    return create
