"""The audit buffer loses nothing silently: over-long values are cut before they are
buffered, a row that cannot be written is isolated from its neighbours, a database
that is away keeps the events for later, and a full buffer sheds and counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from agentserver.adapters.audit import BufferedAuditLog
from tests.fakes.clock import FakeClock


class Writer:
    def __init__(self, *, poison: str = "", down_for: int = 0) -> None:
        self.rows: list[dict[str, Any]] = []
        self.poison = poison
        self.down_for = down_for
        self.calls = 0

    async def write_events(self, events: Sequence[dict[str, Any]]) -> None:
        self.calls += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise ConnectionRefusedError("the database is restarting")
        if any(e["subject"] == self.poison for e in events):
            raise ValueError("this row cannot be stored")
        self.rows.extend(events)


def record(log: BufferedAuditLog, n: int, **kw: Any) -> None:
    for i in range(n):
        log.record(
            tenant_id=kw.get("tenant_id", "t1"),
            actor=kw.get("actor", "k/u"),
            operation="GetCosts",
            outcome="OK",
            request_id=f"r{i}",
        )


async def test_values_are_cut_to_what_the_table_holds() -> None:
    writer = Writer()
    log = BufferedAuditLog(writer, FakeClock())
    log.record(
        tenant_id="t" * 65,
        actor="a" * 500,
        operation="X" * 100,
        outcome="OK",
        request_id="r" * 300,
    )
    await log.flush()
    (row,) = writer.rows
    assert len(row["tenant_id"]) == 64
    assert len(row["actor"]) == 200
    assert len(row["subject"]) == 200
    assert len(row["kind"]) == 60


async def test_a_row_that_cannot_be_written_fails_alone() -> None:
    writer = Writer(poison="r37")
    log = BufferedAuditLog(writer, FakeClock(), max_batch=100)
    record(log, 100)
    await log.flush()
    assert len(writer.rows) == 99
    assert "r37" not in {r["subject"] for r in writer.rows}
    assert log.rejected == 1
    assert log.buffered == 0


async def test_events_wait_while_the_database_is_away() -> None:
    writer = Writer(down_for=3)
    log = BufferedAuditLog(writer, FakeClock(), max_batch=10)
    record(log, 25)
    for _ in range(3):
        await log.flush()
        assert log.buffered == 25
    await log.flush()
    assert log.buffered == 0
    assert [r["subject"] for r in writer.rows] == [f"r{i}" for i in range(25)], "in order, once"


async def test_a_full_buffer_sheds_new_events_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = Writer(down_for=100)
    log = BufferedAuditLog(writer, FakeClock(), max_buffered=10)
    record(log, 15)
    assert (log.buffered, log.shed) == (10, 5)
    await log.flush()
    assert "5 events shed" in caplog.text
    writer.down_for = 0
    await log.flush()
    assert [r["subject"] for r in writer.rows] == [f"r{i}" for i in range(10)]


async def test_unauthenticated_calls_have_a_trail_of_their_own() -> None:
    writer = Writer()
    log = BufferedAuditLog(writer, FakeClock())
    log.record(
        tenant_id=None,
        actor="anonymous",
        operation="GetBalance",
        outcome="UNAUTHENTICATED",
        request_id="r",
        authenticated=False,
        payload={"claimed_tenant_id": "victim"},
    )
    await log.flush()
    (row,) = writer.rows
    assert row["tenant_id"] is None
    assert row["kind"] == "audit.unauthenticated.GetBalance"
    assert row["payload"] == {"claimed_tenant_id": "victim"}


async def test_a_change_is_kept_as_json_bounded_and_without_nul() -> None:
    writer = Writer()
    log = BufferedAuditLog(writer, FakeClock())
    log.record(
        tenant_id="t1",
        actor="k1/maria",
        operation="policy.set",
        outcome="OK",
        request_id="r1",
        key_id="k1" * 30,
        user_id="maria",
        object="tenant:t1",
        payload={"before": {"a\x00b": "c\x00d"}, "after": {"when": FakeClock().now()}},
    )
    log.record(
        tenant_id="t1",
        actor="k1/maria",
        operation="channel.set",
        outcome="OK",
        request_id="r2",
        payload={"after": {"huge": "x" * 100_000}},
    )
    await log.flush()
    first, second = writer.rows
    assert first["kind"] == "audit.policy.set" and first["object"] == "tenant:t1"
    assert len(first["key_id"]) == 40 and first["user_id"] == "maria"
    assert first["payload"]["before"] == {"ab": "cd"}
    assert isinstance(first["payload"]["after"]["when"], str)
    assert second["payload"]["truncated"] is True and second["payload"]["bytes"] > 100_000


async def test_a_flush_waits_for_a_write_already_under_way() -> None:
    """An erasure flushes the buffer and then redacts what is stored: a flush that
    returned while the background flush was still writing the user's last calls
    would let them land after the redaction."""
    import asyncio

    class SlowWriter(Writer):
        def __init__(self) -> None:
            super().__init__()
            self.started = asyncio.Event()
            self.release = asyncio.Event()

        async def write_events(self, events: Sequence[dict[str, Any]]) -> None:
            self.started.set()
            await self.release.wait()
            await super().write_events(events)

    writer = SlowWriter()
    log = BufferedAuditLog(writer, FakeClock())
    record(log, 3)
    background = asyncio.create_task(log.flush())
    await writer.started.wait()  # the background flush holds all three, unwritten
    second = asyncio.create_task(log.flush())
    await asyncio.sleep(0.05)
    assert not second.done(), "it waits for the write under way"
    writer.release.set()
    await asyncio.wait_for(second, 2)
    assert len(writer.rows) == 3
    await background
