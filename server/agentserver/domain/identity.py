"""Who is calling: API keys, tenants and scopes.

Keys look like `ask_<key id>_<secret>`; only a SHA-256 of the whole key is stored
(the secret is 256 random bits, so a slow hash adds nothing). A key belongs to a
tenant, or to the platform (tenant None) for billing operations such as AddTokens.

A tenant key is either a service key, which vouches for whichever user its caller
names in `x-user-id` (internal services speak for their users), or a key bound to
one person, which speaks for that person only: `x-user-id` may be left out or
repeat the key's user, anything else is PERMISSION_DENIED. Browsers get the latter.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agentserver.domain.audit import Change
from agentserver.domain.clock import Clock, SystemClock
from agentserver.domain.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from agentserver.domain.lru import LruCache

SCOPE_AGENT = "agent"  # Process, actions, conversations
SCOPE_TOKENS_READ = "tokens:read"
SCOPE_TOKENS_WRITE = "tokens:write"  # charge, reserve, capture, release
SCOPE_BILLING = "billing"  # AddTokens; platform keys only
SCOPE_ADMIN = "admin"  # AdminService: its own tenant, or (platform keys) any tenant
SCOPE_EVENTS = "events"  # WatchEvents (service keys only)
SCOPE_WEBHOOKS = "webhooks"  # managing webhook endpoints; never a default
TENANT_DEFAULT_SCOPES = (SCOPE_AGENT, SCOPE_TOKENS_READ, SCOPE_TOKENS_WRITE, SCOPE_EVENTS)
PLATFORM_DEFAULT_SCOPES = (
    SCOPE_BILLING,
    SCOPE_TOKENS_READ,
    SCOPE_TOKENS_WRITE,
    SCOPE_AGENT,
    SCOPE_ADMIN,
)
# The scopes a tenant key may carry (a platform key may carry billing too).
TENANT_SCOPES = (
    SCOPE_AGENT,
    SCOPE_TOKENS_READ,
    SCOPE_TOKENS_WRITE,
    SCOPE_ADMIN,
    SCOPE_EVENTS,
    SCOPE_WEBHOOKS,
)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant_id: str | None
    scopes: frozenset[str]
    revoked: bool = False
    expires_at: datetime | None = None  # None: never
    user_id: str | None = None  # set for a key bound to one person


# The longest ids the store keeps (a longer one is refused, never cut).
MAX_TENANT_ID = 64
MAX_USER_ID = 120
MAX_LOCATION_ID = 64


def check_lengths(*fields: tuple[str, str, int]) -> None:
    """INVALID_ARGUMENT naming every (field, value, limit) whose value is too long."""
    violations = [
        FieldViolation(name, f"must be at most {limit} characters")
        for name, value, limit in fields
        if len(value) > limit
    ]
    if violations:
        raise InvalidArgument(violations)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the key, and the identity the metadata asserts."""

    key_id: str
    key_tenant_id: str | None
    scopes: frozenset[str]
    tenant_id: str  # the tenant acted for ('' for a platform key that named none)
    user_id: str = ""
    location_id: str = ""
    person_bound: bool = False  # the key speaks for `user_id` only
    # What this call changed, for the audit trail (see domain/audit.py).
    changes: list[Change] = field(default_factory=list, compare=False, repr=False)

    @property
    def is_platform(self) -> bool:
        return self.key_tenant_id is None

    @property
    def is_service(self) -> bool:
        """A service acting for itself: a key not bound to a person, naming no user."""
        return not self.person_bound and not self.user_id

    def note_change(self, change: Change) -> None:
        """Say what this call changed; the entrypoint audits it when the call ends."""
        self.changes.append(change)

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and "*" not in self.scopes:
            raise PermissionDenied(
                f"this API key lacks the {scope!r} scope", reason="SCOPE_MISSING"
            )

    def tenant(self, requested: str = "") -> str:
        """The tenant a request acts on: the request's `tenant_id` if given (it must
        be the caller's), else the caller's."""
        if requested and self.tenant_id and requested != self.tenant_id:
            raise PermissionDenied(
                f"tenant {requested!r} is not the caller's tenant", reason="TENANT_MISMATCH"
            )
        tenant = requested or self.tenant_id
        if not tenant:
            raise InvalidArgument.field("tenant_id", "is required (or send x-tenant-id)")
        return tenant


def generate_key() -> tuple[str, str]:
    """A new (key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"ask_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    async def find_key(self, key_hash: str) -> KeyRecord | None: ...


# The longest `authorization` value looked up at all (keys are 55 characters).
MAX_KEY_CHARS = 200
# How long a key found valid is remembered as such (its record is trusted for `ttl`):
# looking it up again needs none of the caller's budget for unvouched calls.
KNOWN_KEY_SECONDS = 86_400.0


class Unvouched(Protocol):
    """Budget for calls that no known key vouches for, per peer address."""

    async def acquire(self, key: str, cost: float = 1.0) -> float: ...


@dataclass
class Authenticator:
    """Resolves `authorization` + `x-tenant-id`/`x-user-id`/`x-location-id` to a Caller.

    Keys found are trusted for `ttl` seconds to keep the hot path off the database;
    a revoked key stops working within that time on every replica. Keys not found
    are cached apart, for `miss_ttl` seconds: a flood of made-up keys costs one
    lookup each at most once per `miss_ttl` and can never push a valid key out of
    its cache. Every call carried by no key known to be valid first takes a token
    from its peer address's `unvouched` budget (if one is set): past it,
    RESOURCE_EXHAUSTED, before any lookup. A key found valid once is looked up
    again when its `ttl` ends without touching that budget, so a flood from behind
    the same address never locks out the keys already in use.
    """

    keys: KeyStore
    clock: Clock = field(default_factory=SystemClock)
    ttl: float = 10.0
    miss_ttl: float = 2.0
    max_keys: int = 10_000
    max_misses: int = 10_000
    unvouched: Unvouched | None = None
    _hits: LruCache[str, tuple[KeyRecord, float]] = field(init=False)
    _misses: LruCache[str, bool] = field(init=False)

    def __post_init__(self) -> None:
        self._hits = LruCache(self.max_keys)
        self._misses = LruCache(self.max_misses)

    async def authenticate(
        self, authorization: str, tenant_id: str, user_id: str, location_id: str, peer: str = ""
    ) -> Caller:
        check_lengths(
            ("x-tenant-id", tenant_id, MAX_TENANT_ID),
            ("x-user-id", user_id, MAX_USER_ID),
            ("x-location-id", location_id, MAX_LOCATION_ID),
        )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        now = time.monotonic()
        well_formed = scheme.lower() == "bearer" and 0 < len(key) <= MAX_KEY_CHARS
        key_hash = hash_key(key) if well_formed else ""
        known = self._hits.get(key_hash, now) if key_hash else None
        record = known[0] if known is not None and known[1] > now else None
        if record is None:
            if known is None:  # a key valid a moment ago is looked at again for free
                await self.admit_unvouched(peer)
            if not key_hash:
                raise Unauthenticated("send `authorization: Bearer <api key>`")
            record = await self._lookup(key_hash, now)
            if record is None:
                raise Unauthenticated("unknown or revoked API key")
        if record.expires_at is not None and record.expires_at <= self.clock.now():
            raise Unauthenticated("this API key has expired", reason="KEY_EXPIRED")
        if record.tenant_id is not None and tenant_id and tenant_id != record.tenant_id:
            raise PermissionDenied(
                f"x-tenant-id {tenant_id!r} is not this key's tenant", reason="TENANT_MISMATCH"
            )
        if record.user_id is not None:
            if user_id and user_id != record.user_id:
                raise PermissionDenied(
                    f"this API key speaks for {record.user_id!r} only, not {user_id!r}",
                    reason="USER_MISMATCH",
                )
            user_id = record.user_id
        return Caller(
            key_id=record.id,
            key_tenant_id=record.tenant_id,
            scopes=record.scopes,
            tenant_id=record.tenant_id or tenant_id,
            user_id=user_id,
            location_id=location_id,
            person_bound=record.user_id is not None,
        )

    async def admit_unvouched(self, peer: str) -> None:
        """Take one token of `peer`'s budget for a call no cached key carries."""
        if self.unvouched is None:
            return
        wait = await self.unvouched.acquire(peer or "unknown")
        if wait > 0:
            raise RateLimited(
                "too many calls without a valid API key from this address; retry after the delay",
                wait,
                budget="unauthenticated",
            )

    def forget(self) -> None:
        """Drop every cached key (a change made in this process applies at once)."""
        self._hits = LruCache(self.max_keys)
        self._misses = LruCache(self.max_misses)

    async def _lookup(self, key_hash: str, now: float) -> KeyRecord | None:
        if self._misses.get(key_hash, now):
            return None
        record = await self.keys.find_key(key_hash)
        if record is None or record.revoked:
            self._hits.pop(key_hash)
            self._misses.put(key_hash, True, now + self.miss_ttl)
            return None
        # Trusted for `ttl`; remembered as once valid for a day (see authenticate).
        self._hits.put(key_hash, (record, now + self.ttl), now + KNOWN_KEY_SECONDS)
        return record
