"""Effective permissions: business → user → location, narrowed by what the caller asserts.

A permission is ``resource:verb`` (``email:send``). A granted pattern may use ``*``
for either part (``email:*``, ``*:read``); a bare ``*`` means ``*:*``.

`PermissionSet` keeps patterns instead of expanding them (the universe of verbs is
open), as a *conjunction of clauses*. Each clause is (allow patterns, deny
patterns) and covers a permission when some allow pattern matches it and no deny
pattern overlaps it. A set covers a permission when every clause does, which makes
intersection (location policy, caller assertions) exact even when both sides hold
wildcards: {email:*} ∩ {*:send} covers email:send and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from agentserver.domain.errors import FieldViolation, InvalidArgument

__all__ = [
    "APPROVER_PERMISSION",
    "COORDINATOR_PERMISSION",
    "WILDCARD",
    "PermissionSet",
    "effective_permissions",
    "matches",
    "overlaps",
    "parse",
]

COORDINATOR_PERMISSION = "actions:coordinate"
APPROVER_PERMISSION = "actions:approve"
WILDCARD = "*"

_PART = re.compile(r"^(\*|[a-z0-9][a-z0-9_.-]*)$")


def parse(permission: str) -> tuple[str, str]:
    """Split ``resource:verb`` into its parts; ``*`` alone is ``("*", "*")``.

    Raises `InvalidArgument` for anything else (empty parts, partial wildcards such
    as ``em*``, upper case, more than one colon): a typo in a grant must not
    silently grant nothing or everything.
    """
    p = permission.strip()
    if p == WILDCARD:
        return WILDCARD, WILDCARD
    resource, sep, verb = p.partition(":")
    if not sep or not _PART.match(resource) or not _PART.match(verb):
        raise InvalidArgument(
            FieldViolation("permissions", f"{permission!r} is not a resource:verb permission")
        )
    return resource, verb


def matches(granted: str, required: str) -> bool:
    """True when the ``granted`` pattern covers everything ``required`` names.

    A wildcard in ``required`` (``email:*``) is only covered by a wildcard in the
    same place: ``email:send`` does not cover ``email:*``.
    """
    g, r = parse(granted), parse(required)
    return all(gp in (WILDCARD, rp) for gp, rp in zip(g, r, strict=True))


def overlaps(a: str, b: str) -> bool:
    """True when some concrete permission is named by both patterns."""
    pa, pb = parse(a), parse(b)
    return all(WILDCARD in (x, y) or x == y for x, y in zip(pa, pb, strict=True))


@dataclass(frozen=True)
class _Clause:
    allow: frozenset[str]
    deny: frozenset[str]

    def covers(self, required: str) -> bool:
        # A deny blocks every permission it overlaps: a set that denies sms:send
        # cannot cover sms:* as a whole.
        return any(matches(a, required) for a in self.allow) and not any(
            overlaps(d, required) for d in self.deny
        )


@dataclass(frozen=True)
class PermissionSet:
    """What a caller may do; immutable. Build with `of` / `effective_permissions`."""

    clauses: tuple[_Clause, ...]

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str] = ()) -> PermissionSet:
        """A set of one clause: ``allow`` minus ``deny``."""
        allow_set, deny_set = frozenset(allow), frozenset(deny)
        for p in allow_set | deny_set:
            parse(p)
        return cls((_Clause(allow_set, deny_set),))

    @classmethod
    def everything(cls) -> PermissionSet:
        """Covers every permission."""
        return cls.of([WILDCARD])

    @classmethod
    def nothing(cls) -> PermissionSet:
        """Covers no permission."""
        return cls.of([])

    def covers(self, required: str) -> bool:
        """True when every permission named by ``required`` is granted."""
        parse(required)
        return all(c.covers(required) for c in self.clauses)

    def __contains__(self, required: object) -> bool:
        return isinstance(required, str) and self.covers(required)

    def missing(self, required: Iterable[str]) -> list[str]:
        """The permissions of ``required`` this set does not cover, in order, once each."""
        out: list[str] = []
        for r in required:
            if r not in out and not self.covers(r):
                out.append(r)
        return out

    def intersect(self, other: PermissionSet) -> PermissionSet:
        """Covers what both sets cover."""
        return PermissionSet(self.clauses + other.clauses)

    def narrow(self, asserted: Iterable[str]) -> PermissionSet:
        """Keep only what ``asserted`` names as well: never wider than before."""
        return self.intersect(PermissionSet.of(asserted))

    def granted(self, universe: Iterable[str]) -> list[str]:
        """The members of ``universe`` (e.g. every registry permission) covered, sorted."""
        return sorted({p for p in universe if self.covers(p)})


def effective_permissions(
    business_defaults: Iterable[str],
    user_grants: Iterable[str],
    user_denials: Iterable[str],
    location_policy: Iterable[str] | None = None,
    asserted: Iterable[str] | None = None,
) -> PermissionSet:
    """(business defaults ∪ user grants) − user denials, ∩ location policy when one is
    given, narrowed by the caller-asserted permissions when given.

    Denials win over every grant, wildcards included. ``None`` means "no location
    policy" / "the caller asserts nothing"; an *empty* collection means "allows
    nothing" in both places. Assertions can only narrow: an asserted ``*`` leaves
    the set as it is.
    """
    result = PermissionSet.of([*business_defaults, *user_grants], user_denials)
    if location_policy is not None:
        result = result.intersect(PermissionSet.of(location_policy))
    if asserted is not None:
        result = result.narrow(asserted)
    return result
