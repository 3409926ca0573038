"""Probing an endpoint from a consumer's own host (``via: host``), through its ssh connection.

Each attempt starts ``ssh -W ADDRESS:PORT`` on the run's ControlMaster (no new login, no new
key exchange): the host's sshd opens the TCP connection, from the host itself, and ssh relays
it over one end of a socket pair whose other end the probe speaks TLS (or STARTTLS) on, as it
would over a TCP connection from here. So a service only the host reaches (its loopback, a
firewalled port) is proven with the same checks as any other. Nothing is started on the host;
its sshd must allow TCP forwarding (``AllowTcpForwarding``), which a key restricted with
``restrict`` in ``authorized_keys`` does not.

When the host cannot connect, ssh says so on stderr ("open failed: connect failed: Connection
refused"); the probe's error carries those words, so "refused on the host" is not mistaken for
a TLS failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from typing import IO

from certbot_fanout import probe
from certbot_fanout.errors import ProbeError
from certbot_fanout.escape import printable
from certbot_fanout.model import Dialect, KeyType, address_label

STDERR_BYTES = 4096  # the most of a relay's stderr kept for its error
REAP_SECONDS = 2.0  # how long a relay has to end after its socket is closed


class Tunnel:
    """The ``via: host`` probes of one host: ``ssh -W`` on its ControlMaster, one per attempt.

    ``ssh_argv`` is everything before ``-W`` (the ssh program, its options, the
    ControlPath); ``destination`` and ``host`` name the host to ssh and in errors."""

    def __init__(self, ssh_argv: Sequence[str], destination: str, host: str) -> None:
        self.ssh_argv = list(ssh_argv)
        self.destination = destination
        self.host = host

    def fetch(
        self,
        address: str,
        port: int,
        server_name: str | None,
        timeout: float,
        starttls: Dialect | None = None,
        /,
        *,
        key_type: KeyType | None = None,
        trust: probe.Trust | None = None,
    ) -> probe.Served:
        """:func:`probe.fetch_served`, every connection made by the host."""
        relays: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

        def connect(address: str, port: int, within: float) -> socket.socket:
            ours, theirs = socket.socketpair()
            stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _reap)
            try:
                proc = subprocess.Popen(
                    [*self.ssh_argv, "-W", address_label(address, port), "--", self.destination],
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=stderr,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                ours.close()
                stderr.close()
                raise ProbeError(
                    f"cannot start ssh to probe via {self.host}: {e.strerror}"
                ) from None
            finally:
                theirs.close()
            relays.append((proc, stderr))
            return ours

        try:
            return probe.fetch_served(
                address,
                port,
                server_name,
                timeout,
                starttls,
                key_type=key_type,
                trust=trust,
                connect=connect,
            )
        except ProbeError as e:
            failed, words = _reap(relays)
            relays.clear()
            if failed and words:  # the relay itself failed: the host could not connect
                raise ProbeError(
                    f"{address_label(address, port)}: {self.host} could not open a connection "
                    f"to it (ssh: {words}); is the service running there, and does its sshd "
                    "allow TCP forwarding?"
                ) from None
            raise ProbeError(f"{e} (via {self.host})") from None
        finally:
            _reap(relays)


def _reap(relays: list[tuple[subprocess.Popen[bytes], IO[bytes]]]) -> tuple[bool, str]:
    """End every relay (its socket is closed, so ssh ends by itself; killed if it lingers):
    whether the last one failed (a non-zero exit), and the last words it wrote."""
    words, failed = "", False
    for proc, stderr in relays:
        try:
            failed = proc.wait(timeout=REAP_SECONDS) != 0
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            failed = False
        stderr.seek(0, os.SEEK_END)
        size = stderr.tell()
        stderr.seek(max(0, size - STDERR_BYTES))
        lines = [line.strip() for line in stderr.read().decode("utf-8", "replace").splitlines()]
        words = printable("; ".join(line for line in lines if line)[-500:])
        stderr.close()
    return failed, words
