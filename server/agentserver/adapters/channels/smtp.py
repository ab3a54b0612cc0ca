"""Email through a tenant's own SMTP server, with aiosmtplib.

Idempotency: SMTP has no idempotency key. The action id becomes the message's
`Message-ID` (``<{action_id}@{domain}>``) and an `X-Agentserver-Action-Id` header, so
the same action always produces the same Message-ID: mail stores and clients that
de-duplicate by Message-ID (many do) collapse a resend, and anyone can match a
received mail to its action.

Error mapping (SMTP reply classes, RFC 5321 §4.2.1): 4xx is a transient failure, 5xx a
permanent one, for every reply, including refused recipients and AUTH (535 is
permanent, 454 "temporary authentication failure" is transient). Connection refused,
timeouts and dropped connections are transient; a server lacking STARTTLS/AUTH that the
settings require, or a TLS certificate that does not verify, is a configuration
problem and permanent.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from hashlib import sha256
from typing import Literal

import aiosmtplib

from agentserver.domain.channels import (
    ChannelResult,
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)
from agentserver.domain.clock import Clock, SystemClock

SmtpSecurity = Literal["starttls", "tls", "none"]

# RFC 5322 dot-atom-text: what may stand left of the "@" in a Message-ID unquoted.
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


@dataclass(frozen=True)
class SmtpSettings:
    """One tenant's SMTP server.

    `security`: "starttls" (submission, usually port 587; STARTTLS is required, never
    skipped), "tls" (implicit TLS, usually 465) or "none" (plain text; only for a
    relay on a trusted network). `ca_file` names a PEM file of the only CA(s) to
    trust (a private CA, or a self-signed server certificate); leave it None to use
    the system's trust store. `message_id_domain` defaults to the domain of `from_address`.
    """

    host: str
    port: int
    security: SmtpSecurity
    username: str | None
    password: str | None
    from_address: str
    timeout_seconds: float = 10
    ca_file: str | None = None
    message_id_domain: str | None = None

    def __repr__(self) -> str:
        # Keep the password out of logs and tracebacks.
        return (
            f"SmtpSettings(host={self.host!r}, port={self.port!r}, "
            f"security={self.security!r}, username={self.username!r}, "
            f"password={'***' if self.password else None}, "
            f"from_address={self.from_address!r})"
        )


def message_id_for(idempotency_key: str, domain: str) -> str:
    """The Message-ID for an action: stable, so a resend carries the same one.

    Keys that are not valid in a Message-ID (spaces, "@", "<", ...) are replaced by
    their SHA-256, which is still stable; the raw key always travels in
    `X-Agentserver-Action-Id`.
    """
    local = idempotency_key if _DOT_ATOM.match(idempotency_key) else None
    if local is None or len(local) > 128:
        local = sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"<{local}@{domain}>"


def _domain_of(address: str) -> str:
    _, addr = parseaddr(address)
    domain = addr.rpartition("@")[2]
    return domain if domain and _DOT_ATOM.match(domain) else "agentserver"


class SmtpEmailChannel:
    """The email channel: one plain-text message per send, to one recipient.

    `message.sender` is not used: the From address is the tenant's configured
    `from_address`, so nothing the model proposes can change who the mail claims to
    be from (DESIGN principle 1).
    """

    def __init__(self, settings: SmtpSettings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._domain = settings.message_id_domain or _domain_of(settings.from_address)

    @property
    def name(self) -> str:
        """Always "email"."""
        return "email"

    def build_message(self, message: OutboundMessage) -> EmailMessage:
        """The exact RFC 5322 message `send` transmits (public so it can be inspected)."""
        to = message.to.strip()
        _, to_addr = parseaddr(to)
        if not to_addr or "@" not in to_addr or "," in to:
            raise PermanentChannelError(f"not a single email address: {message.to!r}")
        email = EmailMessage()
        try:
            email["From"] = self._settings.from_address
            email["To"] = to
            email["Subject"] = message.subject
            email["Date"] = format_datetime(self._clock.now())
            email["Message-ID"] = message_id_for(message.idempotency_key, self._domain)
            email["X-Agentserver-Action-Id"] = message.idempotency_key
        except ValueError as exc:
            # The email package refuses CR/LF in header values (header injection).
            raise PermanentChannelError(f"invalid email header: {exc}") from exc
        email.set_content(message.body)
        return email

    async def send(self, message: OutboundMessage) -> ChannelResult:
        """Deliver `message` to the tenant's SMTP server.

        Raises `TransientChannelError` or `PermanentChannelError` as described in the
        module docstring.
        """
        email = self.build_message(message)
        s = self._settings
        try:
            errors, _reply = await aiosmtplib.send(
                email,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.security == "tls",
                # True, not None: with None aiosmtplib upgrades only if offered, and a
                # stripped STARTTLS advertisement would silently send in clear text.
                start_tls=s.security == "starttls",
                timeout=s.timeout_seconds,
                cert_bundle=s.ca_file,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise _from_refusals(exc.recipients) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _from_reply(exc.code, exc.message, "SMTP server replied") from exc
        except (
            aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPServerDisconnected,
            OSError,
        ) as exc:
            # Refused, unreachable, timed out, dropped. aiosmtplib wraps TLS handshake
            # failures in SMTPConnectError, so look down the cause chain for a
            # certificate that will never verify.
            if _is_certificate_error(exc):
                raise PermanentChannelError(
                    f"TLS certificate of {s.host}:{s.port} does not verify: {exc}"
                ) from exc
            raise TransientChannelError(
                f"SMTP {s.host}:{s.port} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        except aiosmtplib.SMTPException as exc:
            # What is left is the server lacking what the settings require (STARTTLS,
            # AUTH, SMTPUTF8): configuration, not luck.
            raise PermanentChannelError(f"SMTP {s.host}:{s.port}: {exc}") from exc
        if errors:
            # Some recipients refused while others accepted; with our single
            # recipient this only happens if the server answers oddly.
            refusals = [
                aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt)
                for rcpt, reply in errors.items()
            ]
            raise _from_refusals(refusals)
        message_id = str(email["Message-ID"])
        return ChannelResult(
            channel="smtp",
            provider_id=message_id,
            detail={"to": message.to, "subject": message.subject},
        )


def _from_reply(code: int, text: str, what: str) -> TransientChannelError | PermanentChannelError:
    detail = f"{what} {code} {text}".strip()
    if 500 <= code < 600:
        return PermanentChannelError(detail)
    return TransientChannelError(detail)


def _from_refusals(
    refusals: list[aiosmtplib.SMTPRecipientRefused],
) -> TransientChannelError | PermanentChannelError:
    text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
    # Permanent only if some refusal is permanent; all-4xx (greylisting, full
    # mailbox) is worth another try.
    if any(500 <= r.code < 600 for r in refusals):
        return PermanentChannelError(f"recipient refused: {text}")
    return TransientChannelError(f"recipient temporarily refused: {text}")


def _is_certificate_error(exc: BaseException) -> bool:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:  # guard against cycles
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        chain.append(current)
        current = current.__cause__ or current.__context__
    return False


__all__ = ["SmtpEmailChannel", "SmtpSecurity", "SmtpSettings", "message_id_for"]
