"""Tenants, API keys, permission rules, channel settings and events on SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.audit import UNAUTHENTICATED_KIND
from agentserver.adapters.db import models
from agentserver.adapters.db.engine import reader
from agentserver.domain.admin_model import KeyInfo, LocationInfo, TenantInfo
from agentserver.domain.audit import AuditEvent, AuditFilter
from agentserver.domain.errors import Conflict, InvalidArgument, NotFound
from agentserver.domain.identity import MAX_USER_ID, KeyRecord, generate_key, hash_key
from agentserver.domain.ids import new_id
from agentserver.domain.paging import PageRequest, encode_token

K = models.api_keys
T = models.tenants
W = models.wallets
PR = models.permission_rules
EV = models.events
OB = models.outbox
CS = models.channel_settings
LOC = models.locations

SCOPES = ("business", "user", "location")
EFFECTS = ("allow", "deny")


class SqlAdminStore:
    def __init__(self, engine: AsyncEngine, *, low_balance_threshold: int = 50) -> None:
        self._engine = engine
        self._read = reader(engine)
        self._low_balance_threshold = low_balance_threshold

    # -- tenants -------------------------------------------------------------

    async def create_tenant(
        self, tenant_id: str, name: str, now: datetime, policy: dict[str, Any] | None = None
    ) -> None:
        """Create a tenant and its tenant-wide wallet (empty)."""
        if not tenant_id or len(tenant_id) > 64:
            raise InvalidArgument.field("tenant_id", "must be 1 to 64 characters")
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(T).values(
                        id=tenant_id, name=name or tenant_id, policy=policy or {}, created_at=now
                    )
                )
                await conn.execute(
                    insert(W).values(
                        id=new_id("wal"),
                        tenant_id=tenant_id,
                        location_id="",
                        low_balance_threshold=self._low_balance_threshold,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise Conflict(f"tenant {tenant_id!r} already exists") from None

    async def get_tenant(self, tenant_id: str) -> TenantInfo:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(T).where(T.c.id == tenant_id))).first()
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return _tenant(row)

    async def list_tenants(self, page: PageRequest) -> tuple[list[TenantInfo], str]:
        query = select(T).order_by(T.c.id).limit(page.size + 1)
        if page.after:
            query = query.where(T.c.id > page.after["id"])
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        tenants = [_tenant(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        return tenants, encode_token("tenants", {"id": tenants[-1].id}) if more else ""

    async def update_tenant(
        self, tenant_id: str, name: str | None, conversation_retention_days: int | None
    ) -> TenantInfo:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if conversation_retention_days is not None:
            changes["conversation_retention_days"] = conversation_retention_days
        if changes:
            async with self._engine.begin() as conn:
                result = await conn.execute(update(T).where(T.c.id == tenant_id).values(**changes))
                if result.rowcount != 1:
                    raise NotFound(f"tenant {tenant_id!r} not found")
        return await self.get_tenant(tenant_id)

    async def retention_days(self) -> list[tuple[str, int]]:
        """(tenant, days) of every tenant that keeps conversations for a limited time."""
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(T.c.id, T.c.conversation_retention_days).where(
                    T.c.conversation_retention_days > 0
                )
            )
            return [(r.id, int(r.conversation_retention_days)) for r in rows]

    async def tenant_exists(self, tenant_id: str) -> bool:
        async with self._read.connect() as conn:
            return (
                await conn.execute(select(T.c.id).where(T.c.id == tenant_id))
            ).first() is not None

    async def count_tenants(self) -> int:
        async with self._read.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(T))).scalar_one())

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(T.c.policy).where(T.c.id == tenant_id))).first()
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return dict(row.policy or {})

    async def set_tenant_policy(self, tenant_id: str, policy: dict[str, Any]) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(update(T).where(T.c.id == tenant_id).values(policy=policy))
            if result.rowcount != 1:
                raise NotFound(f"tenant {tenant_id!r} not found")

    # -- API keys ------------------------------------------------------------

    async def create_key(
        self,
        tenant_id: str | None,
        scopes: Sequence[str],
        description: str,
        now: datetime,
        *,
        expires_at: datetime | None = None,
        user_id: str | None = None,
    ) -> tuple[str, str]:
        """Store a new key's hash; returns (key id, full key). The key is shown once.
        With `user_id` the key is bound to that person of the tenant."""
        if expires_at is not None and expires_at <= now:
            raise InvalidArgument.field("expires_at", "must be in the future")
        if user_id is not None:
            if tenant_id is None:
                raise InvalidArgument.field("user_id", "only a tenant key can be bound to a user")
            if not user_id or len(user_id) > MAX_USER_ID or "\x00" in user_id:
                raise InvalidArgument.field("user_id", f"must be 1 to {MAX_USER_ID} characters")
        if tenant_id is not None and not await self.tenant_exists(tenant_id):
            raise NotFound(f"tenant {tenant_id!r} not found")
        key_id, key = generate_key()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(K).values(
                    id=key_id,
                    tenant_id=tenant_id,
                    key_hash=hash_key(key),
                    user_id=user_id,
                    scopes=list(scopes),
                    description=description,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return key_id, key

    async def revoke_key(self, key_id: str, now: datetime) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(update(K).where(K.c.id == key_id).values(revoked_at=now))
            if result.rowcount != 1:
                raise NotFound(f"API key {key_id!r} not found")

    async def list_keys(self, tenant_id: str | None) -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            query = select(
                K.c.id,
                K.c.tenant_id,
                K.c.user_id,
                K.c.scopes,
                K.c.description,
                K.c.revoked_at,
                K.c.expires_at,
            )
            if tenant_id is not None:
                query = query.where(K.c.tenant_id == tenant_id)
            return [dict(r._mapping) for r in await conn.execute(query.order_by(K.c.created_at))]

    async def get_key(self, key_id: str) -> KeyInfo:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(K).where(K.c.id == key_id))).first()
        if row is None:
            raise NotFound(f"API key {key_id!r} not found")
        return _key(row)

    async def key_infos(self, tenant_id: str | None) -> list[KeyInfo]:
        """The keys of a tenant (None: the platform keys), oldest first."""
        where = K.c.tenant_id.is_(None) if tenant_id is None else K.c.tenant_id == tenant_id
        async with self._read.connect() as conn:
            rows = await conn.execute(select(K).where(where).order_by(K.c.created_at, K.c.id))
            return [_key(r) for r in rows]

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(K).where(K.c.key_hash == key_hash))).first()
        if row is None:
            return None
        return KeyRecord(
            id=row.id,
            tenant_id=row.tenant_id,
            scopes=frozenset(row.scopes or ()),
            revoked=row.revoked_at is not None,
            expires_at=row.expires_at,
            user_id=row.user_id,
        )

    # -- permission rules ----------------------------------------------------

    async def set_rule(
        self, tenant_id: str, scope: str, subject_id: str, effect: str, permission: str
    ) -> None:
        if scope not in SCOPES:
            raise InvalidArgument.field("scope", f"must be one of {', '.join(SCOPES)}")
        if effect not in EFFECTS:
            raise InvalidArgument.field("effect", "must be allow or deny")
        if scope == "business":
            subject_id = ""
        elif not subject_id:
            raise InvalidArgument.field("subject_id", f"a {scope} rule names its {scope}")
        if ":" not in permission:
            raise InvalidArgument.field("permission", "must look like resource:verb")
        if not await self.tenant_exists(tenant_id):
            raise NotFound(f"tenant {tenant_id!r} not found")
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(PR).values(
                        tenant_id=tenant_id,
                        scope=scope,
                        subject_id=subject_id,
                        effect=effect,
                        permission=permission,
                    )
                )
        except IntegrityError:
            pass  # already there: setting a rule is idempotent

    async def remove_rule(
        self, tenant_id: str, scope: str, subject_id: str, effect: str, permission: str
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(PR).where(
                    PR.c.tenant_id == tenant_id,
                    PR.c.scope == scope,
                    PR.c.subject_id == ("" if scope == "business" else subject_id),
                    PR.c.effect == effect,
                    PR.c.permission == permission,
                )
            )
            return bool(result.rowcount)

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]:
        """(scope, subject_id, effect, permission) of every rule of the tenant."""
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(PR.c.scope, PR.c.subject_id, PR.c.effect, PR.c.permission)
                .where(PR.c.tenant_id == tenant_id)
                .order_by(PR.c.scope, PR.c.subject_id, PR.c.permission)
            )
            return [(r.scope, r.subject_id, r.effect, r.permission) for r in rows]

    # -- locations -----------------------------------------------------------

    async def locations(self, tenant_id: str) -> list[LocationInfo]:
        """The tenant's locations, each with its allow-list (its `location` allow rules)."""
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(LOC).where(LOC.c.tenant_id == tenant_id).order_by(LOC.c.id)
                )
            ).all()
            allows = await conn.execute(
                select(PR.c.subject_id, PR.c.permission).where(
                    PR.c.tenant_id == tenant_id, PR.c.scope == "location", PR.c.effect == "allow"
                )
            )
            allowed: dict[str, list[str]] = {}
            for subject, permission in allows:
                allowed.setdefault(subject, []).append(permission)
        return [
            LocationInfo(
                id=r.id,
                name=r.name,
                allowed_permissions=tuple(sorted(allowed.get(r.id, ()))),
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    async def put_location(
        self,
        tenant_id: str,
        location_id: str,
        name: str,
        allowed: Sequence[str],
        now: datetime,
    ) -> None:
        """Create or replace a location and its whole allow-list, in one transaction."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(LOC)
                .where(LOC.c.tenant_id == tenant_id, LOC.c.id == location_id)
                .values(name=name, updated_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(LOC).values(
                        tenant_id=tenant_id,
                        id=location_id,
                        name=name,
                        created_at=now,
                        updated_at=now,
                    )
                )
            await conn.execute(_delete_location_allows(tenant_id, location_id))
            if allowed:
                await conn.execute(
                    insert(PR),
                    [
                        {
                            "tenant_id": tenant_id,
                            "scope": "location",
                            "subject_id": location_id,
                            "effect": "allow",
                            "permission": p,
                        }
                        for p in allowed
                    ],
                )

    async def delete_location(self, tenant_id: str, location_id: str) -> bool:
        async with self._engine.begin() as conn:
            await conn.execute(_delete_location_allows(tenant_id, location_id))
            result = await conn.execute(
                delete(LOC).where(LOC.c.tenant_id == tenant_id, LOC.c.id == location_id)
            )
            return bool(result.rowcount)

    # -- channel settings ----------------------------------------------------

    async def set_channel(
        self,
        tenant_id: str,
        channel: str,
        config: dict[str, Any],
        secret: str | None,
        now: datetime,
    ) -> None:
        if not await self.tenant_exists(tenant_id):
            raise NotFound(f"tenant {tenant_id!r} not found")
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(CS).where(CS.c.tenant_id == tenant_id, CS.c.channel == channel)
            )
            await conn.execute(
                insert(CS).values(
                    tenant_id=tenant_id,
                    channel=channel,
                    config=config,
                    secret=secret,
                    updated_at=now,
                )
            )

    async def channel(
        self, tenant_id: str, channel: str
    ) -> tuple[dict[str, Any], str | None] | None:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(CS.c.config, CS.c.secret).where(
                        CS.c.tenant_id == tenant_id, CS.c.channel == channel
                    )
                )
            ).first()
        return None if row is None else (dict(row.config or {}), row.secret)

    async def channel_rows(
        self, tenant_id: str
    ) -> list[tuple[str, dict[str, Any], str | None, datetime]]:
        """(channel, config, encrypted secret, updated_at) of each channel with settings."""
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(CS.c.channel, CS.c.config, CS.c.secret, CS.c.updated_at)
                .where(CS.c.tenant_id == tenant_id)
                .order_by(CS.c.channel)
            )
            return [(r.channel, dict(r.config or {}), r.secret, r.updated_at) for r in rows]

    async def delete_channel(self, tenant_id: str, channel: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(CS).where(CS.c.tenant_id == tenant_id, CS.c.channel == channel)
            )
            return bool(result.rowcount)

    async def channel_secrets(self) -> list[tuple[str, str, str]]:
        """(tenant, channel, encrypted secret) of every channel setting that has one."""
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(CS.c.tenant_id, CS.c.channel, CS.c.secret).where(CS.c.secret.is_not(None))
            )
            return [(r.tenant_id, r.channel, r.secret) for r in rows]

    async def any_channel_secrets(self) -> bool:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(CS.c.tenant_id).where(CS.c.secret.is_not(None)))
            ).first()
        return row is not None

    # -- events --------------------------------------------------------------

    async def write_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            async with self._engine.begin() as conn:
                await conn.execute(insert(EV), list(events))

    async def prune_audit_events(self, before: datetime, limit: int = 5000) -> int:
        """Delete up to `limit` audit events created before `before`, oldest first;
        returns how many. Other events (low balance, ...) are kept."""
        oldest = (
            select(EV.c.id)
            .where(EV.c.created_at < before, EV.c.kind.startswith("audit."))
            .order_by(EV.c.created_at)
            .limit(limit)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(EV).where(EV.c.id.in_(oldest.scalar_subquery())))
        return int(result.rowcount or 0)

    async def outbox(self, tenant_id: str, type_prefix: str = "") -> list[dict[str, Any]]:
        """The tenant's outbox events in sequence order (optionally of one kind)."""
        async with self._read.connect() as conn:
            query = select(OB).where(OB.c.tenant_id == tenant_id)
            if type_prefix:
                query = query.where(OB.c.type.startswith(type_prefix))
            return [dict(r._mapping) for r in await conn.execute(query.order_by(OB.c.seq))]

    async def audit_events(
        self, tenant_id: str | None, flt: AuditFilter, page: PageRequest, *, unauthenticated: bool
    ) -> tuple[list[AuditEvent], str]:
        """A tenant's audit events (None: the platform's own, or with `unauthenticated`
        the trail of calls no key vouched for), newest first, filtered; paged by id."""
        owner = EV.c.tenant_id.is_(None) if tenant_id is None else EV.c.tenant_id == tenant_id
        if unauthenticated:
            query = select(EV).where(owner, EV.c.kind.startswith(UNAUTHENTICATED_KIND))
            prefix = UNAUTHENTICATED_KIND
        else:
            query = select(EV).where(
                owner,
                EV.c.kind.startswith("audit."),
                ~EV.c.kind.startswith(UNAUTHENTICATED_KIND),
            )
            prefix = "audit."
        if flt.key_id:
            query = query.where(EV.c.key_id == flt.key_id)
        if flt.user_id:
            query = query.where(EV.c.user_id == flt.user_id)
        if flt.type:
            query = query.where(EV.c.kind == prefix + flt.type)
        if flt.object:
            query = query.where(EV.c.object == flt.object)
        if flt.since:
            query = query.where(EV.c.created_at >= flt.since)
        if flt.until:
            query = query.where(EV.c.created_at < flt.until)
        if page.after:
            try:
                query = query.where(EV.c.id < int(page.after["id"]))
            except ValueError:
                raise InvalidArgument.field(
                    "page_token", "is not a token this server issued"
                ) from None
        query = query.order_by(EV.c.id.desc()).limit(page.size + 1)
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        events = [audit_event(r, prefix) for r in rows[: page.size]]
        more = len(rows) > page.size
        return events, encode_token("audit", {"id": str(events[-1].id)}) if more else ""

    async def events(self, tenant_id: str | None, kind_prefix: str = "") -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            query = select(EV)
            if tenant_id is not None:
                query = query.where(EV.c.tenant_id == tenant_id)
            if kind_prefix:
                query = query.where(EV.c.kind.startswith(kind_prefix))
            return [dict(r._mapping) for r in await conn.execute(query.order_by(EV.c.id))]


def _delete_location_allows(tenant_id: str, location_id: str) -> Any:
    return delete(PR).where(
        PR.c.tenant_id == tenant_id,
        PR.c.scope == "location",
        PR.c.subject_id == location_id,
        PR.c.effect == "allow",
    )


def _tenant(row: Any) -> TenantInfo:
    return TenantInfo(
        id=row.id,
        name=row.name,
        conversation_retention_days=int(row.conversation_retention_days or 0),
        created_at=row.created_at,
    )


def _key(row: Any) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        scopes=tuple(row.scopes or ()),
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        user_id=row.user_id,
    )


def audit_event(row: Any, prefix: str) -> AuditEvent:
    payload = dict(row.payload or {})
    return AuditEvent(
        id=int(row.id),
        tenant_id=row.tenant_id or "",
        type=row.kind.removeprefix(prefix),
        object=row.object,
        key_id=row.key_id,
        user_id=row.user_id,
        outcome=row.outcome,
        request_id=row.subject,
        created_at=row.created_at,
        details=payload,
    )
