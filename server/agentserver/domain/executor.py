"""The executor: runs an approved action once, and settles its tokens.

    reserve (if not reserved while waiting) -> approved→executing (compare-and-set)
    -> run through the channel (bounded retries of transient errors)
    -> record the result -> capture on success | release on failure

A success's capture and state change are one step (a `Settler`: one statement on
PostgreSQL, one transaction elsewhere).

An execution is detached from the rpc that started it: a caller that goes away
(a deadline, a cancelled call) does not stop a send halfway; it runs to its end and
settles. Only a shutdown stops executions, after letting them finish for a while
(`drain`), and it is handled like a crash, recording what is known: stopped during
the provider call, the action is `outcome_unknown` at once; stopped after the
provider answered, the answer (its provider id) is stored and the sweep settles it.

Crash rule: an action found `executing` for longer than the lease (no live
executor) is never sent again. If its tokens were captured, its provider id was
recorded, or a person confirmed what happened, that is the outcome: it succeeds
(capturing if needed) or fails. Otherwise the outcome is unknown: the action moves
to `outcome_unknown`, its tokens held (for `outcome_hold`) until a person who
checked says whether it happened (`settle_outcome`). A duplicate send is worse than
a missed one for every channel we have. An action found `approved` past the lease
(its approval's execution was interrupted before it started) is executed then,
exactly once: approved→executing is a compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from agentserver.domain.actions import CANCELLABLE, Action, ActionState, ActionStore
from agentserver.domain.channels import ChannelError, ChannelResult, PermanentChannelError
from agentserver.domain.clock import Clock
from agentserver.domain.costs import OperationType
from agentserver.domain.errors import (
    DomainError,
    FailedPrecondition,
    InsufficientTokens,
    Unavailable,
)
from agentserver.domain.ledger import (
    MAX_RESERVATION_TTL,
    Attribution,
    Debit,
    EntryKind,
    LedgerService,
)
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry
from agentserver.domain.windows import WINDOW, ConversationWindows, WindowKey, window_key

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_EXECUTION_LEASE = timedelta(minutes=5)
# How long a stopped execution may take to record what it knows.
RECORD_TIMEOUT_SECONDS = 5.0

_ENDED_WORDS = {
    ActionState.FAILED: "failed",
    ActionState.OUTCOME_UNKNOWN: "may or may not have happened",
    ActionState.REJECTED: "was rejected",
    ActionState.EXPIRED: "expired",
    ActionState.CANCELLED: "was cancelled",
}


@dataclass(frozen=True)
class PendingStatus:
    """What a pending (asynchronous) action's provider says now."""

    done: bool
    succeeded: bool
    detail: dict[str, Any] = field(default_factory=dict)


class ActionRunner(Protocol):
    """Runs an action through its channel or business handler."""

    async def run(self, action: Action) -> ChannelResult: ...

    async def poll(self, action: Action) -> PendingStatus: ...


Retry = Callable[[Callable[[], Awaitable[ChannelResult]]], Awaitable[ChannelResult]]


@dataclass(frozen=True)
class Revision:
    """A message to rewrite together with an action's success (the reply that
    reports it), so the conversation never says "in progress" for a finished one."""

    message_id: str
    content: str


@dataclass(frozen=True)
class Settled:
    """A success settled in one step: the tokens captured and the state changed."""

    action: Action | None  # None: captured, but the action had left `executing` meanwhile
    revised: bool = False  # the Revision asked for was written in the same step


@dataclass(frozen=True)
class Success:
    """An action that ran, to settle: end its reservation (`end_request_id` is the
    key): capture all of it, or with `capture=False` release it (a send that cost
    nothing after all); and move it from executing to succeeded with `changes`."""

    action: Action
    end_request_id: str
    now: datetime
    changes: dict[str, Any]
    revision: Revision | None = None
    capture: bool = True


class Settler(Protocol):
    """The unit of work of a success: the reservation ended, the action moved from
    executing to succeeded with its event, and the revision's message rewritten,
    together (one statement on PostgreSQL, one transaction elsewhere; concurrent
    successes are batched below this port). A hold that ended meanwhile (expired)
    is charged instead, if the tokens are there; if not, the success says so in its
    result: the send happened, and no balance goes below zero."""

    async def succeed(self, success: Success) -> Settled: ...


def reservation_ids(action_id: str) -> tuple[str, str, str]:
    """Idempotency keys of an action's reserve, capture and release."""
    return (
        f"action:{action_id}:reserve",
        f"action:{action_id}:capture",
        f"action:{action_id}:release",
    )


@dataclass
class Executor:
    actions: ActionStore
    ledger: LedgerService
    runner: ActionRunner
    clock: Clock
    retry: Retry
    settler: Settler
    reservation_ttl: timedelta = timedelta(days=2)
    # An action executing this long without a live executor is recovered by the sweep.
    lease: timedelta = DEFAULT_EXECUTION_LEASE
    # How long an action's tokens stay held while a person finds out what happened.
    outcome_hold: timedelta = MAX_RESERVATION_TTL
    windows: ConversationWindows | None = None
    telemetry: Telemetry = NO_TELEMETRY
    _inflight: set[asyncio.Task[Any]] = field(init=False, default_factory=set)

    def _ended(self, action: Action | None) -> None:
        """Count an action this executor moved to where it ends (or outcome_unknown)."""
        if action is not None:
            self.telemetry.action_ended(action.tenant_id, action.action_type, action.state.value)

    async def _detached(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` in a task of its own, which the caller's cancellation does not
        stop (see the module docstring); `drain` ends those still running."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                # Stopped by a shutdown, not by this caller: answer, don't vanish.
                raise Unavailable(
                    "the server is stopping; what is known of this action is recorded"
                ) from None
            raise

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if task.cancelled() or (err := task.exception()) is None:
            return
        # Its caller may have gone away: an unexpected failure is logged here either
        # way (a domain error is an answer, which a caller still waiting receives).
        if isinstance(err, DomainError):
            log.debug("an execution ended with %r", err)
        else:
            log.warning("an execution ended with an error: %r", err)

    async def drain(self, seconds: float) -> None:
        """At shutdown: let executions in flight finish for up to `seconds`, then stop
        the rest, each recording what it knows."""
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=max(seconds, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            log.warning("stopped %d executions in flight at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    def hold(self, action: Action, reservation_id: str | None = None) -> Debit | None:
        """The reservation that holds the action's tokens; None when it costs nothing."""
        if action.token_cost <= 0:
            return None
        reserve_id, _, _ = reservation_ids(action.id)
        return action_debit(
            action,
            action.token_cost,
            reserve_id,
            kind=EntryKind.RESERVE,
            ttl=self.reservation_ttl,
            reservation_id=reservation_id,
        )

    async def reserve(self, action: Action) -> str | None:
        """Hold the action's tokens; None when it costs nothing. Raises InsufficientTokens."""
        debit = self.hold(action)
        if debit is None:
            return None
        reservation = await self.ledger.reserve(debit)
        return reservation.id

    async def release(self, action: Action) -> None:
        if action.reservation_id:
            _, _, release_id = reservation_ids(action.id)
            # Already ended (expired by the ledger sweep): nothing is held any more.
            with contextlib.suppress(FailedPrecondition):
                await self.ledger.release(action.tenant_id, action.reservation_id, release_id)

    async def execute(self, action: Action) -> Action:
        """Run an APPROVED action once the action it depends on (if any) succeeded,
        then follow up its own dependents. Exactly one caller wins the
        approved→executing step; a dependent whose prerequisite has not ended stays
        approved (`follow` starts it), one whose prerequisite ended otherwise is
        cancelled."""
        return await self._detached(self._execute_in_order(action))

    async def _execute_in_order(self, action: Action) -> Action:
        if action.depends_on:
            before = await self.actions.get(action.tenant_id, action.depends_on)
            if before.state is not ActionState.SUCCEEDED:
                return await self.cancel(action, before) if before.state.ended else action
        done = await self._execute(action)
        await self.follow(done)
        return done

    async def follow(self, action: Action) -> None:
        """After `action` ended: start its approved dependents if it succeeded; cancel
        every dependent that has not started if it did not. Safe to repeat: each
        step is a compare-and-set."""
        if not action.state.ended:
            return
        for dependent in await self.actions.dependents(action.tenant_id, action.id):
            if action.state is ActionState.SUCCEEDED:
                if dependent.state is ActionState.APPROVED:
                    await self.execute(dependent)
            elif dependent.state in CANCELLABLE:
                await self.cancel(dependent, action)

    async def cancel(self, action: Action, because: Action) -> Action:
        """Cancel a dependent that has not started because its prerequisite ended
        without success; its tokens are released and its own dependents follow."""
        cancelled = await self.actions.transition(
            action.tenant_id,
            action.id,
            CANCELLABLE,
            ActionState.CANCELLED,
            self.clock.now(),
            result={
                "error": f"not run: {because.action_type} {because.id}, which it follows, "
                f"{_ENDED_WORDS.get(because.state, because.state.value)}",
                "reason": "PREREQUISITE_NOT_SUCCEEDED",
            },
        )
        if cancelled is None:
            return await self.actions.get(action.tenant_id, action.id)
        await self.release(cancelled)
        await self.follow(cancelled)
        return cancelled

    async def _execute(self, action: Action) -> Action:
        now = self.clock.now()
        reservation_id = action.reservation_id
        if reservation_id is None and action.token_cost > 0:
            try:
                reservation_id = await self.reserve(action)
            except InsufficientTokens as err:
                failed = await self.actions.transition(
                    action.tenant_id,
                    action.id,
                    frozenset({ActionState.APPROVED}),
                    ActionState.FAILED,
                    now,
                    result={"error": err.message, "reason": err.reason},
                )
                self._ended(failed)
                return failed or await self.actions.get(action.tenant_id, action.id)
        running = await self.actions.transition(
            action.tenant_id,
            action.id,
            frozenset({ActionState.APPROVED}),
            ActionState.EXECUTING,
            now,
            reservation_id=reservation_id,
            attempts=action.attempts + 1,
        )
        if running is None:  # someone else is running (or ran) it
            return await self.actions.get(action.tenant_id, action.id)
        return (await self._carry_out(running, None))[0]

    async def run(self, running: Action) -> Action:
        """Carry out an action this caller moved to EXECUTING (tokens already held)."""
        return (await self.run_revising(running, None))[0]

    async def run_revising(self, running: Action, revision: Revision | None) -> tuple[Action, bool]:
        """`run`, and on success rewrite `revision`'s message in the same step where
        the store can; the flag says whether it was written."""
        return await self._detached(self._carry_out(running, revision))

    async def _carry_out(self, running: Action, revision: Revision | None) -> tuple[Action, bool]:
        window = await self._open_window(running)
        try:
            with self.telemetry.span("action.run", {"action_type": running.action_type}):
                result = await self.retry(lambda: self.runner.run(running))
        except asyncio.CancelledError:  # a shutdown, during the provider call
            # The send may have happened: a window it opened stays open.
            await self._record_stop(running, None)
            raise
        except Exception as err:
            if window is not None and window[1]:
                await self._withdraw_window(window[0], running)  # nothing was sent
            if isinstance(err, ChannelError | DomainError):
                return await self._fail(running, err), False
            # A bug in a handler must still settle the tokens.
            log.exception("action %s crashed in its runner", running.id)
            failed = await self._fail(running, PermanentChannelError(f"internal error: {err}"))
            return failed, False
        outcome = _result_dict(result)
        if window is not None:
            opened = window[1]
            # Priced per conversation: did this message open one (and pay) or continue one?
            conversation = "opened" if opened else "continued"
            outcome["detail"] = {**outcome["detail"], "conversation": conversation}
        try:
            if window is not None and not window[1]:  # inside an open window: free
                free = await self._settle_free(running, outcome)
                return await self._join_window(window[0], free, running.token_cost), False
            if result.pending:  # finishes later, through poll_pending
                pending = await self.actions.update(
                    running.tenant_id, running.id, self.clock.now(), result=outcome
                )
                return pending, False
            return await self._settle(running, outcome, revision)
        except asyncio.CancelledError:  # a shutdown, after the provider answered
            await self._record_stop(running, result)
            raise

    async def _record_stop(self, action: Action, result: ChannelResult | None) -> None:
        """What a stopped execution knows, recorded (briefly: the server is stopping):
        without the provider's answer the outcome is unknown; with it, the answer is
        kept and the sweep settles the action (see the crash rule)."""
        try:
            async with asyncio.timeout(RECORD_TIMEOUT_SECONDS):
                if result is None:
                    await self._outcome_unknown(
                        action, "the server stopped while the provider was being called"
                    )
                else:
                    await self.actions.transition(
                        action.tenant_id,
                        action.id,
                        frozenset({ActionState.EXECUTING}),
                        ActionState.EXECUTING,
                        self.clock.now(),
                        result=_result_dict(result),
                    )
        except Exception:
            log.warning("could not record how action %s stopped", action.id, exc_info=True)

    async def _open_window(self, action: Action) -> tuple[WindowKey, bool] | None:
        """For a send priced per conversation: its window and whether this send opened
        it (True: it pays) or continues an open one (False: it is free). None when the
        action is not priced that way."""
        key = window_key(
            action.tenant_id, action.operation_type, action.token_cost, action.parameters
        )
        if key is None or self.windows is None:
            return None
        now = self.clock.now()
        return key, await self.windows.open(key, action.id, now, now + WINDOW)

    async def _withdraw_window(self, key: WindowKey, opener: Action) -> None:
        """The window `opener` opened goes with its failed send, unless a message
        already went out free inside it: that one inherits it and pays."""
        assert self.windows is not None
        heir = await self.windows.withdraw(key, opener.id)
        if heir is None:
            return
        try:
            await self._charge_conversation(
                opener.tenant_id, heir, opener.token_cost, "its conversation's first send failed"
            )
        except Exception:
            log.warning("action %s inherited a window and was not charged", heir, exc_info=True)

    async def _join_window(self, key: WindowKey, free: Action, price: int) -> Action:
        """A message that went out free joins its window (the first becomes its heir).
        When the window has gone (its opener's send failed first), this message opens
        one and pays the conversation."""
        assert self.windows is not None
        if free.state is not ActionState.SUCCEEDED:
            return free
        try:
            for _ in range(3):
                now = self.clock.now()
                if await self.windows.join(key, free.id, now):
                    return free
                if await self.windows.open(key, free.id, now, now + WINDOW):
                    return await self._charge_conversation(
                        free.tenant_id, free.id, price, "the conversation it continued had closed"
                    )
            log.warning("action %s: its conversation window kept changing; left free", free.id)
        except Exception:  # the message went out: the caller hears so, whatever this costs
            log.warning("action %s could not join its conversation window", free.id, exc_info=True)
        return free

    async def _charge_conversation(
        self, tenant_id: str, action_id: str, price: int, why: str
    ) -> Action:
        """Charge a message that went out free the conversation's price after all (its
        hold is gone: a charge, idempotent per action); its record then says so."""
        action = await self.actions.get(tenant_id, action_id)
        if action.token_cost or price <= 0:
            return action  # already paying
        debit = action_debit(action, price, f"action:{action.id}:conversation", note=why)
        detail = {**action.result.get("detail", {}), "conversation": "opened"}
        try:
            await self.ledger.charge(debit)
        except DomainError as err:
            log.warning("action %s: conversation not charged: %s", action.id, err.message)
            detail["conversation_charge"] = f"not charged: {err.message}"
            result = {**action.result, "detail": detail}
            return await self.actions.update(tenant_id, action.id, self.clock.now(), result=result)
        self.telemetry.tokens_charged(tenant_id, debit.operation_type.value, price)
        return await self.actions.update(
            tenant_id,
            action.id,
            self.clock.now(),
            token_cost=price,
            result={**action.result, "detail": detail},
        )

    async def _settle_free(self, action: Action, result: dict[str, Any]) -> Action:
        """A success that costs nothing after all: its hold is released, not captured."""
        _, _, release_id = reservation_ids(action.id)
        changes = {"result": result, "token_cost": 0}
        success = Success(action, release_id, self.clock.now(), changes, capture=False)
        settled = await self.settler.succeed(success)
        return settled.action or await self.actions.get(action.tenant_id, action.id)

    async def _succeed(self, action: Action, result: dict[str, Any] | None = None) -> Action:
        return (await self._settle(action, result, None))[0]

    async def _settle(
        self, action: Action, result: dict[str, Any] | None, revision: Revision | None
    ) -> tuple[Action, bool]:
        changes = {} if result is None else {"result": result}
        _, capture_id, _ = reservation_ids(action.id)
        with self.telemetry.span("ledger.settle"):
            settled = await self.settler.succeed(
                Success(action, capture_id, self.clock.now(), changes, revision)
            )
        if settled.action is not None:  # this settle moved it: captured and succeeded
            self._ended(settled.action)
            self.telemetry.tokens_charged(
                action.tenant_id,
                action.operation_type or OperationType.CUSTOM.value,
                action.token_cost,
            )
        found = settled.action or await self.actions.get(action.tenant_id, action.id)
        return found, settled.revised

    async def _fail(self, action: Action, err: Exception) -> Action:
        await self.release(action)
        message = err.message if isinstance(err, DomainError) else str(err)
        failed = await self.actions.transition(
            action.tenant_id,
            action.id,
            frozenset({ActionState.EXECUTING}),
            ActionState.FAILED,
            self.clock.now(),
            result={**action.result, "error": message, "error_type": type(err).__name__},
        )
        self._ended(failed)
        return failed or await self.actions.get(action.tenant_id, action.id)

    async def poll_pending(self, action: Action) -> Action:
        """Finish an executing asynchronous action if its provider says it is done."""
        if action.state is not ActionState.EXECUTING or not action.result.get("pending"):
            return action
        try:
            status = await self.runner.poll(action)
        except ChannelError as err:
            log.warning("polling %s failed: %s", action.id, err)
            return action
        if not status.done:
            return action
        result = {
            **action.result,
            "pending": False,
            "detail": {**action.result.get("detail", {}), **status.detail},
        }
        updated = await self.actions.update(
            action.tenant_id, action.id, self.clock.now(), result=result
        )
        if status.succeeded:
            ended = await self._succeed(updated)
        else:
            failure = PermanentChannelError("the provider reported failure")
            ended = await self._fail(updated, failure)
        await self.follow(ended)
        return ended

    async def recover(self, action: Action) -> Action:
        """Settle an action left executing by a stopped executor (see the crash rule)
        and follow up its dependents."""
        return await self._detached(self._recover_and_follow(action))

    async def _recover_and_follow(self, action: Action) -> Action:
        ended = await self._recover(action)
        await self.follow(ended)
        return ended

    async def _recover(self, action: Action) -> Action:
        if action.result.get("pending"):
            return await self.poll_pending(action)
        confirmed = action.result.get("outcome")
        if confirmed == OUTCOME_DID_NOT_HAPPEN:
            return await self._fail(action, PermanentChannelError(_did_not_happen(action)))
        if (
            confirmed == OUTCOME_HAPPENED
            or action.result.get("provider_id")
            or (
                action.reservation_id
                and await self.ledger.reservation_state(action.tenant_id, action.reservation_id)
                == "captured"  # it was sent and charged; only the row lagged
            )
        ):
            return await self._succeed(action)
        return await self._outcome_unknown(
            action, "interrupted before the provider's answer was stored; not sent again"
        )

    async def _outcome_unknown(self, action: Action, why: str) -> Action:
        """Park an action whose send may or may not have happened, for a person, its
        tokens held meanwhile."""
        if action.reservation_id:
            with contextlib.suppress(DomainError):
                await self.ledger.hold_longer(
                    action.tenant_id, action.reservation_id, self.outcome_hold
                )
        moved = await self.actions.transition(
            action.tenant_id,
            action.id,
            frozenset({ActionState.EXECUTING}),
            ActionState.OUTCOME_UNKNOWN,
            self.clock.now(),
            result={**action.result, "pending": False, "error": why},
        )
        self._ended(moved)
        return moved or await self.actions.get(action.tenant_id, action.id)

    async def settle_outcome(
        self, action: Action, happened: bool, record: dict[str, Any]
    ) -> Action | None:
        """A person says whether an `outcome_unknown` action happened: it succeeds
        (its tokens captured) or fails (released). `record` (who, why, the request)
        joins its result. None when another person settled it first.

        The action is claimed back to `executing` with the answer recorded, then
        settled the way every execution is; a crash in between is finished by the
        sweep from the recorded answer. If its reservation ended meanwhile, the tokens
        are held again first (InsufficientTokens when they no longer fit: nothing
        changes)."""
        return await self._detached(self._settle_outcome(action, happened, record))

    async def _settle_outcome(
        self, action: Action, happened: bool, record: dict[str, Any]
    ) -> Action | None:
        changes: dict[str, Any] = {"result": {**action.result, **record}}
        again: Action | None = None
        if (
            happened
            and action.reservation_id
            and await self.ledger.reservation_state(action.tenant_id, action.reservation_id)
            != "pending"
        ):
            again = replace(action, id=f"{action.id}:confirmed")
            changes["reservation_id"] = await self.reserve(again)
        claimed = await self.actions.transition(
            action.tenant_id,
            action.id,
            frozenset({ActionState.OUTCOME_UNKNOWN}),
            ActionState.EXECUTING,
            self.clock.now(),
            **changes,
        )
        if claimed is None:
            if again is not None:
                await self.release(replace(again, reservation_id=changes["reservation_id"]))
            return None
        if happened:
            settled = await self._succeed(claimed)
        else:
            settled = await self._fail(claimed, PermanentChannelError(_did_not_happen(claimed)))
        await self.follow(settled)  # its dependents run, or are cancelled, only now
        return settled


OUTCOME_HAPPENED = "happened"
OUTCOME_DID_NOT_HAPPEN = "did_not_happen"


def _did_not_happen(action: Action) -> str:
    who = action.result.get("outcome_confirmed_by", "a person")
    note = action.result.get("outcome_note", "")
    return f"did not happen, as {who} confirmed" + (f": {note}" if note else "")


def _result_dict(result: ChannelResult) -> dict[str, Any]:
    return {
        "channel": result.channel,
        "provider_id": result.provider_id,
        "detail": result.detail,
        "pending": result.pending,
    }


def action_debit(
    action: Action,
    amount: int,
    request_id: str,
    *,
    note: str = "",
    kind: EntryKind = EntryKind.CHARGE,
    ttl: timedelta | None = None,
    reservation_id: str | None = None,
) -> Debit:
    """Tokens for an action, from its location's wallet, under its operation type and
    attribution; described by its type and id (and `note`: why, when not its hold)."""
    return Debit(
        tenant_id=action.tenant_id,
        location_id=action.location_id,
        operation_type=OperationType(action.operation_type or OperationType.CUSTOM),
        amount=amount,
        request_id=request_id,
        description=f"{action.action_type} {action.id}" + (f" ({note})" if note else ""),
        kind=kind,
        ttl=ttl,
        reservation_id=reservation_id,
        attribution=action_attribution(action),
    )


def action_attribution(action: Action) -> Attribution:
    """What an action's usage entries say about it: who asked, in which conversation,
    which action of what type."""
    action_id = action.id.partition(":")[0]  # a re-hold's id names its action's
    return Attribution(
        action.requested_by,
        action.session_id,
        {"action_id": action_id, "action_type": action.action_type},
    )
