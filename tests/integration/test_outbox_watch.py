"""The outbox watcher reads the outbox only while someone waits for it (a watch
stream, the webhook fan-out while an endpoint is enabled, the NATS relay), and a
waiter that comes later still hears of what commits after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentserver.adapters.db import models
from agentserver.adapters.db.notify import OutboxSignal, OutboxWatcher


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite database with the schema."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    yield engine
    await engine.dispose()


async def test_the_watcher_reads_only_while_someone_waits(engine: AsyncEngine) -> None:
    reads: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_a: reads.append(statement),
    )
    signal = OutboxSignal()
    watcher = OutboxWatcher(engine, signal, poll_seconds=0.01, listen_url="")
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.3)
        assert len(reads) == 1, "only where the outbox ends, once"
        assert not signal.wanted()

        woken = signal.waiter("t1")
        assert signal.wanted()
        async with engine.begin() as conn:
            await conn.execute(
                insert(models.outbox).values(
                    tenant_id="t1",
                    seq=1,
                    aggregate_type="wallet",
                    aggregate_id="w1",
                    type="ledger.entry",
                    payload={},
                    created_at=datetime.now(UTC),
                )
            )
        await asyncio.wait_for(woken.wait(), 5)
        assert not signal.wanted(), "the wake-up was given"
        await asyncio.sleep(0.1)
        quiet = len(reads)
        await asyncio.sleep(0.3)
        assert len(reads) == quiet, "nobody waits: nothing is read"

        everyone = signal.any_waiter("test")
        assert signal.wanted()
        await asyncio.sleep(0.1)
        assert len(reads) > quiet, "someone waits: the outbox is watched again"
        assert not everyone.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_webhook_fan_out_asks_for_wake_ups_only_while_an_endpoint_is_enabled(
    engine: AsyncEngine,
) -> None:
    from agentserver.adapters.db.webhook_store import SqlWebhookStore
    from agentserver.adapters.webhooks import WebhookDeliverer
    from agentserver.domain.clock import SystemClock

    signal = OutboxSignal()
    deliverer = WebhookDeliverer(
        SqlWebhookStore(engine), signal, None, SystemClock(), idle_poll=0.05
    )
    task = asyncio.create_task(deliverer.run())
    try:
        await asyncio.sleep(0.3)
        assert not signal.wanted(), "no endpoint anywhere: nothing to be woken for"
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            await conn.execute(insert(models.tenants).values(id="t1", name="t1", created_at=now))
            await conn.execute(
                insert(models.webhook_endpoints).values(
                    id="we1", tenant_id="t1", url="https://127.0.0.1:9/h", secret="x",
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
        await asyncio.sleep(0.3)
        assert signal.wanted(), "an endpoint is enabled: the fan-out waits for commits"

        async with engine.begin() as conn:
            await conn.execute(update(models.webhook_endpoints).values(enabled=False))
        await asyncio.sleep(0.3)
        assert not signal.wanted(), "the last endpoint is disabled: nothing to be woken for"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await deliverer.aclose()
