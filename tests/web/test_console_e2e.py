"""The console end to end in headless Chromium (Debian's, driven by Playwright), once
through the built-in gRPC-web endpoint and once through Envoy: a coordinator signs
in, sees a consultation that Process created, approves it with an edited parameter
and sees it succeed and the wallet move; rejects another with a reason and sees the
reason in the conversation; says that an action whose outcome nobody knows went
out; a requester cannot approve their own approval-required action, and sees why."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import playwright.async_api as playwright_api
import pytest

from agentserver.domain.identity import TENANT_DEFAULT_SCOPES
from agentserver.entrypoints.web.server import start_web
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import conversation_service_pb2 as cpb
from tests import procs
from tests.conftest import IN_CI, Harness, Tenant
from tests.integration.test_more_lifecycle import _stuck

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    chromium = await asyncio.to_thread(procs.ensure_chromium)
    if chromium is None:
        if IN_CI:
            pytest.fail("Debian chromium is not installed and could not be installed")
        pytest.skip("Debian chromium is not installed and could not be installed")
    if not (ROOT / "web" / "dist" / "app.js").exists():
        pytest.fail("the console is not built: run `make web` (make test does)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(chromium), args=procs.CHROMIUM_FLAGS)
        yield b
        await b.close()


async def people(h: Harness) -> tuple[Tenant, str, str]:
    """A tenant whose emails wait for a coordinator and SMS for an approver, with a
    coordinator's and a requester's person keys."""
    t = await h.tenant(50)
    await h.app.admin.set_tenant_policy(
        t.id,
        {"level_overrides": {"email.send": "consultation", "sms.send": "approval_required"}},
    )
    keys = []
    for user in ("coco", "rita"):
        _, key = await h.app.admin.create_key(
            t.id, TENANT_DEFAULT_SCOPES, user, h.clock.now(), user_id=user
        )
        keys.append(key)
    return t, keys[0], keys[1]


async def status(page, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait for the console to announce `text`; on a timeout, say what it announced."""
    try:
        await page.get_by_role("status").filter(has_text=text).wait_for(timeout=10_000)
    except playwright_api.TimeoutError:
        raise AssertionError(
            f"announced {await page.get_by_role('status').inner_text()!r}"
        ) from None


async def sign_in(page, key: str) -> None:  # type: ignore[no-untyped-def]
    await page.get_by_label("API key").fill(key)
    await page.get_by_label("API key").press("Enter")  # keyboard, no mouse
    await page.get_by_role("button", name="Inbox").click()
    await page.get_by_role("heading", name="Inbox").wait_for()


async def journey(h: Harness, browser: object, console: str, shots: Path | None) -> None:
    t, coco_key, rita_key = await people(h)
    async with h.client(rita_key, t.id, user_id="") as rita:
        first = await rita.process(
            apb.ProcessRequest(message="Email jo@example.com that the order shipped")
        )
        second = await rita.process(
            apb.ProcessRequest(message="Email ann@example.com that the shop is closed")
        )
        sms = await rita.process(
            apb.ProcessRequest(message="Text +15551234567 that the doctor is late")
        )
    to_approve, to_reject, own = first.actions[0], second.actions[0], sms.actions[0]
    assert to_approve.state == apb.ACTION_STATE_AWAITING_COORDINATOR
    assert own.state == apb.ACTION_STATE_AWAITING_APPROVER

    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(console)
    await sign_in(page, coco_key)
    assert coco_key not in page.url
    card = page.locator(f"article[data-action-id='{to_approve.id}']")
    await card.wait_for()
    await (
        card.locator("blockquote.origin")
        .filter(has_text="Email jo@example.com that the order shipped")
        .wait_for()
    )
    assert "a coordinator" in await card.inner_text()
    if shots is not None:
        await page.screenshot(path=str(shots / "console-inbox.png"), full_page=False)

    # The wallet before: the waiting emails hold their tokens.
    await page.get_by_role("button", name="Wallet").click()
    used = page.locator("dd[data-field='used']")
    await used.wait_for()
    used_before = int((await used.inner_text()).split()[0])

    # Approve with an edited parameter; a bad edit is refused beside its field first.
    await page.get_by_role("button", name="Inbox").click()
    await card.get_by_role("button", name="Edit and approve").click()
    to_field = card.get_by_label("to *")
    await to_field.fill("not an address")
    await card.get_by_role("button", name="Approve with these parameters").click()
    assert "expected form" in await card.locator(f"#edit-{to_approve.id}-to-error").inner_text()
    await to_field.fill("jo@example.com")
    await card.get_by_label("body *").fill("Your order left our warehouse today.")
    await card.get_by_role("button", name="Approve with these parameters").click()
    await status(page, "email.send: succeeded")
    async with h.client(coco_key, t.id, user_id="") as coco:
        done = (await coco.get_action(apb.GetActionRequest(action_id=to_approve.id))).action
    assert done.state == apb.ACTION_STATE_SUCCEEDED
    assert done.parameters["body"] == "Your order left our warehouse today."
    assert done.decided_by == "coco"
    await page.get_by_role("button", name="Wallet").click()
    await (
        page.locator("dd[data-field='used']")
        .filter(has_text=f"{used_before + 1} tokens")
        .wait_for()
    )

    # Reject the other with a reason, and find the reason in the conversation.
    await page.get_by_role("button", name="Inbox").click()
    other = page.locator(f"article[data-action-id='{to_reject.id}']")
    await other.get_by_role("button", name="Reject").click()
    await other.get_by_label("Reason").fill("Not this week, please")
    await other.get_by_role("button", name="Reject with this reason").click()
    await status(page, "email.send: rejected")
    await page.get_by_label("Show").select_option(label="rejected")
    rejected = page.locator(f"article[data-action-id='{to_reject.id}']")
    await rejected.get_by_role("button", name="Open conversation").click()
    await page.locator("li.role-system").filter(has_text="Not this week, please").wait_for()

    # The chat box calls Process.
    await page.get_by_role("button", name="New conversation").click()
    await page.get_by_label("Message").fill("Email bob@example.com that the meeting moved")
    await page.get_by_role("button", name="Send").click()
    await page.locator("li.proposed").filter(has_text="email.send").wait_for()

    # An action whose send may or may not have happened: a person says which.
    unknown = await _stuck(h, t, provider_id="")
    h.clock.advance(timedelta(minutes=6))  # past the execution lease: the sweep parks it
    await h.app.agent.sweep()
    await page.get_by_role("button", name="Inbox").click()
    await page.get_by_label("Show").select_option(label="outcome unknown")
    parked = page.locator(f"article[data-action-id='{unknown}']")
    await parked.get_by_label("How you found out (optional)").fill("the customer has it")
    await parked.get_by_role("button", name="It went out").click()
    await status(page, "email.send: succeeded")
    await page.locator("p.empty").filter(has_text="No actions.").wait_for()  # reloaded
    async with h.client(coco_key, t.id, user_id="") as coco:
        settled = (await coco.get_action(apb.GetActionRequest(action_id=unknown))).action
        said = await coco.list_messages(cpb.ListMessagesRequest(session_id=settled.session_id))
    assert settled.state == apb.ACTION_STATE_SUCCEEDED
    assert any(
        "coco confirmed it happened: the customer has it" in m.content for m in said.messages
    ), [m.content for m in said.messages]

    # The requester cannot approve their own approval-required action, and sees why.
    await page.get_by_role("button", name="Sign out").click()
    # Signed out, nothing of the previous person's is left to click (their buttons
    # held their key: a hidden nav that CSS showed again once let anyone go on).
    await page.get_by_label("API key").wait_for()
    for view in ("Inbox", "Conversations", "Wallet", "Sign out"):
        assert await page.get_by_role("button", name=view).count() == 0, view
    await sign_in(page, rita_key)
    await page.get_by_label("Show").select_option(label="All waiting")
    mine = page.locator(f"article[data-action-id='{own.id}']")
    await mine.wait_for()
    assert await mine.get_by_role("button", name="Approve").count() == 0
    why = await mine.locator(".cannot-decide").inner_text()
    assert "requester cannot approve their own request" in why
    assert "approver" in why

    # Usable at 390 px: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    for view in ("Inbox", "Conversations", "Wallet"):
        await page.get_by_role("button", name=view).click()
        await page.wait_for_timeout(300)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (view, width)
    stored = await page.evaluate("sessionStorage.getItem('agentserver.key')")
    assert stored == rita_key and rita_key not in page.url
    assert not errors, errors
    await context.close()


async def test_console_through_the_builtin_endpoint(harness: Harness, browser: object) -> None:
    web = await start_web(harness.app, harness.server, "127.0.0.1:0")
    shots = ROOT / "docs" if os.environ.get("AGENTSERVER_SCREENSHOTS") else None
    try:
        await journey(harness, browser, f"http://127.0.0.1:{web.port}/", shots)
    finally:
        await web.stop(0)


async def test_console_through_envoy(harness: Harness, browser: object, tmp_path: Path) -> None:
    # The console's files come from the built-in server; its calls go to Envoy, which
    # allows that origin (CORS) and forwards to the gRPC port.
    port = procs.free_port()
    origin = f"http://127.0.0.1:{port}"
    proc, envoy_port = await asyncio.to_thread(
        procs.start_envoy, tmp_path, harness.target, (origin,)
    )
    settings = replace(
        harness.app.settings,
        console_api_url=f"http://127.0.0.1:{envoy_port}",
        web_origins=(),
    )
    web = await start_web(
        replace(harness.app, settings=settings), harness.server, f"127.0.0.1:{port}"
    )
    try:
        await journey(harness, browser, f"{origin}/", None)
    finally:
        await web.stop(0)
        proc.terminate()
        proc.wait(10)
