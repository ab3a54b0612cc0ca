"""Where a tenant's permission rules and decision policy come from, cached briefly,
and the stored policy read as PolicySettings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.decision.policy import PolicySettings
from agentserver.domain.errors import InvalidArgument


class PolicySource(Protocol):
    """Where a tenant's permission rules and policy settings come from."""

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]: ...

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]: ...


@dataclass
class CachedPolicySource:
    """A tenant's rules and policy, kept for `ttl` seconds: Process reads them on every
    call, operators change them rarely. A change reaches every replica within `ttl`."""

    source: PolicySource
    ttl: float = 5.0
    _rules: dict[str, tuple[float, list[tuple[str, str, str, str]]]] = field(default_factory=dict)
    _policies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    async def rules(self, tenant_id: str) -> list[tuple[str, str, str, str]]:
        hit = self._rules.get(tenant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        rules = await self.source.rules(tenant_id)
        self._rules[tenant_id] = (time.monotonic() + self.ttl, rules)
        return rules

    def forget(self, tenant_id: str) -> None:
        """Drop what is kept of a tenant (a change made in this process applies at once)."""
        self._rules.pop(tenant_id, None)
        self._policies.pop(tenant_id, None)

    async def tenant_policy(self, tenant_id: str) -> dict[str, Any]:
        hit = self._policies.get(tenant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        policy = await self.source.tenant_policy(tenant_id)
        self._policies[tenant_id] = (time.monotonic() + self.ttl, policy)
        return policy


def policy_settings(raw: dict[str, Any]) -> PolicySettings:
    """A tenant's stored policy (JSON) as PolicySettings; unknown keys are ignored.
    Raises InvalidArgument for a policy the server could not apply (checked when set)."""
    known = {k: v for k, v in raw.items() if k in PolicySettings.__dataclass_fields__}
    try:
        if "level_overrides" in known:
            known["level_overrides"] = {
                name: DecisionLevel[str(level).upper()]
                for name, level in dict(known["level_overrides"]).items()
            }
        for key in ("destructive_min_level", "bypass_level"):
            if key in known:
                known[key] = DecisionLevel[str(known[key]).upper()]
        return PolicySettings(**known)
    except KeyError as err:
        raise InvalidArgument.field("policy", f"unknown decision level {err}") from None
    except (TypeError, ValueError) as err:
        raise InvalidArgument.field("policy", str(err)) from None
