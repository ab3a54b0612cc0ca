"""The ledger's hot writes on PostgreSQL, one statement per batch (see pg.py).

Each fast statement does what the general path in `SqlLedgerStore` does, for the
common case only, and gives up without writing anything otherwise:

* debits: when every debit of the batch is new and the batch fits the wallet
  whole. The conditional UPDATE of the wallet is the check; entries and
  reservations are inserted in the same statement from the wallet's new row. A
  replayed request_id fails the statement on the unique key.
* reservation ends: every reservation that is pending, unexpired and big enough
  is claimed, its wallet moved once, its entry appended.

What the fast statement did not settle goes through the general path, which
explains each item (replay, conflict, partial fit, ended, expired, not found).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db.ledger_store import SqlLedgerStore, to_reservation
from agentserver.adapters.db.pg import RETRY_ALONE, PgPool
from agentserver.domain.actions import ActionState
from agentserver.domain.costs import OperationType
from agentserver.domain.errors import DomainError
from agentserver.domain.ids import new_id
from agentserver.domain.ledger import (
    DEFAULT_RESERVATION_TTL,
    Debit,
    DebitResult,
    EndRequest,
    Entry,
    EntryKind,
    Reservation,
    ReservationState,
)

_ENTRY_COLUMNS = (
    "id, tenant_id, location_id, wallet_id, wallet_location_id, operation_type, kind, tokens, "
    "total_delta, used_delta, reserved_delta, arrears_delta, total_after, used_after, "
    "reserved_after, arrears_after, description, request_id, request_hash, reservation_id, "
    "created_at"
)

# Debits of one wallet that fit it whole: $1 tenant, $2 location, $3 now, $4 used_add,
# $5 reserved_add, $6 need; $7..$18 per debit (see `DebitPlan.args`). Nothing is
# written unless the wallet's conditional UPDATE (`w`) matched.
DEBIT_CTES = f"""
w AS (
  UPDATE business_tokens
     SET used_tokens = used_tokens + $4, reserved_tokens = reserved_tokens + $5, updated_at = $3
   WHERE id = (SELECT id FROM business_tokens
                WHERE tenant_id = $1 AND location_id IN ($2, '')
                ORDER BY location_id DESC LIMIT 1)
     AND total_tokens - used_tokens - reserved_tokens >= $6
  RETURNING id, tenant_id, location_id, total_tokens, used_tokens, reserved_tokens,
            arrears_tokens, low_balance_threshold
), d AS (
  SELECT * FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                       $12::bigint[], $13::text[], $14::text[], $15::text[],
                       $16::timestamptz[], $17::bigint[], $18::bigint[])
    AS d(entry_id, request_id, request_hash, kind, operation_type, tokens, location_id,
         description, reservation_id, expires_at, used_later, reserved_later)
), r AS (
  INSERT INTO reservations (id, tenant_id, wallet_id, location_id, wallet_location_id,
                            operation_type, amount, captured_amount, state, description,
                            expires_at, created_at, ended_at)
  SELECT d.reservation_id, w.tenant_id, w.id, d.location_id, w.location_id, d.operation_type,
         d.tokens, 0, 'pending', d.description, d.expires_at, $3, NULL
    FROM d CROSS JOIN w
   WHERE d.reservation_id IS NOT NULL
), e AS (
  INSERT INTO token_usage_logs ({_ENTRY_COLUMNS})
  SELECT d.entry_id, w.tenant_id, d.location_id, w.id, w.location_id, d.operation_type, d.kind,
         d.tokens, 0,
         CASE WHEN d.kind = 'charge' THEN d.tokens ELSE 0 END,
         CASE WHEN d.kind = 'reserve' THEN d.tokens ELSE 0 END,
         0, w.total_tokens, w.used_tokens - d.used_later, w.reserved_tokens - d.reserved_later,
         w.arrears_tokens, d.description, d.request_id, d.request_hash, d.reservation_id, $3
    FROM d CROSS JOIN w
), low AS (
  INSERT INTO events (tenant_id, kind, actor, subject, outcome, payload, created_at)
  SELECT w.tenant_id, 'ledger.low_balance', '',
         'tenants/' || w.tenant_id || '/wallets/'
           || CASE WHEN w.location_id = '' THEN '-' ELSE w.location_id END,
         '',
         jsonb_build_object('available', w.total_tokens - w.used_tokens - w.reserved_tokens,
                            'threshold', w.low_balance_threshold)::json,
         $3
    FROM w
   WHERE w.total_tokens - w.used_tokens - w.reserved_tokens + $6 >= w.low_balance_threshold
     AND w.low_balance_threshold > w.total_tokens - w.used_tokens - w.reserved_tokens
)
"""
_DEBITS = f"""
WITH {DEBIT_CTES}
SELECT id, location_id, total_tokens, used_tokens, reserved_tokens FROM w
"""


def _ends_statement(*, succeed_actions: bool) -> str:
    """End reservations: $1 tenant, $2 now, then arrays per request in reservation-id
    order (the lock order of the general path, so the two never deadlock).

    Rows are reached by primary key only: `id = ANY(<the ids>)` besides the join,
    and the other conditions written so that no index matches them (`col || ''`).
    PostgreSQL soon reuses a generic plan, which cannot size the arrays; given an
    indexable `tenant_id = $1` or `state = 'pending'` it walked every row of the
    tenant, or every pending reservation (measured: most of the database's CPU).

    With `succeed_actions`, each request also names an action ($10) and its result
    ($11, JSON text or NULL to keep it): an action whose reservation was captured
    moves from executing to succeeded in the same statement, so the tokens and the
    state change commit together; and, when it did, the message $12 (or NULL) gets
    the content $13: the reply that reports the success."""
    action_columns = action_names = returned = ""
    if succeed_actions:
        action_columns = ", $10::text[], $11::text[], $12::text[], $13::text[]"
        action_names = ", action_id, result, message_id, content"
        returned = ", q.action_id, q.result, q.message_id, q.content"
    succeed = final = ""
    if succeed_actions:
        succeed = f"""
, a AS (
  UPDATE actions t
     SET state = '{ActionState.SUCCEEDED.value}', updated_at = $2, version = t.version + 1,
         result = coalesce(x.result::json, t.result)
    FROM x
   WHERE t.id = ANY($10::text[]) AND t.id = x.action_id AND t.tenant_id || '' = $1
     AND t.state || '' = '{ActionState.EXECUTING.value}'
  RETURNING t.id
), rv AS (
  UPDATE messages mm SET content = x.content
    FROM x
   WHERE mm.id = ANY($12::text[]) AND mm.id = x.message_id AND mm.tenant_id || '' = $1
     AND EXISTS (SELECT 1 FROM a WHERE a.id = x.action_id)
  RETURNING mm.id
)"""
        final = (
            ", EXISTS (SELECT 1 FROM a WHERE a.id = x.action_id) AS advanced"
            ", EXISTS (SELECT 1 FROM rv WHERE rv.id = x.message_id) AS revised"
        )
    return f"""
WITH q AS (
  SELECT * FROM unnest($3::text[], $4::bool[], $5::bigint[], $6::text[], $7::text[],
                       $8::text[], $9::int[]{action_columns})
    AS q(reservation_id, capture, amount, entry_id, request_id, request_hash, ord{action_names})
), c AS (
  UPDATE reservations r
     SET state = CASE WHEN q.capture THEN 'captured' ELSE 'released' END,
         captured_amount = CASE WHEN q.capture THEN coalesce(q.amount, r.amount) ELSE 0 END,
         ended_at = $2
    FROM q
   WHERE r.id = ANY($3::text[]) AND r.id = q.reservation_id AND r.tenant_id || '' = $1
     AND r.state || '' = 'pending' AND r.expires_at > $2
     AND (q.amount IS NULL OR r.amount >= q.amount)
  RETURNING r.id, r.tenant_id, r.wallet_id, r.location_id, r.wallet_location_id,
            r.operation_type, r.amount, r.captured_amount, r.state, r.description,
            r.expires_at, r.created_at, r.ended_at,
            q.entry_id, q.request_id, q.request_hash, q.ord{returned}
), s AS (
  SELECT wallet_id, sum(captured_amount)::bigint AS used_add,
         sum(amount)::bigint AS reserved_sub
    FROM c GROUP BY wallet_id
), m AS (
  UPDATE business_tokens w
     SET used_tokens = w.used_tokens + s.used_add,
         reserved_tokens = w.reserved_tokens - s.reserved_sub, updated_at = $2
    FROM s
   WHERE w.id = s.wallet_id
  RETURNING w.id, w.total_tokens, w.used_tokens, w.reserved_tokens, w.arrears_tokens
), x AS (
  SELECT c.*, m.total_tokens AS total_after,
         m.used_tokens - coalesce(sum(c.captured_amount) OVER later, 0)::bigint AS used_after,
         m.reserved_tokens + coalesce(sum(c.amount) OVER later, 0)::bigint AS reserved_after,
         m.arrears_tokens AS arrears_after
    FROM c JOIN m ON m.id = c.wallet_id
  WINDOW later AS (PARTITION BY c.wallet_id ORDER BY c.ord DESC
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
), e AS (
  INSERT INTO token_usage_logs ({_ENTRY_COLUMNS})
  SELECT entry_id, tenant_id, location_id, wallet_id, wallet_location_id, operation_type,
         CASE WHEN state = 'captured' THEN 'capture' ELSE 'release' END,
         CASE WHEN state = 'captured' THEN captured_amount ELSE amount END,
         0, captured_amount, -amount, 0, total_after, used_after, reserved_after, arrears_after,
         description, request_id, request_hash, id, $2
    FROM x
){succeed}
SELECT x.*{final} FROM x
"""


_ENDS = _ends_statement(succeed_actions=False)
_ENDS_SUCCEEDING = _ends_statement(succeed_actions=True)


@dataclass(frozen=True)
class DebitPlan:
    """What the debit CTEs need besides the debits: ids, and each entry's offsets
    from the wallet's final columns (what the debits after it add)."""

    debits: Sequence[Debit]
    entry_ids: list[str]
    reservation_ids: list[str | None]
    expires: list[datetime | None]
    used_later: list[int]
    reserved_later: list[int]
    used_add: int
    reserved_add: int

    @classmethod
    def of(cls, debits: Sequence[Debit], now: datetime) -> DebitPlan:
        n = len(debits)
        used_later = [0] * n
        reserved_later = [0] * n
        used_add = reserved_add = 0
        for i in range(n - 1, -1, -1):
            used_later[i], reserved_later[i] = used_add, reserved_add
            if debits[i].kind is EntryKind.RESERVE:
                reserved_add += debits[i].amount
            else:
                used_add += debits[i].amount
        reserving = [d.kind is EntryKind.RESERVE for d in debits]
        return cls(
            debits=debits,
            entry_ids=[new_id("ent") for _ in range(n)],
            reservation_ids=[
                (d.reservation_id or new_id("res")) if r else None
                for d, r in zip(debits, reserving, strict=True)
            ],
            expires=[
                now + (d.ttl or DEFAULT_RESERVATION_TTL) if r else None
                for d, r in zip(debits, reserving, strict=True)
            ],
            used_later=used_later,
            reserved_later=reserved_later,
            used_add=used_add,
            reserved_add=reserved_add,
        )

    def args(self, tenant_id: str, location_id: str, now: datetime) -> list[Any]:
        """The 18 parameters of `DEBIT_CTES`."""
        debits = self.debits
        return [
            tenant_id,
            location_id,
            now,
            self.used_add,
            self.reserved_add,
            self.used_add + self.reserved_add,
            self.entry_ids,
            [d.request_id for d in debits],
            [d.request_hash() for d in debits],
            [d.kind.value for d in debits],
            [d.operation_type.value for d in debits],
            [d.amount for d in debits],
            [d.location_id for d in debits],
            [d.description for d in debits],
            self.reservation_ids,
            self.expires,
            self.used_later,
            self.reserved_later,
        ]


@dataclass(frozen=True)
class SuccessItem:
    """An action's success for `succeed_actions`: the capture of its reservation,
    its result (JSON text, None keeps it) and a message to rewrite (or None)."""

    end: EndRequest
    action_id: str
    result: str | None
    message_id: str | None = None
    content: str | None = None


class PgLedgerStore(SqlLedgerStore):
    """SqlLedgerStore with the batch writes as single asyncpg statements."""

    def __init__(
        self, engine: AsyncEngine, pool: PgPool, *, low_balance_threshold: int = 50
    ) -> None:
        super().__init__(engine, low_balance_threshold=low_balance_threshold)
        self._pool = pool

    async def apply_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult | DomainError]:
        fast = await self._fast_debits(tenant_id, location_id, debits, now)
        if fast is not None:
            return list(fast)
        return await super().apply_debits(tenant_id, location_id, debits, now)

    async def _fast_debits(
        self, tenant_id: str, location_id: str, debits: Sequence[Debit], now: datetime
    ) -> list[DebitResult] | None:
        if len({d.request_id for d in debits}) != len(debits):
            return None  # a retry inside the batch: the general path pairs them up
        plan = DebitPlan.of(debits, now)
        try:
            rows = await self._pool.fetch(_DEBITS, *plan.args(tenant_id, location_id, now))
        except RETRY_ALONE:
            return None
        if not rows:
            return None  # no wallet, or the batch does not fit whole
        wallet = rows[0]
        results = []
        for i, d in enumerate(debits):
            entry = Entry(
                id=plan.entry_ids[i],
                tenant_id=tenant_id,
                location_id=d.location_id,
                wallet_location_id=wallet["location_id"],
                operation_type=d.operation_type,
                kind=d.kind,
                tokens=d.amount,
                description=d.description,
                request_id=d.request_id,
                reservation_id=plan.reservation_ids[i],
                total_after=wallet["total_tokens"],
                used_after=wallet["used_tokens"] - plan.used_later[i],
                reserved_after=wallet["reserved_tokens"] - plan.reserved_later[i],
                created_at=now,
            )
            reservation = None
            res_id, expires_at = plan.reservation_ids[i], plan.expires[i]
            if res_id is not None and expires_at is not None:
                reservation = Reservation(
                    id=res_id,
                    tenant_id=tenant_id,
                    location_id=d.location_id,
                    wallet_location_id=wallet["location_id"],
                    operation_type=d.operation_type,
                    amount=d.amount,
                    captured_amount=0,
                    state=ReservationState.PENDING,
                    description=d.description,
                    expires_at=expires_at,
                    created_at=now,
                    ended_at=None,
                )
            results.append(DebitResult(entry=entry, reservation=reservation))
        return results

    async def end_reservations(
        self, tenant_id: str, requests: Sequence[EndRequest], now: datetime
    ) -> list[tuple[Reservation, Entry] | DomainError]:
        results: list[tuple[Reservation, Entry] | DomainError | None] = [None] * len(requests)
        for row in await self._fast_ends(tenant_id, requests, now) or []:
            results[row["ord"]] = (to_reservation(_Row(row)), _end_entry(row, now))
        return await self._end_rest(tenant_id, requests, now, results)

    async def succeed_actions(
        self,
        tenant_id: str,
        items: Sequence[SuccessItem],
        now: datetime,
    ) -> list[tuple[bool, bool] | None]:
        """Capture each item's reservation and move its action from executing to
        succeeded (rewriting its message, if it names one), in one statement. Per
        item: (advanced, revised) when the tokens were captured, where `advanced` is
        False if the action had left executing; None when nothing was done (the
        caller goes the general way, which explains)."""
        rows = await self._fast_ends(
            tenant_id,
            [item.end for item in items],
            now,
            [(i.action_id, i.result, i.message_id, i.content) for i in items],
        )
        out: list[tuple[bool, bool] | None] = [None] * len(items)
        for row in rows or []:
            out[row["ord"]] = (bool(row["advanced"]), bool(row["revised"]))
        return out

    async def _fast_ends(
        self,
        tenant_id: str,
        requests: Sequence[EndRequest],
        now: datetime,
        actions: Sequence[tuple[str, str | None, str | None, str | None]] | None = None,
    ) -> list[Any] | None:
        """The claimed rows (with `ord`, the request's index), or None when the
        statement failed whole (a reused request_id, a lock cycle)."""
        order: list[int] = []
        seen: set[str] = set()
        for i in sorted(range(len(requests)), key=lambda i: requests[i].reservation_id):
            if requests[i].reservation_id not in seen:  # a second end is explained alone
                seen.add(requests[i].reservation_id)
                order.append(i)
        reqs = [requests[i] for i in order]
        entry_ids = {i: new_id("ent") for i in sorted(order)}  # ids in arrival order
        args: list[Any] = [
            tenant_id,
            now,
            [r.reservation_id for r in reqs],
            [r.capture for r in reqs],
            [r.amount if r.capture else None for r in reqs],
            [entry_ids[i] for i in order],
            [r.request_id for r in reqs],
            [self._end_hash(r) for r in reqs],
            order,
        ]
        if actions is not None:
            args += [[actions[i][k] for i in order] for k in range(4)]
        try:
            return await self._pool.fetch(_ENDS if actions is None else _ENDS_SUCCEEDING, *args)
        except RETRY_ALONE:
            return None


def _end_entry(row: Any, now: datetime) -> Entry:
    captured = row["state"] == ReservationState.CAPTURED.value
    return Entry(
        id=row["entry_id"],
        tenant_id=row["tenant_id"],
        location_id=row["location_id"],
        wallet_location_id=row["wallet_location_id"],
        operation_type=OperationType(row["operation_type"]),
        kind=EntryKind.CAPTURE if captured else EntryKind.RELEASE,
        tokens=row["captured_amount"] if captured else row["amount"],
        description=row["description"],
        request_id=row["request_id"],
        reservation_id=row["id"],
        total_after=row["total_after"],
        used_after=row["used_after"],
        reserved_after=row["reserved_after"],
        created_at=now,
    )


class _Row:
    """Attribute access over an asyncpg Record, for the shared row converters."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]
