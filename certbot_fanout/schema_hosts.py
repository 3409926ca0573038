"""The map's ``hosts:`` block: the other machines consumers may live on, each reached with the
system's OpenSSH client. YAML nodes in, :class:`certbot_fanout.model.Host` values out, every
rejection with its place.

A host needs only ``ssh`` (a destination, as ``ssh`` takes it: ``[user@]name``); ``port``,
``ssh_config`` (given to ssh as ``-F``), ``identity_file``, ``known_hosts`` (default: the
project's own file, where ``hosts trust`` pins keys), ``python`` (the target's interpreter) and
``connect_timeout`` are optional. Nothing here touches the network or the files named: a file
that is missing fails that host's consumers when a run connects, not the whole map.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from certbot_fanout.model import DEFAULT_CONNECT_TIMEOUT, Host
from certbot_fanout.yamlnode import (
    INT_TAG,
    NULL_TAG,
    Items,
    Node,
    Path,
    Reader,
    ScalarNode,
    suggest,
)

HOST_KEYS = (
    "ssh",
    "port",
    "ssh_config",
    "identity_file",
    "known_hosts",
    "python",
    "connect_timeout",
    "mode",
)
MODES = ("agent", "receive")
# What a consumer on a receive host may say: the target's own map decides files, owners, the
# test and the reload; this map only names the lineage handed over and what to verify.
RECEIVE_CONSUMER_KEYS = ("certificate", "host", "verify", "verify_timeout", "notes", "notify")
MAX_CONNECT_TIMEOUT = 300.0
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# [user@]host, or ssh://[user@]host[:port]: what ssh takes as its destination, and never an
# option (a leading "-") or anything a shell would read.
_DESTINATION_RE = re.compile(
    r"^(?:ssh://)?(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?"
    r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_PROGRAM_RE = re.compile(r"^(?:/[A-Za-z0-9._+/-]+|[A-Za-z0-9._+-]+)$")


def read_hosts(reader: Reader, node: Node) -> tuple[Host, ...]:
    """``hosts:``: a mapping of host names to hosts (empty or null: none)."""
    if isinstance(node, ScalarNode) and node.tag == NULL_TAG:
        return ()
    path = Path() / "hosts"
    items = reader.mapping(node, path, "a mapping of host names to hosts")
    hosts = []
    for name, (key_node, value_node) in items.items():
        if not _NAME_RE.match(name):
            raise reader.error(
                key_node,
                path / name,
                f"host name '{name}' may hold only letters, digits, . _ and -",
            )
        hosts.append(_host(reader, name, value_node, path / name))
    return tuple(hosts)


def consumer_host(reader: Reader, hosts: Mapping[str, Host], node: Node, path: Path) -> str:
    """A consumer's ``host``: one of the map's ``hosts``."""
    name = reader.string(node, path, "the name of a host in 'hosts'")
    if name not in hosts:
        hint = suggest(name, hosts)
        known = ", ".join(hosts) if hosts else "none: add a 'hosts:' block"
        extra = f"{hint} " if hint else ""
        raise reader.error(node, path, f"unknown host '{name}'; {extra}hosts in the map: {known}")
    return name


def endpoint_via(reader: Reader, remote: Host | None, items: Items, path: Path) -> bool:
    """An endpoint's ``via``: ``here`` (the default: probed from this host, as clients reach
    it) or ``host`` (through the ssh connection, from the consumer's own host ``remote``)."""
    if "via" not in items:
        return False
    node = items["via"][1]
    word = reader.string(node, path / "via", "here or host")
    if word not in ("here", "host"):
        raise reader.error(node, path / "via", f"expected here or host, got {word!r}")
    if word == "here":
        return False
    if remote is None:
        raise reader.error(
            node,
            path / "via",
            "via: host is for a consumer on another host (one with 'host:'); this consumer's "
            "endpoints are probed from here already",
        )
    if remote.mode == "receive":
        raise reader.error(
            node,
            path / "via",
            f"host {remote.name} is in receive mode: its key is restricted (no forwarding), so "
            "nothing can be probed through it; probe from here",
        )
    if "family" in items:
        raise reader.error(
            items["family"][0],
            path / "family",
            f"an endpoint probed via {remote.name} is reached at the address {remote.name} "
            "resolves for it; 'family' picks addresses here, so it cannot be used with via: host",
        )
    return True


def _host(reader: Reader, name: str, node: Node, path: Path) -> Host:
    if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
        # `mx1: root@mx1.example.org`: the destination alone.
        return Host(name=name, ssh=_destination(reader, node, path))
    items = reader.mapping(node, path, "a mapping with 'ssh' (an ssh destination)")
    reader.check_keys(items, HOST_KEYS, path, ("ssh",), node)
    port = None
    if "port" in items:
        port = _port(reader, items["port"][1], path / "port")
    timeout = DEFAULT_CONNECT_TIMEOUT
    if "connect_timeout" in items:
        timeout = reader.number(
            items["connect_timeout"][1],
            path / "connect_timeout",
            0,
            MAX_CONNECT_TIMEOUT,
            "a number of seconds",
        )
    files = {
        key: _absolute(reader, items[key][1], path / key)
        for key in ("ssh_config", "identity_file", "known_hosts")
        if key in items
    }
    python = Host(name, "").python
    if "python" in items:
        python = _program(reader, items["python"][1], path / "python")
    mode = "agent"
    if "mode" in items:
        mode_node = items["mode"][1]
        mode = reader.string(mode_node, path / "mode", "agent or receive")
        if mode not in MODES:
            raise reader.error(mode_node, path / "mode", f"expected agent or receive, got {mode!r}")
    return Host(
        name=name,
        ssh=_destination(reader, items["ssh"][1], path / "ssh"),
        port=port,
        python=python,
        connect_timeout=timeout,
        mode=mode,
        **files,
    )


def check_receive_consumer(reader: Reader, host: Host, items: Items, path: Path) -> None:
    """A consumer on a ``mode: receive`` host names its lineage and what to verify from here;
    anything about its files or commands belongs in the target's own map."""
    for key, (key_node, _) in items.items():
        if key not in RECEIVE_CONSUMER_KEYS:
            raise reader.error(
                key_node,
                path / key,
                f"host {host.name} is in receive mode: its own map decides the files, owners, "
                f"test and reload, so '{key}' cannot be given here (allowed: "
                f"{', '.join(RECEIVE_CONSUMER_KEYS)})",
            )


def _destination(reader: Reader, node: Node, path: Path) -> str:
    value = reader.string(node, path, "an ssh destination such as root@mx1.example.org")
    if not _DESTINATION_RE.match(value):
        raise reader.error(
            node,
            path,
            f"expected an ssh destination such as root@mx1.example.org, got {value!r} (no "
            "options, spaces or commands; the port goes in 'port', the rest in ssh_config)",
        )
    return value


def _port(reader: Reader, node: Node, path: Path) -> int:
    port = reader.scalar(node, path)
    if node.tag != INT_TAG or not isinstance(port, int) or not 0 < port < 65536:
        raise reader.error(node, path, f"expected a port 1-65535, got {reader.shown(node)}")
    return port


def _absolute(reader: Reader, node: Node, path: Path) -> str:
    value = reader.string(node, path, "an absolute path")
    if not os.path.isabs(value) or "\n" in value:
        raise reader.error(node, path, f"expected an absolute path, got {value!r}")
    return value


def _program(reader: Reader, node: Node, path: Path) -> str:
    value = reader.string(node, path, "a program name or absolute path, such as python3")
    if not _PROGRAM_RE.match(value) or "/../" in value or value.endswith("/"):
        raise reader.error(
            node,
            path,
            f"expected a program name or absolute path such as /usr/bin/python3, got {value!r}",
        )
    return value
