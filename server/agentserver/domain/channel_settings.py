"""What a tenant's channel settings must be, checked when they are set (and again when
they are read, for settings stored before they were checked), so that a bad one is
INVALID_ARGUMENT naming the field, never an error at send time.

The schema, per channel (`protos/agentserver/v1/admin_service.proto` says the same):

    smtp          host (required), port 1..65535 (required), security starttls | tls |
                  none (default starttls), username, from_address (an email address,
                  required), timeout_seconds (0 < s <= 120), ca_file, message_id_domain;
                  secret: password (required with a username)
    twilio        account_sid (AC + 32 hex digits, required), from_number (E.164,
                  required), whatsapp_from (E.164), base_url (http or https),
                  timeout_seconds; secret: auth_token (required)
    elevenlabs    agent_id (required), phone_number_id (required), base_url;
                  secret: api_key (required)
    coordinators  email (email addresses), sms (E.164 numbers): at least one contact

A setting may not carry a key the schema does not name, and a secret is only ever
taken from the secrets (never from the visible config, where it would be stored in
clear).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentserver.domain.errors import FieldViolation, InvalidArgument

CHANNEL_KINDS = ("smtp", "twilio", "elevenlabs", "coordinators")

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[^@\s<>\"]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")
_HOST_LABEL = re.compile(rf"^{_LABEL}$")
_TWILIO_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable, no spaces: ids and keys

Check = Callable[[Any], str | None]  # None when fine, else what is wrong


def _text(max_chars: int = 200) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        if len(value) > max_chars or "\x00" in value:
            return f"must be at most {max_chars} characters, without NUL"
        return None

    return check


def _token(value: Any) -> str | None:
    if not isinstance(value, str) or not _TOKEN.match(value):
        return "must be 1 to 200 printable characters without spaces"
    return None


def _hostname(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 253:
        return "must be a host name or IP address"
    try:
        ipaddress.ip_address(value.strip("[]"))
        return None
    except ValueError:
        pass
    if all(_HOST_LABEL.match(label) for label in value.rstrip(".").split(".")):
        return None
    return "must be a host name or IP address"


def _port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return "must be a whole number from 1 to 65535"
    return None


def _seconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 120:
        return "must be a number of seconds above 0 and at most 120"
    return None


def _email(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value):
        return "must be an email address (name@example.com)"
    return None


def _phone(value: Any) -> str | None:
    if not isinstance(value, str) or not E164.match(value.removeprefix("whatsapp:")):
        return "must be a phone number in E.164 form (+15551234567)"
    return None


def _url(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 500:
        return "must be an http or https URL"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "must be an http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL"
    return None


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _list_of(item: Check, max_items: int = 20) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) > max_items:
            return f"must be a list of at most {max_items} entries"
        for i, entry in enumerate(value):
            if (wrong := item(entry)) is not None:
                return f"entry {i} {wrong}"
        return None

    return check


@dataclass(frozen=True)
class ChannelSchema:
    fields: Mapping[str, Check]
    required: frozenset[str] = frozenset()
    secrets: Mapping[str, Check] = field(default_factory=dict)
    required_secrets: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)


SCHEMAS: dict[str, ChannelSchema] = {
    "smtp": ChannelSchema(
        fields={
            "host": _hostname,
            "port": _port,
            "security": _one_of("starttls", "tls", "none"),
            "username": _text(),
            "from_address": _email,
            "timeout_seconds": _seconds,
            "ca_file": _text(500),
            "message_id_domain": _hostname,
        },
        required=frozenset({"host", "port", "from_address"}),
        secrets={"password": _text(500)},
        defaults={"security": "starttls"},
    ),
    "twilio": ChannelSchema(
        fields={
            "account_sid": lambda v: (
                None
                if isinstance(v, str) and _TWILIO_SID.match(v)
                else "must be AC followed by 32 hexadecimal digits"
            ),
            "from_number": _phone,
            "whatsapp_from": _phone,
            "base_url": _url,
            "timeout_seconds": _seconds,
        },
        required=frozenset({"account_sid", "from_number"}),
        secrets={"auth_token": _token},
        required_secrets=frozenset({"auth_token"}),
    ),
    "elevenlabs": ChannelSchema(
        fields={"agent_id": _token, "phone_number_id": _token, "base_url": _url},
        required=frozenset({"agent_id", "phone_number_id"}),
        secrets={"api_key": _token},
        required_secrets=frozenset({"api_key"}),
    ),
    "coordinators": ChannelSchema(
        fields={"email": _list_of(_email), "sms": _list_of(_phone)},
    ),
}

SECRET_NAMES: frozenset[str] = frozenset(n for s in SCHEMAS.values() for n in s.secrets)


@dataclass(frozen=True)
class Naming:
    """How the fields of a setting are named in errors: an rpc names `smtp.host`,
    the CLI `config.host` and `secrets.password`."""

    config: str
    secrets: str

    @classmethod
    def rpc(cls, kind: str) -> Naming:
        return cls(kind, kind)


def validate_channel(
    kind: str,
    config: Mapping[str, Any],
    secrets: Mapping[str, Any],
    naming: Naming,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The setting as it is stored: (config with defaults, secrets). Raises
    InvalidArgument naming every field that is wrong. `secrets` are all the secrets
    the setting will have (new ones merged over those stored)."""
    if kind not in SCHEMAS:
        raise InvalidArgument.field("channel", f"must be one of {', '.join(CHANNEL_KINDS)}")
    schema = SCHEMAS[kind]
    problems: list[FieldViolation] = []

    def wrong(prefix: str, name: str, what: str) -> None:
        problems.append(FieldViolation(f"{prefix}.{name}", what))

    for name, value in config.items():
        if name in schema.secrets:
            wrong(naming.config, name, f"is a secret: give it with the secrets ({naming.secrets})")
        elif name not in schema.fields:
            known = ", ".join(sorted(schema.fields)) or "none"
            wrong(naming.config, name, f"is not a {kind} setting (known: {known})")
        elif (what := schema.fields[name](value)) is not None:
            wrong(naming.config, name, what)
    for name in sorted(schema.required - config.keys()):
        wrong(naming.config, name, "is required")
    for name, value in secrets.items():
        if name not in schema.secrets:
            known = ", ".join(sorted(schema.secrets)) or "none"
            wrong(naming.secrets, name, f"is not a {kind} secret (known: {known})")
        elif (what := schema.secrets[name](value)) is not None:
            wrong(naming.secrets, name, what)
    needed = set(schema.required_secrets)
    if kind == "smtp" and config.get("username"):
        needed.add("password")
    for name in sorted(needed - secrets.keys()):
        wrong(naming.secrets, name, "is required")
    if kind == "smtp" and "password" in secrets and not config.get("username"):
        wrong(naming.config, "username", "is required with a password")
    if kind == "coordinators" and not (config.get("email") or config.get("sms")):
        wrong(naming.config, "email", "or sms is required: at least one contact")
    if problems:
        raise InvalidArgument(problems)
    return {**schema.defaults, **config}, dict(secrets)
