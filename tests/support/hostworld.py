"""What the tests of consumers on other hosts share (issue 15): the map they write for the ssh
test hosts of :mod:`tests.support.sshhosts`, and the CLI run in the controller namespace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from certbot_fanout._pki import Issued
from tests.support.cli import run
from tests.support.lineages import LineageFactory
from tests.support.sshhosts import InHostDaemon, SshHost, SshHosts

CERT = "example.org"
FULLCHAIN = "/srv/tls/fullchain.pem"
PRIVKEY = "/srv/tls/privkey.pem"


def cli_path() -> str:
    """The certbot-fanout entry point of the running interpreter's environment."""
    import shutil
    import sys

    found = Path(sys.executable).parent / "certbot-fanout"
    return str(found) if found.exists() else str(shutil.which("certbot-fanout"))


def consumer_entry(
    host: SshHost, owner: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A consumer on ``host`` placing FULLCHAIN and PRIVKEY owned by ``owner``."""
    entry: dict[str, Any] = {
        "host": host.label,
        "certificate": CERT,
        "files": [
            {"path": FULLCHAIN, "content": "fullchain", "owner": owner, "mode": "0644"},
            {"path": PRIVKEY, "content": "privkey", "owner": owner, "mode": "0600"},
        ],
    }
    entry.update(extra or {})
    return entry


class World:
    """The map under test (``consumers``, every host of ``hosts``) and the CLI run on it."""

    def __init__(
        self, hosts: SshHosts, tmp_path: Path, lineages: LineageFactory, mode: str | None = None
    ) -> None:
        self.hosts = hosts
        self.mode = mode  # every host's `mode:` in the map (None: the default, agent)
        self.dir = tmp_path
        self.lineages = lineages
        self.live, self.issued = lineages.issue(CERT)
        self.consumers: dict[str, Any] = {}

    def host_entries(self) -> dict[str, Any]:
        mode = {"mode": self.mode} if self.mode else {}
        return {label: {**h.map_entry(), **mode} for label, h in self.hosts.hosts.items()}

    def write_map(self) -> Path:
        path = self.dir / "consumers.yaml"
        document = {"version": 1, "hosts": self.host_entries(), "consumers": self.consumers}
        path.write_text(json.dumps(document, indent=2))
        return path

    def argv(self, command: str, *extra: str) -> list[str]:
        """``certbot-fanout COMMAND`` on this map, its lineages, state file and lock, in the
        controller namespace (which reaches every host)."""
        argv = [
            cli_path(),
            command,
            "--config",
            str(self.write_map()),
            "--config-dir",
            str(self.live.parent.parent),
            "--state-file",
            str(self.dir / "state.json"),
            "--lock-file",
            str(self.dir / "lock"),
            *extra,
        ]
        return self.hosts.controller_argv(argv)

    def cli(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """The completed run of :meth:`argv`."""
        return run(self.argv(command, *extra), timeout=180)

    def deploy(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``deploy`` of the world's lineage."""
        return self.cli("deploy", "--lineage", str(self.live), *extra)


def start_nginx_with(host: SshHost, old: Issued) -> InHostDaemon:
    """nginx on ``host`` serving ``old`` from FULLCHAIN and PRIVKEY."""
    host.write(FULLCHAIN, old.fullchain_pem, mode=0o644)
    host.write(PRIVKEY, old.key_pem, mode=0o600)
    return host.start_nginx(FULLCHAIN, PRIVKEY, port=443)
