"""The rules of events out, without I/O: type filters, ids, the retry schedule,
what an answer means, which addresses and URLs are acceptable, the rendering of
every event type."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest

from agentserver.adapters.event_format import PAYLOAD_FIELDS, to_json, to_proto
from agentserver.adapters.nats_relay import subject, subject_token
from agentserver.adapters.webhooks import retry_after, signed_headers
from agentserver.domain import events as ev
from agentserver.domain.errors import FailedPrecondition, InvalidArgument
from agentserver.domain.webhooks import (
    MAX_ATTEMPTS,
    RETRY_DELAYS,
    Verdict,
    WebhookEndpoints,
    address_allowed,
    check_url,
    gives_up_on_endpoint,
    new_secret,
    next_attempt,
    parse_networks,
    verdict,
)
from tests.fakes.clock import FakeClock

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_type_filters_name_types_or_areas() -> None:
    assert ev.type_matches([], "ledger.entry")
    assert ev.type_matches(["ledger.entry"], "ledger.entry")
    assert ev.type_matches(["action.*"], "action.waiting")
    assert not ev.type_matches(["action.*"], "ledger.entry")
    assert not ev.type_matches(["ledger.entr"], "ledger.entry")
    assert ev.check_type_filters("types", ["ledger.entry", "action.*"]) == []
    bad = ev.check_type_filters("types", ["ledger.entry", "nope", "*", "ledger."])
    assert [v.field for v in bad] == ["types[1]", "types[2]", "types[3]"]


def test_event_ids_are_stable_per_tenant_and_seq_and_opaque() -> None:
    assert ev.event_id("t1", 7) == ev.event_id("t1", 7)
    assert ev.event_id("t1", 7) != ev.event_id("t1", 8) != ev.event_id("t2", 7)
    assert ev.event_id("t1", 7).startswith("evt_") and len(ev.event_id("t1", 7)) == 30


def test_the_retry_schedule_with_jitter() -> None:
    rng = random.Random(1)
    expected = [timedelta(0), *RETRY_DELAYS[1:]]
    for attempts, delay in enumerate(expected):
        if attempts == 0:
            continue
        due = next_attempt(attempts, NOW, status=500, rng=rng)
        assert due is not None
        assert delay * 0.8 <= due - NOW <= delay * 1.2, attempts
    assert [d.total_seconds() for d in RETRY_DELAYS] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
    ]
    assert next_attempt(MAX_ATTEMPTS, NOW) is None, "8 attempts, then given up"


def test_retry_after_is_honoured_for_429_and_5xx_only_and_capped() -> None:
    rng = random.Random(2)
    later = next_attempt(1, NOW, status=429, retry_after=600, rng=rng)
    assert later is not None and later - NOW >= timedelta(seconds=600)
    later = next_attempt(1, NOW, status=503, retry_after=10**9, rng=rng)
    assert later is not None and later - NOW == timedelta(days=1)
    later = next_attempt(1, NOW, status=400, retry_after=600, rng=rng)
    assert later is not None and later - NOW < timedelta(seconds=10)
    assert retry_after("120") == 120.0
    assert retry_after("soon") is None and retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: no extra wait


def test_what_an_answer_means() -> None:
    assert verdict(200) is Verdict.DELIVERED and verdict(204) is Verdict.DELIVERED
    assert verdict(410) is Verdict.GONE
    for status in (0, 301, 400, 404, 429, 500, 503):
        assert verdict(status) is Verdict.RETRY
    assert not gives_up_on_endpoint(None, NOW)
    assert not gives_up_on_endpoint(NOW - timedelta(days=4, hours=23), NOW)
    assert gives_up_on_endpoint(NOW - timedelta(days=5), NOW)


def test_addresses() -> None:
    ip = ipaddress.ip_address
    for public in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"):
        assert address_allowed(ip(public), ())
    for private in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ):
        assert not address_allowed(ip(private), ()), private
    loopback = parse_networks("127.0.0.0/8, ::1/128")
    assert address_allowed(ip("127.0.0.1"), loopback)
    assert address_allowed(ip("::ffff:127.0.0.2"), loopback)
    assert not address_allowed(ip("10.0.0.1"), loopback)
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("10.0.0.0/33")


def test_urls() -> None:
    assert check_url(" https://hooks.example.com/x?a=1 ", ()) == "https://hooks.example.com/x?a=1"
    for bad in (
        "ftp://example.com",
        "https://",
        "https://u:p@example.com",
        "https://example.com/#x",
        "http://127.0.0.1/",
        "http://localhost:8080/",
        "http://[::1]/",
        "https://example.com:0/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "h" * 2001,
    ):
        with pytest.raises(InvalidArgument):
            check_url(bad, ())
    assert check_url("http://localhost:8080/", parse_networks("127.0.0.0/8"))


def test_signatures_verify_with_the_standard_package() -> None:
    from standardwebhooks.webhooks import Webhook

    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    now = datetime.now(UTC)
    headers = signed_headers("evt_1", b'{"x":1}', [a, b], now)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (a, b):
        assert Webhook(secret).verify(b'{"x":1}', headers) == {"x": 1}


SAMPLE_PAYLOADS = {
    ev.LEDGER_ENTRY: {"entry_id": "e", "kind": "capture", "operation_type": "email", "tokens": 2},
    ev.TOKENS_ADDED: {"entry_id": "e", "amount": 10, "available": 10},
    ev.LOW_BALANCE: {"wallet": "w", "available": 1, "threshold": 50},
    ev.FEE_CHARGED: {"month": "2026-01", "fee": 200, "charged": 200, "arrears": 0},
    ev.ACTION_CREATED: {
        "action_type": "email.send",
        "state": "approved",
        "decision_level": "automatic",
        "parameters": {"to": "a@example.com"},
        "executable": True,
        "depends_on": None,
    },
    ev.ACTION_WAITING: {
        "state": "awaiting_coordinator",
        "waiting_for": "coordinator",
        "expires_at": "2026-01-16T12:00:00+00:00",
    },
    ev.ACTION_APPROVED: {"state": "approved", "decided_by": "bob"},
    ev.ACTION_REJECTED: {"state": "rejected", "decided_by": "bob", "reason": "no"},
    ev.ACTION_SUCCEEDED: {"state": "succeeded", "channel": "email", "provider_id": "p"},
    ev.ACTION_FAILED: {"state": "failed", "error": "bounced"},
    ev.ACTION_OUTCOME_UNKNOWN: {"state": "outcome_unknown"},
    ev.ACTION_EXPIRED: {"state": "expired"},
    ev.ACTION_CANCELLED: {"state": "cancelled"},
    ev.MESSAGE_STORED: {"message_id": "m", "role": "user", "content": "hi", "decision_level": 2},
    ev.WEBHOOK_ENDPOINT_DISABLED: {"endpoint_id": "w", "reason": "gone", "status_code": 410},
    ev.WEBHOOK_TEST: {"endpoint_id": "w"},
}


@pytest.mark.parametrize("event_type", sorted(ev.known_types()))
def test_every_event_type_has_a_typed_payload(event_type: str) -> None:
    assert event_type in PAYLOAD_FIELDS, f"{event_type} has no message in event_service.proto"
    stored = ev.StoredEvent(1, "t1", 3, event_type, "thing", "x1", SAMPLE_PAYLOADS[event_type], NOW)
    message = to_proto(stored)
    assert message.WhichOneof("payload") == PAYLOAD_FIELDS[event_type]
    assert b'"data":{' in to_json(message)


def test_a_payload_this_version_cannot_type_is_kept_whole() -> None:
    odd = ev.StoredEvent(1, "t1", 1, ev.LEDGER_ENTRY, "w", "w", {"tokens": "many"}, NOW)
    assert to_proto(odd).WhichOneof("payload") == "data"
    new = ev.StoredEvent(1, "t1", 1, "future.thing", "w", "w", {"n": 1}, NOW)
    assert to_proto(new).data["n"] == 1


def test_nats_subjects_are_one_token_per_part() -> None:
    assert subject_token("shop-1_a") == "shop-1_a"
    assert subject_token("a.b c*>") == "a~2Eb~20c~2A~3E"
    stored = ev.StoredEvent(1, "acme.eu", 1, ev.LOW_BALANCE, "w", "w", {}, NOW)
    assert subject(stored) == "agentserver.acme~2Eeu.ledger.low_balance"


class _Store:
    async def count_endpoints(self, tenant_id: str) -> int:
        return 0


async def test_creating_an_endpoint_without_secret_keys_is_a_clear_refusal() -> None:
    endpoints = WebhookEndpoints(_Store(), None, FakeClock())  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition) as exc:
        await endpoints.create("t1", "https://hooks.example.com/x", "", [])
    assert exc.value.reason == "SECRET_KEYS_MISSING"
    assert "AGENTSERVER_SECRET_KEYS" in exc.value.message
