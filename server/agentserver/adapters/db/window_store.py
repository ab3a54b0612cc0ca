"""Conversation windows (domain/windows.py) in the shared database: one conditional
upsert decides who opens a window, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.models import conversation_windows as W
from agentserver.domain.windows import WindowKey


class SqlConversationWindows:
    """The `ConversationWindows` port over the `conversation_windows` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert: Any = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert

    async def open(self, key: WindowKey, opener: str, now: datetime, until: datetime) -> bool:
        row = {
            "tenant_id": key.tenant_id,
            "channel": key.channel,
            "recipient": key.recipient,
            "opened_by": opener,
            "opened_at": now,
            "expires_at": until,
        }
        stmt = self._insert(W).values(**row)
        # A lapsed window is replaced; an open one is left alone and returns no row.
        # On PostgreSQL a concurrent opener waits for the row lock and then sees the
        # new window open, so exactly one of them opens it.
        stmt = stmt.on_conflict_do_update(
            index_elements=[W.c.tenant_id, W.c.channel, W.c.recipient],
            set_={
                "opened_by": stmt.excluded.opened_by,
                "opened_at": stmt.excluded.opened_at,
                "expires_at": stmt.excluded.expires_at,
                "joined_by": None,
            },
            where=W.c.expires_at <= now,
        ).returning(W.c.opened_by)
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def join(self, key: WindowKey, joiner: str, now: datetime) -> bool:
        stmt = (
            update(W)
            .where(*_is(key), W.c.expires_at > now)
            .values(joined_by=func.coalesce(W.c.joined_by, joiner))
            .returning(W.c.opened_by)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def withdraw(self, key: WindowKey, opener: str) -> str | None:
        async with self.engine.begin() as conn:
            # The row lock orders this against `join`: a join either committed
            # before (and is seen here) or runs after (and finds no window).
            query = select(W.c.joined_by).where(*_is(key), W.c.opened_by == opener)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            found = (await conn.execute(query)).first()
            if found is None:
                return None
            heir: str | None = found.joined_by
            if heir is None:
                await conn.execute(delete(W).where(*_is(key), W.c.opened_by == opener))
            else:
                await conn.execute(
                    update(W)
                    .where(*_is(key), W.c.opened_by == opener)
                    .values(opened_by=heir, joined_by=None)
                )
            return heir

    async def prune(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` windows that lapsed before `before`; how many went.
        A window opened again meanwhile (its expiry moved) stays: the delete checks
        the expiry again on the row it deletes."""
        lapsed = (
            select(W.c.tenant_id, W.c.channel, W.c.recipient)
            .where(W.c.expires_at < before)
            .limit(limit)
        )
        stmt = delete(W).where(
            tuple_(W.c.tenant_id, W.c.channel, W.c.recipient).in_(lapsed),
            W.c.expires_at < before,
        )
        async with self.engine.begin() as conn:
            return int((await conn.execute(stmt)).rowcount or 0)


def _is(key: WindowKey) -> tuple[Any, ...]:
    return (
        W.c.tenant_id == key.tenant_id,
        W.c.channel == key.channel,
        W.c.recipient == key.recipient,
    )
