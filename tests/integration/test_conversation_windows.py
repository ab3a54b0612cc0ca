"""WhatsApp is priced per conversation: the first message to a recipient opens a
24-hour window (10 tokens), further ones inside it are free; two sends at once,
on one server or on two replicas sharing PostgreSQL, open one window."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from agentserver.adapters.db.window_store import SqlConversationWindows
from agentserver.domain.windows import WINDOW, WindowKey
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, Tenant, ledger_invariant, start_harness


async def _send(t: Tenant, to: str, body: str) -> apb.Action:
    async with t.client("wendy") as client:
        resp = await client.process(apb.ProcessRequest(message=f"WhatsApp {to} that {body}"))
    (action,) = resp.actions
    assert action.action_type == "whatsapp.send"
    return action


async def _used(t: Tenant) -> tuple[int, int]:
    async with t.client("wendy") as client:
        b = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
    return b.used_tokens, b.reserved_tokens


async def test_first_message_opens_a_window_and_the_next_ones_are_free(harness: Harness) -> None:
    t = await harness.tenant(100)
    first = await _send(t, "+15550001111", "the table is ready")
    assert first.state == apb.ACTION_STATE_SUCCEEDED
    assert first.result.detail["conversation"] == "opened"
    assert await _used(t) == (10, 0)

    second = await _send(t, "+15550001111", "we are waiting for you")
    assert second.state == apb.ACTION_STATE_SUCCEEDED
    assert second.result.detail["conversation"] == "continued"
    assert second.token_cost == 0
    assert await _used(t) == (10, 0)

    other = await _send(t, "+15550002222", "your order shipped")
    assert other.result.detail["conversation"] == "opened"
    assert await _used(t) == (20, 0)

    harness.clock.advance(WINDOW + timedelta(seconds=1))
    later = await _send(t, "+15550001111", "see you tomorrow")
    assert later.result.detail["conversation"] == "opened"
    assert await _used(t) == (30, 0)
    await ledger_invariant(harness.app.engine, t.id)


async def test_windows_belong_to_one_tenant(harness: Harness) -> None:
    a, b = await harness.tenant(50), await harness.tenant(50)
    await _send(a, "+15550003333", "hello from A")
    await _send(b, "+15550003333", "hello from B")
    assert await _used(a) == (10, 0)
    assert await _used(b) == (10, 0)


async def test_two_sends_at_once_open_one_window(harness: Harness) -> None:
    t = await harness.tenant(100)
    actions = await asyncio.gather(*(_send(t, "+15550004444", f"message {i}") for i in range(6)))
    kinds = sorted(a.result.detail["conversation"] for a in actions)
    assert kinds == ["continued"] * 5 + ["opened"]
    assert await _used(t) == (10, 0)
    await ledger_invariant(harness.app.engine, t.id)


async def test_a_failed_send_withdraws_the_window_it_opened(harness: Harness) -> None:
    windows = SqlConversationWindows(harness.app.engine)
    key = WindowKey("t-withdraw", "whatsapp", "+15550005555")
    now = harness.clock.now()
    assert await windows.open(key, "act_a", now, now + WINDOW)
    assert not await windows.open(key, "act_b", now, now + WINDOW)
    await windows.withdraw(key, "act_b")  # not its window: nothing happens
    assert not await windows.open(key, "act_c", now, now + WINDOW)
    await windows.withdraw(key, "act_a")
    assert await windows.open(key, "act_d", now, now + WINDOW)


async def test_a_failed_opener_leaves_its_window_to_the_first_message_that_joined(
    harness: Harness,
) -> None:
    windows = SqlConversationWindows(harness.app.engine)
    key = WindowKey("t-heir", "whatsapp", "+15550007777")
    now = harness.clock.now()
    assert await windows.open(key, "act_a", now, now + WINDOW)
    assert await windows.join(key, "act_b", now)
    assert await windows.join(key, "act_c", now)  # free too; b stays the heir
    assert await windows.withdraw(key, "act_z") is None  # not its window
    assert await windows.withdraw(key, "act_a") == "act_b"
    assert not await windows.open(key, "act_d", now, now + WINDOW), "b's window now"
    assert await windows.withdraw(key, "act_a") is None
    assert await windows.withdraw(key, "act_b") is None  # no heir left: it goes
    assert not await windows.join(key, "act_e", now)
    assert await windows.open(key, "act_f", now, now + WINDOW)
    later = now + WINDOW
    assert not await windows.join(key, "act_g", later), "a lapsed window is no window"
    assert await windows.open(key, "act_h", later, later + WINDOW)
    assert await windows.withdraw(key, "act_h") is None, "its heir was the lapsed one's"


async def test_a_join_and_a_withdrawal_at_once_never_lose_the_conversation(
    harness: Harness,
) -> None:
    """Either the join happened first (the joiner inherits and pays) or it finds no
    window (and opens its own): never free with nobody paying."""
    windows = SqlConversationWindows(harness.app.engine)
    now = harness.clock.now()
    for i in range(30):
        key = WindowKey("t-race", "whatsapp", f"+1555000{i:04d}")
        assert await windows.open(key, "act_a", now, now + WINDOW)
        joined, heir = await asyncio.gather(
            windows.join(key, "act_b", now), windows.withdraw(key, "act_a")
        )
        assert (joined, heir) in {(True, "act_b"), (False, None)}, (joined, heir)
        # The window is b's exactly when b joined in time.
        assert await windows.open(key, "act_c", now, now + WINDOW) is not joined


async def test_two_replicas_on_one_postgresql_open_one_window(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    one = await start_harness(fresh_pg_url, "postgres")
    two = await start_harness(fresh_pg_url, "postgres")
    try:
        t = await one.tenant(200)
        t2 = Tenant(t.id, t.key, two)
        sends = [_send(t if i % 2 else t2, "+15550006666", f"hi {i}") for i in range(10)]
        actions = await asyncio.gather(*sends)
        assert sum(a.result.detail["conversation"] == "opened" for a in actions) == 1
        assert await _used(t) == (10, 0)
        await ledger_invariant(one.app.engine, t.id)
    finally:
        for h in (one, two):
            await h.server.stop(0)
            await h.app.close()


async def test_the_sweep_deletes_windows_a_day_after_they_lapsed(harness: Harness) -> None:
    """A lapsed window is only ever replaced; its row (a recipient's address) goes a
    day after it lapsed. Open windows and those that lapsed since stay."""
    from sqlalchemy import func, select

    from agentserver.adapters.db.models import conversation_windows as W

    app = harness.app
    now = harness.clock.now()
    tenant = "t-prune-windows"
    hour = timedelta(hours=1)
    opened = {  # recipient: when its window opened
        "+15550008001": now - WINDOW - 25 * hour,  # lapsed 25 hours ago: goes
        "+15550008002": now - WINDOW - 23 * hour,  # lapsed 23 hours ago: stays
        "+15550008003": now - hour,  # open: stays
    }
    for recipient, at in opened.items():
        assert await app.windows.open(
            WindowKey(tenant, "whatsapp", recipient), "a", at, at + WINDOW
        )

    async def left() -> list[str]:
        query = select(W.c.recipient).where(W.c.tenant_id == tenant).order_by(W.c.recipient)
        async with app.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    assert await app.prune_windows() >= 1
    assert await left() == ["+15550008002", "+15550008003"]
    harness.clock.advance(2 * hour)
    await app.prune_windows()
    assert await left() == ["+15550008003"]
    # The next message to a pruned recipient opens a window as for a new one.
    key = WindowKey(tenant, "whatsapp", "+15550008001")
    assert await app.windows.open(key, "b", harness.clock.now(), harness.clock.now() + WINDOW)
    assert not await app.windows.open(key, "c", harness.clock.now(), harness.clock.now() + WINDOW)
    async with app.engine.connect() as conn:
        count = select(func.count()).select_from(W).where(W.c.tenant_id == tenant)
        assert (await conn.execute(count)).scalar() == 2
