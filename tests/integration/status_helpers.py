"""Helpers for test_status_real.py: the certbot-fanout CLI as a subprocess, consumer-map
entries for real nginx, HAProxy and PostgreSQL, and ways to read what a daemon serves once a
reload has settled."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .daemons_db import PostgreSQL, openssl_fingerprint
from .stack import HAProxy, Nginx, children, file_fingerprint, served_fingerprint

CLI_TIMEOUT = 180
SH = "/bin/sh"
_q = json.dumps  # a JSON string or list is valid YAML flow syntax




def settled(nginx: Nginx, timeout: float = 15, replacing: frozenset[int] = frozenset()) -> None:
    """Wait until the nginx master has one worker (none of ``replacing``): for ~100 ms after a
    reload the old worker still accepts beside the new one, so a probe may meet either
    certificate."""
    deadline = time.monotonic() + timeout
    while len(workers := children(nginx.pid)) != 1 or workers & replacing:
        if time.monotonic() > deadline:
            raise AssertionError(f"nginx {nginx.pid} has workers {sorted(children(nginx.pid))}")
        time.sleep(0.02)


def nginx_serves(nginx: Nginx, server_name: str) -> str:
    settled(nginx)
    return served_fingerprint("127.0.0.1", nginx.port, server_name)


def wait_served(port: int, server_name: str, expected: str, timeout: float = 10) -> str:
    """What 127.0.0.1:port serves, asking again until it is ``expected`` or ``timeout`` ends
    (an HAProxy worker from before a reload may still answer for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        got = served_fingerprint("127.0.0.1", port, server_name)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"


def counted(counter: Path, word: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run through sh, appending ``word`` to ``counter`` first."""
    script = f"echo {word} >> {shlex.quote(str(counter))} && exec {shlex.join(argv)}"
    return [SH, "-c", script]


def events(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


@dataclass
class WebConsumer:
    """A real nginx reading its own root-owned copies of a lineage."""

    name: str
    certificate: str
    nginx: Nginx
    cert: Path
    key: Path
    counter: Path
    reload: Sequence[str] | None = None  # default: nginx -s reload (counted)
    verify_timeout: float = 20

    def served(self) -> str:
        return nginx_serves(self.nginx, self.certificate)

    def events(self) -> list[str]:
        return events(self.counter)

    def drift_to(self, fullchain: bytes, key: bytes) -> None:
        """Overwrite the placed copies by hand and reload nginx, as a careless admin would."""
        self.cert.write_bytes(fullchain)
        self.key.write_bytes(key)
        before = frozenset(children(self.nginx.pid))
        subprocess.run(self.nginx.reload_argv(), check=True, capture_output=True, timeout=30)
        settled(self.nginx, replacing=before)

    def yaml(self) -> str:
        reload = self.reload or counted(self.counter, "reload", self.nginx.reload_argv())
        return f"""\
  {self.name}:
    certificate: {self.certificate}
    files:
      - {{path: {_q(str(self.cert))}, content: fullchain, mode: "0644"}}
      - {{path: {_q(str(self.key))}, content: privkey, mode: "0600"}}
    test: {_q(counted(self.counter, "test", self.nginx.test_argv()))}
    reload: {_q(list(reload))}
    verify:
      - {{host: 127.0.0.1, port: {self.nginx.port}, server_name: {self.certificate}}}
    verify_timeout: {self.verify_timeout}
"""


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
      - {{path: {_q(str(self.haproxy.combined_pem))}, content: [fullchain, privkey]}}
    test: {_q(self.haproxy.check_argv())}
    reload: {_q(self.haproxy.reload_argv())}
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
        return openssl_fingerprint(self.pg.port, "postgres", self.certificate)

    def yaml(self) -> str:
        cert, key = str(self.pg.cert_file), str(self.pg.key_file)
        return f"""\
  {self.name}:
    certificate: {self.certificate}
    files:
      - {{path: {_q(cert)}, content: fullchain, owner: postgres, group: postgres, mode: "0644"}}
      - {{path: {_q(key)}, content: privkey, owner: postgres, group: postgres, mode: "0600"}}
    reload: {_q(self.pg.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.pg.port}, starttls: postgres,
         server_name: {self.certificate}}}
    verify_timeout: 20
"""


def config_text(*consumers: str) -> str:
    return "version: 1\ndefaults:\n  reload_timeout: 30\nconsumers:\n" + "".join(consumers)


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
        return subprocess.run(
            self.argv(command, *args, config=config),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
            env={**os.environ, **self.extra_env},
        )

    def status_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.run("status", "--json", *args)
        assert proc.stderr == "", explain(proc)
        doc = json.loads(proc.stdout)
        assert isinstance(doc, dict), proc.stdout
        return proc.returncode, doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The consumers of a ``status --json`` document by name."""
    consumers = doc["consumers"]
    assert isinstance(consumers, list), doc
    return {str(c["name"]): c for c in consumers}


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


def fingerprint(path: Path) -> str:
    return file_fingerprint(path)
