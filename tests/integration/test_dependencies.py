"""Actions of one message that depend on each other: the dependent runs only after
its prerequisite succeeded, waits as long as it does, and is cancelled (tokens
released) when it fails, is rejected or expires."""

from __future__ import annotations

import uuid
from datetime import timedelta

from agentserver.domain.actions import ActionState
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, Tenant, ledger_invariant

S = apb
BOOK_AND_TEXT = (
    "Book the Blue Room tomorrow at 10am for 1 hour for Maria and text +15551234567 "
    "that the booking is confirmed"
)


def rid() -> str:
    return uuid.uuid4().hex


async def _room(harness: Harness, t: Tenant) -> None:
    await harness.app.runner.business.create_resource(
        t.id, "", "room", "Blue Room", {}, harness.clock.now()
    )


async def _booked_and_text_approved(harness: Harness) -> tuple[Tenant, apb.Action, apb.Action]:
    """A tenant with a Blue Room, the booking waiting and its text approved early."""
    t = await harness.tenant(10)
    await _room(harness, t)
    async with t.client("rita") as client:
        booking, text = (await client.process(apb.ProcessRequest(message=BOOK_AND_TEXT))).actions
        await client.approve_action(apb.ApproveActionRequest(action_id=text.id, request_id=rid()))
    return t, booking, text


async def _balance(t: Tenant) -> tpb.Balance:
    async with t.client("rita") as client:
        return (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance


async def test_the_confirmation_waits_for_the_booking_and_then_goes_out(harness: Harness) -> None:
    t = await harness.tenant(10)
    await _room(harness, t)
    async with t.client("rita") as client:
        resp = await client.process(apb.ProcessRequest(message=BOOK_AND_TEXT))
        booking, text = resp.actions
        assert (booking.action_type, text.action_type) == ("booking.create", "sms.send")
        assert text.depends_on == booking.id
        # Never less say-so than the booking: both wait for the user.
        assert booking.state == text.state == S.ACTION_STATE_AWAITING_USER
        assert text.decision_level >= booking.decision_level
        assert "then runs after booking.create" in resp.response

        early = (
            await client.approve_action(
                apb.ApproveActionRequest(action_id=text.id, request_id=rid())
            )
        ).action
        assert early.state == S.ACTION_STATE_APPROVED  # approved, waiting for the booking
        assert not early.result.provider_id
        assert (await _balance(t)).reserved_tokens == 1

        done = (
            await client.approve_action(
                apb.ApproveActionRequest(action_id=booking.id, request_id=rid())
            )
        ).action
        assert done.state == S.ACTION_STATE_SUCCEEDED
        sent = (await client.get_action(apb.GetActionRequest(action_id=text.id))).action
        assert sent.state == S.ACTION_STATE_SUCCEEDED
    b = await _balance(t)
    assert (b.used_tokens, b.reserved_tokens) == (1, 0)
    await ledger_invariant(harness, t.id)


async def test_a_failed_prerequisite_cancels_the_dependent_and_releases_its_tokens(
    harness: Harness,
) -> None:
    t = await harness.tenant(10)  # no Blue Room: the booking fails when it runs
    async with t.client("rita") as client:
        booking, text = (await client.process(apb.ProcessRequest(message=BOOK_AND_TEXT))).actions
        await client.approve_action(apb.ApproveActionRequest(action_id=text.id, request_id=rid()))
        failed = (
            await client.approve_action(
                apb.ApproveActionRequest(action_id=booking.id, request_id=rid())
            )
        ).action
        assert failed.state == S.ACTION_STATE_FAILED
        cancelled = (await client.get_action(apb.GetActionRequest(action_id=text.id))).action
        assert cancelled.state == S.ACTION_STATE_CANCELLED
        assert "booking.create" in cancelled.result.error and "failed" in cancelled.result.error
        listed = (
            await client.list_actions(apb.ListActionsRequest(states=[S.ACTION_STATE_CANCELLED]))
        ).actions
        assert [a.id for a in listed] == [text.id]
    b = await _balance(t)
    assert (b.used_tokens, b.reserved_tokens) == (0, 0)
    await ledger_invariant(harness, t.id)


async def test_a_rejected_prerequisite_cancels_a_waiting_dependent(harness: Harness) -> None:
    t = await harness.tenant(10)
    await _room(harness, t)
    async with t.client("rita") as client:
        booking, text = (await client.process(apb.ProcessRequest(message=BOOK_AND_TEXT))).actions
        await client.reject_action(
            apb.RejectActionRequest(action_id=booking.id, reason="wrong day", request_id=rid())
        )
        after = (await client.get_action(apb.GetActionRequest(action_id=text.id))).action
        assert after.state == S.ACTION_STATE_CANCELLED
        assert "rejected" in after.result.error
        approve_late = client.approve_action(
            apb.ApproveActionRequest(action_id=text.id, request_id=rid())
        )
        try:
            await approve_late
            raise AssertionError("a cancelled action was approved")
        except Exception as err:
            assert "cancelled" in str(err)
    assert (await _balance(t)).reserved_tokens == 0
    await ledger_invariant(harness, t.id)


async def test_an_expired_prerequisite_cancels_an_approved_dependent(harness: Harness) -> None:
    t, booking, text = await _booked_and_text_approved(harness)
    harness.clock.advance(timedelta(hours=25))
    await harness.app.agent.sweep()
    assert (await harness.app.agent_store.get(t.id, booking.id)).state is ActionState.EXPIRED
    assert (await harness.app.agent_store.get(t.id, text.id)).state is ActionState.CANCELLED
    assert (await _balance(t)).reserved_tokens == 0
    await ledger_invariant(harness, t.id)


async def test_the_sweep_starts_a_dependent_a_crash_left_approved(harness: Harness) -> None:
    t, booking, text = await _booked_and_text_approved(harness)
    # The booking ran, and the process died before it followed up its dependent.
    store = harness.app.agent_store
    running = await store.transition(
        t.id,
        booking.id,
        frozenset({ActionState.AWAITING_USER}),
        ActionState.EXECUTING,
        harness.clock.now(),
        attempts=1,
    )
    assert running is not None
    await harness.app.executor.run(running)  # runs it; following up is not run's part
    assert (await store.get(t.id, text.id)).state is ActionState.APPROVED
    assert (await store.get(t.id, booking.id)).state is ActionState.SUCCEEDED
    harness.clock.advance(timedelta(minutes=6))
    counts = await harness.app.agent.sweep()
    assert counts["resumed"] >= 1
    assert (await store.get(t.id, text.id)).state is ActionState.SUCCEEDED
    await ledger_invariant(harness, t.id)


async def test_a_dependent_waits_through_an_unknown_outcome_and_follows_the_answer(
    harness: Harness,
) -> None:
    for happened, after in (
        (apb.ACTION_OUTCOME_HAPPENED, ActionState.SUCCEEDED),
        (apb.ACTION_OUTCOME_DID_NOT_HAPPEN, ActionState.CANCELLED),
    ):
        t, booking, text = await _booked_and_text_approved(harness)
        store = harness.app.agent_store
        # The booking's executor stopped mid-call: nobody knows whether it happened.
        stuck = await store.transition(
            t.id,
            booking.id,
            frozenset({ActionState.AWAITING_USER}),
            ActionState.OUTCOME_UNKNOWN,
            harness.clock.now(),
        )
        assert stuck is not None
        await harness.app.executor.follow(stuck)  # not an end: the text keeps waiting
        assert (await store.get(t.id, text.id)).state is ActionState.APPROVED
        async with t.client("rita") as client:
            await client.resolve_action_outcome(
                apb.ResolveActionOutcomeRequest(
                    action_id=booking.id, outcome=happened, request_id=rid()
                )
            )
        assert (await store.get(t.id, text.id)).state is after
        await ledger_invariant(harness, t.id)
