"""Helpers for test_status_real.py: the certbot-fanout CLI with private config, state and lock
files, consumer-map entries for real HAProxy and PostgreSQL, and the parts of the reports."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import explain, run
from .daemons_db import PostgreSQL
from .maps import flow
from .stack import HAProxy, openssl_fingerprint, served_fingerprint

CLI_TIMEOUT = 180


def wait_served(port: int, server_name: str, expected: str, timeout: float = 10) -> str:
    """What 127.0.0.1:port serves, asking again until it is ``expected`` or ``timeout`` ends
    (an HAProxy worker from before a reload may still answer for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        got = served_fingerprint("127.0.0.1", port, server_name)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@dataclass
class HAProxyConsumer:
    name: str
    certificate: str
    haproxy: HAProxy

    def served(self, expected: str = "") -> str:
        return wait_served(self.haproxy.port, self.certificate, expected)

    def yaml(self) -> str:
        return f"""\
  {self.name}:
    certificate: {self.certificate}
    files:
      - {{path: {flow(str(self.haproxy.combined_pem))}, content: [fullchain, privkey]}}
    test: {flow(self.haproxy.check_argv())}
    reload: {flow(self.haproxy.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.haproxy.port}, server_name: {self.certificate}}}
    verify_timeout: 20
"""


@dataclass
class PostgresConsumer:
    """A real PostgreSQL 15 reading a fullchain and a postgres-owned 0600 key."""

    name: str
    certificate: str
    pg: PostgreSQL

    def served(self) -> str:
        return openssl_fingerprint(self.pg.port, self.certificate, "postgres")

    def yaml(self) -> str:
        cert, key = str(self.pg.cert_file), str(self.pg.key_file)
        return f"""\
  {self.name}:
    certificate: {self.certificate}
    files:
      - {{path: {flow(cert)}, content: fullchain, owner: postgres, group: postgres, mode: "0644"}}
      - {{path: {flow(key)}, content: privkey, owner: postgres, group: postgres, mode: "0600"}}
    reload: {flow(self.pg.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.pg.port}, starttls: postgres,
         server_name: {self.certificate}}}
    verify_timeout: 20
"""


@dataclass
class Fanout:
    """``certbot-fanout`` as a real subprocess with private config, state and lock files."""

    binary: Path
    config: Path
    config_dir: Path
    state: Path
    lock: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def argv(self, command: str, *args: str, config: Path | None = None) -> list[str]:
        return [
            str(self.binary),
            command,
            "--config",
            str(config or self.config),
            "--config-dir",
            str(self.config_dir),
            "--state-file",
            str(self.state),
            "--lock-file",
            str(self.lock),
            *args,
        ]

    def run(
        self, command: str, *args: str, config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(
            self.argv(command, *args, config=config),
            timeout=CLI_TIMEOUT,
            env={**os.environ, **self.extra_env},
        )

    def status_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.run("status", "--json", *args)
        assert proc.stderr == "", explain(proc)
        doc = json.loads(proc.stdout)
        assert isinstance(doc, dict), proc.stdout
        return proc.returncode, doc


def table_rows(status_text: str) -> dict[str, list[str]]:
    """The rows of ``status``'s table (after its header) by consumer name, split on 2+ spaces."""
    lines = status_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CONSUMER "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip() or ": " in line.split("  ", 1)[0]:
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[0]] = cells
    return rows


def sections(discover_text: str) -> dict[str, list[str]]:
    """``discover``'s output by section title (NOT IN THE MAP, IN THE MAP BUT STALE, IN THE
    MAP, Paste ...); lines before the first title go under ""."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in discover_text.splitlines():
        if line in ("NOT IN THE MAP:", "IN THE MAP BUT STALE:", "IN THE MAP:"):
            current = line.rstrip(":")
            found[current] = []
        elif line.startswith("Paste into the map"):
            current = "Paste into the map"
            found[current] = []
        else:
            found[current].append(line)
    return found
