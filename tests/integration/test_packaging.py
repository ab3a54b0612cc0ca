"""The two distributions a user can pip install: both wheels are built, installed into
a fresh virtual environment (no repository on its path), the installed server is
started, and the README's Python example runs as written with the installed client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests import procs

ROOT = Path(__file__).resolve().parents[2]


def readme_python() -> str:
    """The README's Python example, as written."""
    section = (ROOT / "README.md").read_text().split("## From Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.mark.slow
def test_both_wheels_install_into_a_fresh_venv_and_work(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip"]
    run(*pip, "wheel", "--no-deps", "-q", "-w", dist, ROOT / "clients")
    run(*pip, "wheel", "--no-deps", "-q", "-w", dist, ROOT)
    wheels = sorted(dist.glob("*.whl"))
    assert [re.sub(r"-0\..*", "", w.name) for w in wheels] == [
        "agentserver",
        "agentserver_client",
    ]

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(fresh)
    bin_dir = fresh / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "-q", "-c", ROOT / "requirements.lock", *wheels)

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSERVER_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # Nothing of the repository is importable from the fresh environment.
    check = (
        "import agentserver.client, agentserver.v1.token_service_pb2, agentserver.app as a;"
        " print(a.__file__)"
    )
    where = run(bin_dir / "python", "-c", check, cwd=home, env=env)
    assert str(fresh) in where and str(ROOT) not in where

    port = procs.free_port()
    server = subprocess.Popen(
        [bin_dir / "agentserver", "serve"],
        cwd=home,
        env={
            **env,
            "AGENTSERVER_LISTEN": f"127.0.0.1:{port}",
            "AGENTSERVER_WEB_LISTEN": "off",
            "AGENTSERVER_DRAIN_SECONDS": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        procs.wait_serving(port, proc=server)
        script = home / "example.py"
        script.write_text(readme_python().replace("localhost:50051", f"localhost:{port}"))
        out = run(bin_dir / "python", script, cwd=home, env=env)
        assert "sms.send" in out
        assert "refused: needs 1000000 tokens" in out
    finally:
        procs.stop(server)
