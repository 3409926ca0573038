"""Pinning a host's ssh key: what ``certbot-fanout hosts trust HOST`` does.

A run never accepts a host key it does not already know (``StrictHostKeyChecking=yes``), so a
host's key is pinned once, by the admin, in the known_hosts file the project owns (a host's
``known_hosts``; default ``/var/lib/certbot-fanout/known_hosts``). To learn the key the way every
later run will check it (through the admin's ssh_config: HostName, Port, ProxyJump,
HostKeyAlias), the system's ssh connects once with ``StrictHostKeyChecking=accept-new`` into a
scratch file, and with every authentication method off: so it offers no key and runs nothing on
a host whose key is not yet trusted. The admin sees the fingerprints and confirms (or passes
``--yes``); only then are the entries written, atomically, replacing the ones that host had.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass

from certbot_fanout import commands, files
from certbot_fanout.errors import PlacementError
from certbot_fanout.escape import printable
from certbot_fanout.model import Host
from certbot_fanout.remote import HostError, ssh_options, ssh_program

MAX_KNOWN_HOSTS = 1024 * 1024
SCAN_MARGIN = 10.0
_NO_AUTH = (
    "PubkeyAuthentication=no",
    "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no",
    "HostbasedAuthentication=no",
    "GSSAPIAuthentication=no",
)


@dataclass(frozen=True)
class Scan:
    """The entries ssh wrote for a host, and their fingerprints in words."""

    entries: tuple[str, ...]
    fingerprints: tuple[str, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(n for e in self.entries for n in e.split(None, 1)[0].split(","))


def scan(host: Host) -> Scan:
    """What key ``host`` presents, learnt through ssh as a run would reach it.

    Raises:
        HostError: ssh did not get as far as the host's key (its words).
    """
    with tempfile.TemporaryDirectory(prefix="certbot-fanout-trust-") as scratch:
        learnt = os.path.join(scratch, "known_hosts")
        argv = [ssh_program(), *ssh_options(host, pinned=False)]
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
        argv += ["-o", f"UserKnownHostsFile={learnt}", "-o", "GlobalKnownHostsFile=/dev/null"]
        argv += ["-o", "HashKnownHosts=no", "-o", "UpdateHostKeys=no"]
        for option in _NO_AUTH:
            argv += ["-o", option]
        argv += ["--", host.ssh, "true"]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=host.connect_timeout + SCAN_MARGIN,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HostError(
                f"host {host.name} ({host.ssh}): no host key within the timeout"
            ) from None
        entries = _entries(learnt)
        if not entries:
            words = printable(done.stderr.decode("utf-8", "replace").strip()[-400:])
            raise HostError(
                f"host {host.name} ({host.ssh}): ssh did not get its host key: "
                f"{words or f'exit {done.returncode}'}"
            )
        found = commands.run_command(["ssh-keygen", "-l", "-f", learnt], 10, "ssh-keygen")
        lines = tuple(line for line in found.output.splitlines() if line.strip())
        return Scan(entries, lines)


def _entries(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_KNOWN_HOSTS)
    except FileNotFoundError:
        return ()
    return tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def pinned(host: Host, learnt: Scan) -> bool:
    """Whether every entry of ``learnt`` is already in ``host``'s known_hosts."""
    have = set(_entries(host.known_hosts))
    return all(e in have for e in learnt.entries)


def pin(host: Host, learnt: Scan) -> None:
    """Write ``learnt``'s entries into ``host.known_hosts`` (root's, mode 0644), replacing
    what was there for the same names; atomically.

    Raises:
        PlacementError: the file could not be written.
    """
    names = learnt.names
    kept = [
        e for e in _entries(host.known_hosts) if not names & set(e.split(None, 1)[0].split(","))
    ]
    directory = os.path.dirname(host.known_hosts)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as e:
        raise PlacementError(f"{directory}: cannot create: {e.strerror}") from None
    data = "".join(f"{e}\n" for e in (*kept, *learnt.entries)).encode()
    files.place(files.Desired(path=host.known_hosts, uid=0, gid=0, mode=0o644, data=data))
