"""``discover``'s look at containers and private mount namespaces: running containers whose
mounts carry a lineage's certificate (with what each publishes, whether the mount is of a
single file, and whether its main process sees the host's bytes), and processes that read an
old copy of one through a single-file bind mount of a file since replaced.

Containers are asked for through each engine the map names and the default socket, when one
is there; a host without an engine is not a problem. Every read is bounded, by entries and by
time.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

from certbot_fanout import fswalk, procview
from certbot_fanout.discover import (
    ContainerFind,
    Copy,
    DiscoverReport,
    ViewFind,
    copy_from_scan,
    match,
)
from certbot_fanout.engine import Container, Engine, EngineError, Mount, matches
from certbot_fanout.lineage import CertInfo, Lineage, cert_info_from_der
from certbot_fanout.model import DEFAULT_ENGINE_SOCKET, Config

BUDGET = 30.0  # seconds for the whole look
MAX_ENTRIES = 20000  # directory entries read under containers' mounts, in all
MAX_FOUND = 200
MAX_PROCS = 65536


def engines(config: Config) -> list[str]:
    """The engine sockets to ask: those the map's consumers name, and the default one if it
    exists."""
    named = [c.container.engine for c in config.consumers if c.container is not None]
    if os.path.exists(DEFAULT_ENGINE_SOCKET):
        named.append(DEFAULT_ENGINE_SOCKET)
    return list(dict.fromkeys(named))


def with_containers(report: DiscoverReport, config: Config, config_dir: str) -> DiscoverReport:
    """``report`` with the containers and the stale views found on this host."""
    deadline = time.monotonic() + BUDGET
    notes: list[str] = []
    found: list[ContainerFind] = []
    for path in engines(config):
        try:
            found += _containers(Engine(path), config, report.lineages, config_dir, deadline)
        except EngineError as e:
            notes.append(f"containers not looked at: {e}")
    views = _views(report.lineages, deadline)
    return replace(
        report, containers=tuple(found), views=tuple(views), notes=(*report.notes, *notes)
    )


def _containers(
    engine: Engine,
    config: Config,
    lineages: Mapping[str, Lineage],
    config_dir: str,
    deadline: float,
) -> list[ContainerFind]:
    found = []
    for ident in engine.find({}):
        try:
            container = engine.inspect(ident)
        except EngineError:
            continue  # gone since the list
        for mount in container.mounts:
            for path, der, copy in _pems_under(mount.source, config_dir, deadline):
                try:
                    info = cert_info_from_der(der)
                except ValueError:
                    continue
                lineage = match(info, lineages)
                if lineage is not None:
                    where = (engine.path, container, mount)
                    found.append(_find(config, where, path, (lineage, info), copy))
    return found


def _pems_under(source: str, config_dir: str, deadline: float) -> Iterable[tuple[str, bytes, Copy]]:
    """The PEM files with a certificate at ``source`` (a file, or a directory's tree): each
    one's path, first certificate, and what the scan read of it."""
    try:
        st = os.stat(source)
    except OSError:
        return []
    if stat.S_ISREG(st.st_mode):
        item = fswalk.pem_file(source)
        items = [item] if item is not None else []
    elif stat.S_ISDIR(st.st_mode):
        seconds = max(0.0, deadline - time.monotonic())
        items = fswalk.scan_pems([source], [config_dir], MAX_ENTRIES, seconds, MAX_FOUND)["found"]
    else:
        items = []
    return [(str(i["path"]), base64.b64decode(i["der"]), copy_from_scan(i)) for i in items]


def _find(
    config: Config,
    where: tuple[str, Container, Mount],
    path: str,
    carried: tuple[Lineage, CertInfo],
    copy: Copy,
) -> ContainerFind:
    engine, container, mount = where
    lineage, info = carried
    single = path == mount.source
    rest = "" if single else path[len(mount.source.rstrip("/")) :]
    inside = mount.destination.rstrip("/") + rest if rest else mount.destination
    host = fswalk.read_regular(path)
    seen = procview.seen_by(container.pid, inside) if container.pid > 0 else None
    seen_current = None
    if seen is not None and seen.data is not None and host is not None:
        seen_current = seen.data == host.data
    mapped_by = next(
        (
            c.name
            for c in config.consumers
            if c.container is not None
            and matches(container, c.container.selector)
            and any(f.path in (path, inside) for f in c.files)
        ),
        None,
    )
    return ContainerFind(
        container=container.name,
        ident=container.id[:12],
        source=path,
        inside=inside,
        certificate=lineage.name,
        served=info,
        current=info.fingerprint == lineage.cert.fingerprint,
        single_file=single,
        seen_current=seen_current,
        ports=container.ports,
        mapped_by=mapped_by,
        copy=copy,
        engine=engine,
        namespace=procview.mount_namespace(container.pid) if container.pid > 0 else None,
    )


def _views(lineages: Mapping[str, Lineage], deadline: float) -> list[ViewFind]:
    """Each mount namespace other than this one (its first process) that reads an old copy of a
    lineage's certificate through a bind mount of a replaced file."""
    found = []
    namespaces: set[str] = set()
    ours = procview.mount_namespace()
    pids = sorted(int(e) for e in os.listdir("/proc")[:MAX_PROCS] if e.isdigit())
    for pid in pids:
        if time.monotonic() > deadline:
            break
        namespace = procview.mount_namespace(pid)
        if namespace is None or namespace == ours or namespace in namespaces:
            continue
        namespaces.add(namespace)
        for entry in procview.mounts_of(pid):
            if entry.deleted:
                view = _stale_view(pid, entry, lineages)
                if view is not None:
                    found.append(view)
    return found


def _stale_view(
    pid: int, entry: procview.MountEntry, lineages: Mapping[str, Lineage]
) -> ViewFind | None:
    seen = procview.seen_by(pid, entry.point)
    der = None if seen.data is None else fswalk.first_certificate(seen.data)
    if der is None:
        return None
    try:
        info = cert_info_from_der(der)
    except ValueError:
        return None
    lineage = match(info, lineages)
    if lineage is None or info.fingerprint == lineage.cert.fingerprint:
        return None
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            command = f.read(64).decode("utf-8", "replace").strip()
    except OSError:
        command = "?"
    return ViewFind(
        pid=pid,
        command=command,
        point=entry.point,
        original=procview.host_path(entry),
        certificate=lineage.name,
        served=info,
    )
