"""Tables. One Alembic revision chain (migrations/) creates them on SQLite and PostgreSQL.

Every tenant-owned table carries `tenant_id`, and every repository query filters on
it: tenant isolation lives in the data layer, not only in the servicers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores no zone, so it is restored on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Per-tenant decision policy (level overrides, confidence and cost bands).
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Conversations (messages, and what actions said) older than this are removed by
    # the sweep; 0 keeps them.
    conversation_retention_days: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime]
    # The last sequence number given to one of the tenant's outbox events. Taken by
    # an UPDATE in the transaction that writes them, so numbers follow commit order.
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # NULL for platform keys (billing operations across tenants).
    tenant_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Set for a key bound to one person: it speaks for that user only.
    user_id: Mapped[str | None] = mapped_column(String(120))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # NULL: never expires.
    expires_at: Mapped[datetime | None]


class Wallet(Base):
    """The seed's `business_tokens`: one row per tenant wallet and per location wallet."""

    __tablename__ = "business_tokens"
    __table_args__ = (
        UniqueConstraint("tenant_id", "location_id"),
        # The last line of defence for "no wallet ever goes below zero".
        CheckConstraint("total_tokens - used_tokens - reserved_tokens >= 0", name="not_overdrawn"),
        CheckConstraint("reserved_tokens >= 0 AND used_tokens >= 0", name="non_negative"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    # '' for the tenant-wide wallet (NULL would defeat the unique constraint).
    location_id: Mapped[str] = mapped_column(String(64), default="")
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    used_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    arrears_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    low_balance_threshold: Mapped[int] = mapped_column(BigInteger, default=0)
    last_purchase_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LedgerEntry(Base):
    """The seed's `token_usage_logs`, append-only: one row per change of a balance."""

    __tablename__ = "token_usage_logs"
    __table_args__ = (
        # The idempotency key: one write per (tenant, request_id), ever.
        UniqueConstraint("tenant_id", "request_id"),
        Index("ix_token_usage_logs_wallet_id_id", "wallet_id", "id"),
        # ListUsage: a tenant's entries newest first, and those made for a location
        # or a user (partial: most entries name no user).
        Index("ix_token_usage_logs_tenant_id_id", "tenant_id", "id"),
        Index("ix_token_usage_logs_location", "tenant_id", "location_id", "id"),
        Index(
            "ix_token_usage_logs_user",
            "tenant_id",
            "user_id",
            "id",
            postgresql_where=text("user_id <> ''"),
            sqlite_where=text("user_id <> ''"),
        ),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    wallet_id: Mapped[str] = mapped_column(String(40), ForeignKey("business_tokens.id"))
    wallet_location_id: Mapped[str] = mapped_column(String(64), default="")
    operation_type: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    tokens: Mapped[int] = mapped_column(BigInteger)
    # Signed changes of the wallet's columns; they sum to the wallet's state.
    total_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    used_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    arrears_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    # The wallet right after this entry, so an idempotent replay returns the first result.
    total_after: Mapped[int] = mapped_column(BigInteger)
    used_after: Mapped[int] = mapped_column(BigInteger)
    reserved_after: Mapped[int] = mapped_column(BigInteger)
    arrears_after: Mapped[int] = mapped_column(BigInteger, default=0)
    description: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    reservation_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    # The seed's attribution: who asked, in which conversation, and free metadata.
    user_id: Mapped[str] = mapped_column(String(120), default="", server_default="")
    session_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default="{}")


class Reservation(Base):
    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_state_expires_at", "state", "expires_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    wallet_id: Mapped[str] = mapped_column(String(40), ForeignKey("business_tokens.id"))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    wallet_location_id: Mapped[str] = mapped_column(String(64), default="")
    operation_type: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    # Copied to the entries of its capture, release or expiry.
    user_id: Mapped[str] = mapped_column(String(120), default="", server_default="")
    session_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default="{}")


class OutboxEvent(Base):
    """Changes other systems may care about, written in the same transaction as the
    change itself: Debezium's outbox layout (id, aggregate type and id, type,
    payload) plus the tenant, its per-tenant sequence and the time."""

    __tablename__ = "outbox"
    # No index on created_at: retention takes the oldest by id (appended in order).
    __table_args__ = (UniqueConstraint("tenant_id", "seq"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    aggregate_type: Mapped[str] = mapped_column(String(40))
    aggregate_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class Event(Base):
    """Outbox of domain events (low balance, action state changes) and the audit trail."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_id_id", "tenant_id", "id"),
        # Audit retention deletes by age (see SqlAdminStore.prune_audit_events).
        Index("ix_events_created_at", "created_at"),
        # A person's events: read by ExportUserData, rewritten by EraseUserData.
        Index("ix_events_tenant_user_id", "tenant_id", "user_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(60))
    # "<key id>/<user id>" for audit events: a user id may take 120 on its own.
    actor: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(String(200), default="")
    outcome: Mapped[str] = mapped_column(String(40), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    # Audit events: the key and the user who acted, and the object a change changed
    # (server defaults: the hot paths' own INSERTs name none of them).
    key_id: Mapped[str] = mapped_column(String(40), default="", server_default="")
    user_id: Mapped[str] = mapped_column(String(120), default="", server_default="")
    object: Mapped[str] = mapped_column(String(200), default="", server_default="")


class PermissionRule(Base):
    """Grants and denials: business defaults, per user, and per-location policy."""

    __tablename__ = "permission_rules"
    __table_args__ = (UniqueConstraint("tenant_id", "scope", "subject_id", "effect", "permission"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    scope: Mapped[str] = mapped_column(String(16))  # business | user | location
    subject_id: Mapped[str] = mapped_column(String(64), default="")
    effect: Mapped[str] = mapped_column(String(8))  # allow | deny
    permission: Mapped[str] = mapped_column(String(120))


class Location(Base):
    """A tenant's named location. Its allow-list is its `location` permission rules."""

    __tablename__ = "locations"
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConversationSession(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_tenant_user_updated", "tenant_id", "user_id", "updated_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(120))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConversationMessage(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session_id", "tenant_id", "session_id", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(40), ForeignKey("sessions.id"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    decision_level: Mapped[int] = mapped_column(Integer, default=0)
    action_ids: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]


class ActionRecord(Base):
    __tablename__ = "actions"
    __table_args__ = (
        Index("ix_actions_tenant_state", "tenant_id", "state", "id"),
        Index("ix_actions_tenant_session", "tenant_id", "session_id", "id"),
        # The sweep's reads across tenants: stale approved and executing actions.
        Index("ix_actions_state_updated_at", "state", "updated_at"),
        Index("ix_actions_tenant_depends_on", "tenant_id", "depends_on"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(40), ForeignKey("sessions.id"))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    action_type: Mapped[str] = mapped_column(String(60))
    category: Mapped[str] = mapped_column(String(30))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decision_level: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    executable: Mapped[bool] = mapped_column(Boolean)
    blocked: Mapped[list[Any]] = mapped_column(default=list)
    token_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    operation_type: Mapped[str] = mapped_column(String(40), default="")
    confidence: Mapped[int] = mapped_column(Integer, default=0)
    reasoning: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(120), default="")
    decided_by: Mapped[str] = mapped_column(String(120), default="")
    decision_request_id: Mapped[str] = mapped_column(String(200), default="")
    rejection_reason: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reservation_id: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    depends_on: Mapped[str | None] = mapped_column(String(40))


class ConversationWindow(Base):
    """An open (or lapsed) per-recipient conversation window (domain/windows.py)."""

    __tablename__ = "conversation_windows"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20), primary_key=True)
    recipient: Mapped[str] = mapped_column(String(200), primary_key=True)
    opened_by: Mapped[str] = mapped_column(String(40))
    opened_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # The first action whose message went out free inside the window: it inherits
    # the window (and pays for it) if the opener's send fails.
    joined_by: Mapped[str | None] = mapped_column(String(40), nullable=True)


class ChannelSetting(Base):
    """Per-tenant provider settings; `secret` is encrypted at rest (Fernet)."""

    __tablename__ = "channel_settings"
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secret: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class Resource(Base):
    __tablename__ = "resources"
    __table_args__ = (Index("ix_resources_tenant_type", "tenant_id", "resource_type"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    resource_type: Mapped[str] = mapped_column(String(60))
    name: Mapped[str] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (Index("ix_bookings_resource_start", "tenant_id", "resource_id", "start_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    location_id: Mapped[str] = mapped_column(String(64), default="")
    resource_id: Mapped[str] = mapped_column(String(40), ForeignKey("resources.id"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    customer_name: Mapped[str] = mapped_column(String(200), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    action_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


# Core handles for the hot paths (Core statements skip the ORM's unit of work).
tenants = _table(Tenant)
api_keys = _table(ApiKey)
wallets = _table(Wallet)
ledger_entries = _table(LedgerEntry)
reservations = _table(Reservation)
events = _table(Event)
outbox = _table(OutboxEvent)
permission_rules = _table(PermissionRule)
locations = _table(Location)
sessions = _table(ConversationSession)
messages = _table(ConversationMessage)
actions = _table(ActionRecord)
channel_settings = _table(ChannelSetting)
conversation_windows = _table(ConversationWindow)
resources = _table(Resource)
bookings = _table(Booking)


# -- events out: webhooks and relays (issue 12) ------------------------------------


class WebhookEndpoint(Base):
    """Where a tenant's events are POSTed (Standard Webhooks). The signing secret is
    stored encrypted (SecretBox); after a rotation the previous one signs too until
    `previous_secret_until`."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[Any]] = mapped_column(default=list)  # empty: every type
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str] = mapped_column(String(20), default="")
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None]
    secret_rotated_at: Mapped[datetime | None]
    # Since when every attempt has failed (NULL after a success): 5 days disables it.
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event to one endpoint. A replica claims a due delivery by setting its lease
    (FOR UPDATE SKIP LOCKED on PostgreSQL), makes one attempt, and records it under
    the same lease token: one attempt in flight per (endpoint, event)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_outbox_id", "outbox_id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)  # NULL for a test event
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(60))
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # a test event's own
    state: Mapped[str] = mapped_column(String(12))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(32))
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EventCursor(Base):
    """How far a consumer (the webhook fan-out, the NATS relay) has read each tenant's
    outbox: the per-tenant sequence is gap-free and in commit order, so a cursor
    never skips an event. Replicas share tenants by locking cursor rows (FOR UPDATE
    SKIP LOCKED)."""

    __tablename__ = "event_cursors"
    consumer: Mapped[str] = mapped_column(String(20), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]


webhook_endpoints = _table(WebhookEndpoint)
webhook_deliveries = _table(WebhookDelivery)
event_cursors = _table(EventCursor)
