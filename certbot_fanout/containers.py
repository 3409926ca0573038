"""Consumers in containers (``container:``) and processes whose own view is checked
(``process:``): where each file goes, how the service is reloaded, and what its process sees.

A container's files are planned from its mounts (``inspect``):

- a file under a *directory* bind mount (or a volume) is placed on the host, atomically, as for
  any consumer; the container sees it at once;
- a file that is itself a *single-file* bind mount would go stale: an atomic rename on the host
  gives the path a new inode and the container keeps the old one. It is refused, unless the file
  says ``inplace: true`` (its inode rewritten, not atomically);
- a file no mount carries is copied into the container through the engine's archive API, to a
  temporary name beside it, then renamed there by ``mv`` run inside.

After the reload, every file is read as the container's (or the process's) main process sees
it, ``/proc/PID/root/PATH``, and compared with the host's copy (:mod:`procview`).

Imported by ``deploy`` only for a consumer with ``container:`` or ``process:``.
"""

from __future__ import annotations

import enum
import os
import posixpath
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from certbot_fanout import commands, files, procview, trust
from certbot_fanout.engine import Container, Engine, EngineError, Gone
from certbot_fanout.errors import CommandError, FanoutError, PlacementError
from certbot_fanout.model import Consumer, ContainerSpec, FileSpec, ProcessSpec

SYSTEMCTL = "systemctl"
RESTART_HINT = "restart the container (reload: {restart: true})"
_T = TypeVar("_T")


class How(enum.Enum):
    HOST = "on the host"  # under a directory bind mount, or a plain file for a process
    INPLACE = "in place"  # a single-file bind mount, rewritten in its inode
    COPY = "copied in"  # no mount carries it: through the archive API


@dataclass(frozen=True)
class Plan:
    """Where one file of a container consumer goes, and the path the container reads."""

    spec: FileSpec
    how: How
    inside: str
    refused: str | None = None


def plan_file(spec: FileSpec, container: Container, restarts: bool = False) -> Plan:
    """How ``spec`` (a host path, or a path inside the container that no mount carries)
    reaches ``container``; ``restarts``: the reload restarts it, which mounts a single file
    again (so its new inode is seen)."""
    best = None
    for mount in container.mounts:
        if spec.path == mount.source:
            best = (mount, "")
            break
        under = spec.path.startswith(mount.source.rstrip("/") + "/")
        if under and (best is None or len(mount.source) > len(best[0].source)):
            best = (mount, spec.path[len(mount.source.rstrip("/")) :])
    if best is None:
        if spec.link:
            why = (
                f"{container.label} has no mount carrying {spec.path}, and a link into live/ "
                "copied into it would point at nothing there: mount the directory, or drop "
                "'link'"
            )
            return Plan(spec, How.COPY, spec.path, why)
        return Plan(spec, How.COPY, spec.path)
    mount, rest = best
    inside = mount.destination.rstrip("/") + rest if rest else mount.destination
    if rest or (restarts and not spec.inplace):
        return Plan(spec, How.HOST, inside)
    if spec.inplace:
        return Plan(spec, How.INPLACE, inside)
    directory = posixpath.dirname(spec.path)
    why = (
        f"{container.label} reads {inside} through a single-file bind mount of {spec.path}: "
        "an atomic replace on the host gives that path a new file, and the container keeps "
        "the old one until it is recreated, so it would go on serving the old certificate "
        f"while every check on the host passes. Mount the directory ({directory}) instead, or "
        "set 'inplace: true' on this file (its bytes are rewritten in place, not atomically)"
    )
    return Plan(spec, How.INPLACE, inside, why)


@dataclass
class _Found:
    engine: Engine
    containers: list[Container]
    plans: dict[str, tuple[How, list[tuple[Container, str]]]]
    refused: list[str]


def _engine(spec: ContainerSpec, forwarded: str | None) -> Engine:
    if forwarded is not None:  # the engine of another host, through its ssh connection
        return Engine(forwarded)
    # Who may connect (the docker group) is the socket's own mode; who could put another
    # socket in its place is its directories'.
    problem = trust.path_problem(posixpath.dirname(spec.engine))
    if problem is not None and problem.fault is not trust.Fault.MISSING:
        raise EngineError(
            f"container engine socket {spec.engine}: {problem}: whoever can replace the "
            "socket could answer for the engine"
        )
    return Engine(spec.engine)


def _find(consumer: Consumer, forwarded: str | None) -> _Found:
    assert consumer.container is not None
    engine = _engine(consumer.container, forwarded)
    ids = engine.find(consumer.container.selector)
    if not ids:
        on = f" on host {consumer.host}" if consumer.host else ""
        raise EngineError(
            f"no running container matches {consumer.container.shown} "
            f"(engine at {consumer.container.engine}{on})"
        )
    found = _Found(engine, [], {}, [])
    for ident in ids:
        try:
            found.containers.append(engine.inspect(ident))
        except Gone:
            continue  # removed between the list and the inspect: not a match any more
    if not found.containers:
        raise EngineError(f"the containers matching {consumer.container.shown} are gone")
    for spec in consumer.files:
        restarts = bool(consumer.service_reload and consumer.service_reload.restart)
        plans = [plan_file(spec, c, restarts) for c in found.containers]
        kinds = {p.how for p in plans}
        if len(kinds) > 1:
            found.refused.append(
                f"{spec.path}: the containers matching {consumer.container.shown} do not mount "
                "it alike ("
                + "; ".join(
                    f"{c.name}: {p.how.value}" for c, p in zip(found.containers, plans, strict=True)
                )
                + ")"
            )
            continue
        found.refused.extend(p.refused for p in plans if p.refused)
        found.plans[spec.path] = (
            plans[0].how,
            [(c, p.inside) for c, p in zip(found.containers, plans, strict=True)],
        )
    return found


Views = Callable[[int, list[tuple[str, str, bool]], str, bool], list[str]]


@dataclass(frozen=True)
class HostSide:
    """Where the files of a container consumer are placed on its host: this one (``files``
    and ``procview`` here), or another one (its ssh session's), and how its processes' views
    are read there."""

    snapshot: Callable[[str], files.Snapshot] = files.snapshot
    place: Callable[[files.Desired], None] = files.place
    restore: Callable[[files.Snapshot], None] = files.restore
    remove_leftovers: Callable[[str], None] = files.remove_leftovers
    views: Views = procview.stale_views
    local: bool = True


class _ContainerEffects:
    """The effects of a deploy on a container consumer, over its engine."""

    def __init__(self, consumer: Consumer, found: _Found, host: HostSide) -> None:
        self.consumer = consumer
        self.found = found
        self.host = host

    def how(self, path: str) -> tuple[How, list[tuple[Container, str]]]:
        return self.found.plans.get(path, (How.HOST, []))

    def snapshot(self, path: str) -> files.Snapshot:
        how, where = self.how(path)
        if how is not How.COPY:
            return self.host.snapshot(path)
        container, inside = where[0]
        got = self._call(lambda: self.found.engine.get_file(container.id, inside), container)
        if got is None:
            return files.Snapshot(path, files.Kind.MISSING)
        data, uid, gid, mode = got
        return files.Snapshot(path, files.Kind.FILE, data=data, uid=uid, gid=gid, mode=mode)

    def place(self, desired: files.Desired) -> None:
        how, where = self.how(desired.path)
        if how is not How.COPY:
            self.host.place(desired)  # in place when the file says inplace
        else:
            for container, inside in where:
                self._copy_in(container, inside, desired)

    def remove_leftovers(self, path: str) -> None:
        if self.how(path)[0] is not How.COPY:
            self.host.remove_leftovers(path)

    def restore(self, previous: files.Snapshot) -> None:
        how, where = self.how(previous.path)
        if how is not How.COPY:
            self.host.restore(previous)
        else:
            for container, inside in where:
                if previous.kind is files.Kind.FILE:
                    desired = files.Desired(
                        previous.path, previous.uid, previous.gid, previous.mode, previous.data
                    )
                    self._copy_in(container, inside, desired)
                else:
                    self._exec(container, ["rm", "-f", inside], PlacementError)

    def _copy_in(self, container: Container, inside: str, desired: files.Desired) -> None:
        directory, _, name = inside.rpartition("/")
        temp = f"{directory}/.{name}.fanout-{os.urandom(6).hex()}"
        engine = self.found.engine
        self._call(
            lambda: engine.put_file(
                container.id, temp, desired.data or b"", desired.uid, desired.gid, desired.mode
            ),
            container,
            PlacementError,
        )
        try:
            self._exec(container, ["mv", "-f", temp, inside], PlacementError)
        except PlacementError:
            self._exec(container, ["rm", "-f", temp], PlacementError, quiet=True)
            raise

    def _exec(
        self,
        container: Container,
        argv: list[str],
        error: type[Exception],
        quiet: bool = False,
        timeout: float = 30.0,
    ) -> None:
        engine = self.found.engine
        code, output = self._call(
            lambda: engine.exec(container.id, argv, timeout), container, error
        )
        if code != 0 and not quiet:
            tail = f": {output.strip()[-300:]}" if output.strip() else ""
            raise error(f"{container.label}: {' '.join(argv)} exited with {code}{tail}")

    def _call(
        self,
        call: Callable[[], _T],
        container: Container,
        error: type[Exception] = PlacementError,
    ) -> _T:
        try:
            return call()
        except Gone as e:
            raise error(f"{container.label} is gone ({e})") from None
        except EngineError as e:
            raise error(f"{container.label}: {e}") from None

    def reload(self, timeout: float) -> None:
        action = self.consumer.service_reload
        if action is None:
            return
        engine = self.found.engine
        for container in self.found.containers:
            ident = container.id
            if action.signal is not None:
                name = action.signal
                self._call(lambda: engine.kill(ident, name), container, CommandError)  # noqa: B023
            elif action.exec is not None:
                self._exec(container, list(action.exec), CommandError, timeout=timeout)
            else:
                self._call(lambda: engine.restart(ident, timeout), container, CommandError)  # noqa: B023

    def stale_views(self) -> list[str]:
        problems = []
        for container in self.found.containers:
            try:
                now = self.found.engine.inspect(container.id)
            except Gone:
                problems.append(f"{container.label} is gone")
                continue
            except EngineError as e:
                problems.append(f"{container.label}: process view not checked: {e}")
                continue
            if not now.running or now.pid <= 0:
                problems.append(f"{container.label} is not running")
                continue
            where = [
                (spec.path, inside, spec.link)
                for spec in self.consumer.files
                for c, inside in self.how(spec.path)[1]
                if c.id == container.id and self.how(spec.path)[0] is not How.COPY
            ]
            try:
                found = self.host.views(now.pid, where, RESTART_HINT, False)
            except FanoutError as e:  # the host's connection, lost
                found = [f"process view not checked: {e}"]
            problems.extend(f"{container.label}: {p}" for p in found)
        return problems


def process_pid(spec: ProcessSpec, timeout: float = 10.0) -> int:
    """The PID ``spec`` names now; raises ValueError saying why there is none."""
    if spec.pid_file is not None:
        return procview.pid_from_file(spec.pid_file)
    if spec.name is not None:
        return procview.pid_by_name(spec.name)
    assert spec.unit is not None
    try:
        result = commands.run_command(
            [SYSTEMCTL, "show", "--property=MainPID", "--value", spec.unit], timeout, "process"
        )
    except CommandError as e:
        raise ValueError(f"unit {spec.unit}: {e}") from None
    text = result.output.strip()
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"unit {spec.unit} has no main process (is it running?)")
    return int(text)


class _ProcessEffects:
    def __init__(self, consumer: Consumer) -> None:
        assert consumer.process is not None
        self.consumer = consumer
        self.process = consumer.process

    def stale_views(self) -> list[str]:
        try:
            pid = process_pid(self.process)
        except ValueError as e:
            return [f"process view not checked: {e}"]
        where = [(spec.path, spec.path, spec.link) for spec in self.consumer.files]
        return procview.stale_views(pid, where, f"restart {self.process.shown}", binds=True)

    def reload(self, timeout: float) -> None:
        action = self.consumer.service_reload
        if action is None or action.signal is None:
            return
        try:
            pid = process_pid(self.process)
            os.kill(pid, signal.Signals[f"SIG{action.signal}"])
        except (ValueError, OSError) as e:
            raise CommandError(f"reload: cannot signal {self.process.shown}: {e}") from None


def preflight(consumer: Consumer, forwarded: str | None = None) -> tuple[list[str], set[str]]:
    """For ``check``: what the next deploy of a container consumer would refuse (each in a
    sentence), and the paths it would copy into its containers (not on the host).

    Raises:
        EngineError: the engine cannot be reached, or no running container matches.
    """
    found = _find(consumer, forwarded)
    copied = {path for path, (how, _) in found.plans.items() if how is How.COPY}
    return found.refused, copied


def effects_for(
    consumer: Consumer, host: HostSide = HostSide(), forwarded: str | None = None
) -> dict[str, Any]:
    """The effects (``deploy.Effects``' fields) that differ for ``consumer``: its files placed
    as its container's mounts say, its reload sent through the engine (or to its process),
    its process's view checked.

    Raises:
        EngineError: the engine cannot be reached, or no running container matches.
    """
    if consumer.container is None:
        process = _ProcessEffects(consumer)
        return {"reload_service": process.reload, "stale_views": process.stale_views}
    container = _ContainerEffects(consumer, _find(consumer, forwarded), host)
    return {
        "snapshot": container.snapshot,
        "place": container.place,
        "restore": container.restore,
        "remove_leftovers": container.remove_leftovers,
        "reload_service": container.reload,
        "stale_views": container.stale_views,
        "refused": "; ".join(container.found.refused) or None,
    }
