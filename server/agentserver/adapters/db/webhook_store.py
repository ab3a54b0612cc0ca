"""Webhook endpoints and deliveries on SQL: the endpoint use cases' store, the
fan-out of outbox events into deliveries, and the claims and results of attempts.

Fan-out: each tenant with endpoints has a `webhooks` cursor over its outbox; a
replica locks it (FOR UPDATE SKIP LOCKED), turns the events after it into one
delivery per matching enabled endpoint, and moves it, in one transaction. Tenants
with no enabled endpoint are passed over (most tenants, most of the time: reading
their events would cost every round for nothing); their cursor waits, and moves to
their head when an endpoint is created or enabled while none is, so an endpoint
gets the events committed from then on.

Attempts: a replica claims due deliveries by giving each a lease (until and a
token) in a short transaction, makes the attempts outside any transaction, and
records each result only if its lease token still stands. While a lease runs no
other replica claims that delivery: one attempt in flight per (endpoint, event).
A replica that dies mid-attempt leaves its leases to expire; the attempt is then
made again, under the same `webhook-id`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.adapters.db.event_store import (
    WEBHOOKS,
    advance_cursor,
    behind,
    claim_cursor,
    cursor_to_head,
    ensure_cursors,
    read_events,
    stored,
)
from agentserver.adapters.db.outbox import write_outbox
from agentserver.domain.events import (
    WEBHOOK_ENDPOINT_DISABLED,
    WEBHOOK_TEST,
    DomainEvent,
    StoredEvent,
    type_matches,
)
from agentserver.domain.ids import new_id
from agentserver.domain.paging import PageRequest, encode_token
from agentserver.domain.webhooks import (
    Delivery,
    DeliveryState,
    DisabledReason,
    Endpoint,
    EndpointChanges,
    NewTest,
    gives_up_on_endpoint,
)

E = models.webhook_endpoints
D = models.webhook_deliveries
O = models.outbox  # noqa: E741
C = models.event_cursors

FANOUT_BATCH = 500


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        tenant_id=row.tenant_id,
        url=row.url,
        description=row.description,
        event_types=tuple(row.event_types or ()),
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        failing_since=row.failing_since,
        secret_rotated_at=row.secret_rotated_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        event_seq=int(row.event_seq),
        state=DeliveryState(row.state),
        attempts=int(row.attempts),
        last_status=int(row.last_status),
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
    )


_ENDPOINT_COLUMNS = [c for c in E.c if c.name not in ("secret", "previous_secret")]


@dataclass(frozen=True)
class Claimed:
    """A delivery this replica holds the lease of, with what the attempt needs."""

    delivery_id: str
    lease_token: str
    tenant_id: str
    endpoint_id: str
    url: str
    sealed_secrets: tuple[str, ...]  # current first; the previous one during rotation
    event: StoredEvent
    attempts: int  # made before this one


@dataclass(frozen=True)
class Attempt:
    """How one attempt went, and what follows from it (decided by the caller)."""

    status: int
    error: str
    state: DeliveryState
    next_attempt_at: datetime | None
    disable: str = ""  # a DisabledReason value when the endpoint must stop


class SqlWebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    # -- endpoints (the WebhookStore port) ----------------------------------------

    async def any_enabled(self) -> bool:
        """Whether any tenant has an enabled endpoint."""
        async with self._read.connect() as conn:
            found = await conn.execute(select(E.c.id).where(E.c.enabled.is_(True)).limit(1))
            return found.first() is not None

    async def count_endpoints(self, tenant_id: str) -> int:
        async with self._read.connect() as conn:
            found = await conn.execute(
                select(func.count()).select_from(E).where(E.c.tenant_id == tenant_id)
            )
            return int(found.scalar_one())

    async def create_endpoint(self, endpoint: Endpoint, sealed_secret: str) -> None:
        async with self._engine.begin() as conn:
            await _from_now_on(conn, endpoint.tenant_id, endpoint.created_at)
            await conn.execute(
                insert(E).values(
                    id=endpoint.id,
                    tenant_id=endpoint.tenant_id,
                    url=endpoint.url,
                    description=endpoint.description,
                    event_types=list(endpoint.event_types),
                    enabled=True,
                    disabled_reason="",
                    secret=sealed_secret,
                    created_at=endpoint.created_at,
                    updated_at=endpoint.updated_at,
                )
            )

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(*_ENDPOINT_COLUMNS).where(
                        E.c.tenant_id == tenant_id, E.c.id == endpoint_id
                    )
                )
            ).first()
        return None if row is None else _endpoint(row)

    async def endpoints(self, tenant_id: str, page: PageRequest) -> tuple[list[Endpoint], str]:
        query = select(*_ENDPOINT_COLUMNS).where(E.c.tenant_id == tenant_id)
        if page.after:
            query = query.where(E.c.id > str(page.after.get("id", "")))
        async with self._read.connect() as conn:
            rows = (await conn.execute(query.order_by(E.c.id).limit(page.size + 1))).all()
        found = [_endpoint(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        return found, encode_token("webhook_endpoints", {"id": found[-1].id}) if more else ""

    async def _change(
        self,
        tenant_id: str,
        endpoint_id: str,
        values: dict[str, Any],
        *extra: Any,
        from_now_on: bool = False,
    ) -> Endpoint | None:
        async with self._engine.begin() as conn:
            if from_now_on:  # before the endpoint is enabled: is it the first?
                await _from_now_on(conn, tenant_id, values["updated_at"])
            await conn.execute(
                update(E)
                .where(E.c.tenant_id == tenant_id, E.c.id == endpoint_id, *extra)
                .values(**values)
            )
            row = (
                await conn.execute(
                    select(*_ENDPOINT_COLUMNS).where(
                        E.c.tenant_id == tenant_id, E.c.id == endpoint_id
                    )
                )
            ).first()
        return None if row is None else _endpoint(row)

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: EndpointChanges, now: datetime
    ) -> Endpoint | None:
        values: dict[str, Any] = {"updated_at": now}
        if changes.url is not None:
            values["url"] = changes.url
        if changes.description is not None:
            values["description"] = changes.description
        if changes.event_types is not None:
            values["event_types"] = list(changes.event_types)
        return await self._change(tenant_id, endpoint_id, values)

    async def set_enabled(
        self, tenant_id: str, endpoint_id: str, enabled: bool, reason: str, now: datetime
    ) -> Endpoint | None:
        values: dict[str, Any] = {"enabled": enabled, "disabled_reason": reason, "updated_at": now}
        if enabled:  # a fresh start: the 5-day clock restarts
            values["failing_since"] = None
        # Only a change of state is written (disabling twice keeps the first reason).
        return await self._change(
            tenant_id, endpoint_id, values, E.c.enabled.is_not(enabled), from_now_on=enabled
        )

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str) -> bool:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(D).where(D.c.tenant_id == tenant_id, D.c.endpoint_id == endpoint_id)
            )
            result = await conn.execute(
                delete(E).where(E.c.tenant_id == tenant_id, E.c.id == endpoint_id)
            )
        return bool(result.rowcount)

    async def rotate_secret(
        self,
        tenant_id: str,
        endpoint_id: str,
        sealed_secret: str,
        previous_until: datetime,
        now: datetime,
    ) -> Endpoint | None:
        return await self._change(
            tenant_id,
            endpoint_id,
            {
                "previous_secret": E.c.secret,
                "previous_secret_until": previous_until,
                "secret": sealed_secret,
                "secret_rotated_at": now,
                "updated_at": now,
            },
        )

    async def queue_test(
        self, tenant_id: str, endpoint_id: str, test: NewTest, now: datetime
    ) -> Delivery:
        values = {
            "id": test.delivery_id,
            "tenant_id": tenant_id,
            "endpoint_id": endpoint_id,
            "outbox_id": None,
            "event_id": test.event_id,
            "event_type": WEBHOOK_TEST,
            "event_seq": 0,
            "payload": test.payload,
            "state": DeliveryState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "last_status": 0,
            "last_error": "",
            "created_at": now,
            "updated_at": now,
        }
        async with self._engine.begin() as conn:
            await conn.execute(insert(D).values(**values))
            row = (await conn.execute(select(D).where(D.c.id == test.delivery_id))).one()
        return _delivery(row)

    async def deliveries(
        self,
        tenant_id: str,
        endpoint_id: str,
        states: frozenset[DeliveryState],
        page: PageRequest,
    ) -> tuple[list[Delivery], str]:
        query = select(D).where(D.c.tenant_id == tenant_id, D.c.endpoint_id == endpoint_id)
        if states:
            query = query.where(D.c.state.in_([s.value for s in states]))
        if page.after:
            query = query.where(D.c.id < str(page.after.get("id", "")))
        async with self._read.connect() as conn:
            rows = (await conn.execute(query.order_by(D.c.id.desc()).limit(page.size + 1))).all()
        found = [_delivery(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        return found, encode_token("webhook_deliveries", {"id": found[-1].id}) if more else ""

    # -- fan-out -------------------------------------------------------------------

    async def fan_out(self, now: datetime, *, tenants: int = 50) -> int:
        """Queue deliveries for the events after each tenant's cursor; returns how many
        were queued. Tenants another replica is fanning out are skipped."""
        async with self._read.connect() as conn:
            pending = await behind(conn, WEBHOOKS, tenants, only=_ENABLED_HERE)
        queued = 0
        for tenant_id, _cursor, _head in pending:
            async with self._engine.begin() as conn:
                queued += await self._fan_out_tenant(conn, tenant_id, now)
        return queued

    async def _fan_out_tenant(self, conn: AsyncConnection, tenant_id: str, now: datetime) -> int:
        cursor = await claim_cursor(conn, WEBHOOKS, tenant_id)
        if cursor is None:
            return 0
        head = (
            await conn.execute(
                select(models.tenants.c.event_seq).where(models.tenants.c.id == tenant_id)
            )
        ).scalar_one()
        endpoints = (
            await conn.execute(
                select(E.c.id, E.c.event_types).where(
                    E.c.tenant_id == tenant_id, E.c.enabled.is_(True)
                )
            )
        ).all()
        if not endpoints:  # nothing to deliver to: the events are passed, unread
            await advance_cursor(conn, WEBHOOKS, tenant_id, int(head), now)
            return 0
        upto = min(int(head), cursor + FANOUT_BATCH)
        events = await read_events(conn, tenant_id, cursor, upto, (), FANOUT_BATCH)
        rows = [
            {
                "id": _delivery_id(),
                "tenant_id": tenant_id,
                "endpoint_id": endpoint.id,
                "outbox_id": event.row_id,
                "event_id": event.id,
                "event_type": event.type,
                "event_seq": event.seq,
                "payload": None,
                "state": DeliveryState.PENDING.value,
                "attempts": 0,
                "next_attempt_at": now,
                "last_status": 0,
                "last_error": "",
                "created_at": now,
                "updated_at": now,
            }
            for event in events
            for endpoint in endpoints
            if type_matches(endpoint.event_types or (), event.type)
        ]
        if rows:
            # The cursor row is locked: no other replica queues these events.
            await conn.execute(insert(D), rows)
        await advance_cursor(conn, WEBHOOKS, tenant_id, upto, now)
        return len(rows)

    # -- attempts ------------------------------------------------------------------

    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery of an enabled endpoint is due."""
        async with self._read.connect() as conn:
            found = await conn.execute(
                select(func.min(func.coalesce(D.c.lease_until, D.c.next_attempt_at)))
                .select_from(D.join(E, E.c.id == D.c.endpoint_id))
                .where(D.c.state == DeliveryState.PENDING.value, E.c.enabled.is_(True))
            )
            return found.scalar()

    async def claim(self, now: datetime, lease: timedelta, limit: int) -> list[Claimed]:
        """Lease up to `limit` due deliveries of enabled endpoints, oldest due first."""
        token = secrets.token_hex(8)
        due = (
            select(D.c.id)
            .select_from(D.join(E, E.c.id == D.c.endpoint_id))
            .where(
                D.c.state == DeliveryState.PENDING.value,
                D.c.next_attempt_at <= now,
                or_(D.c.lease_until.is_(None), D.c.lease_until <= now),
                E.c.enabled.is_(True),
            )
            .order_by(D.c.next_attempt_at)
            .limit(limit)
        )
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(of=D, skip_locked=True)
            ids = [r.id for r in await conn.execute(due)]
            if not ids:
                return []
            await conn.execute(
                update(D)
                .where(D.c.id.in_(ids))
                .values(lease_until=now + lease, lease_token=token, updated_at=now)
            )
            rows = (
                await conn.execute(
                    select(
                        D,
                        E.c.url,
                        E.c.secret,
                        E.c.previous_secret,
                        E.c.previous_secret_until,
                        O.c.id.label("o_id"),
                        O.c.seq.label("o_seq"),
                        O.c.type.label("o_type"),
                        O.c.aggregate_type,
                        O.c.aggregate_id,
                        O.c.payload.label("o_payload"),
                        O.c.created_at.label("o_created_at"),
                    )
                    .select_from(
                        D.join(E, E.c.id == D.c.endpoint_id).outerjoin(O, O.c.id == D.c.outbox_id)
                    )
                    .where(D.c.id.in_(ids))
                )
            ).all()
        out: list[Claimed] = []
        for r in rows:
            sealed = [r.secret]
            if r.previous_secret and r.previous_secret_until and r.previous_secret_until > now:
                sealed.append(r.previous_secret)
            if r.outbox_id is None:  # a test event
                event = StoredEvent(
                    row_id=0,
                    tenant_id=r.tenant_id,
                    seq=0,
                    type=r.event_type,
                    aggregate_type="webhook_endpoint",
                    aggregate_id=r.endpoint_id,
                    payload=dict(r.payload or {}),
                    created_at=r.created_at,
                )
            elif r.o_id is None:  # pruned while it waited (retention shorter than retries)
                event = StoredEvent(
                    row_id=0,
                    tenant_id=r.tenant_id,
                    seq=int(r.event_seq),
                    type=r.event_type,
                    aggregate_type="",
                    aggregate_id="",
                    payload={},
                    created_at=r.created_at,
                )
            else:
                event = stored(
                    _Row(
                        id=r.o_id,
                        tenant_id=r.tenant_id,
                        seq=r.o_seq,
                        type=r.o_type,
                        aggregate_type=r.aggregate_type,
                        aggregate_id=r.aggregate_id,
                        payload=r.o_payload,
                        created_at=r.o_created_at,
                    )
                )
            out.append(
                Claimed(
                    delivery_id=r.id,
                    lease_token=token,
                    tenant_id=r.tenant_id,
                    endpoint_id=r.endpoint_id,
                    url=r.url,
                    sealed_secrets=tuple(sealed),
                    event=event,
                    attempts=int(r.attempts),
                )
            )
        return out

    async def record(self, results: Sequence[tuple[Claimed, Attempt]], now: datetime) -> int:
        """Write a round's attempts in one transaction, each only under its lease (a
        lease that expired and was taken by another replica writes nothing); returns
        how many were lost so. Each endpoint's failing clock moves (a success stops
        it), and an endpoint given up on is disabled with its event."""
        lost = 0
        outcomes: dict[tuple[str, str], _EndpointRound] = {}
        async with self._engine.begin() as conn:
            for claimed, attempt in results:
                result = await conn.execute(
                    update(D)
                    .where(D.c.id == claimed.delivery_id, D.c.lease_token == claimed.lease_token)
                    .values(
                        attempts=D.c.attempts + 1,
                        state=attempt.state.value,
                        last_status=attempt.status,
                        last_error=attempt.error[:500],
                        last_attempt_at=now,
                        next_attempt_at=attempt.next_attempt_at,
                        lease_until=None,
                        lease_token=None,
                        updated_at=now,
                    )
                )
                if not result.rowcount:
                    lost += 1
                    continue
                key = (claimed.tenant_id, claimed.endpoint_id)
                round_ = outcomes.setdefault(key, _EndpointRound(url=claimed.url))
                round_.add(attempt)
            # Tenants in a fixed order: a disabling takes the tenant's sequence lock.
            for (tenant_id, endpoint_id), round_ in sorted(outcomes.items()):
                await self._endpoint_round(conn, tenant_id, endpoint_id, round_, now)
        return lost

    async def _endpoint_round(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        endpoint_id: str,
        round_: _EndpointRound,
        now: datetime,
    ) -> None:
        mine = and_(E.c.tenant_id == tenant_id, E.c.id == endpoint_id)
        disable = round_.disable
        if round_.delivered:
            await conn.execute(
                update(E).where(mine, E.c.failing_since.is_not(None)).values(failing_since=None)
            )
        else:
            await conn.execute(
                update(E).where(mine, E.c.failing_since.is_(None)).values(failing_since=now)
            )
            since = (await conn.execute(select(E.c.failing_since).where(mine))).scalar()
            if not disable and gives_up_on_endpoint(since, now):
                disable = DisabledReason.FAILING.value
        if not disable:
            return
        disabled = await conn.execute(
            update(E)
            .where(mine, E.c.enabled.is_(True))
            .values(enabled=False, disabled_reason=disable, updated_at=now)
        )
        if disabled.rowcount:  # the replica that disabled it says so, once
            event = DomainEvent(
                WEBHOOK_ENDPOINT_DISABLED,
                "webhook_endpoint",
                endpoint_id,
                {
                    "endpoint_id": endpoint_id,
                    "url": round_.url,
                    "reason": disable,
                    "status_code": round_.last_status,
                },
            )
            await write_outbox(conn, tenant_id, [event], now)

    async def sealed_secrets(self) -> list[tuple[str, str]]:
        """(endpoint, sealed secret) of every endpoint, for the startup key check."""
        async with self._read.connect() as conn:
            rows = await conn.execute(select(E.c.id, E.c.secret, E.c.previous_secret))
            return [(r.id, token) for r in rows for token in (r.secret, r.previous_secret) if token]


@dataclass
class _EndpointRound:
    """What one round's attempts to one endpoint add up to."""

    url: str
    delivered: bool = False
    disable: str = ""
    last_status: int = 0

    def add(self, attempt: Attempt) -> None:
        self.delivered = self.delivered or attempt.state is DeliveryState.SUCCEEDED
        self.disable = self.disable or attempt.disable
        self.last_status = attempt.status


@dataclass(frozen=True)
class _Row:
    id: int
    tenant_id: str
    seq: int
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: Any
    created_at: datetime


_ENABLED_HERE = exists().where(E.c.tenant_id == C.c.tenant_id, E.c.enabled.is_(True))


async def _from_now_on(conn: AsyncConnection, tenant_id: str, now: datetime) -> None:
    """Before an endpoint is created or enabled, in the same transaction: hold the
    tenant's cursor until commit (made if missing), so that no fan-out round runs in
    between; and if the tenant has no enabled endpoint, move the cursor (which has
    waited: the fan-out passes such tenants over) to the head, so the events
    committed from now on are what is sent."""
    await ensure_cursors(conn, WEBHOOKS, [tenant_id], "now", now)
    await claim_cursor(conn, WEBHOOKS, tenant_id, wait=True)
    enabled = await conn.execute(
        select(E.c.id).where(E.c.tenant_id == tenant_id, E.c.enabled.is_(True)).limit(1)
    )
    if enabled.first() is None:
        await cursor_to_head(conn, WEBHOOKS, tenant_id, now)


def _delivery_id() -> str:
    return new_id("whd")
