"""Resources and bookings: the business records actions change.

Resources use optimistic concurrency (a version column; an update names the
version it read). Bookings of one resource are serialised by the resource's row
lock (PostgreSQL `FOR UPDATE`; SQLite's BEGIN IMMEDIATE), and the overlap check
runs under that lock, so two bookings of the same resource and time can never
both succeed, on any number of replicas.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.domain.channels import PermanentChannelError
from agentserver.domain.ids import new_id

R = models.resources
B = models.bookings
E = models.ledger_entries


def _resource(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "resource_type": row.resource_type,
        "name": row.name,
        "location_id": row.location_id,
        "attributes": dict(row.attributes or {}),
        "version": row.version,
    }


class SqlBusinessStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read = reader(engine)

    async def _find(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        resource_id: str | None,
        name: str | None,
        resource_type: str | None = None,
        *,
        lock: bool = False,
    ) -> Any:
        query = select(R).where(R.c.tenant_id == tenant_id, R.c.deleted_at.is_(None))
        if resource_id:
            query = query.where(R.c.id == resource_id)
        elif name:
            query = query.where(func.lower(R.c.name) == name.lower())
            if resource_type:
                query = query.where(func.lower(R.c.resource_type) == resource_type.lower())
        else:
            raise PermanentChannelError("name a resource by id or by name")
        if lock:
            query = query.with_for_update()
        rows = (await conn.execute(query.limit(2))).all()
        if not rows:
            raise PermanentChannelError(f"no resource {resource_id or name!r}")
        if len(rows) > 1:
            raise PermanentChannelError(f"several resources are called {name!r}; give its id")
        return rows[0]

    async def create_resource(
        self,
        tenant_id: str,
        location_id: str,
        resource_type: str,
        name: str,
        attributes: dict[str, str],
        now: datetime,
    ) -> dict[str, Any]:
        values = {
            "id": new_id("rsc"),
            "tenant_id": tenant_id,
            "location_id": location_id,
            "resource_type": resource_type,
            "name": name,
            "attributes": attributes,
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        async with self._engine.begin() as conn:
            await conn.execute(insert(R).values(**values))
        return {
            k: values[k]
            for k in ("id", "resource_type", "name", "location_id", "attributes", "version")
        }

    async def read_resources(
        self, tenant_id: str, resource_type: str | None, resource_id: str | None, name: str | None
    ) -> list[dict[str, Any]]:
        query = select(R).where(R.c.tenant_id == tenant_id, R.c.deleted_at.is_(None))
        if resource_id:
            query = query.where(R.c.id == resource_id)
        if name:
            query = query.where(func.lower(R.c.name) == name.lower())
        if resource_type:
            query = query.where(func.lower(R.c.resource_type) == resource_type.lower())
        async with self._read.connect() as conn:
            rows = (await conn.execute(query.order_by(R.c.name).limit(50))).all()
        return [_resource(r) for r in rows]

    async def update_resource(
        self,
        tenant_id: str,
        resource_id: str | None,
        name: str | None,
        resource_type: str | None,
        attributes: dict[str, str] | None,
        expected_version: int | None,
        now: datetime,
    ) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = await self._find(
                conn, tenant_id, resource_id, name if not resource_id else None, resource_type
            )
            version = row.version if expected_version is None else expected_version
            changes: dict[str, Any] = {"updated_at": now, "version": version + 1}
            if attributes:
                changes["attributes"] = {**(row.attributes or {}), **attributes}
            if resource_id and name:
                changes["name"] = name
            result = await conn.execute(
                update(R)
                .where(R.c.tenant_id == tenant_id, R.c.id == row.id, R.c.version == version)
                .values(**changes)
            )
            if result.rowcount != 1:
                raise PermanentChannelError(
                    f"resource {row.id} changed since version {version} (now {row.version})"
                )
            fresh = (await conn.execute(select(R).where(R.c.id == row.id))).one()
        return _resource(fresh)

    async def delete_resource(
        self,
        tenant_id: str,
        resource_id: str | None,
        name: str | None,
        resource_type: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = await self._find(conn, tenant_id, resource_id, name, resource_type)
            version = row.version if expected_version is None else expected_version
            result = await conn.execute(
                update(R)
                .where(R.c.tenant_id == tenant_id, R.c.id == row.id, R.c.version == version)
                .values(deleted_at=now, updated_at=now, version=version + 1)
            )
            if result.rowcount != 1:
                raise PermanentChannelError(f"resource {row.id} changed since version {version}")
        return {**_resource(row), "deleted": True}

    async def create_booking(
        self,
        tenant_id: str,
        location_id: str,
        resource_id: str | None,
        resource_name: str | None,
        start: datetime,
        end: datetime,
        customer_name: str,
        notes: str,
        action_id: str,
        now: datetime,
    ) -> dict[str, Any]:
        if end <= start:
            raise PermanentChannelError("a booking must end after it starts")
        async with self._engine.begin() as conn:
            # The row lock serialises every booking of this resource.
            resource = await self._find(conn, tenant_id, resource_id, resource_name, lock=True)
            clash = (
                await conn.execute(
                    select(B.c.id).where(
                        B.c.tenant_id == tenant_id,
                        B.c.resource_id == resource.id,
                        B.c.status == "confirmed",
                        B.c.start_at < end,
                        B.c.end_at > start,
                    )
                )
            ).first()
            if clash is not None:
                raise PermanentChannelError(
                    f"{resource.name} is already booked then (booking {clash.id})"
                )
            booking_id = new_id("bkg")
            await conn.execute(
                insert(B).values(
                    id=booking_id,
                    tenant_id=tenant_id,
                    location_id=location_id or resource.location_id,
                    resource_id=resource.id,
                    start_at=start,
                    end_at=end,
                    customer_name=customer_name,
                    notes=notes,
                    status="confirmed",
                    action_id=action_id,
                    created_at=now,
                )
            )
        return {
            "booking_id": booking_id,
            "resource_id": resource.id,
            "resource_name": resource.name,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "customer_name": customer_name,
        }

    async def cancel_booking(
        self, tenant_id: str, booking_id: str, now: datetime
    ) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(B)
                .where(B.c.tenant_id == tenant_id, B.c.id == booking_id, B.c.status == "confirmed")
                .values(status="cancelled", cancelled_at=now)
            )
            if result.rowcount != 1:
                raise PermanentChannelError(f"no confirmed booking {booking_id!r}")
        return {"booking_id": booking_id, "status": "cancelled"}

    async def summary(self, tenant_id: str, since: datetime, until: datetime) -> dict[str, Any]:
        """Usage by operation type, bookings and resources in a period."""
        async with self._read.connect() as conn:
            usage = await conn.execute(
                select(E.c.operation_type, func.sum(E.c.used_delta))
                .where(E.c.tenant_id == tenant_id, E.c.created_at >= since, E.c.created_at < until)
                .group_by(E.c.operation_type)
            )
            bookings = await conn.execute(
                select(B.c.status, func.count())
                .where(B.c.tenant_id == tenant_id, B.c.start_at >= since, B.c.start_at < until)
                .group_by(B.c.status)
            )
            resources = await conn.execute(
                select(R.c.resource_type, func.count())
                .where(R.c.tenant_id == tenant_id, R.c.deleted_at.is_(None))
                .group_by(R.c.resource_type)
            )
            return {
                "since": since.isoformat(),
                "until": until.isoformat(),
                "tokens_used": {op: int(n or 0) for op, n in usage if n},
                "bookings": {status: int(n) for status, n in bookings},
                "resources": {kind: int(n) for kind, n in resources},
            }


def period_bounds(period: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a named period relative to `now` (UTC days)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    week = day - timedelta(days=day.weekday())
    quarter = month.replace(month=(month.month - 1) // 3 * 3 + 1)
    match period or "last_30_days":
        case "today":
            return day, day + timedelta(days=1)
        case "yesterday":
            return day - timedelta(days=1), day
        case "this_week":
            return week, week + timedelta(days=7)
        case "last_week":
            return week - timedelta(days=7), week
        case "this_month":
            return month, now + timedelta(seconds=1)
        case "last_month":
            return (month - timedelta(days=1)).replace(day=1), month
        case "last_7_days":
            return now - timedelta(days=7), now + timedelta(seconds=1)
        case "this_quarter":
            return quarter, now + timedelta(seconds=1)
        case "last_quarter":
            prev = (quarter - timedelta(days=1)).replace(day=1)
            return prev.replace(month=(prev.month - 1) // 3 * 3 + 1), quarter
        case "this_year":
            return day.replace(month=1, day=1), now + timedelta(seconds=1)
        case _:
            return now - timedelta(days=30), now + timedelta(seconds=1)
