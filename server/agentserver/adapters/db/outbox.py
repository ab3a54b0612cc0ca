"""Writing domain events to the outbox, inside the transaction of the change.

Each tenant's events get consecutive sequence numbers from `tenants.event_seq`,
taken by an UPDATE in the same transaction: the row stays locked until commit, so a
tenant's numbers follow commit order, and a reader that resumes after the last
number it saw misses nothing. Take them last in a transaction (after every other
lock), so the tenant's row is held only for the commit.

The PostgreSQL single statements do the same with `outbox_ctes` (below); the
SQLAlchemy path with `write_outbox`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentserver.adapters.db import models
from agentserver.domain.events import DomainEvent

T = models.tenants
O = models.outbox  # noqa: E741

_TAKE_SEQ = (
    update(T)
    .where(T.c.id == bindparam("p_tenant"))
    .values(event_seq=T.c.event_seq + bindparam("p_n"))
    .returning(T.c.event_seq)
)
_INSERT = insert(O)


async def write_outbox(
    conn: AsyncConnection, tenant_id: str, events: Sequence[DomainEvent], now: datetime
) -> None:
    """Append `events` for `tenant_id` inside the caller's transaction."""
    if not events:
        return
    last = (await conn.execute(_TAKE_SEQ, {"p_tenant": tenant_id, "p_n": len(events)})).scalar()
    if last is None:  # the tenant is gone: nothing to tell anyone about
        return
    first = last - len(events) + 1
    await conn.execute(
        _INSERT,
        [
            {
                "tenant_id": tenant_id,
                "seq": first + i,
                "aggregate_type": e.aggregate_type,
                "aggregate_id": e.aggregate_id,
                "type": e.type,
                "payload": e.payload,
                "created_at": now,
            }
            for i, e in enumerate(events)
        ],
    )


def outbox_ctes(first: int, keep: str) -> str:
    """CTEs that append events within a single PostgreSQL statement: $first tenant,
    $first+1 now, then arrays of aggregate types, aggregate ids, types, payloads (JSON
    text) and positions (what `keep` may test as `o.pos`: the part of the statement
    an event belongs to). Only the events `keep` admits are written, numbered in
    order; none when it admits none."""
    t, now, agg_type, agg_id, kind, payload, pos = (f"${first + i}" for i in range(7))
    return f"""
ev AS (
  SELECT o.*, row_number() OVER (ORDER BY o.n) AS k
    FROM unnest({agg_type}::text[], {agg_id}::text[], {kind}::text[], {payload}::text[],
                {pos}::int[])
         WITH ORDINALITY AS o(agg_type, agg_id, kind, payload, pos, n)
   WHERE {keep}
), sq AS (
  UPDATE tenants SET event_seq = event_seq + (SELECT count(*) FROM ev)
   WHERE id = {t} AND EXISTS (SELECT 1 FROM ev)
  RETURNING event_seq
), ob AS (
  INSERT INTO outbox (tenant_id, seq, aggregate_type, aggregate_id, type, payload, created_at)
  SELECT {t}, sq.event_seq - (SELECT count(*) FROM ev) + ev.k, ev.agg_type, ev.agg_id,
         ev.kind, ev.payload::json, {now}
    FROM ev CROSS JOIN sq
)"""


def outbox_args(
    tenant_id: str,
    now: datetime,
    events: Sequence[DomainEvent],
    positions: Sequence[int] | None = None,
) -> list[Any]:
    """The seven parameters of `outbox_ctes` (positions default to 0)."""
    return [
        tenant_id,
        now,
        [e.aggregate_type for e in events],
        [e.aggregate_id for e in events],
        [e.type for e in events],
        [json.dumps(e.payload) for e in events],
        list(positions) if positions is not None else [0] * len(events),
    ]
