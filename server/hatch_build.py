"""Puts the Alembic chain (../migrations) into a built wheel as agentserver/_migrations,
where `agentserver migrate` looks when installed. Only for a real wheel: an editable
install uses the repository's migrations/ in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class MigrationsHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "standard":
            build_data["force_include"][str(Path(self.root) / "migrations")] = (
                "agentserver/_migrations"
            )
