"""The checks every setting passes before it is stored: channel settings, the decision
policy, scopes and permission rules. Each names every wrong field."""

from __future__ import annotations

import pytest

from agentserver.domain.admin_model import (
    Rule,
    validate_id,
    validate_policy,
    validate_rule,
    validate_scopes,
)
from agentserver.domain.audit import REDACTED
from agentserver.domain.channel_settings import Naming, validate_channel
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.registry import default_registry

RPC = Naming.rpc
CLI = Naming("config", "secrets")
SID = "AC" + "0f" * 16


def wrong(call: object) -> list[str]:
    with pytest.raises(InvalidArgument) as err:
        call()  # type: ignore[operator]
    return sorted(v.field for v in err.value.violations)


def test_a_good_setting_is_stored_with_its_defaults() -> None:
    config, secrets = validate_channel(
        "smtp",
        {"host": "mail.example.com", "port": 587, "from_address": "shop@example.com"},
        {},
        RPC("smtp"),
    )
    assert config["security"] == "starttls" and secrets == {}
    config, secrets = validate_channel(
        "twilio",
        {"account_sid": SID, "from_number": "+15550001111", "base_url": "http://127.0.0.1:9"},
        {"auth_token": "tok"},
        RPC("twilio"),
    )
    assert secrets == {"auth_token": "tok"}


@pytest.mark.parametrize(
    ("kind", "config", "secrets", "fields"),
    [
        ("twilio", {"account_sid": SID, "from_number": "+15550001111"}, {}, ["twilio.auth_token"]),
        (
            "twilio",
            {"account_sid": "AC12", "from_number": "5551234"},
            {"auth_token": "t"},
            ["twilio.account_sid", "twilio.from_number"],
        ),
        (
            "twilio",
            {"account_sid": SID, "from_number": "+15550001111", "auth_token": "t"},
            {"auth_token": "t"},
            ["twilio.auth_token"],
        ),
        ("elevenlabs", {"agent_id": "a", "phone_number_id": "p"}, {}, ["elevenlabs.api_key"]),
        (
            "elevenlabs",
            {"agent_id": "a", "phone_number_id": "p", "base_url": "file:///etc"},
            {"api_key": "k"},
            ["elevenlabs.base_url"],
        ),
        (
            "elevenlabs",
            {"agent_id": "a b", "phone_number_id": "p"},
            {"api_key": "k"},
            ["elevenlabs.agent_id"],
        ),
        (
            "smtp",
            {"host": "-bad-", "port": 0, "from_address": "nobody"},
            {},
            ["smtp.from_address", "smtp.host", "smtp.port"],
        ),
        (
            "smtp",
            {"host": "h", "port": 25, "from_address": "a@b.co", "username": "u"},
            {},
            ["smtp.password"],
        ),
        (
            "smtp",
            {"host": "h", "port": 25, "from_address": "a@b.co"},
            {"password": "p"},
            ["smtp.username"],
        ),
        (
            "smtp",
            {"host": "h", "port": True, "from_address": "a@b.co", "timeout_seconds": 0},
            {},
            ["smtp.port", "smtp.timeout_seconds"],
        ),
        (
            "smtp",
            {"host": "h", "port": 25, "from_address": "a@b.co", "colour": "red"},
            {},
            ["smtp.colour"],
        ),
        ("coordinators", {}, {}, ["coordinators.email"]),
        (
            "coordinators",
            {"email": ["ok@example.com", "nope"], "sms": "+15550001111"},
            {},
            ["coordinators.email", "coordinators.sms"],
        ),
        ("coordinators", {"sms": ["+15550001111"]}, {"token": "x"}, ["coordinators.token"]),
    ],
)
def test_every_wrong_field_is_named(
    kind: str, config: dict[str, object], secrets: dict[str, object], fields: list[str]
) -> None:
    assert wrong(lambda: validate_channel(kind, config, secrets, RPC(kind))) == fields


def test_the_cli_names_its_options() -> None:
    assert wrong(lambda: validate_channel("twilio", {}, {}, CLI)) == [
        "config.account_sid",
        "config.from_number",
        "secrets.auth_token",
    ]
    assert wrong(lambda: validate_channel("fax", {}, {}, CLI)) == ["channel"]


def test_the_policy_is_checked_key_by_key() -> None:
    registry = default_registry()
    stored = validate_policy(
        {
            "level_overrides": {"sms.send": "APPROVAL_REQUIRED"},
            "consultation_min_cost": 30.0,
            "bypass_level": "approval_required",
        },
        registry,
    )
    assert stored == {
        "level_overrides": {"sms.send": "approval_required"},
        "consultation_min_cost": 30,
        "bypass_level": "approval_required",
    }
    assert wrong(
        lambda: validate_policy(
            {
                "level_overides": {},
                "level_overrides": {"sms.sned": "suggestion", "email.send": "later"},
                "automatic_min_confidence": 85.5,
                "approval_min_cost": True,
                "destructive_min_level": "never",
            },
            registry,
        )
    ) == [
        "policy.approval_min_cost",
        "policy.automatic_min_confidence",
        "policy.destructive_min_level",
        "policy.level_overides",
        "policy.level_overrides.email.send",
        "policy.level_overrides.sms.sned",
    ]
    assert wrong(lambda: validate_policy({"level_overrides": ["sms.send"]}, registry)) == [
        "policy.level_overrides"
    ]


def test_scopes_ids_and_rules() -> None:
    assert validate_scopes([], platform=False) == ("agent", "tokens:read", "tokens:write", "events")
    assert "admin" in validate_scopes([], platform=True)
    assert validate_scopes(["admin", "admin"], platform=False) == ("admin",)
    assert wrong(lambda: validate_scopes(["billing", "root"], platform=False)) == [
        "scopes.0",
        "scopes.1",
    ]
    assert validate_scopes(["billing"], platform=True) == ("billing",)
    assert validate_id("tenant_id", "acme-1.eu") == "acme-1.eu"
    for bad in ("", "a b", "-x", "x" * 65, "ü"):
        assert wrong(lambda bad=bad: validate_id("tenant_id", bad)) == ["tenant_id"]
    assert validate_rule(Rule("business", "ignored", "allow", "sms:*")) == Rule(
        "business", "", "allow", "sms:*"
    )
    assert wrong(lambda: validate_rule(Rule("team", "", "maybe", "Send"))) == [
        "rule.effect",
        "rule.permission",
        "rule.scope",
    ]
    assert wrong(lambda: validate_rule(Rule("user", "", "deny", "sms:send"))) == ["rule.subject_id"]
    assert REDACTED == "<redacted>"


def test_every_knob_of_the_policy_can_be_set() -> None:
    """A knob added to PolicySettings must be known here too (else it is refused)."""
    from agentserver.domain.admin_model import POLICY_KEYS
    from agentserver.domain.decision.policy import PolicySettings

    assert set(POLICY_KEYS) == set(PolicySettings.__dataclass_fields__)


def test_the_servers_own_reading_checks_the_values() -> None:
    registry = default_registry()
    for policy in (
        {"automatic_min_confidence": 50, "suggestion_min_confidence": 70},  # bands out of order
        {"consultation_min_cost": -1},
        {"automatic_min_confidence": 500},
    ):
        assert wrong(lambda policy=policy: validate_policy(policy, registry)) == ["policy"]
