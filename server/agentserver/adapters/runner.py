"""Routes an action to what carries it out: a provider channel (per-tenant
settings, or its dry-run twin when the tenant configured none) or a business
handler (resources, bookings, reports, coordinator notifications).

Tenant channel settings live in `channel_settings`: `smtp`, `twilio`,
`elevenlabs` and `coordinators` (who escalations and notifications reach:
`{"email": [...], "sms": [...]}`). Secrets are stored encrypted (Fernet).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentserver.adapters.channels.dryrun import DryRunCallChannel, DryRunChannel
from agentserver.adapters.db.admin_store import SqlAdminStore
from agentserver.adapters.db.business_store import SqlBusinessStore, period_bounds
from agentserver.adapters.secrets import SecretBox
from agentserver.domain.actions import Action
from agentserver.domain.channel_settings import Naming, validate_channel
from agentserver.domain.channels import (
    Channel,
    ChannelResult,
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)
from agentserver.domain.clock import Clock
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.executor import PendingStatus
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry


class ReportWriter(Protocol):
    """Phrases a report from computed figures (the LLM, when one is configured)."""

    model: str

    async def write(self, topic: str, summary: dict[str, Any]) -> str: ...


def _attributes(pairs: Any) -> dict[str, str]:
    if not pairs:
        return {}
    return {str(p["key"]): str(p["value"]) for p in pairs}


def _when(value: Any, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise PermanentChannelError(f"{field} is not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise PermanentChannelError(f"{field} needs a UTC offset: {value!r}")
    return parsed


class ActionRunner:
    """The executor's `ActionRunner` port over channels and the business store."""

    def __init__(
        self,
        admin: SqlAdminStore,
        business: SqlBusinessStore,
        clock: Clock,
        secret_box: SecretBox | None,
        report_writer: ReportWriter | None = None,
    ) -> None:
        self.admin = admin
        self.business = business
        self.clock = clock
        self.secret_box = secret_box
        self.report_writer = report_writer
        self.telemetry: Telemetry = NO_TELEMETRY
        self.settings_ttl = 5.0
        self._settings: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        # What the zero-config server "sends": visible through GetAction's result.
        self.dry_run: dict[str, DryRunChannel] = {
            "email": DryRunChannel("email"),
            "sms": DryRunChannel("sms"),
            "whatsapp": DryRunChannel("whatsapp"),
            "phone": DryRunCallChannel("phone"),
            "coordinators": DryRunChannel("coordinators"),
        }
        self._handlers: dict[str, Callable[[Action], Awaitable[ChannelResult]]] = {
            "email.send": self._email,
            "sms.send": self._sms,
            "whatsapp.send": self._whatsapp,
            "phone.call": self._phone,
            "resource.create": self._resource_create,
            "resource.read": self._resource_read,
            "resource.update": self._resource_update,
            "resource.delete": self._resource_delete,
            "booking.create": self._booking_create,
            "booking.cancel": self._booking_cancel,
            "analysis.report": self._report,
            "human.approval_request": self._notify,
            "human.escalate": self._notify,
            "notification.send": self._notify,
        }

    async def run(self, action: Action) -> ChannelResult:
        handler = self._handlers.get(action.action_type)
        if handler is None:
            raise PermanentChannelError(f"no handler for {action.action_type}")
        return await handler(action)

    async def poll(self, action: Action) -> PendingStatus:
        channel = await self._phone_channel(action.tenant_id)
        try:
            status = await channel.poll(str(action.result.get("provider_id", "")))
        finally:
            await _close(channel)
        return PendingStatus(status.done, status.succeeded, dict(status.detail))

    # -- settings ------------------------------------------------------------

    async def settings(self, tenant_id: str, kind: str) -> dict[str, Any] | None:
        """A tenant's non-secret config merged with its decrypted secrets (kept for
        `settings_ttl` seconds: a change reaches every replica within that time)."""
        hit = self._settings.get((tenant_id, kind))
        if hit and hit[0] > time.monotonic():
            return hit[1]
        merged = await self._load_settings(tenant_id, kind)
        self._settings[(tenant_id, kind)] = (time.monotonic() + self.settings_ttl, merged)
        return merged

    def forget(self, tenant_id: str) -> None:
        """Drop cached settings of a tenant (after this process changed them)."""
        for key in [k for k in self._settings if k[0] == tenant_id]:
            del self._settings[key]

    async def _load_settings(self, tenant_id: str, kind: str) -> dict[str, Any] | None:
        stored = await self.admin.channel(tenant_id, kind)
        if stored is None:
            return None
        config, secret = stored
        secrets: dict[str, Any] = {}
        if secret:
            if self.secret_box is None:
                raise PermanentChannelError("AGENTSERVER_SECRET_KEYS is not set")
            secrets = json.loads(self.secret_box.decrypt(secret))
        try:  # settings stored before they were checked when set
            clean, secrets = validate_channel(kind, config, secrets, Naming("config", "secrets"))
        except InvalidArgument as err:
            raise PermanentChannelError(
                f"the tenant's {kind} settings are not valid ({err.message}): set them again"
            ) from None
        return {**clean, **secrets}

    async def _send(
        self,
        kind: str,
        action: Action,
        make: Callable[[dict[str, Any]], Channel],
        message: OutboundMessage,
    ) -> ChannelResult:
        config = await self.settings(action.tenant_id, kind)
        if config is None:
            return await self._observed("dryrun", self.dry_run[message_kind(action)], message)
        channel = make(config)
        try:
            return await self._observed(kind, channel, message)
        finally:
            await _close(channel)

    async def _observed(
        self, provider: str, channel: Channel, message: OutboundMessage
    ) -> ChannelResult:
        """`channel.send(message)`, timed, counted and in a span of its own."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            with self.telemetry.span("channel.send", {"provider": provider}):
                return await channel.send(message)
        except TransientChannelError:
            outcome = "transient_error"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "permanent_error"
            raise
        finally:
            self.telemetry.channel_call(provider, outcome, time.perf_counter() - start)

    # -- communication -------------------------------------------------------

    async def _email(self, action: Action) -> ChannelResult:
        from agentserver.adapters.channels.smtp import SmtpEmailChannel, SmtpSettings

        p = action.parameters
        message = OutboundMessage(
            action.id, str(p["to"]), str(p["body"]), str(p.get("subject") or "")
        )
        return await self._send(
            "smtp",
            action,
            lambda c: SmtpEmailChannel(
                SmtpSettings(
                    host=c["host"],
                    port=int(c["port"]),
                    security=c.get("security", "starttls"),
                    username=c.get("username"),
                    password=c.get("password"),
                    from_address=c["from_address"],
                    timeout_seconds=float(c.get("timeout_seconds", 10)),
                    ca_file=c.get("ca_file"),
                ),
                clock=self.clock,
            ),
            message,
        )

    def _twilio(self, c: dict[str, Any]) -> Any:
        from agentserver.adapters.channels.twilio_messaging import TwilioSettings

        return TwilioSettings(
            account_sid=c["account_sid"],
            auth_token=c["auth_token"],
            from_number=c["from_number"],
            whatsapp_from=c.get("whatsapp_from"),
            base_url=c.get("base_url"),
            timeout_seconds=float(c.get("timeout_seconds", 10)),
        )

    async def _sms(self, action: Action) -> ChannelResult:
        from agentserver.adapters.channels.twilio_messaging import TwilioSmsChannel

        p = action.parameters
        message = OutboundMessage(action.id, str(p["to"]), str(p["body"]))
        return await self._send(
            "twilio", action, lambda c: TwilioSmsChannel(self._twilio(c)), message
        )

    async def _whatsapp(self, action: Action) -> ChannelResult:
        from agentserver.adapters.channels.twilio_messaging import TwilioWhatsAppChannel

        p = action.parameters
        message = OutboundMessage(action.id, str(p["to"]), str(p["body"]))
        return await self._send(
            "twilio", action, lambda c: TwilioWhatsAppChannel(self._twilio(c)), message
        )

    async def _phone_channel(self, tenant_id: str) -> Any:
        from agentserver.adapters.channels.elevenlabs import (
            ElevenLabsCallChannel,
            ElevenLabsSettings,
        )

        config = await self.settings(tenant_id, "elevenlabs")
        if config is None:
            return self.dry_run["phone"]
        return ElevenLabsCallChannel(
            ElevenLabsSettings(
                api_key=config["api_key"],
                agent_id=config["agent_id"],
                phone_number_id=config["phone_number_id"],
                base_url=config.get("base_url", "https://api.elevenlabs.io"),
            )
        )

    async def _phone(self, action: Action) -> ChannelResult:
        p = action.parameters
        body = str(p.get("first_message") or p.get("purpose") or "")
        channel = await self._phone_channel(action.tenant_id)
        provider = "dryrun" if channel is self.dry_run["phone"] else "elevenlabs"
        try:
            return await self._observed(
                provider,
                channel,
                OutboundMessage(action.id, str(p["to"]), body, subject=str(p.get("purpose") or "")),
            )
        finally:
            await _close(channel)

    # -- business records ----------------------------------------------------

    def _internal(self, provider_id: str, detail: dict[str, Any]) -> ChannelResult:
        return ChannelResult(channel="internal", provider_id=provider_id, detail=detail)

    async def _resource_create(self, action: Action) -> ChannelResult:
        p = action.parameters
        created = await self.business.create_resource(
            action.tenant_id,
            action.location_id,
            str(p["resource_type"]),
            str(p["name"]),
            _attributes(p.get("attributes")),
            self.clock.now(),
        )
        return self._internal(created["id"], created)

    async def _resource_read(self, action: Action) -> ChannelResult:
        p = action.parameters
        found = await self.business.read_resources(
            action.tenant_id, p.get("resource_type"), p.get("resource_id"), p.get("name")
        )
        return self._internal("", {"resources": found, "count": len(found)})

    async def _resource_update(self, action: Action) -> ChannelResult:
        p = action.parameters
        updated = await self.business.update_resource(
            action.tenant_id,
            p.get("resource_id"),
            p.get("name"),
            p.get("resource_type"),
            _attributes(p.get("attributes")) or None,
            p.get("expected_version"),
            self.clock.now(),
        )
        return self._internal(updated["id"], updated)

    async def _resource_delete(self, action: Action) -> ChannelResult:
        p = action.parameters
        deleted = await self.business.delete_resource(
            action.tenant_id,
            p.get("resource_id"),
            p.get("name"),
            p.get("resource_type"),
            p.get("expected_version"),
            self.clock.now(),
        )
        return self._internal(deleted["id"], deleted)

    async def _booking_create(self, action: Action) -> ChannelResult:
        p = action.parameters
        start = _when(p["start"], "start")
        if p.get("end"):
            end = _when(p["end"], "end")
        else:
            end = start + timedelta(minutes=int(p["duration_minutes"]))
        booking = await self.business.create_booking(
            action.tenant_id,
            action.location_id,
            p.get("resource_id"),
            p.get("resource_name"),
            start,
            end,
            str(p.get("customer_name") or ""),
            str(p.get("notes") or ""),
            action.id,
            self.clock.now(),
        )
        return self._internal(booking["booking_id"], booking)

    async def _booking_cancel(self, action: Action) -> ChannelResult:
        cancelled = await self.business.cancel_booking(
            action.tenant_id, str(action.parameters["booking_id"]), self.clock.now()
        )
        return self._internal(cancelled["booking_id"], cancelled)

    async def _report(self, action: Action) -> ChannelResult:
        p = action.parameters
        since, until = period_bounds(p.get("period"), self.clock.now())
        summary = await self.business.summary(action.tenant_id, since, until)
        topic = str(p.get("topic") or "general")
        text, writer = _report_text(topic, summary), "offline"
        if self.report_writer is not None:
            try:
                text, writer = (
                    await self.report_writer.write(topic, summary),
                    f"llm:{self.report_writer.model}",
                )
            except Exception as err:  # the figures stand; only the phrasing degrades
                writer = f"offline (llm failed: {err})"[:200]
        return self._internal(
            "", {"topic": topic, "summary": summary, "text": text, "written_by": writer}
        )

    # -- people --------------------------------------------------------------

    async def _notify(self, action: Action) -> ChannelResult:
        """Reach the tenant's coordinators through their configured channels."""
        p = action.parameters
        subject = {
            "human.approval_request": "Approval requested",
            "human.escalate": f"Escalation ({p.get('urgency') or 'normal'})",
            "notification.send": "Notification",
        }[action.action_type] + f" from {action.requested_by}"
        body = str(p.get("details") or p.get("reason") or p.get("message") or "")
        if p.get("subject"):
            body = f"{p['subject']}\n\n{body}"
        contacts = await self.settings(action.tenant_id, "coordinators")
        if contacts is None:
            return await self._observed(
                "dryrun",
                self.dry_run["coordinators"],
                OutboundMessage(action.id, "coordinators", body, subject),
            )
        sent: list[dict[str, str]] = []
        for kind, key in (("email", "email"), ("sms", "sms")):
            for n, address in enumerate(contacts.get(key, [])):
                child = _child(
                    action, f"{action.id}-{kind}-{n}", to=address, body=body, subject=subject
                )
                result = await (self._email(child) if kind == "email" else self._sms(child))
                sent.append(
                    {"channel": result.channel, "to": address, "provider_id": result.provider_id}
                )
        if not sent:
            raise PermanentChannelError("the tenant's coordinators have no email or sms contact")
        return ChannelResult(channel="coordinators", provider_id=action.id, detail={"sent": sent})


def message_kind(action: Action) -> str:
    return {
        "email.send": "email",
        "sms.send": "sms",
        "whatsapp.send": "whatsapp",
        "phone.call": "phone",
    }.get(action.action_type, "coordinators")


def _child(action: Action, action_id: str, **parameters: Any) -> Action:
    kind = "email.send" if "@" in str(parameters["to"]) else "sms.send"
    return replace(action, id=action_id, action_type=kind, parameters=parameters)


def _report_text(topic: str, summary: dict[str, Any]) -> str:
    used = summary["tokens_used"]
    parts = [f"Report ({topic}) from {summary['since'][:10]} to {summary['until'][:10]}:"]
    if topic in ("usage", "general"):
        total = sum(used.values())
        detail = ", ".join(f"{op} {n}" for op, n in sorted(used.items())) or "nothing"
        parts.append(f"{total} tokens used ({detail}).")
    if topic in ("bookings", "general"):
        b = summary["bookings"]
        parts.append(
            f"{b.get('confirmed', 0)} confirmed and {b.get('cancelled', 0)} cancelled bookings."
        )
    if topic in ("resources", "general"):
        r = summary["resources"]
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(r.items())) or "none"
        parts.append(f"Resources: {detail}.")
    return " ".join(parts)


async def _close(channel: object) -> None:
    close = getattr(channel, "aclose", None)
    if close is not None:
        await close()
