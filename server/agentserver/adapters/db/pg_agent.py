"""The agent's hot writes on PostgreSQL as single asyncpg statements (see pg.py):
storing the exchanges of concurrent Process calls, and the state changes of
concurrent callers that hold their action's row (`advance`, coalesced)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.ext.asyncio import AsyncEngine

from agentserver.adapters.db import models
from agentserver.adapters.db.agent_store import SqlAgentStore
from agentserver.adapters.db.pg import PgPool
from agentserver.domain.conversations import Exchange


def exchange_ctes(first: int = 1, guard: str = "TRUE") -> str:
    """The CTEs that store a batch of exchanges: new sessions, actions, messages, and
    the message counts of continued sessions (summed: one UPDATE may change a row only
    once). Foreign keys are checked at the end of the statement, so actions and
    messages may name sessions inserted beside them. Parameters are numbered from
    `first` (46 of them, see `_exchange_arrays`); nothing is written unless `guard`
    holds (another CTE's success, when combined with one)."""
    sql = """
s AS (
  INSERT INTO sessions (id, tenant_id, user_id, location_id, title, message_count,
                        created_at, updated_at)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                       $7::timestamptz[], $7::timestamptz[])
   WHERE {guard}
), a AS (
  INSERT INTO actions (id, tenant_id, session_id, location_id, action_type, category,
                       parameters, decision_level, state, executable, blocked, token_cost,
                       operation_type, confidence, reasoning, requested_by, decided_by,
                       decision_request_id, rejection_reason, result, reservation_id,
                       attempts, version, created_at, updated_at, expires_at, depends_on)
  SELECT id, tenant_id, session_id, location_id, action_type, category, parameters::json,
         decision_level, state, executable, blocked::json, token_cost, operation_type,
         confidence, reasoning, requested_by, decided_by, decision_request_id,
         rejection_reason, result::json, reservation_id, attempts, version, created_at,
         updated_at, expires_at, depends_on
    FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::text[], $15::int[], $16::text[], $17::bool[], $18::text[], $19::bigint[],
                $20::text[], $21::int[], $22::text[], $23::text[], $24::text[], $25::text[],
                $26::text[], $27::text[], $28::text[], $29::int[], $30::int[],
                $31::timestamptz[], $32::timestamptz[], $33::timestamptz[], $46::text[])
      AS a(id, tenant_id, session_id, location_id, action_type, category, parameters,
           decision_level, state, executable, blocked, token_cost, operation_type, confidence,
           reasoning, requested_by, decided_by, decision_request_id, rejection_reason, result,
           reservation_id, attempts, version, created_at, updated_at, expires_at, depends_on)
   WHERE {guard}
), m AS (
  INSERT INTO messages (id, tenant_id, session_id, role, content, decision_level, action_ids,
                        created_at)
  SELECT id, tenant_id, session_id, role, content, decision_level, action_ids::json,
         created_at
    FROM unnest($34::text[], $35::text[], $36::text[], $37::text[], $38::text[], $39::int[],
                $40::text[], $41::timestamptz[])
      AS m(id, tenant_id, session_id, role, content, decision_level, action_ids, created_at)
   WHERE {guard}
), counted AS (
  UPDATE sessions AS t
     SET message_count = t.message_count + u.n, updated_at = u.now
    FROM (SELECT tenant_id, id, sum(n)::int AS n, max(now) AS now
            FROM unnest($42::text[], $43::text[], $44::int[], $45::timestamptz[])
              AS u(tenant_id, id, n, now)
           GROUP BY tenant_id, id) AS u
   WHERE t.id = u.id AND t.tenant_id IS NOT DISTINCT FROM u.tenant_id AND {guard}
)""".replace("{guard}", guard)
    return renumber(sql, first - 1)


def renumber(sql: str, by: int) -> str:
    """Shift every `$n` parameter of `sql` by `by`."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql) if by else sql


_REVISE = """
UPDATE messages AS t SET content = u.content
  FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tenant_id, id, content)
 WHERE t.id = u.id AND t.tenant_id IS NOT DISTINCT FROM u.tenant_id
"""

_JSON_COLUMNS = frozenset(c.name for c in models.actions.c if isinstance(c.type, JSON))


def _array_type(column: Any) -> str:
    """The PostgreSQL array a column's values travel in: JSON as text, and strings
    as text (an explicit cast to varchar(n) would truncate silently; the column
    itself refuses an over-long value)."""
    if isinstance(column.type, JSON):
        return "text[]"
    python_type = getattr(column.type, "impl", column.type).python_type  # through UTCDateTime
    return {str: "text[]", int: "bigint[]", bool: "bool[]", datetime: "timestamptz[]"}[python_type]


_ARRAY_TYPES = {c.name: _array_type(c) for c in models.actions.c}


class PgAgentStore(SqlAgentStore):
    """SqlAgentStore with the rewriting of replies as one asyncpg statement per batch
    (the exchanges themselves are written by process_writes.py)."""

    def __init__(self, engine: AsyncEngine, pool: PgPool) -> None:
        super().__init__(engine)
        self._pool = pool

    async def revise_messages(self, revisions: Sequence[tuple[str, str, str]]) -> None:
        last = {(t, m): c for t, m, c in revisions}  # one change of a row per statement
        await self._pool.execute(
            _REVISE,
            [t for t, _ in last],
            [m for _, m in last],
            list(last.values()),
        )


def exchange_arrays(exchanges: Sequence[Exchange]) -> list[list[Any]]:
    """The statement's parameters: one array per column."""
    new = [ex for ex in exchanges if ex.new_session]
    sessions: list[list[Any]] = [
        [ex.session.id for ex in new],
        [ex.tenant_id for ex in new],
        [ex.session.user_id for ex in new],
        [ex.session.location_id for ex in new],
        [ex.session.title for ex in new],
        [len(ex.messages) for ex in new],
        [ex.now for ex in new],
    ]
    actions = [a for ex in exchanges for a in ex.actions]
    action_columns: list[list[Any]] = [
        [a.id for a in actions],
        [a.tenant_id for a in actions],
        [a.session_id for a in actions],
        [a.location_id for a in actions],
        [a.action_type for a in actions],
        [a.category for a in actions],
        [json.dumps(a.parameters) for a in actions],
        [int(a.level) for a in actions],
        [a.state.value for a in actions],
        [a.executable for a in actions],
        [json.dumps(a.blocked) for a in actions],
        [a.token_cost for a in actions],
        [a.operation_type for a in actions],
        [a.confidence for a in actions],
        [a.reasoning for a in actions],
        [a.requested_by for a in actions],
        [a.decided_by for a in actions],
        [a.decision_request_id for a in actions],
        [a.rejection_reason for a in actions],
        [json.dumps(a.result) for a in actions],
        [a.reservation_id for a in actions],
        [a.attempts for a in actions],
        [a.version for a in actions],
        [a.created_at for a in actions],
        [a.updated_at for a in actions],
        [a.expires_at for a in actions],
    ]
    messages = [(ex, m) for ex in exchanges for m in ex.messages]
    message_columns: list[list[Any]] = [
        [m.id for _, m in messages],
        [ex.tenant_id for ex, _ in messages],
        [ex.session.id for ex, _ in messages],
        [m.role.value for _, m in messages],
        [m.content for _, m in messages],
        [m.decision_level for _, m in messages],
        [json.dumps(m.action_ids) for _, m in messages],
        [m.created_at for _, m in messages],
    ]
    continued = [ex for ex in exchanges if not ex.new_session]
    counts: list[list[Any]] = [
        [ex.tenant_id for ex in continued],
        [ex.session.id for ex in continued],
        [len(ex.messages) for ex in continued],
        [ex.now for ex in continued],
    ]
    # Added after the others (so the earlier parameters keep their numbers): $46.
    depends_on: list[list[Any]] = [[a.depends_on for a in actions]]
    return sessions + action_columns + message_columns + counts + depends_on
