"""Malformed and extreme requests to every rpc, generated from the descriptors, on
SQLite and PostgreSQL: never INTERNAL or UNKNOWN, and the ledger holds afterwards.

Each rpc gets random bodies (bytes that are not protobuf, truncated messages) and
messages built field by field from its descriptor with extreme values: empty, huge,
NUL, control and right-to-left characters, injection-looking text, the ids the
tenant really has (so deeper paths run), integer and float extremes, unknown enum
numbers, NaN and nesting in Structs, timestamps and durations out of range. Seeded,
so a failure repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from typing import Any

import grpc
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agentserver.domain.identity import SCOPE_WEBHOOKS, TENANT_DEFAULT_SCOPES
from agentserver.entrypoints.grpc.server import SERVICES
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from agentserver.v1 import webhook_service_pb2 as wpb
from tests.conftest import Harness, Tenant, ledger_invariant

PER_RPC = 60
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

INT_EXTREMES = [0, 1, -1, 2, 7, 100, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 10**9, 10**9 + 1]
STRINGS = [
    "",
    " ",
    "a",
    "x" * 65,
    "y" * 5000,
    "\x00",
    "a\x00b",
    "\u202e\u0644\u0627",
    "😀" * 40,
    "'; DROP TABLE actions; --",
    "%s%s%n",
    "../../etc/passwd",
    "*:*",
    "actions:approve",
    "Email ann@example.com that the order shipped",
    "Text +15551234567 that we open at 10:00",
    "Book the Blue Room tomorrow at 3pm for 1 hour",
    "\ud7ff\ue000",
    "\t\r\n",
]


def _struct_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return float("nan")
    if choice == 1:
        return rng.choice([float("inf"), float("-inf"), 1e308, -1e-308, 2.0**63])
    if choice == 2 and depth < 30:
        return {rng.choice(STRINGS): _struct_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if choice == 3 and depth < 30:
        return [_struct_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 4:
        return rng.choice([True, False, None])
    if choice == 5:
        return rng.choice(INT_EXTREMES)
    return rng.choice(STRINGS)


def _fill(message: Any, descriptor: Descriptor, gen: _Gen, depth: int) -> None:
    for fd in descriptor.fields:
        if gen.rng.random() < 0.3:
            continue
        count = 1
        if fd.is_repeated and not gen.plausible:
            count = gen.rng.choice([1, 1, 1, 2, 5, 150])
        for _ in range(count):
            _set(message, fd, gen, depth)


class _Gen:
    """Where values come from: extreme ones, or plausible ones (the tenant's real ids,
    small numbers, valid enum values) that get past validation to deeper paths."""

    def __init__(self, rng: random.Random, pool: list[str], plausible: bool) -> None:
        self.rng = rng
        self.pool = pool
        self.plausible = plausible

    def string(self) -> str:
        if self.plausible:
            return self.rng.choice([*self.pool, *PLAUSIBLE_TEXT])
        if self.pool and self.rng.random() < 0.4:
            return self.rng.choice(self.pool)
        return self.rng.choice(STRINGS)

    def integer(self) -> int:
        return (
            self.rng.choice([1, 2, 3, 5, 20]) if self.plausible else self.rng.choice(INT_EXTREMES)
        )

    def enum(self, fd: FieldDescriptor) -> int:
        if self.plausible:
            return int(self.rng.choice(fd.enum_type.values[1:] or fd.enum_type.values).number)
        return self.rng.choice([0, 1, 2, 5, 11, 999, -1])


PLAUSIBLE_TEXT = [
    "Email ann@example.com that the order shipped",
    "Text +15551234567 that we open at 10:00",
    "Book the Blue Room tomorrow at 3pm for 1 hour for Maria",
    "Escalate this to a manager",
    "the customer confirmed",
    "front-desk",
]


def _set(message: Any, fd: FieldDescriptor, gen: _Gen, depth: int) -> None:
    rng = gen.rng
    name = fd.name
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        full = fd.message_type.full_name
        target = getattr(message, name).add() if fd.is_repeated else getattr(message, name)
        if full == "google.protobuf.Struct":
            values = (
                {"to": "ann@example.com", "duration_minutes": 30}
                if gen.plausible
                else {rng.choice(STRINGS): _struct_value(rng) for _ in range(3)}
            )
            with contextlib.suppress(TypeError, ValueError):
                target.update(values)
        elif full == "google.protobuf.Timestamp":
            target.seconds = rng.choice(
                [0, -62135596801, 253402300800, 2**62, -(2**62), 1767225600]
            )
            target.nanos = rng.choice([0, -1, 999_999_999, 2**31 - 1])
        elif full == "google.protobuf.Duration":
            target.seconds = rng.choice([0, 1, -1, 604800, 604801, 315576000001, 2**62])
            target.nanos = rng.choice([0, -5, 999_999_999, -(2**31)])
        elif depth < 4:
            _fill(target, fd.message_type, gen, depth + 1)
        return
    value: Any
    if fd.type == FieldDescriptor.TYPE_STRING:
        value = gen.string()
    elif fd.type == FieldDescriptor.TYPE_BOOL:
        value = rng.random() < 0.5
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        value = gen.enum(fd)
    elif fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = rng.choice([0.0, float("nan"), float("inf"), -1e308])
    else:  # integers of every width
        value = gen.integer()
        if fd.type in (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SFIXED32,
        ):
            value = max(-(2**31), min(2**31 - 1, value))
        elif fd.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            value = max(0, min(2**32 - 1, value))
        elif fd.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            value = max(0, value)
    with contextlib.suppress(TypeError, ValueError):
        if fd.is_repeated:
            getattr(message, name).append(value)
        else:
            setattr(message, name, value)


def bodies(descriptor: Descriptor, rng: random.Random, pool: list[str]) -> list[bytes]:
    """Malformed, extreme and plausible request bodies for messages of `descriptor`."""
    cls = message_factory.GetMessageClass(descriptor)
    out: list[bytes] = []
    for i in range(PER_RPC):
        message = cls()
        _fill(message, descriptor, _Gen(rng, pool, plausible=i % 6 in (2, 3, 4)), 0)
        body = message.SerializeToString()
        if i % 6 == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif i % 6 == 1 and body:
            body = body[: rng.randrange(len(body))]
        out.append(body)
    return out


async def _real_ids(t: Tenant) -> list[str]:
    """Ids this tenant really has, so generated requests reach deeper paths."""
    async with t.client("alice") as client:
        processed = await client.process(
            apb.ProcessRequest(message="Book the Blue Room tomorrow at 3pm for 1 hour for Maria")
        )
        reservation = await client.reserve_tokens(
            tpb.ReserveTokensRequest(
                tenant_id=t.id, operation_type=2, amount=1, request_id=uuid.uuid4().hex
            )
        )
    return [
        t.id,
        processed.session_id,
        reservation.reservation.id,
        *(a.id for a in processed.actions),
        "alice",
    ]


async def test_no_rpc_answers_internal_or_unknown_to_anything(harness: Harness) -> None:
    t = await harness.tenant(1000)
    pool = await _real_ids(t)
    # A key that may also manage webhooks, and an endpoint of the tenant's to aim at.
    _, hooks_key = await harness.app.admin.create_key(
        t.id, (*TENANT_DEFAULT_SCOPES, SCOPE_WEBHOOKS), "fuzz", harness.clock.now()
    )
    async with harness.client(hooks_key, t.id, user_id="") as client:
        made = await client.create_webhook_endpoint(
            wpb.CreateWebhookEndpointRequest(url="https://hooks.example.com/fuzz")
        )
    pool.append(made.endpoint.id)
    rng = random.Random(f"fuzz-{harness.backend}")
    now = harness.clock.now()
    _, admin_key = await harness.app.admin.create_key(t.id, ["agent", "admin"], "fuzz", now)
    _, platform_key = await harness.app.admin.create_key(None, ["admin"], "fuzz", now)
    identities = [
        (("authorization", f"Bearer {t.key}"), ("x-tenant-id", t.id), ("x-user-id", "alice")),
        (("authorization", f"Bearer {admin_key}"), ("x-user-id", "root")),
        (("authorization", f"Bearer {platform_key}"), ("x-tenant-id", t.id)),
        (("authorization", f"Bearer {hooks_key}"),),
        (
            ("authorization", f"Bearer {t.key}"),
            ("x-user-id", "bob"),
            ("x-location-id", "front-desk"),
        ),
        (("authorization", f"Bearer {t.key}"),),
        (("authorization", "Bearer ask_made_up_key"), ("x-tenant-id", t.id)),
        (),
    ]
    failures: list[str] = []
    seen: Counter[str] = Counter()
    sem = asyncio.Semaphore(16)

    async def send(
        call: Any, path: str, body: bytes, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        async with sem:
            try:
                answer = call(body, metadata=metadata, timeout=30)
                if isinstance(answer, grpc.aio.UnaryStreamCall):
                    async for _ in answer:  # a stream fails where it fails: read it all
                        pass
                else:
                    await answer
                seen["OK"] += 1
            except grpc.aio.AioRpcError as err:
                seen[err.code().name] += 1
                if err.code() in NEVER:
                    failures.append(f"{path} {err.code().name}: {err.details()}")

    def streaming(channel: grpc.aio.Channel, path: str) -> Any:
        """A server-streaming rpc as a call: read to its end, or hang up once it has
        been quiet for 2 s (a watch never ends; a stream that failed, its status)."""
        open_stream = channel.unary_stream(path)

        async def call(body: bytes, *, metadata: Any, timeout: float) -> None:  # noqa: ASYNC109
            stream = open_stream(body, metadata=metadata, timeout=timeout)
            try:
                for _ in range(10_000):
                    if await asyncio.wait_for(stream.read(), 2) is grpc.aio.EOF:
                        break
            except TimeoutError:
                pass  # open and quiet: fine
            finally:
                stream.cancel()

        return call

    async with grpc.aio.insecure_channel(harness.target) as channel:
        for service in SERVICES:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if method.server_streaming:
                    call = streaming(channel, path)
                else:
                    call = channel.unary_unary(path)
                await asyncio.gather(
                    *(
                        send(call, path, body, identities[i % len(identities)])
                        for i, body in enumerate(bodies(method.input_type, rng, pool))
                    )
                )
    # The requests reach past the front door too, not only into validation.
    assert seen["OK"] > 50 and seen["NOT_FOUND"] > 10, seen
    assert not failures, "\n".join(failures[:20])
    await ledger_invariant(harness, t.id)


def test_the_generator_reaches_every_rpc() -> None:
    names = {f"{s.name}.{m.name}" for s in SERVICES for m in s.methods}
    assert len(names) >= 29
    assert "EventService.WatchEvents" in names  # server streaming: read, then hung up
    sample = bodies(SERVICES[0].methods[0].input_type, random.Random(1), [])
    assert len(sample) == PER_RPC and any(sample)
    assert struct_pb2.Struct  # Structs are generated with NaN and nesting
