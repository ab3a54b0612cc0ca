"""Domain values to proto messages: the fast paths give what protobuf's own would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from agentserver.domain.actions import ActionState
from agentserver.domain.costs import OperationType
from agentserver.domain.ledger import EntryKind, ReservationState
from agentserver.entrypoints.grpc import convert
from agentserver.v1 import agent_service_pb2, common_pb2, token_service_pb2


def _protobufs(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when.astimezone(UTC))
    return out


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=13, minutes=45))]
        ),
    )
)
def test_a_timestamp_is_what_from_datetime_gives(when: datetime) -> None:
    assert convert.ts(when) == _protobufs(when)


def test_a_naive_datetime_is_local_time_as_before() -> None:
    when = datetime(2026, 12, 2, 17, 30, 1, 123456)
    assert convert.ts(when) == _protobufs(when)
    assert convert.ts(None) is None


def test_every_domain_enum_member_maps_to_the_proto_value_of_its_name() -> None:
    for op in OperationType:
        assert common_pb2.OperationType.Name(convert.op_to_pb(op)) == f"OPERATION_TYPE_{op.name}"
    for state in ActionState:
        name = agent_service_pb2.ActionState.Name(convert.state_to_pb(state))
        assert name == f"ACTION_STATE_{state.name}"
    for kind in EntryKind:
        assert (
            token_service_pb2.EntryKind.Name(convert._ENTRY_KINDS[kind])
            == f"ENTRY_KIND_{kind.name}"
        )
    for r in ReservationState:
        name = token_service_pb2.ReservationState.Name(convert._RESERVATION_STATES[r])
        assert name == f"RESERVATION_STATE_{r.name}"
