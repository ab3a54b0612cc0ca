"""Webhooks through gRPC, on SQLite and PostgreSQL: endpoints managed by rpcs, events
delivered per the Standard Webhooks spec to receivers the tests control (checked
with the `standardwebhooks` package), retried on the schedule, given up on when the
receiver says 410 or fails for 5 days. The server's clock is a fake one moved by
the tests; the deliverer runs one round at a time (`run_once`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from agentserver.adapters.secrets import generate_key
from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.domain.identity import SCOPE_WEBHOOKS, TENANT_DEFAULT_SCOPES
from agentserver.domain.paging import PageRequest
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as tpb
from agentserver.v1 import webhook_service_pb2 as wpb
from tests.conftest import Harness, database_url, start_harness
from tests.receiver import Answer, Receiver

SMS = common_pb2.OPERATION_TYPE_SMS
PENDING = wpb.WEBHOOK_DELIVERY_STATE_PENDING
SUCCEEDED = wpb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
FAILED = wpb.WEBHOOK_DELIVERY_STATE_FAILED


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def wh(request: pytest.FixtureRequest, tmp_root: Path) -> AsyncIterator[Harness]:
    """A server whose operator allows loopback webhook targets, 2 s per attempt, on a
    database of its own (its secrets are sealed with its own key)."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    else:
        url = database_url("sqlite", tmp_root, request)
    h = await start_harness(
        url,
        request.param,
        secret_keys=generate_key(),
        webhook_allowed_networks="127.0.0.0/8",
        webhook_timeout_seconds=2.0,
    )
    yield h
    await h.server.stop(0)
    await h.app.close()


class Shop:
    """A tenant with a service key that may manage webhooks."""

    def __init__(self, h: Harness, tenant_id: str, key: str) -> None:
        self.h = h
        self.id = tenant_id
        self.key = key

    def client(self) -> AgentServerClient:
        return self.h.client(self.key, self.id, user_id="")

    async def charge(self, amount: int, request_id: str = "") -> None:
        async with self.client() as client:
            await client.charge_tokens(
                tpb.ChargeTokensRequest(
                    operation_type=SMS, amount=amount, request_id=request_id or uuid.uuid4().hex
                )
            )

    async def endpoint(self, url: str, types: tuple[str, ...] = ()) -> tuple[str, str]:
        async with self.client() as client:
            made = await client.create_webhook_endpoint(
                wpb.CreateWebhookEndpointRequest(url=url, event_types=list(types))
            )
        return made.endpoint.id, made.secret

    async def deliveries(self, endpoint_id: str) -> list[wpb.WebhookDelivery]:
        async with self.client() as client:
            listed = await client.list_webhook_deliveries(
                wpb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id)
            )
        return list(listed.deliveries)

    async def get(self, endpoint_id: str) -> wpb.WebhookEndpoint:
        async with self.client() as client:
            got = await client.get_webhook_endpoint(
                wpb.GetWebhookEndpointRequest(endpoint_id=endpoint_id)
            )
        return got.endpoint


async def shop(h: Harness, tokens: int = 1000) -> Shop:
    t = await h.tenant(tokens)
    _, key = await h.app.admin.create_key(
        t.id, (*TENANT_DEFAULT_SCOPES, SCOPE_WEBHOOKS), "hooks", h.clock.now()
    )
    return Shop(h, t.id, key)


async def deliver(h: Harness, rounds: int = 1) -> None:
    for _ in range(rounds):
        await h.app.deliverer.run_once()


async def test_an_event_arrives_signed_with_its_id(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver() as receiver:
        endpoint_id, secret = await s.endpoint(receiver.url)
        assert secret.startswith("whsec_")
        await s.charge(3, "first")
        await deliver(wh)
        assert len(receiver.received) == 1
        got = receiver.received[0]
        assert got.verifies(secret), "the standardwebhooks package accepts the signature"
        body = got.json()
        assert body["type"] == "ledger.entry" and body["tenant_id"] == s.id
        assert body["data"]["request_id"] == "first" and body["data"]["tokens"] == 3
        assert got.id == body["id"] and got.id.startswith("evt_")
        assert got.headers["content-type"] == "application/json"
        (delivery,) = await s.deliveries(endpoint_id)
        assert delivery.state == SUCCEEDED and delivery.last_status_code == 200
        assert delivery.event_id == got.id and delivery.attempts == 1
        assert not delivery.HasField("next_attempt_time")
        # Events from before the endpoint existed are not sent; nothing is sent twice.
        await deliver(wh)
        assert len(receiver.received) == 1


async def test_500_then_200_retries_with_the_same_webhook_id(wh: Harness) -> None:
    s = await shop(wh)
    answers = iter([500, 200])
    async with Receiver(lambda _r: Answer(next(answers))) as receiver:
        endpoint_id, secret = await s.endpoint(receiver.url)
        await s.charge(1)
        await deliver(wh)
        (delivery,) = await s.deliveries(endpoint_id)
        assert delivery.state == PENDING and delivery.last_status_code == 500
        wait = delivery.next_attempt_time.ToDatetime() - delivery.last_attempt_time.ToDatetime()
        assert timedelta(seconds=4) <= wait <= timedelta(seconds=6), "5 s, with jitter"
        await deliver(wh)  # not due yet
        assert len(receiver.received) == 1
        wh.clock.advance(timedelta(seconds=7))
        await deliver(wh)
        assert [r.id for r in receiver.received] == [receiver.received[0].id] * 2
        assert all(r.verifies(secret) for r in receiver.received)
        (delivery,) = await s.deliveries(endpoint_id)
        assert (delivery.state, delivery.attempts, delivery.last_status_code) == (
            SUCCEEDED,
            2,
            200,
        )
        assert not (await s.get(endpoint_id)).HasField("failing_since_time")


async def test_a_receiver_that_times_out_is_retried(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver(lambda _r: Answer(200, delay=5)) as receiver:
        endpoint_id, _ = await s.endpoint(receiver.url)
        await s.charge(1)
        await deliver(wh)
        assert len(receiver.received) == 1
        (delivery,) = await s.deliveries(endpoint_id)
        assert delivery.state == PENDING and delivery.last_status_code == 0
        assert "no answer within 2 s" in delivery.last_error
        assert (await s.get(endpoint_id)).HasField("failing_since_time")


async def test_410_disables_the_endpoint_and_an_event_says_so(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver(lambda _r: Answer(410)) as receiver:
        endpoint_id, _ = await s.endpoint(receiver.url)
        await s.charge(1)
        await s.charge(1)
        await deliver(wh)
        endpoint = await s.get(endpoint_id)
        assert endpoint.state == wpb.WEBHOOK_ENDPOINT_STATE_DISABLED
        assert endpoint.disabled_reason == "gone"
        states = sorted(d.state for d in await s.deliveries(endpoint_id))
        assert FAILED in states
        disabled = await wh.app.admin.outbox(s.id, "webhook.")
        assert [e["type"] for e in disabled] == ["webhook.endpoint_disabled"]
        assert disabled[0]["payload"]["reason"] == "gone"
        assert disabled[0]["payload"]["status_code"] == 410
        sent = len(receiver.received)
        wh.clock.advance(timedelta(hours=1))
        await s.charge(1)
        await deliver(wh, 2)
        assert len(receiver.received) == sent, "a disabled endpoint gets nothing"


async def test_an_endpoint_enabled_again_gets_the_events_from_then_on(wh: Harness) -> None:
    """While a tenant has no enabled endpoint the fan-out passes it over; enabling one
    starts from the events committed after it, not from where the tenant was left."""
    s = await shop(wh)
    async with Receiver() as receiver:
        endpoint_id, _ = await s.endpoint(receiver.url)
        async with s.client() as client:
            await client.disable_webhook_endpoint(
                wpb.DisableWebhookEndpointRequest(endpoint_id=endpoint_id)
            )
            await s.charge(1, "while-off-1")
            await deliver(wh)
            await s.charge(1, "while-off-2")
            await client.enable_webhook_endpoint(
                wpb.EnableWebhookEndpointRequest(endpoint_id=endpoint_id)
            )
            # Enabling twice does not skip what is waiting for it.
            await s.charge(1, "after")
            await client.enable_webhook_endpoint(
                wpb.EnableWebhookEndpointRequest(endpoint_id=endpoint_id)
            )
        await deliver(wh, 2)
        sent = [r.json()["data"]["request_id"] for r in receiver.received]
        assert sent == ["after"]


async def test_429_with_retry_after_waits_that_long(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver(lambda _r: Answer(429, {"retry-after": "3600"})) as receiver:
        endpoint_id, _ = await s.endpoint(receiver.url)
        await s.charge(1)
        await deliver(wh)
        (delivery,) = await s.deliveries(endpoint_id)
        wait = delivery.next_attempt_time.ToDatetime() - delivery.last_attempt_time.ToDatetime()
        assert wait >= timedelta(seconds=3600)
        assert len(receiver.received) == 1


async def test_redirects_are_not_followed(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver() as elsewhere:
        redirect = Answer(302, {"location": elsewhere.url})
        async with Receiver(lambda _r: redirect) as receiver:
            endpoint_id, _ = await s.endpoint(receiver.url)
            await s.charge(1)
            await deliver(wh)
            (delivery,) = await s.deliveries(endpoint_id)
            assert delivery.state == PENDING and delivery.last_status_code == 302
            assert "redirects are not followed" in delivery.last_error
            assert not elsewhere.received


async def test_an_endpoint_failing_for_five_days_is_disabled(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver(lambda _r: Answer(503)) as receiver:
        endpoint_id, _ = await s.endpoint(receiver.url)
        await s.charge(1)
        await deliver(wh)
        for _ in range(11):  # the schedule spans about 33 h; then the next events
            wh.clock.advance(timedelta(hours=12))
            await s.charge(1)
            await deliver(wh, 2)
        endpoint = await s.get(endpoint_id)
        assert endpoint.state == wpb.WEBHOOK_ENDPOINT_STATE_DISABLED
        assert endpoint.disabled_reason == "failing"
        disabled = await wh.app.admin.outbox(s.id, "webhook.")
        assert [e["payload"]["reason"] for e in disabled] == ["failing"]
        deliveries = await s.deliveries(endpoint_id)
        first = min(deliveries, key=lambda d: d.create_time.ToDatetime())
        assert first.state == FAILED and first.attempts == 8, "the whole schedule, then given up"
        assert len(receiver.received) >= 8


async def test_rotation_signs_with_both_secrets_for_a_day(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver() as receiver:
        endpoint_id, old = await s.endpoint(receiver.url)
        async with s.client() as client:
            rotated = await client.rotate_webhook_secret(
                wpb.RotateWebhookSecretRequest(endpoint_id=endpoint_id)
            )
        new = rotated.secret
        assert new != old and rotated.endpoint.HasField("secret_rotate_time")
        await s.charge(1)
        await deliver(wh)
        got = receiver.received[-1]
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert got.verifies(old) and got.verifies(new)
        wh.clock.advance(timedelta(hours=25))
        await s.charge(1)
        await deliver(wh)
        got = receiver.received[-1]
        assert got.verifies(new) and not got.verifies(old)


async def test_a_test_event_goes_to_that_endpoint_only(wh: Harness) -> None:
    s = await shop(wh)
    async with Receiver() as one, Receiver() as other:
        endpoint_id, secret = await s.endpoint(one.url)
        await s.endpoint(other.url)
        async with s.client() as client:
            queued = await client.send_test_webhook(
                wpb.SendTestWebhookRequest(endpoint_id=endpoint_id)
            )
        assert queued.delivery.event_type == "webhook.test" and queued.delivery.event_seq == 0
        await deliver(wh)
        (got,) = one.received
        assert got.verifies(secret) and got.json()["type"] == "webhook.test"
        assert got.json()["data"] == {"endpoint_id": endpoint_id}
        assert not other.received


async def test_endpoints_deliver_only_the_types_they_asked_for(wh: Harness) -> None:
    s = await shop(wh, tokens=60)
    async with Receiver() as receiver:
        await s.endpoint(receiver.url, ("ledger.low_balance",))
        await s.charge(5)  # 55: still above 50
        await s.charge(10)  # 45: crosses
        await deliver(wh)
        assert [r.json()["type"] for r in receiver.received] == ["ledger.low_balance"]
        assert receiver.received[0].json()["data"]["available"] == 45


async def test_managing_endpoints(wh: Harness) -> None:
    s = await shop(wh)
    async with s.client() as client:
        made = await client.create_webhook_endpoint(
            wpb.CreateWebhookEndpointRequest(
                url="https://127.0.0.1:9/hooks", description="CRM", event_types=["action.*"]
            )
        )
        e = made.endpoint
        assert (e.url, e.description, list(e.event_types)) == (
            "https://127.0.0.1:9/hooks",
            "CRM",
            ["action.*"],
        )
        listed = await client.list_webhook_endpoints(wpb.ListWebhookEndpointsRequest())
        assert [x.id for x in listed.endpoints] == [e.id]
        assert "whsec_" not in str(listed), "the secret is shown once only"
        changed = await client.update_webhook_endpoint(
            wpb.UpdateWebhookEndpointRequest(
                endpoint_id=e.id, description="billing", update_mask={"paths": ["description"]}
            )
        )
        assert changed.endpoint.description == "billing"
        assert changed.endpoint.url == e.url and list(changed.endpoint.event_types) == ["action.*"]
        off = await client.disable_webhook_endpoint(
            wpb.DisableWebhookEndpointRequest(endpoint_id=e.id)
        )
        assert off.endpoint.state == wpb.WEBHOOK_ENDPOINT_STATE_DISABLED
        assert off.endpoint.disabled_reason == "disabled"
        with pytest.raises(AgentServerError) as exc:
            await client.send_test_webhook(wpb.SendTestWebhookRequest(endpoint_id=e.id))
        assert exc.value.code is StatusCode.FAILED_PRECONDITION
        on = await client.enable_webhook_endpoint(
            wpb.EnableWebhookEndpointRequest(endpoint_id=e.id)
        )
        assert on.endpoint.state == wpb.WEBHOOK_ENDPOINT_STATE_ENABLED
        assert on.endpoint.disabled_reason == ""
        await client.delete_webhook_endpoint(wpb.DeleteWebhookEndpointRequest(endpoint_id=e.id))
        with pytest.raises(AgentServerError) as exc:
            await client.get_webhook_endpoint(wpb.GetWebhookEndpointRequest(endpoint_id=e.id))
        assert exc.value.code is StatusCode.NOT_FOUND


async def test_another_tenant_sees_nothing_and_a_key_needs_the_scope(wh: Harness) -> None:
    a = await shop(wh)
    b = await shop(wh)
    endpoint_id, _ = await a.endpoint("http://127.0.0.1:9/a")
    async with b.client() as client:
        for call in (
            client.get_webhook_endpoint(wpb.GetWebhookEndpointRequest(endpoint_id=endpoint_id)),
            client.delete_webhook_endpoint(
                wpb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
            ),
            client.list_webhook_deliveries(
                wpb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id)
            ),
            client.rotate_webhook_secret(wpb.RotateWebhookSecretRequest(endpoint_id=endpoint_id)),
        ):
            with pytest.raises(AgentServerError) as exc:
                await call
            assert exc.value.code is StatusCode.NOT_FOUND
        assert not (
            await client.list_webhook_endpoints(wpb.ListWebhookEndpointsRequest())
        ).endpoints
    t = await wh.tenant(1)  # default scopes: no `webhooks`
    async with t.client(user_id="") as client:
        with pytest.raises(AgentServerError) as exc:
            await client.list_webhook_endpoints(wpb.ListWebhookEndpointsRequest())
        assert exc.value.code is StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/x", "http or https"),
        ("http://10.1.2.3/x", "private, loopback or link-local"),
        ("http://169.254.169.254/latest/meta-data", "private, loopback or link-local"),
        ("http://[::ffff:10.0.0.1]/x", "private, loopback or link-local"),
        ("http://user:pw@127.0.0.1/x", "credentials"),
        ("http://127.0.0.1/x#frag", "fragment"),
        ("not a url", "http or https"),
        ("", "is required"),
    ],
)
async def test_bad_targets_are_refused(wh: Harness, url: str, why: str) -> None:
    s = await shop(wh)
    async with s.client() as client:
        with pytest.raises(AgentServerError) as exc:
            await client.create_webhook_endpoint(wpb.CreateWebhookEndpointRequest(url=url))
    assert exc.value.code is StatusCode.INVALID_ARGUMENT
    violation = exc.value.details.field_violations[0]
    assert violation.field == "url" and why in violation.description


async def test_unknown_event_types_are_refused(wh: Harness) -> None:
    s = await shop(wh)
    async with s.client() as client:
        with pytest.raises(AgentServerError) as exc:
            await client.create_webhook_endpoint(
                wpb.CreateWebhookEndpointRequest(
                    url="http://127.0.0.1:9/x", event_types=["ledger.entry", "nope.*"]
                )
            )
    assert exc.value.details.field_violations[0].field == "event_types[1]"


async def test_loopback_is_refused_unless_the_operator_allows_it(harness: Harness) -> None:
    """The shared server allows no private networks."""
    t = await harness.tenant(1)
    _, key = await harness.app.admin.create_key(t.id, (SCOPE_WEBHOOKS,), "h", harness.clock.now())
    async with harness.client(key, t.id, user_id="") as client:
        for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x"):
            with pytest.raises(AgentServerError) as exc:
                await client.create_webhook_endpoint(wpb.CreateWebhookEndpointRequest(url=url))
            assert exc.value.code is StatusCode.INVALID_ARGUMENT, url
    # A name that resolves to loopback is refused at delivery time (checked at each attempt).
    endpoint_id = await _endpoint_behind_a_name(harness, t.id)
    await harness.app.ledger.add_tokens(t.id, "", 5, uuid.uuid4().hex, "more")
    await harness.app.deliverer.run_once()
    deliveries, _ = await harness.app.webhooks.deliveries(t.id, endpoint_id, frozenset(), _page())
    assert len(deliveries) == 2  # the purchase's entry and tokens_added
    for delivery in deliveries:
        assert delivery.last_status == 0 and delivery.attempts == 1
        assert "localhost resolves to" in delivery.last_error
        assert "loopback" in delivery.last_error


async def _endpoint_behind_a_name(h: Harness, tenant_id: str) -> str:
    """An endpoint whose host name resolves to loopback (written as the store would,
    since creating it through the rpc is refused)."""
    from agentserver.domain.webhooks import Endpoint

    now = h.clock.now()
    endpoint = Endpoint(
        id=f"whe_{uuid.uuid4().hex[:20]}",
        tenant_id=tenant_id,
        url="http://localhost:9/x",
        description="",
        event_types=(),
        enabled=True,
        disabled_reason="",
        failing_since=None,
        secret_rotated_at=None,
        created_at=now,
        updated_at=now,
    )
    assert h.app.secret_box is not None
    await h.app.webhook_store.create_endpoint(endpoint, h.app.secret_box.encrypt("whsec_AAAA"))
    return endpoint.id


def _page() -> PageRequest:
    return PageRequest(size=10, after=None)
