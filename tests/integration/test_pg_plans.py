"""The plans PostgreSQL keeps for the hot statements (see adapters/db/pg.py).

The asyncpg pool runs every statement with one generic plan per connection, made
without the parameters' values and never made again. Such a plan made on a fresh,
empty database lives on while the tables grow, so every table it touches must be
reached through a unique index with a condition on the key: then each lookup finds
at most one row per key, whatever the table's size. Checked here on a fresh,
never-analysed database (the case a generic plan gets wrong) and again after
ANALYZE has seen rows.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from agentserver.adapters.db import notify, pg_agent, pg_ledger, process_writes
from agentserver.adapters.db.pg import SESSION_SETTINGS, asyncpg_dsn
from agentserver.app import build_app, prepare_database
from agentserver.config import Settings
from tests.conftest import PgDatabases

HOT = {
    "debits": pg_ledger._DEBITS,
    "ends": pg_ledger._ENDS,
    "reservations": pg_ledger._RESERVATIONS,
    "directory": pg_ledger._DIRECTORY,
    "record": process_writes._RECORD,
    "hold_and_record": process_writes._HOLD_AND_RECORD,
    "revise": pg_agent._REVISE,
    "outbox_since": notify.OUTBOX_SINCE,
}
SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


@pytest.fixture(scope="module")
async def conn(pg_databases: PgDatabases) -> AsyncIterator[asyncpg.Connection]:
    url = pg_databases.create()
    app = await build_app(Settings(database_url=url, access_log=False, auto_migrate=True))
    await prepare_database(app)
    await app.close()
    connection = await asyncpg.connect(asyncpg_dsn(url), server_settings=SESSION_SETTINGS)
    yield connection
    await connection.close()


async def unique_indexes(conn: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await conn.fetch(
        "SELECT t.relname AS tbl, i.relname AS idx FROM pg_index x"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE x.indisunique AND n.nspname = 'public'"
    )
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["tbl"], set()).add(r["idx"])
    return found


async def generic_plan(conn: asyncpg.Connection, sql: str) -> dict[str, Any]:
    """The plan a connection of the pool keeps for `sql` (EXPLAIN of a prepared
    statement under the pool's settings: the values do not matter to it)."""
    n = max(int(m) for m in re.findall(r"\$(\d+)", sql))
    name = f"hot_{uuid.uuid4().hex}"
    await conn.execute(f"PREPARE {name} AS {sql}")
    nulls = ", ".join(["NULL"] * n)
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({nulls})")
    await conn.execute(f"DEALLOCATE {name}")
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def wrong_ways_in(plan: dict[str, Any], unique: dict[str, set[str]]) -> list[str]:
    """Every scan of a table that is not a keyed lookup through a unique index."""
    wrong = []
    for node in nodes(plan):
        kind = node["Node Type"]
        if kind not in SCANS or kind == "Bitmap Heap Scan":  # its index scan is checked
            continue
        table = node.get("Relation Name") or _table_of(node.get("Index Name", ""), unique)
        index = node.get("Index Name")
        if kind == "Seq Scan":
            wrong.append(f"{table}: walked whole")
        elif index not in unique.get(table, set()):
            wrong.append(f"{table}: through {index}, which is not a unique index")
        elif not node.get("Index Cond"):
            wrong.append(f"{table}: every row of {index}")
    return wrong


def _table_of(index: str, unique: dict[str, set[str]]) -> str:
    return next((t for t, idx in unique.items() if index in idx), f"(index {index})")


async def assert_keyed(conn: asyncpg.Connection) -> None:
    unique = await unique_indexes(conn)
    problems = {}
    for name, sql in HOT.items():
        wrong = wrong_ways_in(await generic_plan(conn, sql), unique)
        if wrong:
            problems[name] = wrong
    assert not problems, problems


async def test_hot_statements_reach_rows_by_key_on_a_fresh_database(
    conn: asyncpg.Connection,
) -> None:
    assert await conn.fetchval("SELECT count(*) FROM pg_stats WHERE schemaname = 'public'") == 0
    await assert_keyed(conn)


async def test_hot_statements_stay_keyed_once_the_tables_have_statistics(
    conn: asyncpg.Connection,
) -> None:
    """Rows a generic plan would be tempted to reach by another index: one tenant's
    many sessions, messages, pending reservations and outbox events."""
    await conn.execute(
        """
        INSERT INTO tenants (id, name, policy, created_at)
        VALUES ('t', 't', '{}', now());
        INSERT INTO business_tokens (id, tenant_id, location_id, total_tokens, used_tokens,
                                     reserved_tokens, arrears_tokens, low_balance_threshold,
                                     created_at, updated_at)
        VALUES ('w', 't', '', 1000000, 0, 0, 0, 50, now(), now());
        INSERT INTO sessions (id, tenant_id, user_id, location_id, title, message_count,
                              created_at, updated_at)
        SELECT 's' || g, 't', 'u', '', '', 1, now(), now() FROM generate_series(1, 3000) g;
        INSERT INTO messages (id, tenant_id, session_id, role, content, decision_level,
                              action_ids, created_at)
        SELECT 'm' || g, 't', 's' || g, 'user', 'hi', 0, '[]', now()
          FROM generate_series(1, 3000) g;
        INSERT INTO reservations (id, tenant_id, wallet_id, location_id, wallet_location_id,
                                  operation_type, amount, captured_amount, state, description,
                                  expires_at, created_at)
        SELECT 'r' || g, 't', 'w', '', '', 'sms', 1, 0, 'pending', '',
               now() + interval '1 day', now()
          FROM generate_series(1, 3000) g;
        INSERT INTO outbox (tenant_id, seq, aggregate_type, aggregate_id, type, payload,
                            created_at)
        SELECT 't', g, 'message', 'm' || g, 'message.stored', '{}', now()
          FROM generate_series(1, 3000) g;
        ANALYZE;
        """
    )
    await assert_keyed(conn)
