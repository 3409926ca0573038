"""The listening TCP sockets of a host, from /proc/net/tcp and tcp6, root's first.

``discover`` reads this host's; the agent (:mod:`certbot_fanout.agent`) ships it to another
host for ``discover --host``. So it is standard library only and runs on Python 3.9.
"""

from __future__ import annotations

import ipaddress
import os
from typing import NamedTuple

SYSTEM_UID_MAX = 999  # root's and then the system accounts' listeners are probed first


class Socket(NamedTuple):
    """A listening TCP socket, and the uid that owns it (None when the table does not say)."""

    address: str
    port: int
    uid: int | None


def listening_sockets(proc_net: str = "/proc/net") -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket, from /proc/net/tcp and tcp6, root's
    first, then the system accounts', then everyone else's."""
    return [(s.address, s.port) for s in listening_sockets_by_owner(proc_net)]


def listening_sockets_by_owner(proc_net: str = "/proc/net") -> list[Socket]:
    """Every listening TCP socket, ordered by whose it is: root's, then the system accounts'
    (up to SYSTEM_UID_MAX), then the rest (in table order within each), so that a user who
    opens many silent listeners cannot spend the listener budget before the services' turn."""
    found: dict[tuple[str, int], int | None] = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            with open(os.path.join(proc_net, table)) as f:
                lines = f.read(4 << 20).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parsed = _socket_line(line.split(), width)
            if parsed is not None:
                found.setdefault((parsed.address, parsed.port), parsed.uid)
    sockets = [Socket(address, port, uid) for (address, port), uid in found.items()]
    return sorted(sockets, key=_owner_rank)


def _owner_rank(s: Socket) -> int:
    if s.uid == 0:
        return 0
    return 1 if s.uid is not None and s.uid <= SYSTEM_UID_MAX else 2


def _socket_line(fields: list[str], width: int) -> Socket | None:
    """A listening socket's line of /proc/net/tcp*: ``sl local rem st queues timer retr uid``."""
    if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
        return None
    address, _, port_hex = fields[1].partition(":")
    if len(address) != width:
        return None
    try:
        raw = bytes.fromhex(address)
        port = int(port_hex, 16)
    except ValueError:
        return None
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    uid = int(fields[7]) if len(fields) > 7 and fields[7].isdigit() else None
    return Socket(str(ip), port, uid)
