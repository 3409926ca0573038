"""A consumer's ``container:`` and ``process:``, and ``reload:`` given as a mapping, read for
``schema``: YAML nodes in, model values out, every rejection with its place.

``container:`` names the containers the service runs in (exactly one of ``name``, ``label`` or
``compose_service``; ``engine``, the API socket, is optional). ``process:`` names the process
whose own view of the files is checked (exactly one of ``unit``, ``pid_file`` or ``name``).
``reload: {signal: HUP}`` signals the container's or the process's main process;
``{exec: [...]}`` runs a command inside the container, ``{restart: true}`` restarts it.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode

from certbot_fanout.model import DEFAULT_ENGINE_SOCKET, ContainerSpec, ProcessSpec, ServiceReload
from certbot_fanout.yamlnode import Items, Node, Path, Reader

CONTAINER_KEYS = ("name", "label", "compose_service", "engine")
PROCESS_KEYS = ("unit", "pid_file", "name")
RELOAD_KEYS = ("signal", "exec", "restart")
# Docker's container names, compose service names, label keys and values, unit names.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,254}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,254}(?:=[^\x00-\x1f\x7f]{0,255})?$")
_COMM_MAX = 15  # the kernel keeps 15 characters of a command name


def _one_of(reader: Reader, items: Items, keys: tuple[str, ...], node: Node, path: Path) -> str:
    given = [k for k in keys if k in items]
    if len(given) != 1:
        words = ", ".join(keys[:-1]) + f" or {keys[-1]}"
        found = f"; it gives {' and '.join(given)}" if given else ""
        raise reader.error(node, path, f"expected exactly one of {words}{found}")
    return given[0]


def _name(reader: Reader, node: Node, path: Path, what: str) -> str:
    value = reader.string(node, path, what)
    if not _NAME_RE.match(value):
        raise reader.error(node, path, f"expected {what}, got {value!r}")
    return value


def read_container(reader: Reader, node: Node, path: Path) -> ContainerSpec:
    items = reader.mapping(node, path, "a mapping with name, label or compose_service")
    reader.check_keys(items, CONTAINER_KEYS, path, (), node)
    key = _one_of(reader, items, CONTAINER_KEYS[:3], node, path)
    value_node = items[key][1]
    if key == "label":
        value = reader.string(value_node, path / key, "a label: KEY or KEY=VALUE")
        if not _LABEL_RE.match(value):
            raise reader.error(value_node, path / key, f"expected KEY or KEY=VALUE, got {value!r}")
    else:
        value = _name(reader, value_node, path / key, f"a container's {key.replace('_', ' ')}")
    engine = DEFAULT_ENGINE_SOCKET
    if "engine" in items:
        engine = reader.string(items["engine"][1], path / "engine", "the engine's API socket")
        if not os.path.isabs(engine):
            raise reader.error(
                items["engine"][1],
                path / "engine",
                f"expected the absolute path of the engine's unix socket, got {engine!r}",
            )
    return ContainerSpec(engine=engine, **{key: value})


def read_process(reader: Reader, node: Node, path: Path) -> ProcessSpec:
    items = reader.mapping(node, path, "a mapping with unit, pid_file or name")
    reader.check_keys(items, PROCESS_KEYS, path, (), node)
    key = _one_of(reader, items, PROCESS_KEYS, node, path)
    value_node = items[key][1]
    if key == "pid_file":
        value = reader.string(value_node, path / key, "the absolute path of a pid file")
        if not os.path.isabs(value):
            raise reader.error(value_node, path / key, f"expected an absolute path, got {value!r}")
    else:
        what = "a unit name" if key == "unit" else "a command name"
        value = _name(reader, value_node, path / key, what)
        if key == "name" and len(value) > _COMM_MAX:
            raise reader.error(
                value_node,
                path / key,
                f"the kernel keeps only {_COMM_MAX} characters of a command name; "
                f"use {value[:_COMM_MAX]!r}, or a pid_file",
            )
    return ProcessSpec(**{key: value})


def read_service_reload(
    reader: Reader, node: Node, path: Path, in_container: bool, has_process: bool
) -> ServiceReload:
    if not in_container and not has_process:
        raise reader.error(
            node,
            path,
            "expected a command: a string or a list of words, got a mapping; a reload given "
            "as a mapping ({signal: HUP}, {exec: [...]}, {restart: true}) acts on the "
            "consumer's 'container:' or 'process:', and it has neither",
        )
    items = reader.mapping(node, path, "a mapping with signal, exec or restart")
    reader.check_keys(items, RELOAD_KEYS, path, (), node)
    key = _one_of(reader, items, RELOAD_KEYS, node, path)
    value_node = items[key][1]
    if key == "signal":
        return ServiceReload(signal=_signal(reader, value_node, path / key))
    if not in_container:
        raise reader.error(
            node,
            path,
            f"reload: {{{key}: ...}} acts on a container: give 'container:', or make reload a "
            "command run on this host",
        )
    if key == "exec":
        words = tuple(
            reader.string(w, path / key / i, "a word of the command")
            for i, w in enumerate(reader.sequence(value_node, path / key, "a list of words"))
        )
        if not words or not words[0]:
            raise reader.error(value_node, path / key, "expected a command, got an empty one")
        return ServiceReload(exec=words)
    if not reader.boolean(value_node, path / key):
        raise reader.error(value_node, path / key, "restart: false reloads nothing; drop it")
    return ServiceReload(restart=True)


def _signal(reader: Reader, node: Node, path: Path) -> str:
    value = reader.string(node, path, "a signal name such as HUP or USR1")
    name = value.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if not hasattr(signal.Signals, name) or name in ("SIGKILL", "SIGSTOP"):
        raise reader.error(node, path, f"expected a signal name such as HUP or USR1, got {value!r}")
    return name[3:]


def signal_number(name: str) -> int:
    """The number of a signal as :func:`read_service_reload` keeps it ("HUP")."""
    return int(signal.Signals[f"SIG{name}"])


def read_runs_in(
    reader: Reader,
    items: Items,
    path: Path,
    remote: str | None,
    command: Callable[[Node, Path], tuple[str, ...]],
) -> dict[str, Any]:
    """A consumer's ``container:``, ``process:`` and ``reload:`` (a ``command``, or a mapping),
    as the consumer's fields; a consumer on another host (``remote``) may have neither a
    container nor a process yet."""
    container = process = None
    if "container" in items:
        container = read_container(reader, items["container"][1], path / "container")
    if "process" in items:
        if container is not None:
            raise reader.error(
                items["process"][0],
                path / "process",
                "a container's files are checked as its main process sees them already: "
                "give 'container' or 'process', not both",
            )
        if remote:
            raise reader.error(
                items["process"][0],
                path / "process",
                f"the process view is checked on this host only, not on {remote}",
            )
        process = read_process(reader, items["process"][1], path / "process")
    fields: dict[str, Any] = {"container": container, "process": process}
    if "reload" in items and isinstance(items["reload"][1], MappingNode):
        fields["service_reload"] = read_service_reload(
            reader,
            items["reload"][1],
            path / "reload",
            in_container=container is not None,
            has_process=process is not None,
        )
        fields["reload"] = None
    elif "reload" in items:
        fields["reload"] = command(items["reload"][1], path / "reload")
    return fields


def read_inplace(reader: Reader, items: Items, path: Path, remote: str | None, link: bool) -> bool:
    """A file's ``inplace`` (default false): its own inode rewritten, for a file on this host
    that is not a link."""
    if "inplace" not in items:
        return False
    node = items["inplace"][1]
    inplace = reader.boolean(node, path / "inplace")
    if inplace and remote:
        raise reader.error(
            node, path / "inplace", f"inplace is for a file on this host, not on {remote}"
        )
    if inplace and link:
        raise reader.error(
            node,
            path / "inplace",
            "inplace rewrites a file's own bytes; a link has none: drop one of them",
        )
    return inplace
