"""The deploy-hook path must not import certbot or acme (they cost each hook run 110-140 ms).

Runs the installed console script exactly as certbot runs a deploy hook (bare, with
RENEWED_LINEAGE set), under ``python -X importtime``, through a full deploy: a file placed,
test and reload commands run, and a loopback TLS endpoint probed until it serves the lineage.
Needs no root and no daemons.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.lineages import LineageFactory
from tests.support.peers import Peer

FANOUT = Path(sys.prefix) / "bin" / "certbot-fanout"
FORBIDDEN = ("certbot", "acme")
CONTAINER_MODULES = (
    "certbot_fanout.containers",
    "certbot_fanout.engine",
    "certbot_fanout.procview",
    "certbot_fanout.discover_containers",
    "certbot_fanout.schema_containers",
    "http.client",
    "tarfile",
)


def imported_modules(importtime_stderr: str) -> list[str]:
    """Module names from ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = []
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name and name != "imported package":
            names.append(name)
    return names


def forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


@pytest.fixture
def tls_server() -> Iterator[Callable[[Path, Path], Peer]]:
    servers: list[Peer] = []

    def start(cert: Path, key: Path) -> Peer:
        server = Peer("tls", cert, key)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_hook_path_imports_neither_certbot_nor_acme(
    lineages: LineageFactory,
    write_config: Callable[[str], Path],
    tls_server: Callable[[Path, Path], Peer],
    tmp_path: Path,
) -> None:
    if not os.access(FANOUT, os.X_OK):
        pytest.skip(f"{FANOUT} missing: install the project into the venv (pip install -e .)")
    live, _ = lineages.issue("hook.fanout.test")
    server = tls_server(live / "fullchain.pem", live / "privkey.pem")
    placed = tmp_path / "placed" / "fullchain.pem"
    placed.parent.mkdir()
    config = write_config(
        f"""\
version: 1
consumers:
  svc:
    certificate: hook.fanout.test
    files:
      - {{path: {json.dumps(str(placed))}, content: fullchain, owner: {os.getuid()}, group: {os.getgid()}}}
    test: [/bin/true]
    reload: [/bin/true]
    verify:
      - {{host: 127.0.0.1, port: {server.port}}}
    verify_timeout: 10
"""  # noqa: E501
    )
    env = dict(os.environ, RENEWED_LINEAGE=str(live), RENEWED_DOMAINS="hook.fanout.test")
    env["CERTBOT_FANOUT_CONFIG"] = str(config)
    env.pop("PYTHONPROFILEIMPORTTIME", None)

    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(FANOUT), "--lock-file", str(tmp_path / "lock")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s+svc\s+ok\s+placed 1 of 1 file, tested, reloaded", result.stdout, re.M), (
        result.stdout
    )
    assert "all 1 consumer ok" in result.stdout, result.stdout
    assert placed.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert server.server_names, "the hook's probe completed a handshake"
    modules = imported_modules(result.stderr)
    for needed in ("certbot_fanout.cli", "certbot_fanout.deploy", "certbot_fanout.probe"):
        assert needed in modules, f"{needed} not seen: is the importtime parser broken?"
    assert forbidden(modules) == [], "the deploy hook imported certbot/acme"
    # A map with no container and no process imports none of what serves them.
    only_for_containers = set(CONTAINER_MODULES) & set(modules)
    assert only_for_containers == set(), "the hook imported the container modules"


def test_import_check_detects_certbot() -> None:
    """The same parser and check do see certbot when it is imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import certbot.interfaces"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    found = forbidden(imported_modules(result.stderr))
    assert "certbot" in found, found
    assert "certbot.interfaces" in found, found
    assert any(m == "acme" or m.startswith("acme.") for m in found), found
