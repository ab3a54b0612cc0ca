"""The usage log as the source design has it: each entry names the user, the
conversation and metadata beside its amounts, and ListUsage filters by location (the
entries made for it, whichever wallet paid), user, operation type and time; through
gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from sqlalchemy import text

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.domain.costs import OperationType
from agentserver.domain.ledger import Debit
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as pb
from tests.conftest import Harness

SMS = common_pb2.OPERATION_TYPE_SMS
EMAIL = common_pb2.OPERATION_TYPE_EMAIL
LLM = common_pb2.OPERATION_TYPE_INTERNAL_API_LLM


def rid() -> str:
    return uuid.uuid4().hex


def struct(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def listed(client: AgentServerClient, tenant_id: str, **filters: object) -> list[str]:
    """Request ids of every entry the filters admit, newest first, over all pages."""
    out: list[str] = []
    token = ""
    while True:
        page = await client.list_usage(
            pb.ListUsageRequest(
                tenant_id=tenant_id,
                page_size=2,
                page_token=token,
                **filters,  # type: ignore[arg-type]
            )
        )
        out += [e.request_id for e in page.entries]
        token = page.next_page_token
        if not token:
            return out


async def test_a_charge_keeps_user_session_and_metadata(harness: Harness) -> None:
    t = await harness.tenant(20)
    async with t.client("desk-7") as client:
        charged = await client.charge_tokens(
            pb.ChargeTokensRequest(
                tenant_id=t.id,
                operation_type=SMS,
                amount=2,
                request_id="sms-1",
                description="reminder",
                user_id="anna",
                session_id="ses_abc",
                metadata=struct(campaign="spring", recipients=3, tags=["a", "b"]),
            )
        )
        entry = charged.entry
        assert (entry.user_id, entry.session_id) == ("anna", "ses_abc")
        assert json_format.MessageToDict(entry.metadata) == {
            "campaign": "spring",
            "recipients": 3.0,
            "tags": ["a", "b"],
        }
        # Read back as written.
        (again,) = (
            await client.list_usage(pb.ListUsageRequest(tenant_id=t.id, user_id="anna"))
        ).entries
        assert again == entry
        # Without a user in the request, the entry names the user the call is for.
        plain = await client.charge_tokens(
            pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=1, request_id="sms-2")
        )
        assert plain.entry.user_id == "desk-7"
        assert plain.entry.session_id == ""
        assert not plain.entry.metadata.fields


async def test_a_reservations_end_carries_its_attribution(harness: Harness) -> None:
    t = await harness.tenant(20)
    async with t.client() as client:
        held = await client.reserve_tokens(
            pb.ReserveTokensRequest(
                tenant_id=t.id,
                operation_type=SMS,
                amount=5,
                request_id="hold-1",
                user_id="bo",
                session_id="ses_1",
                metadata=struct(order="o-9"),
            )
        )
        reservation = held.reservation
        assert (reservation.user_id, reservation.session_id) == ("bo", "ses_1")
        assert reservation.metadata == struct(order="o-9")
        captured = await client.capture_reservation(
            pb.CaptureReservationRequest(
                tenant_id=t.id, reservation_id=reservation.id, amount=3, request_id="cap-1"
            )
        )
        assert (captured.entry.user_id, captured.entry.session_id) == ("bo", "ses_1")
        assert captured.entry.metadata == struct(order="o-9")
        second = await client.reserve_tokens(
            pb.ReserveTokensRequest(
                tenant_id=t.id,
                operation_type=SMS,
                amount=1,
                request_id="hold-2",
                user_id="cy",
                ttl=duration_pb2.Duration(seconds=60),
            )
        )
        released = await client.release_reservation(
            pb.ReleaseReservationRequest(
                tenant_id=t.id, reservation_id=second.reservation.id, request_id="rel-2"
            )
        )
        assert released.entry.user_id == "cy"
        assert await listed(client, t.id, user_id="bo") == ["cap-1", "hold-1"]
        assert await listed(client, t.id, user_id="cy") == ["rel-2", "hold-2"]


async def test_list_usage_filters(harness: Harness) -> None:
    t = await harness.tenant(100)
    # A location with its own wallet, and one the tenant's wallet pays for.
    await harness.app.ledger.add_tokens(t.id, "north", 50, f"buy-north-{t.id}", "north's own")
    async with t.client() as client:
        made = []
        for request_id, location, op, user in [
            ("a", "north", SMS, "u1"),
            ("b", "south", SMS, "u2"),
            ("c", "south", EMAIL, "u1"),
            ("d", "", EMAIL, "u2"),
            ("e", "north", EMAIL, "u2"),
        ]:
            resp = await client.charge_tokens(
                pb.ChargeTokensRequest(
                    tenant_id=t.id,
                    location_id=location,
                    operation_type=op,
                    amount=1,
                    request_id=request_id,
                    user_id=user,
                )
            )
            made.append(resp.entry)
        south = [e for e in made if e.location_id == "south"]
        assert {e.wallet_location_id for e in south} == {""}, "south is paid by the tenant"

        everything = await listed(client, t.id)
        assert everything[:5] == ["e", "d", "c", "b", "a"]
        assert set(everything[5:]) == {f"buy-north-{t.id}", f"seed-{t.id}"}
        # Made for a location, whichever wallet paid (south's were the tenant's).
        assert await listed(client, t.id, location_id="south") == ["c", "b"]
        assert await listed(client, t.id, location_id="north") == ["e", "a", f"buy-north-{t.id}"]
        # A wallet: the tenant's holds south's and the location-less entries.
        assert await listed(client, t.id, wallet_location_id="") == ["d", "c", "b", f"seed-{t.id}"]
        assert await listed(client, t.id, wallet_location_id="north") == [
            "e",
            "a",
            f"buy-north-{t.id}",
        ]
        assert await listed(client, t.id, user_id="u1") == ["c", "a"]
        assert await listed(client, t.id, operation_types=[EMAIL]) == ["e", "d", "c"]
        assert await listed(client, t.id, operation_types=[EMAIL, SMS], user_id="u2") == [
            "e",
            "d",
            "b",
        ]
        assert await listed(client, t.id, location_id="north", operation_types=[SMS]) == ["a"]
        assert await listed(client, t.id, user_id="nobody") == []

        # Time: [start, end), by the entries' own times (the test clock stands still,
        # so move it between the writes).
        start = timestamp_pb2.Timestamp()
        harness.clock.advance(timedelta(seconds=5))
        await client.charge_tokens(
            pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=1, request_id="f")
        )
        f_time = (
            (await client.list_usage(pb.ListUsageRequest(tenant_id=t.id, page_size=1)))
            .entries[0]
            .create_time
        )
        start.CopyFrom(f_time)
        harness.clock.advance(timedelta(seconds=5))
        await client.charge_tokens(
            pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=1, request_id="g")
        )
        assert await listed(client, t.id, start_time=start) == ["g", "f"]
        assert await listed(client, t.id, end_time=start) == everything
        end = timestamp_pb2.Timestamp(seconds=start.seconds + 1, nanos=start.nanos)
        assert await listed(client, t.id, start_time=start, end_time=end) == ["f"]


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"user_id": "u" * 121}, "user_id"),
        ({"operation_types": [999]}, "operation_types[0]"),
        ({"operation_types": [0]}, "operation_types[0]"),
        ({"operation_types": [SMS] * 17}, "operation_types"),
        (
            {
                "start_time": timestamp_pb2.Timestamp(seconds=100),
                "end_time": timestamp_pb2.Timestamp(seconds=100),
            },
            "end_time",
        ),
        ({"start_time": timestamp_pb2.Timestamp(seconds=-(10**12))}, "start_time"),
        ({"wallet_location_id": "w" * 65}, "wallet_location_id"),
    ],
)
async def test_bad_filters_are_invalid_arguments(
    harness: Harness, request_kwargs: dict[str, object], field: str
) -> None:
    t = await harness.tenant(1)
    async with t.client() as client:
        with pytest.raises(AgentServerError) as err:
            await client.list_usage(
                pb.ListUsageRequest(tenant_id=t.id, **request_kwargs)  # type: ignore[arg-type]
            )
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert field in [v.field for v in err.value.details.field_violations]


async def test_bad_attributions_are_refused_and_change_nothing(harness: Harness) -> None:
    t = await harness.tenant(10)
    big = struct(blob="x" * 17_000)
    async with t.client() as client:
        for kwargs, field in [
            ({"user_id": "u" * 121}, "user_id"),
            ({"session_id": "s" * 65}, "session_id"),
            ({"metadata": big}, "metadata"),
        ]:
            for request in (
                pb.ChargeTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid(), **kwargs
                ),
                pb.ReserveTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid(), **kwargs
                ),
            ):
                call = (
                    client.charge_tokens
                    if isinstance(request, pb.ChargeTokensRequest)
                    else client.reserve_tokens
                )
                with pytest.raises(AgentServerError) as err:
                    await call(request)  # type: ignore[arg-type]
                assert err.value.code is StatusCode.INVALID_ARGUMENT
                assert field in [v.field for v in err.value.details.field_violations]
        balance = (await client.get_balance(pb.GetBalanceRequest(tenant_id=t.id))).balance
        assert balance.available_tokens == 10
        assert await listed(client, t.id) == [f"seed-{t.id}"]


async def test_an_id_reused_with_another_attribution_conflicts(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client() as client:
        first = pb.ChargeTokensRequest(
            tenant_id=t.id, operation_type=SMS, amount=1, request_id="x", metadata=struct(n=1)
        )
        made = await client.charge_tokens(first)
        assert (await client.charge_tokens(first)).entry == made.entry
        other = pb.ChargeTokensRequest()
        other.CopyFrom(first)
        other.metadata.CopyFrom(struct(n=2))
        with pytest.raises(AgentServerError) as err:
            await client.charge_tokens(other)
        assert err.value.code is StatusCode.ALREADY_EXISTS


async def test_a_write_from_before_attributions_still_replays(harness: Harness) -> None:
    """An entry written before entries named users (its fingerprint has no
    attribution) replays the same request made now, which names the caller's user."""
    t = await harness.tenant(10)
    legacy = Debit(t.id, "", OperationType.SMS, 1, "old-1", "from last year")
    made = await harness.app.ledger.charge(legacy)
    async with harness.app.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE token_usage_logs SET user_id = '', request_hash = :h"
                " WHERE tenant_id = :t AND request_id = 'old-1'"
            ),
            {"h": legacy.request_hash(with_attribution=False), "t": t.id},
        )
    async with t.client("someone") as client:
        again = await client.charge_tokens(
            pb.ChargeTokensRequest(
                tenant_id=t.id,
                operation_type=SMS,
                amount=1,
                request_id="old-1",
                description="from last year",
            )
        )
        assert again.entry.id == made.id
        assert again.entry.user_id == ""
        balance = (await client.get_balance(pb.GetBalanceRequest(tenant_id=t.id))).balance
        assert balance.available_tokens == 9


async def test_a_person_bound_key_names_only_its_person(harness: Harness) -> None:
    t = await harness.tenant(10)
    now = harness.clock.now()
    _, key = await harness.app.admin.create_key(
        t.id, ["tokens:read", "tokens:write"], "anna's", now, user_id="anna"
    )
    async with harness.client(key, t.id, user_id="") as client:
        mine = await client.charge_tokens(
            pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid())
        )
        assert mine.entry.user_id == "anna"
        with pytest.raises(AgentServerError) as err:
            await client.charge_tokens(
                pb.ChargeTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=1, request_id=rid(), user_id="bo"
                )
            )
        assert err.value.code is StatusCode.PERMISSION_DENIED
        assert err.value.details.reason == "USER_MISMATCH"


async def test_process_entries_name_the_user_the_session_and_the_action(
    harness: Harness,
) -> None:
    t = await harness.tenant(20)
    async with t.client("clerk-1") as client:
        resp = await client.process(
            apb.ProcessRequest(message="Email john@example.com that the order shipped")
        )
        (action,) = resp.actions
        assert action.state == apb.ACTION_STATE_SUCCEEDED
        entries = (
            await client.list_usage(pb.ListUsageRequest(tenant_id=t.id, user_id="clerk-1"))
        ).entries
        assert [e.kind for e in entries] == [pb.ENTRY_KIND_CAPTURE, pb.ENTRY_KIND_RESERVE]
        for e in entries:
            assert e.session_id == resp.session_id
            assert json_format.MessageToDict(e.metadata) == {
                "action_id": action.id,
                "action_type": "email.send",
            }
            assert e.operation_type == EMAIL
        by_session = await listed(client, t.id, operation_types=[EMAIL])
        assert len(by_session) == 2
