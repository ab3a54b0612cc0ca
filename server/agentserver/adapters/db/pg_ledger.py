"""The ledger's hot writes on PostgreSQL: a plan made without reading first, applied
in one statement (see pg.py for why asyncpg directly).

The kernel plans the same way for every store; what differs here is the snapshot.
The hot path plans *blind*: from the tenant's wallet directory (which wallets
exist, cached: wallets are never deleted) but not their balances, and with no
prior writes. The plan then carries its assumptions as guards, and the statement
checks them as it writes: the wallet has `need` tokens available, the batch does
not cross its low-balance threshold, a location charged to the tenant's wallet
still has none of its own, the request ids are unused (the unique key). When a
guard fails nothing is written, and the batch goes the general way
(`SqlLedgerStore`): a full snapshot under the wallet's lock, and the same kernel,
which explains each item (a replay, a conflict, a refusal, a crossing).

Successes of actions (a capture, the action marked succeeded and its reply
rewritten) are planned the same way from what the executor knows of each
reservation; the statement guards each end (pending, of that amount, on that
wallet, unexpired), and what it could not end goes the general way.

Only guards and arithmetic over the plan's numbers are written in SQL here: which
wallet pays, what fits, each entry's deltas and kind, and what an end captures
are the kernel's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.ledger_rows import to_reservation
from agentserver.adapters.db.ledger_store import IDS, SqlLedgerStore
from agentserver.adapters.db.outbox import outbox_args, outbox_ctes
from agentserver.adapters.db.pg import RETRY_ALONE, PgPool
from agentserver.domain.actions import ActionState
from agentserver.domain.costs import OperationType
from agentserver.domain.errors import DomainError
from agentserver.domain.events import DomainEvent
from agentserver.domain.ledger import (
    Attribution,
    Debit,
    DebitResult,
    EndRequest,
    Entry,
    Reservation,
    ReservationState,
)
from agentserver.domain.ledger_kernel import (
    Columns,
    Fresh,
    Plan,
    Snapshot,
    Wallet,
    debit_results,
    entry_event,
    plan_debits,
    plan_ends,
)

_ENTRY_COLUMNS = (
    "id, tenant_id, location_id, wallet_id, wallet_location_id, operation_type, kind, tokens, "
    "total_delta, used_delta, reserved_delta, arrears_delta, total_after, used_after, "
    "reserved_after, arrears_after, description, request_id, request_hash, reservation_id, "
    "created_at, user_id, session_id, metadata"
)
_PENDING = ReservationState.PENDING.value

# A blind debit plan of one wallet: $1 tenant, $2 now, $3 wallet, $4 used delta,
# $5 reserved delta, $6 need, $7 a location that must have no wallet ('' none);
# per entry $8..$23; per new reservation $24..$32 (see `debit_args`). Nothing is
# written unless the wallet's guarded UPDATE (`w`) matched.
DEBIT_CTES = f"""
w AS (
  UPDATE business_tokens
     SET used_tokens = used_tokens + $4, reserved_tokens = reserved_tokens + $5, updated_at = $2
   WHERE id = $3
     AND total_tokens - used_tokens - reserved_tokens >= $6
     AND NOT (total_tokens - used_tokens - reserved_tokens >= low_balance_threshold
              AND low_balance_threshold > total_tokens - used_tokens - reserved_tokens - $6)
     AND ($7 = '' OR NOT EXISTS (SELECT 1 FROM business_tokens o
                                  WHERE o.tenant_id = $1 AND o.location_id = $7))
  RETURNING id, location_id, total_tokens, used_tokens, reserved_tokens, arrears_tokens,
            low_balance_threshold
), r AS (
  INSERT INTO reservations (id, tenant_id, wallet_id, location_id, wallet_location_id,
                            operation_type, amount, captured_amount, state, description,
                            expires_at, created_at, ended_at, user_id, session_id, metadata)
  SELECT d.id, $1, w.id, d.location_id, w.location_id, d.operation_type, d.amount, 0,
         '{_PENDING}', d.description, d.expires_at, $2, NULL, d.user_id, d.session_id,
         d.metadata::json
    FROM unnest($24::text[], $25::text[], $26::text[], $27::bigint[], $28::text[],
                $29::timestamptz[], $30::text[], $31::text[], $32::text[])
      AS d(id, location_id, operation_type, amount, description, expires_at, user_id,
           session_id, metadata)
   CROSS JOIN w
), e AS (
  INSERT INTO token_usage_logs ({_ENTRY_COLUMNS})
  SELECT d.id, $1, d.location_id, w.id, w.location_id, d.operation_type, d.kind, d.tokens,
         0, d.used_delta, d.reserved_delta, 0,
         w.total_tokens, w.used_tokens - d.used_later, w.reserved_tokens - d.reserved_later,
         w.arrears_tokens, d.description, d.request_id, d.request_hash, d.reservation_id, $2,
         d.user_id, d.session_id, d.metadata::json
    FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[],
                $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[],
                $19::bigint[], $20::bigint[], $21::text[], $22::text[], $23::text[])
      AS d(id, request_id, request_hash, kind, operation_type, tokens, location_id,
           description, reservation_id, used_delta, reserved_delta, used_later, reserved_later,
           user_id, session_id, metadata)
   CROSS JOIN w
)
"""
DEBIT_PARAMS = 32
# Events of a debit plan: written only if the wallet's guarded UPDATE matched.
DEBIT_OUTBOX = outbox_ctes(DEBIT_PARAMS + 1, "EXISTS (SELECT 1 FROM w)")
_DEBITS = f"""
WITH {DEBIT_CTES}, {DEBIT_OUTBOX}
SELECT id, location_id, total_tokens, used_tokens, reserved_tokens, arrears_tokens,
       low_balance_threshold FROM w
"""


def debit_args(plan: Plan) -> list[Any]:
    """The `DEBIT_PARAMS` parameters of `DEBIT_CTES` for a blind plan of one wallet (the outbox's
    follow: `outbox_args`)."""
    (move,) = plan.moves
    assert move.blind and move.delta.total == 0 and move.delta.arrears == 0
    entries = plan.entries
    return [
        plan.tenant_id,
        plan.now,
        move.wallet_id,
        move.delta.used,
        move.delta.reserved,
        move.need,
        move.absent_location,
        [e.id for e in entries],
        [e.request_id for e in entries],
        [e.request_hash for e in entries],
        [e.kind.value for e in entries],
        [e.operation_type.value for e in entries],
        [e.tokens for e in entries],
        [e.location_id for e in entries],
        [e.description for e in entries],
        [e.reservation_id for e in entries],
        [e.delta.used for e in entries],
        [e.delta.reserved for e in entries],
        [e.later.used for e in entries],
        [e.later.reserved for e in entries],
        *_attribution_arrays([e.attribution for e in entries]),
        [r.id for r in plan.reservations],
        [r.location_id for r in plan.reservations],
        [r.operation_type.value for r in plan.reservations],
        [r.amount for r in plan.reservations],
        [r.description for r in plan.reservations],
        [r.expires_at for r in plan.reservations],
        *_attribution_arrays([r.attribution for r in plan.reservations]),
    ]


def _attribution_arrays(abouts: Sequence[Attribution]) -> list[list[str]]:
    return [
        [a.user_id for a in abouts],
        [a.session_id for a in abouts],
        [a.metadata_json() for a in abouts],
    ]


def final_columns(row: Any) -> Columns:
    return Columns(
        row["total_tokens"],
        row["used_tokens"],
        row["reserved_tokens"],
        row["arrears_tokens"],
        row["low_balance_threshold"],
    )


# An event of an action is kept if the action advanced; any other (an entry's) if its
# end was written.
_KEEP = (
    "CASE WHEN o.agg_type = 'action' THEN o.agg_id IN (SELECT id FROM a)"
    " ELSE o.pos IN (SELECT ord FROM x) END"
)

# Reservation ends, and with them (when an end names one) an action's success: $1
# tenant, $2 now, per end (in reservation-id order, the lock order of the general path)
# $3 reservation, $4 amount, $5 wallet, $6 new state, $7 captured, $8 used delta,
# $9 reserved delta, $10 entry id, $11 kind, $12 tokens, $13 request id, $14 request
# hash, $15 position in the plan, $16 action to mark succeeded (or NULL), $17 its
# result (JSON, NULL keeps it), $18 a message to rewrite (or NULL), $19 its content;
# then the outbox (`outbox_ctes` from $20), each event kept if its end was written.
# Each end is guarded on its own; the wallets move by what the claimed ends' planned
# deltas add up to, and each entry's after-values are the final columns less what
# later claimed entries add. An entry's descriptive fields are copied from its row.
_ENDS = f"""
WITH q AS (
  SELECT * FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[],
                       $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::bigint[],
                       $13::text[], $14::text[], $15::int[], $16::text[], $17::text[],
                       $18::text[], $19::text[])
    AS q(reservation_id, amount, wallet_id, to_state, captured, used_delta, reserved_delta,
         entry_id, kind, tokens, request_id, request_hash, ord, action_id, result,
         message_id, content)
), c AS (
  UPDATE reservations r
     SET state = q.to_state, captured_amount = q.captured, ended_at = $2
    FROM q
   WHERE r.id = ANY($3::text[]) AND r.id = q.reservation_id AND r.tenant_id IS NOT DISTINCT FROM $1
     AND r.state IS NOT DISTINCT FROM '{_PENDING}' AND r.amount = q.amount
     AND r.wallet_id = q.wallet_id AND r.expires_at - $2 > interval '0'
  RETURNING r.id, r.tenant_id, r.location_id, r.wallet_location_id, r.operation_type,
            r.description, r.user_id, r.session_id, r.metadata, q.*
), s AS (
  SELECT wallet_id, sum(used_delta)::bigint AS used_add,
         sum(reserved_delta)::bigint AS reserved_add
    FROM c GROUP BY wallet_id
), m AS (
  UPDATE business_tokens w
     SET used_tokens = w.used_tokens + s.used_add,
         reserved_tokens = w.reserved_tokens + s.reserved_add, updated_at = $2
    FROM s
   WHERE w.id = ANY($5::text[]) AND w.id = s.wallet_id
  RETURNING w.id, w.total_tokens, w.used_tokens, w.reserved_tokens, w.arrears_tokens
), x AS (
  SELECT c.*, m.total_tokens AS total_after,
         m.used_tokens - coalesce(sum(c.used_delta) OVER later, 0)::bigint AS used_after,
         m.reserved_tokens - coalesce(sum(c.reserved_delta) OVER later, 0)::bigint
           AS reserved_after,
         m.arrears_tokens AS arrears_after
    FROM c JOIN m ON m.id = c.wallet_id
  WINDOW later AS (PARTITION BY c.wallet_id ORDER BY c.ord DESC
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
), e AS (
  INSERT INTO token_usage_logs ({_ENTRY_COLUMNS})
  SELECT entry_id, tenant_id, location_id, wallet_id, wallet_location_id, operation_type,
         kind, tokens, 0, used_delta, reserved_delta, 0, total_after, used_after,
         reserved_after, arrears_after, description, request_id, request_hash, id, $2,
         user_id, session_id, metadata
    FROM x
), a AS (
  UPDATE actions t
     SET state = '{ActionState.SUCCEEDED.value}', updated_at = $2, version = t.version + 1,
         result = coalesce(x.result::json, t.result)
    FROM x
   WHERE t.id = ANY($16::text[]) AND t.id = x.action_id AND t.tenant_id IS NOT DISTINCT FROM $1
     AND t.state IS NOT DISTINCT FROM '{ActionState.EXECUTING.value}'
  RETURNING t.id
), rv AS (
  UPDATE messages mm SET content = x.content
    FROM x
   WHERE mm.id = ANY($18::text[]) AND mm.id = x.message_id
     AND mm.tenant_id IS NOT DISTINCT FROM $1
     AND EXISTS (SELECT 1 FROM a WHERE a.id = x.action_id)
  RETURNING mm.id
), {outbox_ctes(20, _KEEP)}
SELECT x.ord, x.total_after, x.used_after, x.reserved_after,
       EXISTS (SELECT 1 FROM a WHERE a.id = x.action_id) AS advanced,
       EXISTS (SELECT 1 FROM rv WHERE rv.id = x.message_id) AS revised
  FROM x
"""
_RESERVATIONS = (
    "SELECT * FROM reservations WHERE id = ANY($2::text[]) AND tenant_id IS NOT DISTINCT FROM $1"
)
_DIRECTORY = "SELECT id, tenant_id, location_id FROM business_tokens WHERE tenant_id = $1"


@dataclass(frozen=True)
class SuccessItem:
    """An action's success for `succeed_actions`: the capture of its reservation as
    the executor knows it (id, amount, the location it was held for, what it pays
    for), its result (JSON text, None keeps it) and a message to rewrite (or None)."""

    end: EndRequest
    amount: int
    location_id: str
    operation_type: OperationType
    action_id: str
    result: str | None
    message_id: str | None = None
    content: str | None = None
    events: Sequence[DomainEvent] = ()  # the action's, written only if it advanced


# Where an expected reservation's real expiry is checked: by the statement's guard.
_UNKNOWN_EXPIRY = datetime.max.replace(tzinfo=UTC)


class PgLedgerStore(SqlLedgerStore):
    """SqlLedgerStore with blind plans applied in one asyncpg statement each."""

    def __init__(
        self, engine: AsyncEngine, pool: PgPool, *, low_balance_threshold: int = 50
    ) -> None:
        super().__init__(engine, low_balance_threshold=low_balance_threshold)
        self._pool = pool
        self._directories: dict[str, tuple[Wallet, ...]] = {}

    async def directory(self, tenant_id: str) -> Snapshot:
        """A blind snapshot: the tenant's wallets without their balances. Cached (a
        wallet once created is never deleted); a failed guard drops the cache."""
        wallets = self._directories.get(tenant_id)
        if wallets is None:
            rows = await self._pool.fetch(_DIRECTORY, tenant_id)
            wallets = tuple(Wallet(r["id"], r["tenant_id"], r["location_id"]) for r in rows)
            if wallets:
                self._directories[tenant_id] = wallets
        return Snapshot(tenant_id, wallets)

    def forget(self, tenant_id: str) -> None:
        self._directories.pop(tenant_id, None)

    async def blind_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> Plan | None:
        """The blind plan of a batch of debits, or None when the general path must
        take it (a request id repeated inside the batch, which it pairs up; no wallet,
        which it explains)."""
        if len({d.request_id for d in debits}) != len(debits):
            return None
        plan = plan_debits(await self.directory(tenant_id), location_id, debits, now, IDS)
        return plan if plan.moves else None

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]:
        plan = await self.blind_debits(tenant_id, location_id, debits, now)
        if plan is not None:
            try:
                rows = await self._pool.fetch(
                    _DEBITS,
                    *debit_args(plan),
                    *outbox_args(tenant_id, now, plan.outbox()),
                )
            except RETRY_ALONE:
                rows = []  # a request id used before: the general path explains it
            if rows:
                return debit_results(plan, {plan.moves[0].wallet_id: final_columns(rows[0])})
            self.forget(tenant_id)
        return await super().apply_debits(tenant_id, location_id, debits, now)

    async def end_reservations(
        self,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        *,
        expiring: bool = False,
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        """Ends planned from the reservations as read (one query), written in one
        guarded statement; what it could not end, or an end the plan refuses,
        replays or expires, goes the general way, which explains it."""
        results: list[tuple[Reservation, Entry] | DomainError | None] = [None] * len(requests)
        order = _first_per_reservation([r.reservation_id for r in requests])
        if not expiring and order:
            rows = await self._pool.fetch(
                _RESERVATIONS, tenant_id, [requests[i].reservation_id for i in order]
            )
            read = {r["id"]: to_reservation(_Row(r)) for r in rows}
            snap = await self.directory(tenant_id)
            plan = plan_ends(
                Snapshot(tenant_id, snap.wallets, reservations=read),
                [requests[i] for i in order],
                now,
                IDS,
            )
            for pos, entry, _, _ in await self._write_ends(plan, None) or []:
                outcome = plan.outcomes[pos]
                assert isinstance(outcome, Fresh) and outcome.reservation is not None
                results[order[pos]] = (outcome.reservation, entry)
        rest = [i for i, r in enumerate(results) if r is None]
        if rest:
            done = await super().end_reservations(
                tenant_id, [requests[i] for i in rest], now, expiring=expiring
            )
            for i, result in zip(rest, done, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def succeed_actions(
        self, tenant_id: str, items: Sequence[SuccessItem], now: datetime
    ) -> list[tuple[bool, bool] | None]:
        """Capture each item's reservation and move its action from executing to
        succeeded (rewriting its message, if it names one), in one statement. Per
        item: (advanced, revised) when the tokens were captured, where `advanced` is
        False if the action had left executing; None when nothing was done (the
        caller goes the general way, which explains)."""
        out: list[tuple[bool, bool] | None] = [None] * len(items)
        order = _first_per_reservation([item.end.reservation_id for item in items])
        snap = await self.directory(tenant_id)
        expected: dict[str, Reservation] = {}
        for i in order:
            item = items[i]
            wallet = snap.paying_wallet(item.location_id)
            if wallet is None:
                return out
            expected[item.end.reservation_id] = Reservation(
                id=item.end.reservation_id,
                tenant_id=tenant_id,
                location_id=item.location_id,
                wallet_location_id=wallet.location_id,
                operation_type=item.operation_type,
                amount=item.amount,
                captured_amount=0,
                state=ReservationState.PENDING,
                description="",  # the statement copies it from the reservation's row
                expires_at=_UNKNOWN_EXPIRY,
                created_at=now,
                ended_at=None,
            )
        plan = plan_ends(
            Snapshot(tenant_id, snap.wallets, reservations=expected),
            [items[i].end for i in order],
            now,
            IDS,
        )
        written = await self._write_ends(plan, [items[i] for i in order])
        for pos, _, advanced, revised in written or []:
            out[order[pos]] = (advanced, revised)
        return out

    async def _write_ends(
        self, plan: Plan, items: Sequence[SuccessItem] | None
    ) -> list[tuple[int, Entry, bool, bool]] | None:
        """Write a plan of fresh ends (with `items`' successes): per end written, its
        position in the plan, its entry, and whether its action advanced and its
        message was rewritten. None when the plan is not all fresh ends, or the
        statement failed whole (a request id used before)."""
        if not plan.ends or not all(isinstance(o, Fresh) for o in plan.outcomes):
            return None
        if len(plan.ends) != len(plan.outcomes):
            return None  # an end the plan added (an expiry): the general path writes it
        n = len(plan.ends)
        # Rows in reservation-id order (the lock order of the general path, so the two
        # never wait on each other in a cycle); `ord` keeps the plan's order, which
        # the entries' after-values follow.
        perm = sorted(range(n), key=lambda k: plan.ends[k].reservation.id)
        ends = [plan.ends[k] for k in perm]
        entries = [plan.entries[k] for k in perm]
        picked = [items[k] for k in perm] if items else None
        none: list[str | None] = [None] * n
        args = [
            plan.tenant_id,
            plan.now,
            [e.reservation.id for e in ends],
            [e.amount for e in ends],
            [e.wallet_id for e in ends],
            [e.reservation.state.value for e in ends],
            [e.reservation.captured_amount for e in ends],
            [e.delta.used for e in entries],
            [e.delta.reserved for e in entries],
            [e.id for e in entries],
            [e.kind.value for e in entries],
            [e.tokens for e in entries],
            [e.request_id for e in entries],
            [e.request_hash for e in entries],
            perm,
            [i.action_id for i in picked] if picked else none,
            [i.result for i in picked] if picked else none,
            [i.message_id for i in picked] if picked else none,
            [i.content for i in picked] if picked else none,
            # each end's events, by its position in the plan: written only if it was
            *outbox_args(plan.tenant_id, plan.now, *_events_by_position(plan, items)),
        ]
        try:
            rows = await self._pool.fetch(_ENDS, *args)
        except RETRY_ALONE:
            return None
        if len(rows) < n:
            self.forget(plan.tenant_id)  # perhaps a reservation on another wallet
        out = []
        for row in rows:
            pos = row["ord"]
            planned = plan.entries[pos]
            reservation = plan.ends[pos].reservation
            entry = Entry(
                id=planned.id,
                tenant_id=plan.tenant_id,
                location_id=reservation.location_id,
                wallet_location_id=reservation.wallet_location_id,
                operation_type=reservation.operation_type,
                kind=planned.kind,
                tokens=planned.tokens,
                description=reservation.description,
                request_id=planned.request_id,
                reservation_id=reservation.id,
                total_after=row["total_after"],
                used_after=row["used_after"],
                reserved_after=row["reserved_after"],
                created_at=plan.now,
                attribution=reservation.attribution,
            )
            out.append((pos, entry, bool(row["advanced"]), bool(row["revised"])))
        return out


def _events_by_position(
    plan: Plan, items: Sequence[SuccessItem] | None
) -> tuple[list[DomainEvent], list[int]]:
    """The plan's events and its items' (the actions'), each with the position in the
    plan of the end it belongs to."""
    events: list[DomainEvent] = []
    positions: list[int] = []
    for pos, entry in enumerate(plan.entries):
        events.append(entry_event(entry))
        positions.append(pos)
        for event in items[pos].events if items else ():
            events.append(event)
            positions.append(pos)
    return events, positions


def _first_per_reservation(reservation_ids: Sequence[str]) -> list[int]:
    """Request indexes in arrival order, the first per reservation (a second end of one
    reservation is explained by the general path)."""
    seen: set[str] = set()
    order = []
    for i, reservation_id in enumerate(reservation_ids):
        if reservation_id not in seen:
            seen.add(reservation_id)
            order.append(i)
    return order


class _Row:
    """Attribute access over an asyncpg Record, for the shared row converters."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]
