"""TokenService through the gRPC surface and the client library, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from google.protobuf import duration_pb2
from sqlalchemy import text

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as pb
from tests.conftest import Harness, ledger_invariant

SMS = common_pb2.OPERATION_TYPE_SMS


def rid() -> str:
    return uuid.uuid4().hex


def charge(
    tenant_id: str, amount: int = 1, request_id: str | None = None, **kw: object
) -> pb.ChargeTokensRequest:
    return pb.ChargeTokensRequest(
        tenant_id=tenant_id,
        operation_type=kw.pop("operation_type", SMS),  # type: ignore[arg-type]
        amount=amount,
        request_id=rid() if request_id is None else request_id,
        **kw,  # type: ignore[arg-type]
    )


async def available(client: AgentServerClient, tenant_id: str, location_id: str = "") -> int:
    resp = await client.get_balance(
        pb.GetBalanceRequest(tenant_id=tenant_id, location_id=location_id)
    )
    return resp.balance.available_tokens


async def count_entries(h: Harness, tenant_id: str, kind: str) -> int:
    async with h.app.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT COUNT(*) FROM token_usage_logs WHERE tenant_id=:t AND kind=:k"),
                    {"t": tenant_id, "k": kind},
                )
            ).scalar_one()
        )


async def test_storm_200_charges_against_150(harness: Harness) -> None:
    t = await harness.tenant(150)
    async with t.client() as client:
        results = await asyncio.gather(
            *(client.charge_tokens(charge(t.id)) for _ in range(200)), return_exceptions=True
        )
        ok = [r for r in results if isinstance(r, pb.ChargeTokensResponse)]
        failed = [r for r in results if isinstance(r, AgentServerError)]
        assert len(ok) == 150
        assert len(failed) == 50
        for err in failed:
            assert err.code is StatusCode.FAILED_PRECONDITION
            assert err.details.reason == "INSUFFICIENT_TOKENS"
            assert err.details.quota_violations, "QuotaFailure detail expected"
        assert await available(client, t.id) == 0
        # every successful charge saw a distinct available-after: no lost updates
        assert sorted(r.entry.available_after for r in ok) == list(range(150))
    assert await count_entries(harness, t.id, "charge") == 150
    await ledger_invariant(harness, t.id)


async def test_replay_returns_first_result_and_changes_nothing(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        request = charge(t.id, 3, "order-42")
        first = await client.charge_tokens(request)
        again = await client.charge_tokens(request)
        assert again.entry == first.entry
        assert await available(client, t.id) == 7
        with pytest.raises(AgentServerError) as exc:
            await client.charge_tokens(charge(t.id, 4, "order-42"))
        assert exc.value.code is StatusCode.ALREADY_EXISTS
        # a storm of the same request id: one charge
        same = charge(t.id, 1, "storm-key")
        results = await asyncio.gather(*(client.charge_tokens(same) for _ in range(30)))
        assert len({r.entry.id for r in results}) == 1
        assert await available(client, t.id) == 6
    await ledger_invariant(harness, t.id)


async def test_reservation_capture_partial_and_ends_once(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with t.client() as client:
        res = (
            await client.reserve_tokens(
                pb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=10, request_id=rid()
                )
            )
        ).reservation
        assert res.state == pb.RESERVATION_STATE_PENDING
        balance = (await client.get_balance(pb.GetBalanceRequest(tenant_id=t.id))).balance
        assert (balance.reserved_tokens, balance.available_tokens) == (10, 90)
        with pytest.raises(AgentServerError) as exc:
            await client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, amount=11, request_id=rid()
                )
            )
        assert exc.value.code is StatusCode.INVALID_ARGUMENT
        capture = pb.CaptureReservationRequest(
            tenant_id=t.id, reservation_id=res.id, amount=7, request_id=rid()
        )
        captured = await client.capture_reservation(capture)
        assert captured.reservation.state == pb.RESERVATION_STATE_CAPTURED
        assert captured.reservation.captured_amount == 7
        assert (await client.capture_reservation(capture)).entry == captured.entry  # replay
        balance = (await client.get_balance(pb.GetBalanceRequest(tenant_id=t.id))).balance
        assert (balance.used_tokens, balance.reserved_tokens, balance.available_tokens) == (
            7,
            0,
            93,
        )
        for late in (
            client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id=rid()
                )
            ),
            client.release_reservation(
                pb.ReleaseReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id=rid()
                )
            ),
        ):
            with pytest.raises(AgentServerError) as exc:
                await late
            assert exc.value.code is StatusCode.FAILED_PRECONDITION
            assert exc.value.details.reason == "RESERVATION_ENDED"
    await ledger_invariant(harness, t.id)


async def test_an_end_with_a_request_id_another_write_took_conflicts(harness: Harness) -> None:
    """The end's request id was a charge's: ALREADY_EXISTS, and the hold stays."""
    t = await harness.tenant(100)
    async with t.client() as client:
        await client.charge_tokens(charge(t.id, 1, "taken-1"))
        res = (
            await client.reserve_tokens(
                pb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=10, request_id=rid()
                )
            )
        ).reservation
        for end in (
            client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id="taken-1"
                )
            ),
            client.release_reservation(
                pb.ReleaseReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id="taken-1"
                )
            ),
        ):
            with pytest.raises(AgentServerError) as exc:
                await end
            assert exc.value.code is StatusCode.ALREADY_EXISTS
        balance = (await client.get_balance(pb.GetBalanceRequest(tenant_id=t.id))).balance
        assert (balance.used_tokens, balance.reserved_tokens) == (1, 10)
    await ledger_invariant(harness, t.id)


async def test_release_and_concurrent_end_exactly_once(harness: Harness) -> None:
    t = await harness.tenant(50)
    async with t.client() as client:
        res = (
            await client.reserve_tokens(
                pb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=20, request_id=rid()
                )
            )
        ).reservation
        attempts = [
            client.release_reservation(
                pb.ReleaseReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id=rid()
                )
            )
            for _ in range(5)
        ] + [
            client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id=res.id, request_id=rid()
                )
            )
            for _ in range(5)
        ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1
        assert all(
            isinstance(r, AgentServerError) and r.code is StatusCode.FAILED_PRECONDITION
            for r in results
            if isinstance(r, BaseException)
        )
    await ledger_invariant(harness, t.id)


async def test_reservation_expiry_releases(harness: Harness) -> None:
    t = await harness.tenant(30)
    async with t.client() as client:
        make = lambda: pb.ReserveTokensRequest(  # noqa: E731
            tenant_id=t.id,
            operation_type=SMS,
            amount=10,
            request_id=rid(),
            ttl=duration_pb2.Duration(seconds=60),
        )
        swept = (await client.reserve_tokens(make())).reservation
        lazy = (await client.reserve_tokens(make())).reservation
        assert await available(client, t.id) == 10
        harness.clock.advance(timedelta(seconds=61))
        # capture after expiry but before any sweep: refused, and it expires now
        with pytest.raises(AgentServerError) as exc:
            await client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id=lazy.id, request_id=rid()
                )
            )
        assert exc.value.code is StatusCode.FAILED_PRECONDITION
        assert await harness.app.ledger.sweep_expired() >= 1
        state = await harness.app.ledger.store.get_reservation(t.id, swept.id)
        assert state.state == "expired"
        assert await available(client, t.id) == 30
        assert await count_entries(harness, t.id, "expire") == 2
    await ledger_invariant(harness, t.id)


@pytest.mark.parametrize(
    ("amount", "field"),
    [(0, "amount"), (-5, "amount"), (10**12, "amount")],
)
async def test_bad_amounts_are_invalid_and_change_nothing(
    harness: Harness, amount: int, field: str
) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        for call in (
            client.charge_tokens(charge(t.id, amount)),
            client.reserve_tokens(
                pb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=amount, request_id=rid()
                )
            ),
        ):
            with pytest.raises(AgentServerError) as exc:
                await call
            assert exc.value.code is StatusCode.INVALID_ARGUMENT
            assert [v.field for v in exc.value.details.field_violations] == [field]
        assert await available(client, t.id) == 10
    async with harness.client(await harness.platform_key(), t.id) as platform:
        with pytest.raises(AgentServerError) as exc:
            await platform.add_tokens(
                pb.AddTokensRequest(tenant_id=t.id, amount=amount, request_id=rid())
            )
        assert exc.value.code is StatusCode.INVALID_ARGUMENT
    assert await count_entries(harness, t.id, "charge") == 0


async def test_other_bad_inputs(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        cases = [
            (charge(t.id, 1, request_id=""), "request_id"),
            (charge(t.id, 1, request_id="x" * 129), "request_id"),
            (
                charge(t.id, 1, operation_type=common_pb2.OPERATION_TYPE_UNSPECIFIED),
                "operation_type",
            ),
            (
                charge(t.id, 1, operation_type=common_pb2.OPERATION_TYPE_MONTHLY_FEE),
                "operation_type",
            ),
        ]
        for request, field in cases:
            with pytest.raises(AgentServerError) as exc:
                await client.charge_tokens(request)
            assert exc.value.code is StatusCode.INVALID_ARGUMENT, field
            assert field in [v.field for v in exc.value.details.field_violations]
        with pytest.raises(AgentServerError) as exc:
            await client.list_usage(pb.ListUsageRequest(tenant_id=t.id, page_token="garbage!"))
        assert exc.value.code is StatusCode.INVALID_ARGUMENT
        with pytest.raises(AgentServerError) as exc:
            await client.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=t.id, reservation_id="res_nope", request_id=rid()
                )
            )
        assert exc.value.code is StatusCode.NOT_FOUND
        assert await available(client, t.id) == 10


async def test_usage_pagination_newest_first(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with t.client() as client:
        for i in range(7):
            await client.charge_tokens(charge(t.id, 1, f"p-{i}", description=f"c{i}"))
        seen: list[str] = []
        token = ""
        while True:
            page = await client.list_usage(
                pb.ListUsageRequest(tenant_id=t.id, page_size=3, page_token=token)
            )
            seen += [e.description for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"c{i}" for i in reversed(range(7))] + ["seed"]


async def test_location_wallets(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with harness.client(await harness.platform_key(), t.id) as platform:
        added = await platform.add_tokens(
            pb.AddTokensRequest(tenant_id=t.id, location_id="paris", amount=5, request_id=rid())
        )
        assert added.balance.location_id == "paris"
        assert added.balance.available_tokens == 5
    async with t.client() as client:
        # paris has its own wallet; lyon has none and spends from the tenant's
        await client.charge_tokens(charge(t.id, 5, location_id="paris"))
        with pytest.raises(AgentServerError) as exc:
            await client.charge_tokens(charge(t.id, 1, location_id="paris"))
        assert exc.value.code is StatusCode.FAILED_PRECONDITION
        entry = (await client.charge_tokens(charge(t.id, 2, location_id="lyon"))).entry
        assert (entry.location_id, entry.wallet_location_id) == ("lyon", "")
        assert await available(client, t.id) == 98
        assert await available(client, t.id, "lyon") == 98
        assert await available(client, t.id, "paris") == 0
    await ledger_invariant(harness, t.id)


async def test_monthly_fee_once_per_month_with_arrears(harness: Harness) -> None:
    t = await harness.tenant(250)
    ledger = harness.app.ledger
    mine = lambda results: next(r for r in results if r.tenant_id == t.id)  # noqa: E731
    first = mine(await ledger.charge_monthly_fees())
    assert (first.charged, first.already_charged) == (200, False)
    again = mine(await ledger.charge_monthly_fees())
    assert again.already_charged
    assert (await ledger.balance(t.id)).available == 50
    # next month the balance cannot cover it: 50 charged, 150 kept as arrears
    start = harness.clock.now()
    harness.clock.set(start.replace(day=1) + timedelta(days=32))
    try:
        second = mine(await ledger.charge_monthly_fees())
        assert (second.charged, second.arrears) == (50, 150)
        b = await ledger.balance(t.id)
        assert (b.available, b.arrears) == (0, 150)
        # the next purchase settles the arrears first
        _entry, after = await ledger.add_tokens(t.id, "", 400, rid(), "top-up")
        assert (after.available, after.arrears) == (250, 0)
    finally:
        harness.clock.set(max(start, harness.clock.now()))
    await ledger_invariant(harness, t.id)


async def test_low_balance_event_recorded_once_when_crossing(harness: Harness) -> None:
    t = await harness.tenant(60)  # default threshold 50
    async with t.client() as client:
        await client.charge_tokens(charge(t.id, 5))  # 55: above
        await client.charge_tokens(charge(t.id, 10))  # 45: crosses
        await client.charge_tokens(charge(t.id, 10))  # 35: already below
    events = await harness.app.admin.outbox(t.id, "ledger.low_balance")
    assert len(events) == 1
    payload = events[0]["payload"]
    assert (payload["available"], payload["threshold"], payload["location_id"]) == (45, 50, "")


async def test_authentication_and_tenant_isolation(harness: Harness) -> None:
    a = await harness.tenant(10, prefix="a")
    b = await harness.tenant(10, prefix="b")
    async with b.client() as bc:
        res_b = (
            await bc.reserve_tokens(
                pb.ReserveTokensRequest(
                    tenant_id=b.id, operation_type=SMS, amount=1, request_id=rid()
                )
            )
        ).reservation
    async with a.client() as ac:
        # the request names another tenant
        with pytest.raises(AgentServerError) as exc:
            await ac.get_balance(pb.GetBalanceRequest(tenant_id=b.id))
        assert exc.value.code is StatusCode.PERMISSION_DENIED
        with pytest.raises(AgentServerError) as exc:
            await ac.charge_tokens(charge(b.id))
        assert exc.value.code is StatusCode.PERMISSION_DENIED
        # another tenant's reservation id is simply not found
        with pytest.raises(AgentServerError) as exc:
            await ac.capture_reservation(
                pb.CaptureReservationRequest(
                    tenant_id=a.id, reservation_id=res_b.id, request_id=rid()
                )
            )
        assert exc.value.code is StatusCode.NOT_FOUND
        # metadata names another tenant
        with pytest.raises(AgentServerError) as exc:
            await ac.get_balance(pb.GetBalanceRequest(), metadata=[("x-tenant-id", b.id)])
        assert exc.value.code is StatusCode.PERMISSION_DENIED
        # a tenant key cannot add tokens
        with pytest.raises(AgentServerError) as exc:
            await ac.add_tokens(pb.AddTokensRequest(tenant_id=a.id, amount=5, request_id=rid()))
        assert exc.value.code is StatusCode.PERMISSION_DENIED
        # missing and unknown keys
        for bad in ("", "ask_nope_nope"):
            with pytest.raises(AgentServerError) as exc:
                await ac.with_identity(api_key=bad).get_costs()
            assert exc.value.code is StatusCode.UNAUTHENTICATED
        with pytest.raises(AgentServerError) as exc:
            await ac.get_costs(metadata=[("authorization", "Basic abc")])
        assert exc.value.code is StatusCode.UNAUTHENTICATED
    await ledger_invariant(harness, a.id)
    await ledger_invariant(harness, b.id)


async def test_revoked_key_is_refused(harness: Harness) -> None:
    t = await harness.tenant(1)
    now = harness.clock.now()
    key_id, key = await harness.app.admin.create_key(t.id, ["tokens:read"], "short-lived", now)
    await harness.app.admin.revoke_key(key_id, now)
    harness.app.auth.forget()
    async with harness.client(key, t.id) as client:
        with pytest.raises(AgentServerError) as exc:
            await client.get_costs()
        assert exc.value.code is StatusCode.UNAUTHENTICATED


async def test_scope_is_enforced(harness: Harness) -> None:
    t = await harness.tenant(5)
    _, key = await harness.app.admin.create_key(
        t.id, ["tokens:read"], "read only", harness.clock.now()
    )
    async with harness.client(key, t.id) as client:
        assert await available(client, t.id) == 5
        with pytest.raises(AgentServerError) as exc:
            await client.charge_tokens(charge(t.id))
        assert exc.value.code is StatusCode.PERMISSION_DENIED
        assert exc.value.details.reason == "SCOPE_MISSING"


async def test_get_costs_lists_the_seed_table(harness: Harness) -> None:
    t = await harness.tenant()
    async with t.client() as client:
        costs = {c.operation_type: c.tokens for c in (await client.get_costs()).costs}
    assert costs[common_pb2.OPERATION_TYPE_SMS] == 1
    assert costs[common_pb2.OPERATION_TYPE_EMAIL] == 1
    assert costs[common_pb2.OPERATION_TYPE_INTERNAL_API_LLM] == 1
    assert costs[common_pb2.OPERATION_TYPE_MONTHLY_FEE] == 200
    assert len(costs) == 6


async def test_every_rpc_is_audited(harness: Harness) -> None:
    t = await harness.tenant(5)
    async with t.client("auditor") as client:
        await client.charge_tokens(charge(t.id, 1, "audited-1"))
        with pytest.raises(AgentServerError):
            await client.charge_tokens(charge(t.id, 100))
    await harness.app.audit.flush()
    events = await harness.app.admin.events(t.id, "audit.")
    outcomes = [(e["kind"], e["outcome"]) for e in events]
    assert ("audit.ChargeTokens", "OK") in outcomes
    assert ("audit.ChargeTokens", "FAILED_PRECONDITION") in outcomes
    assert all(e["actor"].endswith("/auditor") for e in events)


async def test_concurrent_ends_of_many_reservations(harness: Harness) -> None:
    t = await harness.tenant(400)
    async with t.client() as client:
        reservations = [
            (
                await client.reserve_tokens(
                    pb.ReserveTokensRequest(
                        tenant_id=t.id, operation_type=SMS, amount=10, request_id=rid()
                    )
                )
            ).reservation
            for _ in range(20)
        ]
        assert await available(client, t.id) == 200
        calls = []
        for i, res in enumerate(reservations):
            if i % 2:
                calls.append(
                    client.release_reservation(
                        pb.ReleaseReservationRequest(
                            tenant_id=t.id, reservation_id=res.id, request_id=rid()
                        )
                    )
                )
            else:
                calls.append(
                    client.capture_reservation(
                        pb.CaptureReservationRequest(
                            tenant_id=t.id, reservation_id=res.id, amount=i % 7, request_id=rid()
                        )
                    )
                )
        results = await asyncio.gather(*calls)
        spent = sum(i % 7 for i in range(0, 20, 2))
        assert await available(client, t.id) == 400 - spent
        # each entry's snapshot is a state the wallet really passed through
        afters = sorted(r.entry.available_after for r in results)
        assert afters[-1] == 400 - spent
        assert len(set(afters)) == len(afters) or spent == 0
        # a key reused for another reservation in the same burst: one wins, one conflicts
        a, b = [
            (
                await client.reserve_tokens(
                    pb.ReserveTokensRequest(
                        tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid()
                    )
                )
            ).reservation
            for _ in range(2)
        ]
        outcome = await asyncio.gather(
            *(
                client.capture_reservation(
                    pb.CaptureReservationRequest(
                        tenant_id=t.id, reservation_id=r.id, request_id="shared-key"
                    )
                )
                for r in (a, b)
            ),
            return_exceptions=True,
        )
        errors = [o for o in outcome if isinstance(o, AgentServerError)]
        assert len(errors) == 1 and errors[0].code is StatusCode.ALREADY_EXISTS
    await ledger_invariant(harness, t.id)
