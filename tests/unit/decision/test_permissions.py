"""Effective permissions: wildcards, denials, location policy, caller assertions."""

from __future__ import annotations

import pytest

from agentserver.domain.errors import InvalidArgument
from agentserver.domain.permissions import (
    APPROVER_PERMISSION,
    COORDINATOR_PERMISSION,
    PermissionSet,
    effective_permissions,
    matches,
    overlaps,
)


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ("email:send", "email:send", True),
        ("email:send", "sms:send", False),
        ("email:*", "email:send", True),
        ("email:*", "sms:send", False),
        ("*:read", "resource:read", True),
        ("*:read", "resource:delete", False),
        ("*", "anything:at_all", True),
        ("*:*", "booking:cancel", True),
        ("email:send", "email:*", False),  # a narrow grant never covers a wildcard need
        ("email:*", "*:send", False),
        ("*", "*", True),
    ],
)
def test_matches(granted: str, required: str, expected: bool) -> None:
    assert matches(granted, required) is expected


def test_overlaps_is_symmetric_and_wildcard_aware() -> None:
    assert overlaps("email:*", "*:send") and overlaps("*:send", "email:*")
    assert not overlaps("email:send", "sms:*")


@pytest.mark.parametrize("bad", ["", "email", "email:", ":send", "em*:send", "Email:Send", "a:b:c"])
def test_malformed_permissions_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        matches(bad, "email:send")
    with pytest.raises(InvalidArgument):
        PermissionSet.of([bad])


def test_constants() -> None:
    assert COORDINATOR_PERMISSION == "actions:coordinate"
    assert APPROVER_PERMISSION == "actions:approve"


def test_business_defaults_and_user_grants_are_inherited() -> None:
    ps = effective_permissions(["email:send", "*:read"], ["sms:send"], [], None, None)
    assert ps.covers("email:send") and ps.covers("sms:send") and ps.covers("resource:read")
    assert not ps.covers("resource:delete")
    assert ps.missing(["email:send", "phone:call", "resource:read", "phone:call"]) == ["phone:call"]


def test_denial_wins_over_wildcard_grant() -> None:
    ps = effective_permissions([], ["*"], ["sms:send"], None, None)
    assert not ps.covers("sms:send")
    assert ps.covers("email:send")
    assert not ps.covers("sms:*")  # the whole family is no longer granted
    assert not ps.covers("*")


def test_wildcard_denial_removes_the_family() -> None:
    ps = effective_permissions(["*"], [], ["resource:*"], None, None)
    assert not ps.covers("resource:read") and not ps.covers("resource:delete")
    assert ps.covers("booking:create")


def test_denial_wins_over_business_default_too() -> None:
    ps = effective_permissions(["email:send"], ["email:send"], ["email:send"], None, None)
    assert not ps.covers("email:send")


def test_location_policy_narrows() -> None:
    ps = effective_permissions(["*"], [], [], {"email:*", "booking:*"}, None)
    assert ps.covers("email:send") and ps.covers("booking:cancel")
    assert not ps.covers("sms:send")


def test_location_policy_cannot_widen() -> None:
    ps = effective_permissions(["email:send"], [], [], {"*"}, None)
    assert ps.covers("email:send") and not ps.covers("sms:send")


def test_empty_location_policy_allows_nothing_but_none_means_no_policy() -> None:
    assert not effective_permissions(["*"], [], [], set(), None).covers("email:send")
    assert effective_permissions(["*"], [], [], None, None).covers("email:send")


def test_wildcards_on_both_sides_of_an_intersection() -> None:
    ps = effective_permissions(["email:*"], [], [], {"*:send"}, None)
    assert ps.covers("email:send")
    assert not ps.covers("email:read")
    assert not ps.covers("sms:send")


def test_asserted_wildcard_cannot_widen() -> None:
    ps = effective_permissions(["email:send"], [], [], None, ["*"])
    assert ps.covers("email:send")
    assert not ps.covers("sms:send")
    assert ps.granted(["email:send", "sms:send", "email:read"]) == ["email:send"]


def test_asserted_narrows_a_wildcard_grant() -> None:
    ps = effective_permissions(["email:*"], [], [], None, ["email:send"])
    assert ps.covers("email:send")
    assert not ps.covers("email:read")
    assert not ps.covers("email:*")


def test_asserted_permission_not_granted_is_dropped() -> None:
    ps = effective_permissions(["email:send"], [], [], None, ["email:send", "resource:delete"])
    assert ps.covers("email:send") and not ps.covers("resource:delete")


def test_asserted_cannot_undo_a_denial() -> None:
    ps = effective_permissions(["*"], [], ["sms:send"], None, ["sms:send", "*"])
    assert not ps.covers("sms:send")


def test_empty_assertion_means_nothing() -> None:
    assert not effective_permissions(["*"], [], [], None, []).covers("email:send")


def test_all_layers_together() -> None:
    ps = effective_permissions(
        business_defaults=["*:read", "email:send", "sms:send"],
        user_grants=["booking:*", "resource:update"],
        user_denials=["booking:cancel"],
        location_policy={"*:read", "booking:*", "email:*", "resource:*"},
        asserted=["booking:create", "booking:cancel", "email:send", "resource:read", "sms:send"],
    )
    universe = [
        "booking:create",
        "booking:cancel",
        "email:send",
        "sms:send",
        "resource:read",
        "resource:update",
        "analysis:read",
    ]
    assert ps.granted(universe) == ["booking:create", "email:send", "resource:read"]


def test_permission_set_basics() -> None:
    assert PermissionSet.everything().covers("x:y")
    assert not PermissionSet.nothing().covers("x:y")
    assert "email:send" in PermissionSet.of(["email:*"])
    assert 42 not in PermissionSet.everything()
    both = PermissionSet.of(["email:*"]).intersect(PermissionSet.of(["*:send"]))
    assert both.missing(["email:send", "email:read"]) == ["email:read"]
