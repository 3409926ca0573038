"""The deploy-hook path must not import certbot or acme (DESIGN.md section 3: 110-140 ms).

Runs the installed console script exactly as certbot runs a deploy hook (bare, with
RENEWED_LINEAGE set), under ``python -X importtime``, through a full deploy: a file placed,
test and reload commands run, and a loopback TLS endpoint probed until it serves the lineage.
Needs no root and no daemons.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from certbot_fanout._pki import Issued

FANOUT = Path(sys.prefix) / "bin" / "certbot-fanout"
FORBIDDEN = ("certbot", "acme")


class Lineages(Protocol):
    """The ``lineages`` fixture of tests/conftest.py."""

    def issue(self, name: str, *more_names: str, days: float = 90) -> tuple[Path, Issued]: ...


class TLSServer:
    """A loopback TLS server in a thread that completes a handshake with every client."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with contextlib.suppress(OSError), self.ctx.wrap_socket(conn, server_side=True):
                self.handshakes += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


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
def tls_server() -> Iterator[Callable[[Path, Path], TLSServer]]:
    servers: list[TLSServer] = []

    def start(cert: Path, key: Path) -> TLSServer:
        server = TLSServer(cert, key)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_hook_path_imports_neither_certbot_nor_acme(
    lineages: Lineages,
    write_config: Callable[[str], Path],
    tls_server: Callable[[Path, Path], TLSServer],
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
    assert server.handshakes >= 1
    modules = imported_modules(result.stderr)
    for needed in ("certbot_fanout.cli", "certbot_fanout.deploy", "certbot_fanout.probe"):
        assert needed in modules, f"{needed} not seen: is the importtime parser broken?"
    assert forbidden(modules) == [], "the deploy hook imported certbot/acme"


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
