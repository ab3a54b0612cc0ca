"""Reading the outbox: for watchers (by tenant and sequence), for consumers that keep
a cursor per tenant (the webhook fan-out, the NATS relay), and pruning what the
retention window no longer keeps.

Why reads up to the tenant's `event_seq` are complete: that column is raised in the
transaction that writes the events, under its row lock, so once a value is visible
every event numbered up to it has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.domain.events import StoredEvent
from agentserver.domain.webhooks import DeliveryState

T = models.tenants
O = models.outbox  # noqa: E741
C = models.event_cursors
D = models.webhook_deliveries

WEBHOOKS = "webhooks"
NATS = "nats"


def type_filter(types: Sequence[str]) -> ColumnElement[bool] | None:
    """`type IN (...) OR type LIKE 'area.%'` for exact types and `area.*` patterns."""
    if not types:
        return None
    exact = [t for t in types if not t.endswith(".*")]
    areas = [t[:-1] for t in types if t.endswith(".*")]
    clauses: list[ColumnElement[bool]] = []
    if exact:
        clauses.append(O.c.type.in_(exact))
    clauses += [O.c.type.startswith(area, autoescape=True) for area in areas]
    return or_(*clauses)


def stored(row: Any) -> StoredEvent:
    return StoredEvent(
        row_id=row.id,
        tenant_id=row.tenant_id,
        seq=row.seq,
        type=row.type,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        payload=row.payload if isinstance(row.payload, dict) else {},
        created_at=row.created_at,
    )


class SqlEventStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    # -- watchers ------------------------------------------------------------------

    async def head(self, tenant_id: str) -> int | None:
        async with self._read.connect() as conn:
            found = await conn.execute(select(T.c.event_seq).where(T.c.id == tenant_id))
            value = found.scalar()
        return None if value is None else int(value)

    async def has_seq(self, tenant_id: str, seq: int) -> bool:
        async with self._read.connect() as conn:
            found = await conn.execute(
                select(O.c.id).where(O.c.tenant_id == tenant_id, O.c.seq == seq)
            )
            return found.first() is not None

    async def read(
        self, tenant_id: str, after: int, upto: int, types: Sequence[str], limit: int
    ) -> list[StoredEvent]:
        async with self._read.connect() as conn:
            return await read_events(conn, tenant_id, after, upto, types, limit)

    # -- retention -----------------------------------------------------------------

    async def prune(self, before: datetime, consumers: Sequence[str], limit: int) -> int:
        """Delete up to `limit` events created before `before`, except those a
        configured consumer has not read yet and those a pending webhook delivery
        still needs."""
        unread = exists().where(
            C.c.tenant_id == O.c.tenant_id, C.c.consumer.in_(consumers), C.c.last_seq < O.c.seq
        )
        needed = exists().where(D.c.outbox_id == O.c.id, D.c.state == DeliveryState.PENDING.value)
        # Appended in id order: the oldest first, by the key (no index on the time).
        oldest = (
            select(O.c.id)
            .where(O.c.created_at < before, ~unread, ~needed)
            .order_by(O.c.id)
            .limit(limit)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(O).where(O.c.id.in_(oldest.scalar_subquery())))
        return int(result.rowcount or 0)


async def read_events(
    conn: AsyncConnection,
    tenant_id: str,
    after: int,
    upto: int,
    types: Sequence[str],
    limit: int,
) -> list[StoredEvent]:
    query = select(O).where(O.c.tenant_id == tenant_id, O.c.seq > after, O.c.seq <= upto)
    if (matches := type_filter(types)) is not None:
        query = query.where(matches)
    rows = await conn.execute(query.order_by(O.c.seq).limit(limit))
    return [stored(r) for r in rows]


# -- cursors of consumers ------------------------------------------------------------


def insert_cursor(dialect: str, values: list[dict[str, Any]]) -> Any:
    """INSERT cursors, leaving existing ones as they are."""
    if dialect == "postgresql":
        return postgresql.insert(C).values(values).on_conflict_do_nothing()
    return sqlite.insert(C).values(values).on_conflict_do_nothing()


async def ensure_cursors(
    conn: AsyncConnection, consumer: str, tenant_ids: Sequence[str], start: str, now: datetime
) -> None:
    """Create missing cursors: at the tenant's current head (`start="now"`) or
    before its first event (`start="first"`)."""
    if not tenant_ids:
        return
    heads: dict[str, int] = {}
    if start == "now":
        found = await conn.execute(
            select(T.c.id, T.c.event_seq).where(T.c.id.in_(list(tenant_ids)))
        )
        heads = {r.id: int(r.event_seq) for r in found}
    await conn.execute(
        insert_cursor(
            conn.dialect.name,
            [
                {
                    "consumer": consumer,
                    "tenant_id": t,
                    "last_seq": heads.get(t, 0),
                    "updated_at": now,
                }
                for t in tenant_ids
            ],
        )
    )


async def behind(
    conn: AsyncConnection, consumer: str, limit: int, *, only: ColumnElement[bool] | None = None
) -> list[tuple[str, int, int]]:
    """(tenant, cursor, head) for tenants whose cursor trails their head (and that
    `only`, a condition on the cursor's `tenant_id`, admits)."""
    query = (
        select(C.c.tenant_id, C.c.last_seq, T.c.event_seq)
        .join(T, T.c.id == C.c.tenant_id)
        .where(C.c.consumer == consumer, T.c.event_seq > C.c.last_seq)
    )
    if only is not None:
        query = query.where(only)
    found = await conn.execute(query.limit(limit))
    return [(r.tenant_id, int(r.last_seq), int(r.event_seq)) for r in found]


async def tenants_without_cursor(conn: AsyncConnection, consumer: str, limit: int) -> list[str]:
    has = exists().where(C.c.consumer == consumer, C.c.tenant_id == T.c.id)
    found = await conn.execute(select(T.c.id).where(~has, T.c.event_seq > 0).limit(limit))
    return [r.id for r in found]


async def claim_cursor(
    conn: AsyncConnection, consumer: str, tenant_id: str, *, wait: bool = False
) -> int | None:
    """Lock the tenant's cursor for this transaction and return it; None when another
    replica holds it (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite serialises writers,
    and this transaction already holds the write lock), or, with `wait`, once that
    replica's transaction has ended (FOR UPDATE). None too when it does not exist."""
    query = select(C.c.last_seq).where(C.c.consumer == consumer, C.c.tenant_id == tenant_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=not wait)
    value = (await conn.execute(query)).scalar()
    return None if value is None else int(value)


async def cursor_to_head(
    conn: AsyncConnection, consumer: str, tenant_id: str, now: datetime
) -> None:
    """Move the tenant's cursor to its current head: what was committed before is
    passed over."""
    head = select(T.c.event_seq).where(T.c.id == tenant_id).scalar_subquery()
    await conn.execute(
        update(C)
        .where(C.c.consumer == consumer, C.c.tenant_id == tenant_id, C.c.last_seq < head)
        .values(last_seq=head, updated_at=now)
    )


async def advance_cursor(
    conn: AsyncConnection, consumer: str, tenant_id: str, seq: int, now: datetime
) -> None:
    await conn.execute(
        update(C)
        .where(and_(C.c.consumer == consumer, C.c.tenant_id == tenant_id, C.c.last_seq < seq))
        .values(last_seq=seq, updated_at=now)
    )


async def max_outbox_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(O.c.id), 0)))).scalar_one())


SINCE_LIMIT = 5000


async def outbox_since(
    conn: AsyncConnection, last: int, limit: int = SINCE_LIMIT
) -> tuple[int, set[str]]:
    """The highest outbox id among the next `limit` rows past `last` (or `last`) and
    the tenants of those rows: a primary-key range scan (the ordered subquery keeps
    the planner from walking the tenant index for the grouping), summed by tenant
    in the database (a row per tenant, not one per event)."""
    ahead = select(O.c.tenant_id, O.c.id).where(O.c.id > last).order_by(O.c.id).limit(limit)
    o = ahead.subquery("o")
    rows = (
        await conn.execute(
            select(o.c.tenant_id, func.max(o.c.id).label("last")).group_by(o.c.tenant_id)
        )
    ).all()
    return since_result(last, rows)


def since_result(last: int, rows: Sequence[Sequence[Any]]) -> tuple[int, set[str]]:
    """`outbox_since`'s answer from its (tenant, highest id) rows, however they were read."""
    if not rows:
        return last, set()
    return max(int(r[1]) for r in rows), {str(r[0]) for r in rows}
