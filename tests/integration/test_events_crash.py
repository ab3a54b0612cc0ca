"""The proof of issue 12 with real `agentserver serve` processes on PostgreSQL, a
webhook receiver the test runs (checking every signature with `standardwebhooks`)
and the machine's NATS JetStream:

- kill -9 of a server in the middle of delivering 1,000 events: after a restart
  every event arrives, each webhook under its original `webhook-id`;
- two replicas delivering at once: every event arrives, none twice.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import nats
import pytest
from sqlalchemy import text

from agentserver.adapters.secrets import generate_key
from agentserver.app import App, build_app, prepare_database
from agentserver.client import AgentServerClient
from agentserver.config import Settings
from agentserver.domain.costs import OperationType
from agentserver.domain.events import event_id
from agentserver.domain.identity import SCOPE_WEBHOOKS, TENANT_DEFAULT_SCOPES
from agentserver.domain.ledger import Debit
from agentserver.v1 import webhook_service_pb2 as wpb
from tests import procs
from tests.receiver import Answer, Receiver

EVENTS = 1000

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class World:
    """A PostgreSQL database with one tenant, a writer app beside the servers, the
    server settings, a receiver and the NATS URL."""

    def __init__(self, url: str, nats_url: str, cwd: Path) -> None:
        self.url = url
        self.nats_url = nats_url
        self.cwd = cwd
        self.keys = generate_key()
        self.tenant = f"crash-{uuid.uuid4().hex[:8]}"
        self.settings = {
            "database_url": url,
            "secret_keys": self.keys,
            "auto_migrate": "true",
            "bootstrap_demo": "false",
            "access_log": "false",
            "monthly_fee_interval_seconds": "0",
            "webhook_allowed_networks": "127.0.0.0/8",
            "webhook_timeout_seconds": "2",
            "webhook_concurrency": "4",
            "nats_url": nats_url,
            "nats_max_age_seconds": "3600",
        }
        self.app: App | None = None
        self.key = ""
        self.secret = ""
        self.endpoint_id = ""

    async def setup(self) -> None:
        app = await build_app(
            Settings(database_url=self.url, secret_keys=self.keys, auto_migrate=True)
        )
        await prepare_database(app)
        now = app.clock.now()
        await app.admin.create_tenant(self.tenant, self.tenant, now)
        _, self.key = await app.admin.create_key(
            self.tenant, (*TENANT_DEFAULT_SCOPES, SCOPE_WEBHOOKS), "proof", now
        )
        await app.ledger.add_tokens(self.tenant, "", 10 * EVENTS, "seed", "seed")
        self.app = app

    async def endpoint(self, port: int, url: str) -> None:
        async with AgentServerClient(
            f"127.0.0.1:{port}", api_key=self.key, tenant_id=self.tenant
        ) as client:
            made = await client.create_webhook_endpoint(wpb.CreateWebhookEndpointRequest(url=url))
        self.secret, self.endpoint_id = made.secret, made.endpoint.id

    async def write(self, first: int, count: int) -> None:
        """`count` charges (one ledger.entry event each), committed one by one."""
        assert self.app is not None
        for i in range(first, first + count):
            await self.app.ledger.charge(Debit(self.tenant, "", OperationType.SMS, 1, f"proof-{i}"))

    async def expected_ids(self, after_seq: int = 0) -> set[str]:
        assert self.app is not None
        async with self.app.engine.connect() as conn:
            seqs = await conn.execute(
                text("SELECT seq FROM outbox WHERE tenant_id = :t AND seq > :s"),
                {"t": self.tenant, "s": after_seq},
            )
            return {event_id(self.tenant, s) for (s,) in seqs}

    async def nats_ids(self) -> list[str]:
        nc = await nats.connect(self.nats_url)
        try:
            sub = await nc.jetstream().subscribe(
                f"agentserver.{self.tenant}.>", ordered_consumer=True, deliver_policy="all"
            )
            out = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    return out
                out.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
        finally:
            await nc.close()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close()


async def until(check: object, within: float, what: str) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_kill_9_mid_delivery_then_every_event_arrives_with_its_id(
    tmp_path: Path, fresh_pg_url: str, nats_url: str
) -> None:
    world = World(fresh_pg_url, nats_url, tmp_path)
    await world.setup()
    # A slow receiver (20 ms an answer, 4 at a time): the deliveries take seconds.
    async with Receiver(lambda _r: Answer(200, delay=0.02)) as receiver:
        proc, port = procs.start(tmp_path, **world.settings)
        servers = [proc]
        try:
            await world.endpoint(port, receiver.url)
            await world.write(0, EVENTS // 2)
            await receiver.wait_for(100)
            proc.kill()  # kill -9, mid-delivery to the receiver and to NATS
            proc.wait()
            killed_at = len(receiver.received)
            await world.write(EVENTS // 2, EVENTS // 2)  # while no server runs
            proc, port = procs.start(tmp_path, **world.settings)
            servers.append(proc)
            expected = await world.expected_ids(after_seq=2)  # from the endpoint on
            assert len(expected) == EVENTS

            async def all_arrived() -> bool:
                return {r.id for r in receiver.received} >= expected

            await until(all_arrived, 120, "every webhook")
            nats_expected = await world.expected_ids()

            async def all_relayed() -> bool:
                return set(await world.nats_ids()) >= nats_expected

            await until(all_relayed, 60, "every event on NATS")
        finally:
            for p in servers:
                if p.poll() is None:
                    procs.stop(p)
        await world.close()
    assert killed_at < EVENTS, "the server was killed mid-delivery"
    got = Counter(r.id for r in receiver.received)
    assert set(got) == expected, "every event, under its original webhook-id"
    assert all(r.verifies(world.secret) for r in receiver.received), "every signature verifies"
    repeats = sum(n - 1 for n in got.values())
    # At-least-once: only attempts in flight when the server died may come twice.
    assert repeats <= 4 * 2, repeats
    nats_got = await world.nats_ids()
    assert len(nats_got) == len(set(nats_got)) == len(nats_expected), "JetStream kept each once"


async def test_two_replicas_deliver_every_event_once(
    tmp_path: Path, fresh_pg_url: str, nats_url: str
) -> None:
    world = World(fresh_pg_url, nats_url, tmp_path)
    await world.setup()
    async with Receiver(lambda _r: Answer(200, delay=0.005)) as receiver:
        servers: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(2):
                proc, port = procs.start(tmp_path, **world.settings)
                servers.append(proc)
            await world.endpoint(port, receiver.url)
            await world.write(0, EVENTS)
            expected = await world.expected_ids(after_seq=2)

            async def all_arrived() -> bool:
                return {r.id for r in receiver.received} >= expected

            await until(all_arrived, 120, "every webhook")
            nats_expected = await world.expected_ids()

            async def all_relayed() -> bool:
                return set(await world.nats_ids()) >= nats_expected

            await until(all_relayed, 60, "every event on NATS")
            await asyncio.sleep(1.0)  # anything sent twice would have arrived by now
        finally:
            for p in servers:
                procs.stop(p)
        await world.close()
    got = Counter(r.id for r in receiver.received)
    assert set(got) == expected
    assert max(got.values()) == 1, "one attempt per (endpoint, event): none came twice"
    assert all(r.verifies(world.secret) for r in receiver.received)
    nats_got = await world.nats_ids()
    assert len(nats_got) == len(set(nats_got)) == len(nats_expected)
