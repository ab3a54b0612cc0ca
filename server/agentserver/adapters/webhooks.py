"""Delivering events to webhook endpoints (Standard Webhooks), on every replica, over
aiohttp (its client keeps connections per endpoint cheaply; httpx's pool cost grew
with every connection: 3x the CPU per delivery, measured).

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
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from standardwebhooks.webhooks import Webhook

from agentserver.adapters.db.notify import OutboxSignal
from agentserver.adapters.db.webhook_store import Attempt, Claimed, SqlWebhookStore
from agentserver.adapters.event_format import to_json, to_proto
from agentserver.adapters.secrets import SecretBox, SecretsError
from agentserver.domain.clock import Clock
from agentserver.domain.webhooks import (
    TIMEOUT_SECONDS,
    Address,
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
# The most of an answer's body read (it is not used; reading lets the connection be
# reused).
MAX_ANSWER_BYTES = 64 * 1024
# After a wake-up, how long to let more commits gather before a round.
GATHER_SECONDS = 0.05
# Loops claiming and attempting deliveries, each up to concurrency / WORKERS at once.
WORKERS = 4


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
        self._http: aiohttp.ClientSession | None = None  # opened in the running loop

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=None),
                headers={"user-agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,
                trust_env=False,
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def run(self) -> None:
        """Fan out and deliver until cancelled: one loop queues deliveries for new
        events, `WORKERS` loops claim and attempt them, so some attempts are always
        in flight while others are being recorded and claimed."""
        queued = asyncio.Event()
        share = max(1, self.concurrency // WORKERS)
        loops = [self._fan_out_loop(queued), self._attempt_loop(queued, share, lead=True)]
        loops += [self._attempt_loop(queued, share, lead=False) for _ in range(WORKERS - 1)]
        await asyncio.gather(*loops)

    async def _fan_out_loop(self, queued: asyncio.Event) -> None:
        """After a wake-up, `GATHER_SECONDS` more, so a burst of commits is one round
        (not one per NOTIFY). While no endpoint is enabled anywhere (asked at most once
        per `idle_poll`) it only sleeps: it reads nothing and does not wait on the
        signal, so the outbox need not be watched for it. An endpoint enabled
        meanwhile gets its events at the next check, from its tenant's cursor."""
        enabled, asked_at = False, -math.inf
        while True:
            if not enabled or time.monotonic() - asked_at >= self.idle_poll:
                enabled = bool(await self._guarded(self.store.any_enabled))
                asked_at = time.monotonic()
            if not enabled:
                # The last endpoint went away since the wake-up was taken: give it back,
                # or the outbox stays watched for nobody until the next commit.
                self.signal.release_any("webhooks")
                await asyncio.sleep(self.idle_poll)
                continue
            woken = self.signal.any_waiter("webhooks")
            made = await self._guarded(self.store.fan_out, self.clock.now())
            if made:
                queued.set()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self.idle_poll)
            await asyncio.sleep(GATHER_SECONDS)

    async def _attempt_loop(self, queued: asyncio.Event, share: int, *, lead: bool) -> None:
        """Claim and attempt due deliveries while there are any. Only the lead loop
        also watches the clock (a retry coming due, deliveries another replica
        queued); the others sleep until woken, by the fan-out or by a loop that
        found a full share (a backlog), so an idle server polls once a second,
        not once per loop."""
        while True:
            queued.clear()  # before claiming: a set while we claim is not lost
            made = await self._guarded(self.attempt_due, share)
            if made:
                if made >= share:
                    queued.set()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queued.wait(), await self._idle_for() if lead else None)

    async def _guarded(self, job: Any, *args: Any) -> int:
        try:
            return int(await job(*args))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery round failed; retrying shortly")
            await asyncio.sleep(1.0)
            return 0

    async def _idle_for(self) -> float:
        due = await self.store.next_due()
        if due is None:
            return self.idle_poll
        left = (due - self.clock.now()).total_seconds()
        return min(max(left, 0.05), self.idle_poll)

    async def run_once(self) -> int:
        """One round, for tests and tools: queue deliveries for new events, then
        attempt the due ones (up to `concurrency`); returns how many of each."""
        queued = await self.store.fan_out(self.clock.now())
        return queued + await self.attempt_due(self.concurrency)

    async def attempt_due(self, limit: int) -> int:
        """Claim up to `limit` due deliveries, attempt them at once, record the
        results in one transaction; returns how many were attempted."""
        claims = await self.store.claim(self.clock.now(), self.lease, limit)
        if not claims:
            return 0
        answers = await asyncio.gather(*(self._send(c) for c in claims))
        now = self.clock.now()
        results = [(c, self.outcome(c, a, now)) for c, a in zip(claims, answers, strict=True)]
        if lost := await self.store.record(results, now):
            log.warning("%d webhook attempts outlived their lease; results dropped", lost)
        return len(claims)

    @staticmethod
    def outcome(claimed: Claimed, answer: Answer, now: datetime) -> Attempt:
        """What an answer means for its delivery (the domain's rules)."""
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
        return result

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
            addresses = await resolve(host, port)
        except OSError as err:
            return Answer(0, f"cannot resolve {host}: {err}")
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
        try:
            async with self._session().post(
                pinned,
                data=body,
                headers={**headers, "host": parts.netloc.rsplit("@", 1)[-1]},
                allow_redirects=False,
                server_hostname=host if parts.scheme == "https" else None,
            ) as response:
                # Read (a little of) the body so the connection can serve the next.
                await response.content.read(MAX_ANSWER_BYTES)
                status = response.status
                error = ""
                if 300 <= status < 400:
                    error = f"answered {status}: redirects are not followed"
                elif not 200 <= status < 300:
                    error = f"answered {status}"
                return Answer(status, error, retry_after(response.headers.get("retry-after")))
        except TimeoutError:
            return Answer(0, f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as err:
            return Answer(0, f"{type(err).__name__}: {err}"[:500])


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses `host` stands for (an address literal is itself: no lookup)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


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
