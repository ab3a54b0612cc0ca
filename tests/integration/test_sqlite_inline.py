"""SQLite runs on the event loop's thread (adapters/db/sqlite_inline.py): what may wait
must not stop the loop. Another process's write lock is waited for in asyncio sleeps
and ends UNAVAILABLE after the busy timeout; the write-ahead log is checkpointed on a
worker thread, not at commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentserver.adapters.db import sqlite_inline
from agentserver.adapters.db.engine import create_engine, group_commit_linger_s
from agentserver.adapters.db.errors import is_unavailable
from agentserver.domain.batching import LINGER_S

META = MetaData()
ROWS = Table("rows", META, Column("id", Integer, primary_key=True), Column("v", String))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "inline.db"


@pytest.fixture
async def engine(path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(META.create_all)
    yield engine
    await engine.dispose()


async def _driver(engine: AsyncEngine) -> sqlite_inline.InlineConnection:
    """The engine's one connection, as the driver holds it."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
    assert isinstance(raw, sqlite_inline.InlineConnection)
    return raw


async def _ticks_while(task: asyncio.Task[None], seconds: float) -> int:
    """How often a 5 ms sleep came back on this loop in `seconds` while `task` ran."""
    ticks = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.005)
        ticks += 1
    assert not task.done(), "the write went through while another connection held the lock"
    return ticks


async def test_a_write_waits_for_another_writer_without_stopping_the_loop(
    engine: AsyncEngine, path: Path
) -> None:
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
    other.execute("INSERT INTO rows (v) VALUES ('theirs')")

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(ROWS).values(v="ours"))

    task = asyncio.create_task(write())
    try:
        ticks = await _ticks_while(task, 0.3)
        # Blocked in SQLite's busy handler, the loop would not have come back once.
        assert ticks >= 10
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(task, 5)
    async with engine.connect() as conn:
        got = (await conn.execute(select(ROWS.c.v).order_by(ROWS.c.id))).scalars().all()
    assert got == ["theirs", "ours"]


async def test_each_statement_lets_other_tasks_run(engine: AsyncEngine) -> None:
    """Group commits batch what is submitted while a batch is in flight; a transaction
    that never gave the loop a turn would leave every batch at one call."""
    turns = 0
    stop = False

    async def other() -> None:
        nonlocal turns
        while not stop:
            await asyncio.sleep(0)
            turns += 1

    ticker = asyncio.create_task(other())
    await asyncio.sleep(0)
    async with engine.begin() as conn:
        before = turns
        for i in range(40):
            await conn.execute(insert(ROWS).values(v=str(i)))
        during = turns - before
    stop = True
    await ticker
    assert during >= 40


async def test_a_lock_held_past_the_busy_timeout_is_unavailable(path: Path) -> None:
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_async_engine(
        url, async_creator=sqlite_inline.async_creator(url, busy_timeout_s=0.2)
    )
    async with engine.begin() as conn:
        await conn.run_sync(META.create_all)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            async with engine.begin() as conn:
                await conn.execute(insert(ROWS).values(v="ours"))
        assert "locked" in str(caught.value)
        assert is_unavailable(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with engine.begin() as conn:  # and the connection is usable again
        await conn.execute(insert(ROWS).values(v="later"))
        assert (await conn.execute(select(func.count()).select_from(ROWS))).scalar() == 1
    await engine.dispose()


async def test_the_log_is_checkpointed_on_a_worker_thread_not_at_commit(
    engine: AsyncEngine, path: Path
) -> None:
    checkpoints = (await _driver(engine)).checkpoints
    assert checkpoints is not None
    if checkpoints.running is not None:
        await checkpoints.running  # the one after creating the table
    threads: list[int] = []
    done = checkpoints._checkpoint

    def checkpoint() -> None:
        threads.append(threading.get_ident())
        done()

    checkpoints._checkpoint = checkpoint  # type: ignore[method-assign]
    checkpoints.every_s = 3600.0  # the last one, after creating the table, was just now
    size = path.stat().st_size

    for i in range(20):  # 5 MB: past SQLite's own checkpoint at 1,000 pages of log
        async with engine.begin() as conn:
            await conn.execute(insert(ROWS), [{"v": f"{i}-{j}".ljust(1000)} for j in range(250)])
    assert checkpoints.running is None, "none due within the hour"
    assert path.stat().st_size == size, "a commit copied pages into the database file"
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 5_000_000

    checkpoints.every_s = 0.0
    async with engine.begin() as conn:
        await conn.execute(insert(ROWS).values(v="last"))
    assert checkpoints.running is not None
    await checkpoints.running
    assert path.stat().st_size > size + 5_000_000, "the pages are in the database file now"
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_under_steady_writes_the_log_stays_short(engine: AsyncEngine, path: Path) -> None:
    """A checkpoint that runs while writes go on never catches up with the log, and the
    log could not start over: it grew by every write (247 MB in 24 s of ChargeTokens)."""
    raw = await _driver(engine)
    assert raw.checkpoints is not None
    raw.checkpoints.every_s = 0.02
    for i in range(160):  # 40 MB in all
        async with engine.begin() as conn:
            await conn.execute(insert(ROWS), [{"v": f"{i}-{j}".ljust(1000)} for j in range(250)])
    if raw.checkpoints.running is not None:
        await raw.checkpoints.running
    assert path.with_name(path.name + "-wal").stat().st_size < 20_000_000


async def test_truncating_the_log_waits_for_a_checkpoint_under_way(
    engine: AsyncEngine, path: Path
) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(ROWS), [{"v": "x" * 500} for _ in range(200)])
    # A reader in another connection pins the log: TRUNCATE answers busy until it ends.
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM rows").fetchall()
    asyncio.get_running_loop().call_later(0.2, lambda: other.execute("COMMIT"))
    await asyncio.wait_for(sqlite_inline.truncate_log(await _driver(engine)), 5)
    other.close()
    assert path.with_name(path.name + "-wal").stat().st_size == 0


async def test_group_commits_wait_for_more_calls_on_sqlite_only(engine: AsyncEngine) -> None:
    assert group_commit_linger_s(engine) == LINGER_S > 0
    pg = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    assert group_commit_linger_s(pg) == 0.0  # no connection made
    await pg.dispose()
