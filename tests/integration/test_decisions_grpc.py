"""Issue 9's decisions through the public surface: exact text, refused quantities,
questions answered from the business context, and a reply in the user's language."""

from __future__ import annotations

from google.protobuf import struct_pb2

from agentserver.v1 import agent_service_pb2 as apb
from tests.conftest import Harness


async def test_text_leaves_exactly_as_written(harness: Harness) -> None:
    t = await harness.tenant(10)
    message = (
        "Text +15553339001: doors open 18:30, tickets at https://x.example/t?id=7&s=2\nBring ID!"
    )
    async with t.client("vic") as client:
        (action,) = (await client.process(apb.ProcessRequest(message=message))).actions
    assert action.state == apb.ACTION_STATE_SUCCEEDED
    body = "doors open 18:30, tickets at https://x.example/t?id=7&s=2\nBring ID!"
    assert action.parameters["body"] == body
    assert action.result.detail["would_send"]["body"] == body


async def test_a_quantity_the_service_cannot_honour_is_refused(harness: Harness) -> None:
    t = await harness.tenant(1000)
    async with t.client("vic") as client:
        resp = await client.process(
            apb.ProcessRequest(message="Send 500 SMS to +15553339002 saying flash sale")
        )
    (action,) = resp.actions
    assert action.state == apb.ACTION_STATE_PROPOSED and not action.executable
    assert [b.reason for b in action.blocked_reasons] == ["QUANTITY_NOT_SUPPORTED"]
    assert "more than I can do at once" in resp.response


async def test_a_question_is_answered_from_the_business_context(harness: Harness) -> None:
    t = await harness.tenant(10)
    context = struct_pb2.Struct()
    context.update({"opening_hours": {"saturday": "Sat 10:00-14:00"}, "address": "1 Elm St"})
    async with t.client("vic") as client:
        resp = await client.process(
            apb.ProcessRequest(
                message="When do you open on Saturday?",
                context=apb.ProcessContext(business_context=context),
            )
        )
    assert not resp.actions
    assert '"Sat 10:00-14:00"' in resp.response


async def test_the_reply_is_in_the_users_language(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with t.client("vic") as client:
        resp = await client.process(
            apb.ProcessRequest(
                message="Envía un SMS al +34 612 345 678 diciendo que la mesa está lista"
            )
        )
    (action,) = resp.actions
    assert action.parameters["body"] == "la mesa está lista"
    assert resp.response.startswith("Voy a enviar un SMS.")
    assert "sms.send: hecho" in resp.response
