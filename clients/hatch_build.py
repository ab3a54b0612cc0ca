"""Puts the generated stubs (../generated/agentserver/v1) into a built wheel. Only
for a real wheel: an editable install puts ../generated on the path instead
(dev-mode-dirs), so `make gen` takes effect without reinstalling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class StubsHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "standard":
            return
        stubs = Path(self.root).parent / "generated" / "agentserver" / "v1"
        if not stubs.is_dir():
            return  # built from an sdist, which carries them in agentserver/v1
        build_data["force_include"][str(stubs)] = "agentserver/v1"
        build_data["force_include"][str(Path(self.root) / "agentserver/client/py.typed")] = (
            "agentserver/v1/py.typed"
        )
