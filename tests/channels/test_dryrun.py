"""Dry-run channels record what they would send, once per idempotency key."""

from __future__ import annotations

import asyncio

import pytest

from agentserver.adapters.channels import CallStatus, DryRunCallChannel, DryRunChannel
from agentserver.adapters.channels.polling import PollableChannel
from agentserver.domain.channels import Channel, OutboundMessage, PermanentChannelError


def _message(key: str = "act-1", **changes: str) -> OutboundMessage:
    fields = {
        "idempotency_key": key,
        "to": "ada@example.com",
        "body": "Your table is booked for 8pm.",
        "subject": "Booking confirmed",
        "sender": "bistro@example.com",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


async def test_records_and_describes_what_would_be_sent() -> None:
    channel = DryRunChannel("email")
    result = await channel.send(_message())

    assert channel.name == "email"
    assert result.channel == "dry-run"
    assert result.provider_id == "dry-run-act-1"
    assert result.pending is False
    assert result.detail == {
        "would_send": {
            "channel": "email",
            "to": "ada@example.com",
            "subject": "Booking confirmed",
            "body": "Your table is booked for 8pm.",
            "sender": "bistro@example.com",
        }
    }
    assert channel.sent == [_message()]
    assert channel.result_for("act-1") == result


async def test_same_key_twice_returns_first_result_and_records_once() -> None:
    channel = DryRunChannel("sms")
    first = await channel.send(_message("act-7", to="+15550001111"))
    second = await channel.send(_message("act-7", to="+15550001111"))
    assert second is first
    assert len(channel.sent) == 1

    await channel.send(_message("act-8", to="+15550001111"))
    assert [m.idempotency_key for m in channel.sent] == ["act-7", "act-8"]


async def test_concurrent_sends_of_one_key_record_once() -> None:
    channel = DryRunChannel("whatsapp")
    results = await asyncio.gather(*(channel.send(_message("act-9")) for _ in range(20)))
    assert len({id(r) for r in results}) == 1
    assert len(channel.sent) == 1


async def test_same_key_with_different_content_is_an_error() -> None:
    channel = DryRunChannel("email")
    await channel.send(_message("act-2"))
    with pytest.raises(PermanentChannelError, match="act-2"):
        await channel.send(_message("act-2", body="something else"))
    assert len(channel.sent) == 1


async def test_memory_is_bounded() -> None:
    channel = DryRunChannel("email", max_records=3)
    for i in range(5):
        await channel.send(_message(f"act-{i}"))
    assert [m.idempotency_key for m in channel.sent] == ["act-2", "act-3", "act-4"]
    channel.clear()
    assert channel.sent == []


async def test_call_channel_is_pending_then_polls_done() -> None:
    channel = DryRunCallChannel()
    result = await channel.send(_message("call-1", to="+15550002222", subject=""))
    assert channel.name == "phone"
    assert result.pending is True
    assert result.provider_id == "dry-run-call-1"

    status = await channel.poll(result.provider_id)
    assert status == CallStatus(
        done=True, succeeded=True, detail={"status": "done", "dry_run": True, "recorded": True}
    )
    with pytest.raises(PermanentChannelError):
        await channel.poll("conv_real_elevenlabs_id")


def test_satisfy_the_ports() -> None:
    channel: Channel = DryRunChannel("email")
    assert channel.name == "email"
    assert isinstance(DryRunCallChannel(), PollableChannel)
    assert not isinstance(DryRunChannel("email"), PollableChannel)
