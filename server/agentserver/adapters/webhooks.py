"""Delivering events to webhook endpoints (Standard Webhooks), on every replica.

One loop per replica: fan new outbox events out into deliveries, claim the due ones
(leases: see adapters/db/webhook_store.py), POST each, record the result. Woken by
new events (OutboxSignal), else when the next delivery is due.

Each request: the event's JSON (adapters/event_format.py) as the body, and
`webhook-id` (the event id, the same on every retry), `webhook-timestamp` (this
attempt's wall-clock time: receivers check it against theirs) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, by the
`standardwebhooks` package; two, space-separated, while a rotated secret overlaps).

The target's host is resolved at each attempt, every address it resolves to must
be allowed (public, or in a network the operator allowed), and the request goes to
the address that was checked (the Host header and TLS name stay the URL's), so a
name cannot be re-pointed at an internal address between check and use. Redirects
are not followed; 15 s is the whole attempt's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from agentserver.adapters.db.notify import OutboxSignal
from agentserver.adapters.db.webhook_store import Attempt, Claimed, SqlWebhookStore
from agentserver.adapters.event_format import to_json, to_proto
from agentserver.adapters.secrets import SecretBox, SecretsError
from agentserver.domain.clock import Clock
from agentserver.domain.webhooks import (
    TIMEOUT_SECONDS,
    DeliveryState,
    DisabledReason,
    Network,
    Verdict,
    address_allowed,
    next_attempt,
    verdict,
)

log = logging.getLogger("agentserver.webhooks")

USER_AGENT = "agentserver-webhooks/1"


@dataclass(frozen=True)
class Answer:
    status: int  # 0: none came back
    error: str = ""
    retry_after: float | None = None


class WebhookDeliverer:
    def __init__(
        self,
        store: SqlWebhookStore,
        signal: OutboxSignal,
        secret_box: SecretBox | None,
        clock: Clock,
        *,
        allowed_networks: Sequence[Network] = (),
        timeout: float = TIMEOUT_SECONDS,
        lease: timedelta = timedelta(seconds=TIMEOUT_SECONDS + 15),
        concurrency: int = 32,
        idle_poll: float = 1.0,
    ) -> None:
        self.store = store
        self.signal = signal
        self.secret_box = secret_box
        self.clock = clock
        self.allowed = tuple(allowed_networks)
        self.timeout = timeout
        self.lease = lease
        self.concurrency = concurrency
        self.idle_poll = idle_poll
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self) -> None:
        """Fan out and deliver until cancelled."""
        while True:
            woken = self.signal.any_waiter()
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; retrying shortly")
                busy = 0
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), await self._idle_for())

    async def _idle_for(self) -> float:
        due = await self.store.next_due()
        if due is None:
            return self.idle_poll
        left = (due - self.clock.now()).total_seconds()
        return min(max(left, 0.05), self.idle_poll)

    async def run_once(self) -> int:
        """One round: queue deliveries for new events, then attempt every due one
        (in batches); returns how many were queued or attempted."""
        queued = await self.store.fan_out(self.clock.now())
        claims = await self.store.claim(self.clock.now(), self.lease, self.concurrency)
        if claims:
            await asyncio.gather(*(self.attempt(c) for c in claims))
        return queued + len(claims)

    async def attempt(self, claimed: Claimed) -> None:
        answer = await self._send(claimed)
        now = self.clock.now()
        match verdict(answer.status):
            case Verdict.DELIVERED:
                result = Attempt(answer.status, "", DeliveryState.SUCCEEDED, None)
            case Verdict.GONE:
                result = Attempt(
                    answer.status,
                    "the endpoint answered 410 Gone: it is disabled",
                    DeliveryState.FAILED,
                    None,
                    disable=DisabledReason.GONE.value,
                )
            case Verdict.RETRY:
                later = next_attempt(
                    claimed.attempts + 1,
                    now,
                    status=answer.status,
                    retry_after=answer.retry_after,
                )
                state = DeliveryState.PENDING if later is not None else DeliveryState.FAILED
                result = Attempt(answer.status, answer.error, state, later)
        if not await self.store.record(claimed, result, now):
            log.warning(
                "a webhook attempt outlived its lease; its result was dropped",
                extra={"delivery_id": claimed.delivery_id},
            )

    async def _send(self, claimed: Claimed) -> Answer:
        try:
            secrets = [self._open(s) for s in claimed.sealed_secrets]
        except SecretsError as err:
            return Answer(0, f"cannot read the endpoint's secret: {err}")
        body = to_json(to_proto(claimed.event))
        headers = signed_headers(claimed.event.id, body, secrets, datetime.now(UTC))
        try:
            return await asyncio.wait_for(self._post(claimed.url, body, headers), self.timeout)
        except TimeoutError:
            return Answer(0, f"no answer within {self.timeout:g} s")

    def _open(self, sealed: str) -> str:
        if self.secret_box is None:
            raise SecretsError("AGENTSERVER_SECRET_KEYS is not set")
        return self.secret_box.decrypt(sealed)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as err:
            return Answer(0, f"cannot resolve {host}: {err}")
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        refused = [a for a in addresses if not address_allowed(a, self.allowed)]
        if refused or not addresses:
            return Answer(
                0,
                f"{host} resolves to {refused[0] if refused else 'nothing'}: private, loopback "
                "and link-local addresses are refused unless the operator allows them",
            )
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        request = self._http.build_request(
            "POST",
            pinned,
            content=body,
            headers={**headers, "host": parts.netloc.rsplit("@", 1)[-1]},
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as err:
            return Answer(0, f"{type(err).__name__}: {err}"[:500])
        try:
            status = response.status_code
            error = ""
            if 300 <= status < 400:
                error = f"answered {status}: redirects are not followed"
            elif not 200 <= status < 300:
                error = f"answered {status}"
            return Answer(status, error, retry_after(response.headers.get("retry-after")))
        finally:
            await response.aclose()


def signed_headers(
    event_id: str, body: bytes, secrets: Sequence[str], when: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers: one `v1,` signature per secret."""
    text = body.decode()
    signature = " ".join(Webhook(s).sign(event_id, when, text) for s in secrets)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (a number of seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())
