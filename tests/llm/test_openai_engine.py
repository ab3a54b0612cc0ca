"""OpenAIEngine against the real `openai.AsyncOpenAI` client and a scripted local server.

The server (aiohttp on 127.0.0.1, random port) answers `/v1/chat/completions` the way
OpenAI's Chat Completions API does; each test scripts its replies and then inspects
the request bodies the client actually sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from agentserver.adapters.llm import LlmSettings, OpenAIEngine, ToolSpec
from agentserver.domain.decision.engine import EngineRequest, HistoryMessage, Proposal

MODEL = "gpt-test"

EMAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {"type": "string", "format": "email", "minLength": 3},
        "subject": {"type": "string"},
        "body": {"type": "string"},
        "cc": {"type": "string", "format": "email"},
    },
    "required": ["to", "subject", "body"],
    "additionalProperties": False,
}
SMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {"type": "string", "pattern": r"^\+[0-9]{6,15}$"},
        "text": {"type": "string", "maxLength": 160},
    },
    "required": ["to", "text"],
    "additionalProperties": False,
}
BOOKING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "resource_id": {"type": "string"},
        "start": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer", "minimum": 5, "default": 30},
    },
    "required": ["resource_id", "start"],
    "additionalProperties": False,
}
TOOLS = [
    ToolSpec("email.send", "Send an email to a customer.", EMAIL_SCHEMA),
    ToolSpec("sms.send", "Send an SMS to a customer.", SMS_SCHEMA),
    ToolSpec("booking.create", "Book a resource.", BOOKING_SCHEMA),
]

GOOD_EMAIL = {
    "to": "ann@example.com",
    "subject": "Your visit",
    "body": "See you at 10.",
    "cc": None,
}
GOOD_SMS = {"to": "+4915112345678", "text": "See you at 10."}


# -- the scripted server ----------------------------------------------------------------


@dataclass
class Reply:
    """One scripted HTTP answer."""

    body: dict[str, Any]
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """Answers scripted replies in order; the last one repeats forever."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[Reply] = []
        self.base_url = ""
        # Set at teardown so handlers still sleeping for a timeout test end at once.
        self.release = asyncio.Event()

    def answer(self, *replies: Reply) -> None:
        self.script = list(replies)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if reply.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), reply.delay)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/v1"
    yield fake
    fake.release.set()
    await runner.cleanup()


class FakeFallback:
    """A recognisable stand-in for the offline engine."""

    def __init__(self) -> None:
        self.requests: list[EngineRequest] = []

    @property
    def name(self) -> str:
        return "offline"

    async def propose(self, request: EngineRequest) -> Proposal:
        self.requests.append(request)
        return Proposal(
            reply="offline reply", actions=[], confidence=40, reasoning="rules", engine="offline"
        )


EngineFactory = Callable[..., OpenAIEngine]


@pytest.fixture
async def make_engine(server: FakeOpenAI) -> AsyncIterator[EngineFactory]:
    engines: list[OpenAIEngine] = []

    def make(
        *,
        timeout: float = 5.0,
        max_retries: int = 0,
        history_messages: int = 10,
        fallback: FakeFallback | None = None,
        validate: Callable[[str, dict[str, Any]], list[str]] | None = None,
        base_url: str | None = None,
        temperature: float | None = 0.0,
        deadline: float = 30.0,
    ) -> OpenAIEngine:
        settings = LlmSettings(
            base_url=base_url or server.base_url,
            api_key="test-key",
            model=MODEL,
            timeout_seconds=timeout,
            max_retries=max_retries,
            history_messages=history_messages,
            temperature=temperature,
            deadline_seconds=deadline,
        )
        engine = OpenAIEngine(settings, TOOLS, fallback or FakeFallback(), validate=validate)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


# -- response builders (the Chat Completions wire format) ---------------------------------


def completion(
    *,
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return Reply(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
        }
    )


def call(name: str, arguments: dict[str, Any] | str, index: int = 0) -> dict[str, Any]:
    return {
        "id": f"call_{name}_{index}",
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def action(
    parameters: dict[str, Any],
    confidence: float = 90,
    missing: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "confidence": confidence,
        "missing_parameters": missing or [],
        "reasoning": "asked for",
    }


def respond(
    reply: str = "Done as asked.",
    confidence: float = 85,
    bypass: bool = False,
) -> dict[str, Any]:
    return call(
        "respond",
        {"reply": reply, "confidence": confidence, "reasoning": "clear", "bypass_attempt": bypass},
        99,
    )


def error(status: int, message: str, param: str | None = None, **headers: str) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return Reply(body, status=status, headers=headers)


def json_answer(**overrides: Any) -> str:
    answer: dict[str, Any] = {
        "reply": "Sending the SMS.",
        "confidence": 80,
        "reasoning": "plain request",
        "bypass_attempt": False,
        "actions": [
            {
                "action_type": "sms.send",
                "parameters": GOOD_SMS,
                "confidence": 75,
                "missing_parameters": [],
                "reasoning": "asked for",
            }
        ],
    }
    answer.update(overrides)
    return json.dumps(answer)


def request(history: list[HistoryMessage] | None = None) -> EngineRequest:
    return EngineRequest(
        message="Email Ann that we see her at 10 and text her the same.",
        now=datetime(2030, 1, 2, 9, 0, tzinfo=UTC),
        history=history or [],
        business_context={"business_name": "Salon Aurora", "timezone": "Europe/Berlin"},
        tenant_id="t-1",
        location_id="loc-1",
    )


# -- tools mode -------------------------------------------------------------------------


async def test_tool_calls_become_actions(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    server.answer(
        completion(
            tool_calls=[
                call("email_send", action(GOOD_EMAIL, confidence=92)),
                call("sms_send", action(GOOD_SMS, confidence=88)),
                respond(),
            ]
        )
    )
    engine = make_engine()

    proposal = await engine.propose(request())

    assert engine.name == "llm:gpt-test"
    assert proposal.engine == "llm:gpt-test"
    assert proposal.reply == "Done as asked."
    assert proposal.confidence == 85
    assert proposal.reasoning == "clear"
    assert proposal.bypass_attempt is False
    assert [(a.action_type, a.parameters, a.confidence) for a in proposal.actions] == [
        # The optional `cc` came back null (strict mode made it nullable): stripped.
        ("email.send", {k: v for k, v in GOOD_EMAIL.items() if k != "cc"}, 92),
        ("sms.send", GOOD_SMS, 88),
    ]
    assert all(a.missing_parameters == [] for a in proposal.actions)
    assert len(server.requests) == 1


async def test_request_body(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    server.answer(completion(tool_calls=[respond()]))
    history = [
        HistoryMessage("user", "too old to be sent"),
        HistoryMessage("user", "Can you remind Ann?"),
        HistoryMessage("assistant", "Which channel?"),
    ]
    engine = make_engine(history_messages=2)

    await engine.propose(request(history))

    body = server.requests[0]
    assert body["model"] == MODEL
    assert body["temperature"] == 0.0
    assert body["tool_choice"] == "required"
    assert "response_format" not in body

    messages = body["messages"]
    assert messages[0]["role"] == "system"
    assert "PROPOSE" in messages[0]["content"]
    assert messages[1]["role"] == "system"
    assert "Salon Aurora" in messages[1]["content"]
    assert "2030-01-02T09:00:00+00:00" in messages[1]["content"]
    assert messages[2:] == [
        {"role": "user", "content": "Can you remind Ann?"},
        {"role": "assistant", "content": "Which channel?"},
        {"role": "user", "content": request().message},
    ]

    tools = {t["function"]["name"]: t["function"] for t in body["tools"]}
    assert set(tools) == {"email_send", "sms_send", "booking_create", "respond"}
    assert all(t["strict"] is True for t in tools.values())
    assert all(t["parameters"]["additionalProperties"] is False for t in tools.values())
    assert "email.send" in tools["email_send"]["description"]
    email = tools["email_send"]["parameters"]["properties"]["parameters"]
    assert email["additionalProperties"] is False
    assert email["required"] == ["to", "subject", "body", "cc"]
    # Nullable so the model can say "missing"; unsupported keywords dropped, formats kept.
    assert email["properties"]["to"] == {"type": ["string", "null"], "format": "email"}
    booking = tools["booking_create"]["parameters"]["properties"]["parameters"]
    assert booking["properties"]["duration_minutes"] == {
        "type": ["integer", "null"],
        "minimum": 5,
    }
    assert tools["respond"]["parameters"]["required"] == [
        "reply",
        "confidence",
        "reasoning",
        "bypass_attempt",
    ]


async def test_missing_parameter_is_reported_not_invented(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    booking = {"resource_id": "chair-2", "start": None, "duration_minutes": None}
    server.answer(
        completion(tool_calls=[call("booking_create", action(booking, 70, ["start"])), respond()])
    )

    proposal = await make_engine().propose(request())

    [booked] = proposal.actions
    assert booked.parameters == {"resource_id": "chair-2"}
    assert booked.missing_parameters == ["start"]
    assert proposal.confidence == 85


async def test_malformed_arguments_drop_only_that_action(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        completion(
            tool_calls=[
                call("email_send", action(GOOD_EMAIL)),
                call("sms_send", '{"parameters": {"to": "+4915112345678", "text": '),
                respond(confidence=95),
            ]
        )
    )

    proposal = await make_engine().propose(request())

    assert [a.action_type for a in proposal.actions] == ["email.send"]
    assert proposal.confidence == 50  # capped: something the user asked for was lost
    assert "sms.send: arguments are not a JSON object" in proposal.reasoning
    assert proposal.engine == "llm:gpt-test"


async def test_unknown_action_is_dropped(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    server.answer(
        completion(
            tool_calls=[
                call("permissions_grant", action({"user": "me", "role": "owner"})),
                call("email_send", action(GOOD_EMAIL)),
                respond(confidence=30),
            ]
        )
    )

    proposal = await make_engine().propose(request())

    assert [a.action_type for a in proposal.actions] == ["email.send"]
    assert proposal.confidence == 30  # already below the cap
    assert "permissions_grant: unknown action type" in proposal.reasoning


async def test_parameters_failing_the_schema_are_dropped(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    bad_sms = {"to": "call me maybe", "text": "x" * 200}
    server.answer(
        completion(
            tool_calls=[
                call("email_send", action(GOOD_EMAIL)),
                call("sms_send", action(bad_sms)),
                respond(),
            ]
        )
    )

    proposal = await make_engine().propose(request())

    assert [a.action_type for a in proposal.actions] == ["email.send"]
    assert proposal.confidence == 50
    assert "sms.send: invalid parameters" in proposal.reasoning


async def test_injected_validator_is_used(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def validate(action_type: str, parameters: dict[str, Any]) -> list[str]:
        seen.append((action_type, parameters))
        return ["number is blocked"] if action_type == "sms.send" else []

    server.answer(
        completion(
            tool_calls=[
                call("email_send", action(GOOD_EMAIL)),
                call("sms_send", action(GOOD_SMS)),
                respond(),
            ]
        )
    )

    proposal = await make_engine(validate=validate).propose(request())

    assert [a.action_type for a in proposal.actions] == ["email.send"]
    assert "number is blocked" in proposal.reasoning
    assert seen[1] == ("sms.send", GOOD_SMS)


async def test_confidence_is_clamped_and_bypass_flagged(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        completion(
            tool_calls=[
                call("email_send", action(GOOD_EMAIL, confidence=-7)),
                call("sms_send", action(GOOD_SMS, confidence=0.8)),
                respond(confidence=250, bypass=True),
            ]
        )
    )

    proposal = await make_engine().propose(request())

    assert proposal.confidence == 100
    assert [a.confidence for a in proposal.actions] == [0, 80]
    assert proposal.bypass_attempt is True


async def test_only_unusable_actions_retry_in_json_mode(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        completion(tool_calls=[call("wire_money", action({"amount": 10})), respond()]),
        completion(content=json_answer()),
    )
    engine = make_engine()

    proposal = await engine.propose(request())

    assert proposal.engine == "llm:gpt-test (json_object)"
    assert proposal.fallback == ""
    assert [(a.action_type, a.parameters) for a in proposal.actions] == [("sms.send", GOOD_SMS)]
    assert server.requests[1]["response_format"] == {"type": "json_object"}
    assert "tools" not in server.requests[1]
    assert engine.output_mode == "tools"  # the model's fault, not the server's: not remembered


# -- mode rejection ---------------------------------------------------------------------


async def test_server_rejecting_tools_is_remembered(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        error(400, "tools param requires --jinja flag", param="tools"),
        completion(content=json_answer()),
    )
    engine = make_engine()

    first = await engine.propose(request())

    assert first.engine == "llm:gpt-test (json_object)"
    assert first.reply == "Sending the SMS."
    assert [a.action_type for a in first.actions] == ["sms.send"]
    second_body = server.requests[1]
    assert second_body["response_format"] == {"type": "json_object"}
    assert "tools" not in second_body and "tool_choice" not in second_body
    # The JSON prompt spells out the shape and the catalogue with real action types.
    assert '"actions"' in second_body["messages"][0]["content"]
    assert "sms.send" in second_body["messages"][0]["content"]
    assert engine.output_mode == "json_object"

    await engine.propose(request())

    assert len(server.requests) == 3  # straight to json_object, no tools attempt
    assert server.requests[2]["response_format"] == {"type": "json_object"}


async def test_server_rejecting_json_object_too_uses_plain_json(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    fenced = f"Sure! Here it is:\n```json\n{json_answer(confidence='0.9')}\n```\nAnything else?"
    server.answer(
        error(400, "'response_format' of type 'json_schema' is not supported", "response_format"),
        error(400, "response_format json_object is not supported by this model"),
        completion(content=fenced),
    )
    engine = make_engine()

    proposal = await engine.propose(request())

    assert proposal.engine == "llm:gpt-test (plain_json)"
    assert proposal.confidence == 90
    assert [a.action_type for a in proposal.actions] == ["sms.send"]
    assert "response_format" not in server.requests[2]
    assert engine.output_mode == "plain_json"


async def test_unrelated_bad_request_falls_back_without_demotion(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(error(400, "This model's maximum context length is 8192 tokens."))
    engine = make_engine()

    proposal = await engine.propose(request())

    assert proposal.engine == "offline (llm:gpt-test failed: bad request (400))"
    assert proposal.fallback == "transport"  # an HTTP error: the next mode would not help
    assert engine.output_mode == "tools"
    assert len(server.requests) == 1


# -- bad output in JSON modes -----------------------------------------------------------


async def test_refusal_degrades_then_falls_back(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(completion(refusal="I can't help with that."))
    fallback = FakeFallback()

    proposal = await make_engine(fallback=fallback).propose(request())

    assert proposal.reply == "offline reply"
    assert proposal.engine == (
        "offline (llm:gpt-test failed: tools: refusal; json_object: refusal)"
    )
    assert proposal.fallback == "unusable_output"  # the failure that ended the tries
    assert len(fallback.requests) == 1
    assert len(server.requests) == 2


async def test_invalid_json_in_json_mode_falls_back(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        error(400, "Unsupported parameter: 'tools'", "tools"),
        completion(content="Sure, I will text Ann {not json at all"),
    )

    proposal = await make_engine().propose(request())

    assert proposal.engine == (
        "offline (llm:gpt-test failed: tools: mode rejected (400: Unsupported parameter: "
        "'tools'); json_object: invalid JSON)"
    )


# -- transport failures -----------------------------------------------------------------


async def test_timeout_falls_back(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    server.answer(Reply(completion(tool_calls=[respond()]).body, delay=5.0))
    fallback = FakeFallback()
    engine = make_engine(timeout=0.2, max_retries=0, fallback=fallback)

    started = time.monotonic()
    proposal = await engine.propose(request())

    assert time.monotonic() - started < 2.0
    assert proposal.engine == "offline (llm:gpt-test failed: timeout)"
    assert proposal.fallback == "transport"
    assert proposal.reply == "offline reply"
    assert fallback.requests == [request()]
    assert engine.output_mode == "tools"


async def test_connection_error_falls_back(make_engine: EngineFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    proposal = await make_engine(base_url=f"http://127.0.0.1:{port}/v1").propose(request())

    assert proposal.engine == "offline (llm:gpt-test failed: connection error)"


async def test_rate_limit_then_success(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    # retry-after-ms keeps the client's backoff at a millisecond.
    server.answer(
        error(429, "Rate limit reached", **{"retry-after-ms": "1"}),
        completion(tool_calls=[call("sms_send", action(GOOD_SMS)), respond()]),
    )

    proposal = await make_engine(max_retries=2).propose(request())

    assert proposal.engine == "llm:gpt-test"
    assert [a.action_type for a in proposal.actions] == ["sms.send"]
    assert len(server.requests) == 2


async def test_rate_limit_forever_falls_back(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(error(429, "Rate limit reached", **{"retry-after-ms": "1"}))

    proposal = await make_engine(max_retries=2).propose(request())

    assert proposal.engine == "offline (llm:gpt-test failed: rate limited (429))"
    assert len(server.requests) == 3  # one try + two bounded retries


async def test_server_error_forever_falls_back(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(error(500, "The server had an error", **{"retry-after-ms": "1"}))

    proposal = await make_engine(max_retries=1).propose(request())

    assert proposal.engine == "offline (llm:gpt-test failed: server error (500))"
    assert len(server.requests) == 2


async def test_nonsense_body_never_raises(server: FakeOpenAI, make_engine: EngineFactory) -> None:
    server.answer(Reply({"nonsense": True}))

    proposal = await make_engine().propose(request())

    assert proposal.engine.startswith("offline (llm:gpt-test failed: ")


# -- deadline and temperature -----------------------------------------------------------


async def test_the_whole_decision_has_a_deadline(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    # Each attempt would wait 4 s and be retried twice: 12 s without the deadline.
    server.answer(Reply(completion(tool_calls=[respond()]).body, delay=10.0))
    fallback = FakeFallback()
    engine = make_engine(timeout=4.0, max_retries=2, deadline=0.5, fallback=fallback)

    started = time.monotonic()
    proposal = await engine.propose(request())

    assert time.monotonic() - started < 2.0
    assert proposal.engine == "offline (llm:gpt-test failed: no answer within 0.5 s)"
    assert proposal.fallback == "deadline"
    assert fallback.requests == [request()]
    assert engine.output_mode == "tools"  # a slow server says nothing about modes


async def test_deadline_after_a_refused_mode_names_both(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(
        error(400, "tools are not supported by this server", param="tools"),
        Reply(completion(content=json_answer()).body, delay=10.0),
    )

    proposal = await make_engine(deadline=0.5).propose(request())

    assert proposal.engine.startswith("offline (llm:gpt-test failed: tools: mode rejected")
    assert proposal.engine.endswith("; deadline: no answer within 0.5 s)")


def refuse_temperature() -> Reply:
    """OpenAI's answer to a temperature a reasoning model does not take."""
    return error(
        400,
        "Unsupported value: 'temperature' does not support 0 with this model. "
        "Only the default (1) value is supported.",
        param="temperature",
    )


async def test_a_refused_temperature_is_dropped_and_remembered(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    good = completion(tool_calls=[call("sms_send", action(GOOD_SMS)), respond()])
    server.answer(refuse_temperature(), good)
    engine = make_engine()

    first = await engine.propose(request())
    second = await engine.propose(request())

    assert first.engine == second.engine == "llm:gpt-test"
    assert [a.action_type for a in first.actions] == ["sms.send"]
    sent = [("temperature" in body, body.get("temperature")) for body in server.requests]
    assert sent == [(True, 0.0), (False, None), (False, None)]
    assert engine.output_mode == "tools"


async def test_no_temperature_is_sent_when_none_is_set(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(completion(tool_calls=[respond()]))

    proposal = await make_engine(temperature=None).propose(request())

    assert proposal.engine == "llm:gpt-test"
    assert "temperature" not in server.requests[0]


async def test_temperature_refused_without_one_falls_back(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    server.answer(refuse_temperature())

    proposal = await make_engine(temperature=None).propose(request())

    assert proposal.engine == "offline (llm:gpt-test failed: bad request (temperature))"
    assert len(server.requests) == 1


async def test_output_is_bounded_and_a_refused_max_tokens_uses_the_newer_name(
    server: FakeOpenAI, make_engine: EngineFactory
) -> None:
    good = completion(tool_calls=[respond()])
    server.answer(
        error(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
        ),
        good,
    )
    engine = make_engine()

    first = await engine.propose(request())
    second = await engine.propose(request())

    assert first.engine == second.engine == "llm:gpt-test"
    sent = [(b.get("max_tokens"), b.get("max_completion_tokens")) for b in server.requests]
    assert sent == [(1024, None), (None, 1024), (None, 1024)]
