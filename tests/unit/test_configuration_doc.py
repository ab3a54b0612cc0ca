"""docs/configuration.md names every setting `Settings.from_env` reads, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read_by_the_server() -> set[str]:
    source = (ROOT / "server" / "agentserver" / "config.py").read_text()
    return {f"AGENTSERVER_{name}" for name in re.findall(r'_env\(\s*"([A-Z0-9_]+)"', source)}


def documented(known: set[str]) -> set[str]:
    """The variables of the table's first column; `_REST` after a full name is short
    for that name's longest prefix (`AGENTSERVER_` at least) that makes a known name
    with `_REST`, or else for `AGENTSERVER_REST`."""
    names: set[str] = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        full = ""
        for token in re.findall(r"`([A-Z0-9_]+)`", first):
            if token.startswith("AGENTSERVER_"):
                full = token
                names.add(token)
                continue
            assert full, f"{token} without a full name before it: {line}"
            words = full.split("_")
            prefixes = ("_".join(words[:n]) for n in range(len(words) - 1, 0, -1))
            names.add(next((p + token for p in prefixes if p + token in known), full[:11] + token))
    return names


def test_the_configuration_page_lists_exactly_the_settings() -> None:
    server = read_by_the_server()
    assert len(server) > 30
    docs = documented(server)
    assert sorted(server - docs) == [], "read by the server, missing from the page"
    assert sorted(docs - server) == [], "on the page, not read by the server"
