"""The README's console section, run as written against a real `agentserver serve`
(the console and gRPC-web on their own port), and the console's page served."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests import procs
from tests.integration.test_operator import readme_block, run_lines


def test_readme_console_commands_work_as_written(tmp_path: Path) -> None:
    web_port = procs.free_port()
    proc, _ = procs.start(tmp_path, web_listen=f"127.0.0.1:{web_port}")
    try:
        result = run_lines(
            readme_block("## The console"),
            tmp_path,
            **{"127.0.0.1:8080": f"127.0.0.1:{web_port}", '"$PWD/.venv/bin': f'"{procs.BIN}'},
        )
        assert result.returncode == 0, result.stderr
        balance = json.loads(result.stdout)["balance"]
        assert balance["tenantId"] == "demo"
        assert balance["availableTokens"] == "800"
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as page:
            assert b'<script type="module" src="/app.js">' in page.read()
    finally:
        procs.stop(proc)
