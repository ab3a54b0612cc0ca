"""Webhooks: endpoints a tenant manages, and the rules of delivering to them.

Delivery follows the Standard Webhooks specification. What is decided here (no I/O):
which URLs are acceptable, which addresses may be called, when the next attempt is
due after an answer, when an endpoint is given up on, and the endpoint use cases
over a store port. Sending (HTTP, signatures, claims) is the adapter's
(adapters/webhooks.py).

Retries: an attempt at once, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
10 h, each delay with +-20% jitter; a 429 or 5xx that says `Retry-After` waits at
least that long (at most a day). A 2xx is success, a 410 disables the endpoint,
and an endpoint whose attempts have all failed for 5 days is disabled too.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from agentserver.domain.clock import Clock
from agentserver.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from agentserver.domain.events import WEBHOOK_TEST, check_type_filters, event_id
from agentserver.domain.ids import new_id
from agentserver.domain.paging import PageRequest

RETRY_DELAYS = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(RETRY_DELAYS)
JITTER = 0.2
MAX_RETRY_AFTER = timedelta(days=1)
DISABLE_AFTER = timedelta(days=5)
TIMEOUT_SECONDS = 15.0
# After a rotation the previous secret signs too for this long.
ROTATION_OVERLAP = timedelta(hours=24)
MAX_ENDPOINTS_PER_TENANT = 50
MAX_URL_CHARS = 2000
SECRET_PREFIX = "whsec_"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DisabledReason(enum.StrEnum):
    BY_REQUEST = "disabled"
    GONE = "gone"  # it answered 410
    FAILING = "failing"  # every attempt failed for DISABLE_AFTER


# -- addresses and URLs ----------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str) -> tuple[Network, ...]:
    """`127.0.0.0/8, 10.1.0.0/16` as networks; ValueError names a bad one."""
    out: list[Network] = []
    for part in text.split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as err:
                raise ValueError(f"not a network: {part.strip()!r} ({err})") from None
    return tuple(out)


def address_allowed(address: Address, allowed: Sequence[Network]) -> bool:
    """Public unicast addresses may be called; private, loopback, link-local,
    multicast, reserved and unspecified ones only inside a network the operator
    allowed. An IPv4-mapped IPv6 address is judged as its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


def check_url(url: str, allowed: Sequence[Network], field: str = "url") -> str:
    """The URL if acceptable as a webhook target, else INVALID_ARGUMENT naming why.
    Host names are resolved (and their addresses judged) at each attempt."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument.field(field, why)

    url = url.strip()
    if not url:
        raise bad("is required")
    if len(url) > MAX_URL_CHARS:
        raise bad(f"must be at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise bad(f"is not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https"):
        raise bad("must be an http or https URL")
    if not parts.hostname:
        raise bad("must name a host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials (use the signature to authenticate)")
    if parts.fragment:
        raise bad("must not have a fragment")
    if port == 0:
        raise bad("must not use port 0")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise bad("must not contain spaces or control characters")
    host = parts.hostname
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not address_allowed(literal, allowed):
            raise bad(
                f"{host} is a private, loopback or link-local address; the operator "
                "must allow its network (AGENTSERVER_WEBHOOK_ALLOWED_NETWORKS)"
            )
    elif (host == "localhost" or host.endswith(".localhost")) and not any(
        ipaddress.ip_address("127.0.0.1") in n for n in allowed
    ):
        raise bad(
            "localhost is refused; the operator must allow 127.0.0.0/8 "
            "(AGENTSERVER_WEBHOOK_ALLOWED_NETWORKS)"
        )
    return url


# -- attempts --------------------------------------------------------------------


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    GONE = "gone"  # 410: the receiver asks us to stop
    RETRY = "retry"


def verdict(status: int) -> Verdict:
    """What an answer means (status 0: no answer: timeout, refused, bad address)."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    return Verdict.RETRY


def next_attempt(
    attempts: int,
    now: datetime,
    *,
    status: int = 0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after `attempts` failed ones (None: give up). A 429 or 5xx
    with `Retry-After` waits at least that long, at most a day."""
    if attempts >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS[attempts]
    spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    delay = delay * spread
    if retry_after is not None and (status == 429 or status >= 500):
        delay = max(delay, min(timedelta(seconds=max(retry_after, 0.0)), MAX_RETRY_AFTER))
    return now + delay


def gives_up_on_endpoint(failing_since: datetime | None, now: datetime) -> bool:
    return failing_since is not None and now - failing_since >= DISABLE_AFTER


def new_secret() -> str:
    """`whsec_` + base64 of 24 random bytes (Standard Webhooks' format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


# -- endpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    id: str
    tenant_id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_reason: str
    failing_since: datetime | None
    secret_rotated_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    event_seq: int
    state: DeliveryState
    attempts: int
    last_status: int
    last_error: str
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    created_at: datetime


@dataclass
class EndpointChanges:
    url: str | None = None
    description: str | None = None
    event_types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NewTest:
    """A test event queued for one endpoint (not in the outbox: seq 0)."""

    delivery_id: str
    event_id: str
    payload: dict[str, Any] = field(default_factory=dict)


class WebhookStore(Protocol):
    async def count_endpoints(self, tenant_id: str) -> int: ...

    async def create_endpoint(self, endpoint: Endpoint, sealed_secret: str) -> None: ...

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None: ...

    async def endpoints(self, tenant_id: str, page: PageRequest) -> tuple[list[Endpoint], str]: ...

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: EndpointChanges, now: datetime
    ) -> Endpoint | None: ...

    async def set_enabled(
        self, tenant_id: str, endpoint_id: str, enabled: bool, reason: str, now: datetime
    ) -> Endpoint | None: ...

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str) -> bool: ...

    async def rotate_secret(
        self,
        tenant_id: str,
        endpoint_id: str,
        sealed_secret: str,
        previous_until: datetime,
        now: datetime,
    ) -> Endpoint | None: ...

    async def queue_test(
        self, tenant_id: str, endpoint_id: str, test: NewTest, now: datetime
    ) -> Delivery: ...

    async def deliveries(
        self,
        tenant_id: str,
        endpoint_id: str,
        states: frozenset[DeliveryState],
        page: PageRequest,
    ) -> tuple[list[Delivery], str]: ...


class Sealer(Protocol):
    """Encrypts secrets at rest (SecretBox)."""

    def encrypt(self, plaintext: str) -> str: ...


@dataclass
class WebhookEndpoints:
    """The endpoint use cases; every one is scoped to the caller's tenant."""

    store: WebhookStore
    sealer: Sealer | None
    clock: Clock
    allowed_networks: tuple[Network, ...] = ()

    def _sealer(self) -> Sealer:
        if self.sealer is None:
            raise FailedPrecondition(
                "webhook secrets are stored encrypted: the operator must set "
                "AGENTSERVER_SECRET_KEYS (agentserver secret-key) first",
                reason="SECRET_KEYS_MISSING",
            )
        return self.sealer

    def _check(self, url: str | None, types: Sequence[str] | None) -> None:
        violations: list[FieldViolation] = []
        if url is not None:
            try:
                check_url(url, self.allowed_networks)
            except InvalidArgument as err:
                violations += err.violations
        if types is not None:
            violations += check_type_filters("event_types", types)
        if violations:
            raise InvalidArgument(violations)

    async def create(
        self, tenant_id: str, url: str, description: str, event_types: Sequence[str]
    ) -> tuple[Endpoint, str]:
        """A new enabled endpoint and its secret (the only time it is shown)."""
        self._check(url, event_types)
        sealer = self._sealer()
        if await self.store.count_endpoints(tenant_id) >= MAX_ENDPOINTS_PER_TENANT:
            raise FailedPrecondition(
                f"a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints",
                reason="TOO_MANY_ENDPOINTS",
            )
        now = self.clock.now()
        endpoint = Endpoint(
            id=new_id("whe"),
            tenant_id=tenant_id,
            url=url.strip(),
            description=description,
            event_types=tuple(dict.fromkeys(event_types)),
            enabled=True,
            disabled_reason="",
            failing_since=None,
            secret_rotated_at=None,
            created_at=now,
            updated_at=now,
        )
        secret = new_secret()
        await self.store.create_endpoint(endpoint, sealer.encrypt(secret))
        return endpoint, secret

    async def get(self, tenant_id: str, endpoint_id: str) -> Endpoint:
        found = await self.store.endpoint(tenant_id, endpoint_id)
        if found is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return found

    async def listing(self, tenant_id: str, page: PageRequest) -> tuple[list[Endpoint], str]:
        return await self.store.endpoints(tenant_id, page)

    async def update(self, tenant_id: str, endpoint_id: str, changes: EndpointChanges) -> Endpoint:
        self._check(changes.url, changes.event_types)
        if changes.url is not None:
            changes.url = changes.url.strip()
        if changes.event_types is not None:
            changes.event_types = tuple(dict.fromkeys(changes.event_types))
        return self._found(
            await self.store.update_endpoint(tenant_id, endpoint_id, changes, self.clock.now()),
            endpoint_id,
        )

    async def set_enabled(self, tenant_id: str, endpoint_id: str, enabled: bool) -> Endpoint:
        reason = "" if enabled else DisabledReason.BY_REQUEST.value
        return self._found(
            await self.store.set_enabled(tenant_id, endpoint_id, enabled, reason, self.clock.now()),
            endpoint_id,
        )

    async def delete(self, tenant_id: str, endpoint_id: str) -> None:
        if not await self.store.delete_endpoint(tenant_id, endpoint_id):
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")

    async def rotate_secret(self, tenant_id: str, endpoint_id: str) -> tuple[Endpoint, str]:
        """A new secret; the previous one keeps signing for ROTATION_OVERLAP."""
        sealer = self._sealer()
        secret = new_secret()
        now = self.clock.now()
        endpoint = await self.store.rotate_secret(
            tenant_id, endpoint_id, sealer.encrypt(secret), now + ROTATION_OVERLAP, now
        )
        return self._found(endpoint, endpoint_id), secret

    async def send_test(self, tenant_id: str, endpoint_id: str) -> Delivery:
        endpoint = await self.get(tenant_id, endpoint_id)
        if not endpoint.enabled:
            raise FailedPrecondition(
                f"webhook endpoint {endpoint_id!r} is disabled; enable it first",
                reason="ENDPOINT_DISABLED",
            )
        delivery_id = new_id("whd")
        test = NewTest(
            delivery_id=delivery_id,
            event_id=event_id(tenant_id, 0) + "_" + delivery_id[-10:],
            payload={"endpoint_id": endpoint_id},
        )
        return await self.store.queue_test(tenant_id, endpoint_id, test, self.clock.now())

    async def deliveries(
        self,
        tenant_id: str,
        endpoint_id: str,
        states: frozenset[DeliveryState],
        page: PageRequest,
    ) -> tuple[list[Delivery], str]:
        await self.get(tenant_id, endpoint_id)
        return await self.store.deliveries(tenant_id, endpoint_id, states, page)

    @staticmethod
    def _found(endpoint: Endpoint | None, endpoint_id: str) -> Endpoint:
        if endpoint is None:
            raise NotFound(f"webhook endpoint {endpoint_id!r} not found")
        return endpoint


TEST_EVENT_TYPE = WEBHOOK_TEST
