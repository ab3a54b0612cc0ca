"""A conversation is paid once even when the send that opened its window fails after
another message went out free inside it (tests/fakes; the SQL store's own statements
are in tests/integration/test_conversation_windows.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentserver.domain.actions import Action, ActionState
from agentserver.domain.agent import ProcessInput, ProcessResult
from agentserver.domain.channels import ChannelResult, PermanentChannelError
from agentserver.domain.executor import PendingStatus
from tests.fakes.agent import world
from tests.unit.test_agent_service import balance, caller

TO = "+15550001111"


@dataclass
class FirstFailsLate:
    """The first send waits for `go`, then the provider refuses it; the others go out."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    first: str = ""
    sent: list[Action] = field(default_factory=list)

    async def run(self, action: Action) -> ChannelResult:
        if not self.first:
            self.first = action.id
            self.started.set()
            await self.go.wait()
            raise PermanentChannelError("the provider refused the message")
        self.sent.append(action)
        return ChannelResult(channel="fake", provider_id=f"fake-{action.id}", detail={})

    async def poll(self, action: Action) -> PendingStatus:
        return PendingStatus(done=True, succeeded=True)


async def _whatsapp(w: object, body: str) -> ProcessResult:
    return await w.agent.process(  # type: ignore[attr-defined, no-any-return]
        caller("alice"), ProcessInput(f"WhatsApp {TO} that {body}")
    )


async def test_a_message_that_joined_a_failed_opener_window_inherits_it_and_pays() -> None:
    w = world(100)
    runner = FirstFailsLate()
    w.executor.runner = runner
    opener = asyncio.create_task(_whatsapp(w, "the table is ready"))
    await runner.started.wait()

    joined = await _whatsapp(w, "we are waiting for you")
    (free,) = joined.actions
    assert free.state is ActionState.SUCCEEDED and free.token_cost == 0
    assert free.result["detail"]["conversation"] == "continued"
    assert balance(w) == (0, 10, 90)  # the opener's hold; the joiner's was released

    runner.go.set()
    (failed,) = (await opener).actions
    assert failed.state is ActionState.FAILED
    heir = await w.store.get("t", free.id)
    assert heir.token_cost == 10, "the message that went out pays for its conversation"
    assert heir.result["detail"]["conversation"] == "opened"
    assert balance(w) == (10, 0, 90)

    (later,) = (await _whatsapp(w, "see you soon")).actions
    assert later.token_cost == 0 and later.result["detail"]["conversation"] == "continued"
    assert balance(w) == (10, 0, 90), "the window lives on as the heir's"


async def test_a_message_finding_its_window_withdrawn_opens_one_and_pays() -> None:
    w = world(100)
    windows = w.executor.windows
    assert windows is not None
    runner = FirstFailsLate()
    w.executor.runner = runner
    real_join = windows.join  # type: ignore[attr-defined]

    async def join_after_the_opener_failed(key: object, joiner: str, now: object) -> bool:
        runner.go.set()
        await asyncio.wait([opener])  # its send failed and its window was withdrawn
        return bool(await real_join(key, joiner, now))

    windows.join = join_after_the_opener_failed  # type: ignore[method-assign]
    opener = asyncio.create_task(_whatsapp(w, "the table is ready"))
    await runner.started.wait()
    (second,) = (await _whatsapp(w, "we are waiting for you")).actions
    assert (await opener).actions[0].state is ActionState.FAILED
    assert second.state is ActionState.SUCCEEDED
    assert second.token_cost == 10 and second.result["detail"]["conversation"] == "opened"
    assert balance(w) == (10, 0, 90)
