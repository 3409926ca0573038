"""Orchestration: each consumer staged, tested, reloaded and verified, all of them in parallel.

One consumer's failure (or bug) becomes that consumer's result; it never stops or corrupts
another. Whether (and why) a consumer is reloaded is :func:`why_reload`, a pure function of its
:class:`ReloadFacts`. The side effects arrive through :class:`Effects`, so the flow can be
exercised with stand-ins where a real resource is impossible; the defaults are the real modules.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from certbot_fanout import commands, files, keystore, probe, state
from certbot_fanout.errors import CommandError, FanoutError, PlacementError, ProbeError
from certbot_fanout.escape import printable
from certbot_fanout.lineage import CertInfo, Lineage, read_lineage
from certbot_fanout.lock import default_lock_path, run_lock
from certbot_fanout.model import (
    DEFAULT_HOST_JOBS,
    DEFAULT_JOBS,
    Config,
    Consumer,
    Dialect,
    Encoding,
    Endpoint,
    FileSpec,
    KeyType,
    address_label,
)
from certbot_fanout.schema import CERTBOT_OWNED
from certbot_fanout.verify import SETTLE_SECONDS, EndpointResult, poll_endpoint

if TYPE_CHECKING:
    from certbot_fanout import remote
    from certbot_fanout.remote_receive import ReceiveSession

logger = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True)
class Effects:
    """The side effects a deploy needs; the defaults touch the real system."""

    snapshot: Callable[[str], files.Snapshot] = files.snapshot
    place: Callable[[files.Desired], None] = files.place
    restore: Callable[[files.Snapshot], None] = files.restore
    run: Callable[[Sequence[str], float, str], commands.CommandResult] = commands.run_command
    fetch: probe.Fetch = probe.fetch_served
    sleep: Callable[[float], None] = time.sleep
    # For a consumer on another host, the next three are that host's session's (remote).
    compare: Callable[[files.Desired, files.Snapshot], list[files.Difference]] = files.compare
    reader_problem: Callable[[str, int, int], str | None] = files.reader_problem
    remove_leftovers: Callable[[str], None] = files.remove_leftovers
    # An endpoint with ``via: host``: probed through the consumer's host's ssh connection.
    fetch_via_host: probe.Fetch | None = None
    # A consumer in a container or with a process (containers): its reload through the engine
    # or a signal (given the reload timeout), what its process sees that it should not, and
    # why its files are refused (a single-file bind mount), if they are.
    reload_service: Callable[[float], None] | None = None
    stale_views: Callable[[], list[str]] | None = None
    refused: str | None = None

    def fetch_for(self, ep: Endpoint) -> probe.Fetch:
        """How ``ep`` is probed: from here, or through the consumer's host."""
        if not ep.via_host:
            return self.fetch
        return self.fetch_via_host or _no_tunnel


@dataclass(frozen=True)
class DeployOptions:
    force: bool = False
    dry_run: bool = False
    jobs: int = DEFAULT_JOBS
    host_jobs: int = DEFAULT_HOST_JOBS  # other hosts connected to at once
    # Consumers a killed run may have left placed but not reloaded (see state.mark_pending).
    interrupted: frozenset[str] = frozenset()


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    PLANNED = "planned"


class Stage(enum.Enum):
    PLACE = "place"
    TEST = "test"
    RELOAD = "reload"
    VERIFY = "verify"
    CONNECT = "connect"  # its host could not be reached: nothing was done for it
    INTERNAL = "internal"


@dataclass(frozen=True)
class FileResult:
    path: str
    changed: bool
    differences: tuple[files.Difference, ...] = ()  # how the path was not what it should be
    warning: str | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """The differences in words, as the reports and the JSON show them."""
        return tuple(d.message for d in self.differences)

    @property
    def new(self) -> bool:
        """Nothing was at the path before."""
        return any(d.kind is files.DifferenceKind.MISSING for d in self.differences)


@dataclass(frozen=True)
class ConsumerResult:
    consumer: Consumer
    outcome: Outcome
    files: tuple[FileResult, ...] = ()
    tested: bool = False
    reloaded: bool = False
    reload_reason: str = ""
    endpoints: tuple[EndpointResult, ...] = ()
    failed_stage: Stage | None = None
    error: str | None = None
    rolled_back: bool = False
    seconds: float = 0.0
    # What its process (a container's main process) sees that differs from its files.
    views: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def notes(self) -> str:
        return self.consumer.notes

    @property
    def changed_files(self) -> tuple[FileResult, ...]:
        return tuple(f for f in self.files if f.changed)


@dataclass(frozen=True)
class DeployResult:
    certificate: str
    expected: CertInfo | None
    consumers: tuple[ConsumerResult, ...] = field(default_factory=tuple)
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> tuple[ConsumerResult, ...]:
        return tuple(c for c in self.consumers if c.outcome is Outcome.FAILED)


class ReloadReason(enum.Enum):
    """Why a consumer is tested and reloaded; each value is the words a deploy shows."""

    FORCED = "forced"
    FILES_CHANGED = "files changed"
    # Nothing to compare: the service reads live/ itself and nothing shows what it serves, so
    # the renewal is the change. (With endpoints, what they serve decides.)
    NO_FILES = "no files of its own"
    # Nothing shows what it serves, and the last run died before it was done with it.
    INTERRUPTED = "the last run was interrupted"
    # Its files are current, but an endpoint (named before these words) serves something else.
    NOT_SERVING = "not serving the current certificate"
    # Its files are current, but its process (a container's) reads an old copy of one.
    STALE_VIEW = "its process reads an old copy of a file"


class Step(enum.Enum):
    """What a consumer's run does once its files are placed."""

    RELOAD = "reload"  # test and reload (for a reason), then verify
    SETTLE = "settle"  # first ask its endpoints, for SETTLE_SECONDS, what they serve
    CURRENT = "current"  # they all serve the current certificate: nothing more to do
    VERIFY = "verify"  # no reload: verify what its endpoints serve, if it has any


@dataclass(frozen=True)
class ReloadFacts:
    """What the reload decision rests on, for one consumer whose files were just placed."""

    files_changed: bool
    has_files: bool
    has_endpoints: bool
    has_reload: bool
    force: bool = False
    dry_run: bool = False
    interrupted: bool = False  # the last run died before it was done with this consumer
    # After the settle probe: the endpoints not serving the current certificate (empty when
    # they all do). None before it, or without one.
    stale: tuple[str, ...] | None = None
    # After the settle probe: whether its process sees an old copy of a file.
    stale_view: bool = False


@dataclass(frozen=True)
class ReloadDecision:
    step: Step
    reason: ReloadReason | None = None
    endpoint: str = ""  # with NOT_SERVING: the endpoint that serves something else

    @property
    def text(self) -> str:
        """The reason in words, as a deploy's output shows it; empty without a reload."""
        if self.reason is ReloadReason.NOT_SERVING:
            return f"{self.endpoint} {self.reason.value}"
        return self.reason.value if self.reason else ""


def why_reload(facts: ReloadFacts) -> ReloadDecision:
    """Whether (and why) to test and reload a consumer, or first to ask its endpoints: the
    product's core policy, and a pure function of ``facts``.

    A consumer is reloaded when forced, when a file changed, or when nothing but the renewal
    can show it is due (no files and no endpoints; or no endpoints and an interrupted last
    run). A consumer with current files, endpoints and a reload command is reloaded only if
    an endpoint still serves something else after the settle probe (never in a dry run, which
    probes nothing).
    """
    if facts.force:
        return ReloadDecision(Step.RELOAD, ReloadReason.FORCED)
    if facts.files_changed:
        return ReloadDecision(Step.RELOAD, ReloadReason.FILES_CHANGED)
    if not facts.has_endpoints:
        if not facts.has_files:
            return ReloadDecision(Step.RELOAD, ReloadReason.NO_FILES)
        if facts.interrupted:
            return ReloadDecision(Step.RELOAD, ReloadReason.INTERRUPTED)
        return ReloadDecision(Step.VERIFY)
    if not facts.has_reload or facts.dry_run:
        return ReloadDecision(Step.VERIFY)
    if facts.stale is None:
        return ReloadDecision(Step.SETTLE)
    if facts.stale:
        return ReloadDecision(Step.RELOAD, ReloadReason.NOT_SERVING, facts.stale[0])
    if facts.stale_view:
        return ReloadDecision(Step.RELOAD, ReloadReason.STALE_VIEW)
    return ReloadDecision(Step.CURRENT)


def desired_file(spec: FileSpec, lineage: Lineage) -> files.Desired:
    """What ``spec`` should be for ``lineage``; never inside the directories certbot owns in
    the lineage's config dir, wherever the symlinks on the way lead (the map's check reads
    the path as written).

    Raises:
        PlacementError: a keystore's password file is not fit to use.
    """
    keep_out = certbot_owned_dirs(lineage)
    if spec.link:
        return files.Desired(
            path=spec.path,
            uid=spec.owner,
            gid=spec.group,
            target=lineage.live_path(spec.content[0]),
            keep_out=keep_out,
        )
    same_content = None
    if spec.encoding is Encoding.PKCS12:
        assert spec.keystore is not None, "the schema gives every keystore its options"
        built = keystore.build_pkcs12(lineage, spec.keystore)
        data, same_content = built.data, built.same_content
    elif spec.encoding is Encoding.DER:
        data = keystore.der_certificate(lineage)
    else:
        data = lineage.content(spec.content)
    return files.Desired(
        path=spec.path,
        uid=spec.owner,
        gid=spec.group,
        mode=spec.mode,
        data=data,
        keep_out=keep_out,
        same_content=same_content,
        inplace=spec.inplace,
    )


def certbot_owned_dirs(lineage: Lineage) -> tuple[str, ...]:
    """The directories certbot owns in the config dir ``lineage`` is in (``DIR/live/NAME``)."""
    config_dir = os.path.dirname(os.path.dirname(lineage.live_dir))
    return tuple(os.path.join(config_dir, name) for name in CERTBOT_OWNED)


def deploy(
    config: Config,
    lineage: Lineage,
    options: DeployOptions = DeployOptions(),
    effects: Effects = Effects(),
) -> DeployResult:
    """Deploy ``lineage`` to every consumer of it in ``config``, in parallel."""
    start = time.monotonic()
    consumers = config.consumers_for(lineage.name)
    results: list[ConsumerResult] = []
    with contextlib.ExitStack() as stack:
        places = Places(effects)
        places.open_hosts(stack, replace(config, consumers=consumers), options.host_jobs)
        if consumers:
            workers = max(1, min(options.jobs, len(consumers)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout") as pool:
                results = places.map(pool, lambda c: places.run(c, lineage, options), consumers)
    return DeployResult(
        certificate=lineage.name,
        expected=lineage.cert,
        consumers=tuple(results),
        dry_run=options.dry_run,
        seconds=time.monotonic() - start,
    )


def deploy_lineage(
    config: Config,
    live_dir: str,
    options: DeployOptions = DeployOptions(),
    effects: Effects = Effects(),
    lock_path: str | None = None,
    state_path: str | None = None,
) -> DeployResult | None:
    """Read ``live_dir`` and deploy it to its consumers, one run at a time (the lock is not
    taken for a dry run). None when no consumer uses it: then the lineage is not even read.
    With ``state_path``, record when each consumer was deployed and verified.

    Raises:
        LineageError: the lineage is missing or inconsistent; nothing was touched.
        LockError: another run held the lock too long; nothing was touched.
    """
    live_dir = os.path.abspath(live_dir)
    if not config.consumers_for(os.path.basename(live_dir)):
        return None
    lineage = read_lineage(live_dir)
    return deploy_locked(config, lineage, options, effects, lock_path, state_path)


def deploy_locked(
    config: Config,
    lineage: Lineage,
    options: DeployOptions = DeployOptions(),
    effects: Effects = Effects(),
    lock_path: str | None = None,
    state_path: str | None = None,
) -> DeployResult:
    """:func:`deploy` under the run lock (not for a dry run), recorded in ``state_path``.

    Raises:
        LockError: another run held the lock too long; nothing was touched.
    """
    if options.dry_run:
        return deploy(config, lineage, options, effects)
    with run_lock(lock_path or default_lock_path()):
        if state_path:
            # Consumers only a reload can prove done: a crash between placing their files and
            # reloading them would leave nothing for the next run to see. Mark them first.
            unproven = [
                c.name for c in config.consumers_for(lineage.name) if c.reload and not c.verify
            ]
            died = state.mark_pending(state_path, lineage.name, unproven)
            options = replace(options, interrupted=died)
        result = deploy(config, lineage, options, effects)
        if state_path:
            record_result(state_path, result)
        return result


def record_result(state_path: str, result: DeployResult) -> None:
    """Note in the state file which consumers were deployed and which were proven current."""
    ok = [c for c in result.consumers if c.outcome is Outcome.OK]
    expected = result.expected.fingerprint if result.expected else ""
    state.update_state(
        state_path,
        result.certificate,
        deployed={c.name: expected for c in ok if c.changed_files or c.reloaded},
        verified=[c.name for c in ok if c.endpoints],
        now=time.time(),
        # A consumer whose placed files could not be put back (its connection was lost during
        # its reload, say) stays pending: the next run must reload it, not find it current.
        finished=[c.name for c in result.consumers if not _left_placed(c)],
        hosts={c.name: c.consumer.host for c in result.consumers},
    )


def _left_placed(c: ConsumerResult) -> bool:
    """Failed with files placed that its service may never have been reloaded onto."""
    return (
        c.outcome is Outcome.FAILED
        and bool(c.changed_files)
        and not c.rolled_back
        and (c.failed_stage in (Stage.TEST, Stage.RELOAD, Stage.INTERNAL, Stage.PLACE))
    )


class Places:
    """Where each consumer of a run lives: this host (the run's effects), or another one
    (that host's session, connected once for all its consumers)."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.hosts: remote.Hosts | None = None

    def open_hosts(self, stack: contextlib.ExitStack, config: Config, host_jobs: int) -> None:
        """Connect, when its first consumer needs it, to each host ``config`` has consumers on
        (none: nothing is imported or started)."""
        if any(c.host for c in config.consumers):
            # Only for a map with other hosts.
            from certbot_fanout import remote, remote_receive

            self.hosts = stack.enter_context(
                remote.Hosts(config.hosts, config.consumers, host_jobs, remote_receive.session_for)
            )

    def locate(self, consumer: Consumer) -> tuple[Consumer, Effects]:
        """The consumer as its host numbers its owners, and the effects that reach it.

        Raises:
            HostError: its host could not be reached.
            PlacementError: an owner or group does not exist there.
        """
        if consumer.host is None:
            if consumer.container or consumer.process:
                from certbot_fanout import containers

                return consumer, replace(self.effects, **containers.effects_for(consumer))
            return consumer, self.effects
        assert self.hosts is not None
        if self.hosts.hosts[consumer.host].mode == "receive":
            # Its files are its own map's (`status` there checks them); here, its endpoints.
            return consumer, self.from_here(consumer)
        session, placed = self.hosts.prepare(consumer)
        effects = replace(
            self.effects,
            snapshot=session.snapshot,
            place=session.place,
            restore=session.restore,
            run=session.run,
            compare=session.compare,
            reader_problem=session.reader_problem,
            remove_leftovers=session.remove_leftovers,
            fetch=_not_our_loopback(self.effects.fetch, consumer.host),
            fetch_via_host=session.fetch_through,
        )
        if placed.container is not None:
            from certbot_fanout import containers

            host = containers.HostSide(
                session.snapshot,
                session.place,
                session.restore,
                session.remove_leftovers,
                session.stale_views,
                local=False,
            )
            forwarded = session.forward_socket(placed.container.engine)
            effects = replace(effects, **containers.effects_for(placed, host, forwarded))
        return placed, effects

    def from_here(self, consumer: Consumer) -> Effects:
        """The effects that reach nothing on ``consumer``'s host: its endpoints probed from
        here (for a host that could not be reached, or a receive-mode host, whose files and
        commands are its own map's)."""
        if consumer.host is None:
            return self.effects
        return replace(self.effects, fetch=_not_our_loopback(self.effects.fetch, consumer.host))

    def release(self, consumer: Consumer) -> None:
        """``consumer`` is done: the last consumer of a host closes its connection."""
        if self.hosts is not None:
            self.hosts.release(consumer)

    def map(
        self, pool: ThreadPoolExecutor, work: Callable[[Consumer], R], consumers: Sequence[Consumer]
    ) -> list[R]:
        """``work`` on each consumer in ``pool``, a host's consumers one after another in the
        queue (so few connections are open at once), each released when done; the results in
        the order of ``consumers``."""
        first: dict[str | None, int] = {}
        for i, c in enumerate(consumers):
            first.setdefault(c.host, i)
        order = sorted(range(len(consumers)), key=lambda i: first[consumers[i].host])

        def one(i: int) -> R:
            try:
                return work(consumers[i])
            finally:
                self.release(consumers[i])

        done = dict(zip(order, pool.map(one, order), strict=True))
        return [done[i] for i in range(len(consumers))]

    def run(self, consumer: Consumer, lineage: Lineage, options: DeployOptions) -> ConsumerResult:
        if consumer.host is None and not (consumer.container or consumer.process):
            return _guarded(consumer, lineage, options, self.effects)
        if consumer.host is None:
            return self._run_inside(consumer, lineage, options)
        from certbot_fanout.remote import HostError

        start = time.monotonic()
        assert self.hosts is not None
        if self.hosts.hosts[consumer.host].mode == "receive":
            from certbot_fanout.remote_receive import ReceiveSession

            try:
                session = self.hosts.session(consumer.host)
            except HostError as e:
                return _failed(consumer, Stage.CONNECT, str(e), start)
            assert isinstance(session, ReceiveSession)
            return _received(session, consumer, lineage, options, self.from_here(consumer))
        try:
            placed, effects = self.locate(consumer)
        except HostError as e:
            return _failed(consumer, Stage.CONNECT, str(e), start)
        except PlacementError as e:
            return _failed(consumer, Stage.PLACE, str(e), start)
        except FanoutError as e:  # its container engine unreachable, or no container matching
            return _failed(consumer, Stage.CONNECT, str(e), start)
        if effects.refused:
            return _failed(consumer, Stage.PLACE, effects.refused, start)
        return replace(_guarded(placed, lineage, options, effects), consumer=consumer)

    def _run_inside(
        self, consumer: Consumer, lineage: Lineage, options: DeployOptions
    ) -> ConsumerResult:
        """A consumer in a container, or with a process whose view is checked."""
        start = time.monotonic()
        try:
            _, effects = self.locate(consumer)
        except FanoutError as e:  # the engine unreachable, no container matching
            return _failed(consumer, Stage.CONNECT, str(e), start)
        if effects.refused:
            return _failed(consumer, Stage.PLACE, effects.refused, start)
        return _guarded(consumer, lineage, options, effects)


def _received(
    session: ReceiveSession,
    consumer: Consumer,
    lineage: Lineage,
    options: DeployOptions,
    fx: Effects,
) -> ConsumerResult:
    """``consumer`` (of this map, on a receive-mode host) after the target's deploy of
    ``lineage``, its endpoints probed from here."""
    start = time.monotonic()
    if lineage.name not in session.certificates:
        return _failed(
            consumer,
            Stage.PLACE,
            f"{session.where}: its own map has no consumer of {lineage.name}, so it was not "
            "handed over (add one there, or drop this consumer)",
            start,
        )
    try:
        document = session.deploy_once(lineage, options.force, options.dry_run)
    except FanoutError as e:  # the connection broke, or the target refused the lineage
        return _failed(consumer, Stage.CONNECT, str(e), start)
    theirs = [c for c in document["consumers"] if isinstance(c, dict)]
    done = _as_theirs(consumer, theirs, options.dry_run, session.host.name)
    if done.outcome is Outcome.OK:
        deadline = time.monotonic() + consumer.verify_timeout
        endpoints = tuple(
            poll_endpoint(ep, lineage, fx.fetch_for(ep), deadline, fx.sleep)
            for ep in consumer.verify
        )
        bad = [r for r in endpoints if not r.ok]
        done = replace(done, endpoints=endpoints)
        if bad:
            error = "; ".join(r.error or r.label for r in bad)
            done = replace(done, outcome=Outcome.FAILED, failed_stage=Stage.VERIFY, error=error)
    return replace(done, seconds=time.monotonic() - start)


def _as_theirs(
    consumer: Consumer, theirs: list[dict[str, Any]], dry_run: bool, host: str
) -> ConsumerResult:
    """``consumer``'s result as the target's deploy document tells it (before the probes
    from here): its files, test and reload are those of the target's consumers."""
    reasons = [str(c["reload_reason"]) for c in theirs if c.get("reload_reason")]
    done = ConsumerResult(
        consumer=consumer,
        outcome=Outcome.PLANNED if dry_run else Outcome.OK,
        files=tuple(_received_file(f) for c in theirs for f in c.get("files") or ()),
        tested=any(c.get("tested") for c in theirs),
        reloaded=any(c.get("reloaded") for c in theirs),
        reload_reason=reasons[0] if reasons else "",
    )
    failed = [c for c in theirs if c.get("outcome") == "failed"]
    if not failed:
        return done
    error = "; ".join(
        f"{host}'s {printable(str(c.get('name')))}: {printable(str(c.get('error')))}"
        for c in failed
    )
    return replace(
        done,
        outcome=Outcome.FAILED,
        failed_stage=_received_stage(failed[0].get("failed_stage")),
        error=error,
        rolled_back=all(c.get("rolled_back") for c in failed),
    )


def _received_file(document: Any) -> FileResult:
    """A file the target placed (or found current), as its document gives it."""
    if not isinstance(document, dict):
        return FileResult("?", False)
    reasons = [str(r) for r in document.get("reasons") or ()]
    # The kinds stay on the target; the words come back (a new file's is files.MISSING_REASON).
    differences = tuple(
        files.Difference(
            files.DifferenceKind.MISSING
            if r == files.MISSING_REASON
            else files.DifferenceKind.CONTENT,
            r,
        )
        for r in reasons
    )
    warning = document.get("warning")
    return FileResult(
        path=str(document.get("path")),
        changed=bool(document.get("changed")),
        differences=differences,
        warning=str(warning) if warning else None,
    )


def _received_stage(value: object) -> Stage:
    try:
        return Stage(str(value))
    except ValueError:
        return Stage.INTERNAL


def loopback_problem(address: str, port: int, host: str) -> str | None:
    """Why ``address`` is not probed here for a consumer on ``host``: it is a loopback."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:
            return (
                f"{address_label(address, port)} is the loopback of {host}, not of this "
                f"host: give an address of {host} that clients use, or add 'via: host' to "
                f"the endpoint to probe it through the ssh connection, from {host} itself"
            )
    return None


def _not_our_loopback(fetch: probe.Fetch, host: str) -> probe.Fetch:
    """``fetch``, refusing this host's loopback for a consumer on ``host``: 127.0.0.1 there is
    not 127.0.0.1 here, and probing ours would prove nothing about it (or the wrong thing)."""

    def guarded(
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
        problem = loopback_problem(address, port, host)
        if problem is not None:
            raise ProbeError(problem)
        return fetch(address, port, server_name, timeout, starttls, key_type=key_type, trust=trust)

    return guarded


def _no_tunnel(
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
    raise ProbeError(
        f"{address_label(address, port)}: via: host, but no host connection to probe through"
    )


def _failed(consumer: Consumer, stage: Stage, error: str, start: float) -> ConsumerResult:
    return ConsumerResult(
        consumer=consumer,
        outcome=Outcome.FAILED,
        failed_stage=stage,
        error=error,
        seconds=time.monotonic() - start,
    )


def _guarded(
    consumer: Consumer, lineage: Lineage, options: DeployOptions, effects: Effects
) -> ConsumerResult:
    start = time.monotonic()
    run = None
    try:
        run = _ConsumerRun(consumer, lineage, options, effects)
        return run.run()
    except Exception as e:  # a bug must cost one consumer, not the run
        logger.debug("consumer %s crashed", consumer.name, exc_info=True)
        error = f"internal error: {type(e).__name__}: {e} (run with --debug for details)"
        if run is not None and run.placed and not run.committed:
            # Files the service was not yet reloaded onto (its test and reload had not both
            # passed) must not stay behind a crash: put them back.
            try:
                return run.rollback(Stage.INTERNAL, error)
            except Exception:
                logger.debug("rolling back %s crashed", consumer.name, exc_info=True)
                error += "; ROLLBACK INCOMPLETE (run with --debug for details)"
        return ConsumerResult(
            consumer=consumer,
            outcome=Outcome.FAILED,
            failed_stage=Stage.INTERNAL,
            error=error,
            seconds=time.monotonic() - start,
        )


class _ConsumerRun:
    """One consumer, start to finish: place -> test -> reload -> verify."""

    def __init__(
        self, consumer: Consumer, lineage: Lineage, options: DeployOptions, effects: Effects
    ) -> None:
        self.consumer = consumer
        self.lineage = lineage
        self.options = options
        self.fx = effects
        self.start = time.monotonic()
        self.file_results: list[FileResult] = []
        self.placed: list[files.Snapshot] = []
        self.tested = False
        self.reloaded = False
        self.reload_reason = ""
        # Set once the service was reloaded onto the placed files: from then on they stay.
        self.committed = False

    def result(
        self,
        outcome: Outcome,
        endpoints: Sequence[EndpointResult] = (),
        stage: Stage | None = None,
        error: str | None = None,
        rolled_back: bool = False,
        views: Sequence[str] = (),
    ) -> ConsumerResult:
        return ConsumerResult(
            consumer=self.consumer,
            outcome=outcome,
            files=tuple(self.file_results),
            tested=self.tested,
            reloaded=self.reloaded,
            reload_reason=self.reload_reason,
            endpoints=tuple(endpoints),
            failed_stage=stage,
            error=error,
            rolled_back=rolled_back,
            seconds=time.monotonic() - self.start,
            views=tuple(views),
        )

    def run(self) -> ConsumerResult:
        try:
            return self._run()
        finally:
            # Temp files a killed run left beside files that were not placed now (placing
            # removes them). Done last: each syscall costs a GIL hand-off, and before the
            # reload they would delay it.
            if not self.options.dry_run:
                placed = {previous.path for previous in self.placed}
                for spec in self.consumer.files:
                    if spec.path not in placed:
                        self.fx.remove_leftovers(spec.path)

    def _run(self) -> ConsumerResult:
        """Place, then (when :func:`why_reload` says so) test and reload, then verify; a failed
        placement, test or reload puts the files back."""
        try:
            self.stage_files()
        except PlacementError as e:
            return self.rollback(Stage.PLACE, str(e))
        decision = why_reload(self.facts())
        if decision.step is Step.SETTLE:
            # Files are current; if the service still serves something else, reload to repair.
            # A reload moments ago (a deploy hook before the installer, nginx's old workers
            # draining) can still show the old certificate briefly: give it a moment first.
            current = self.poll(within=SETTLE_SECONDS)
            stale = tuple(r.label for r in current if not r.ok)
            decision = why_reload(self.facts(stale, stale_view=not stale and bool(self.views())))
            if decision.step is Step.CURRENT:
                return self.result(Outcome.OK, current)
        self.reload_reason = decision.text
        if self.options.dry_run:
            return self.plan(decision)
        if decision.step is Step.RELOAD:
            for step in (self.test, self.reload):
                failed = step()
                if failed is not None:
                    return failed
            self.committed = True
        return self.verify()

    def facts(self, stale: tuple[str, ...] | None = None, stale_view: bool = False) -> ReloadFacts:
        c = self.consumer
        return ReloadFacts(
            files_changed=any(f.changed for f in self.file_results),
            has_files=bool(c.files),
            has_endpoints=bool(c.verify),
            has_reload=c.has_reload,
            force=self.options.force,
            dry_run=self.options.dry_run,
            interrupted=c.name in self.options.interrupted,
            stale=stale,
            stale_view=stale_view,
        )

    def plan(self, decision: ReloadDecision) -> ConsumerResult:
        """A dry run's result: what would be tested and reloaded, nothing done."""
        reload = decision.step is Step.RELOAD
        self.tested = bool(self.consumer.test) and reload
        self.reloaded = self.consumer.has_reload and reload
        return self.result(Outcome.PLANNED)

    def test(self) -> ConsumerResult | None:
        """Run the consumer's test command, if any; the failed result (rolled back) if it
        fails."""
        c = self.consumer
        if not c.test:
            return None
        try:
            self.fx.run(c.test, c.reload_timeout, "test")
        except CommandError as e:
            self.tested = True
            return self.rollback(Stage.TEST, str(e))
        self.tested = True
        return None

    def reload(self) -> ConsumerResult | None:
        """Run the consumer's reload command, if any; the failed result (rolled back) if it
        fails."""
        c = self.consumer
        if not c.has_reload:
            return None
        try:
            if c.reload:
                self.fx.run(c.reload, c.reload_timeout, "reload")
            if c.service_reload and self.fx.reload_service:
                self.fx.reload_service(c.reload_timeout)
        except CommandError as e:
            # Put the files back, as after a failed test: the service's state is unknown, and
            # files left current would hide from the next run (and from `status`) that this
            # consumer was never reloaded onto them.
            return self.rollback(Stage.RELOAD, str(e))
        self.reloaded = True
        return None

    def verify(self) -> ConsumerResult:
        """The result: OK when every endpoint serves the lineage's certificate in time."""
        endpoints = self.poll()
        bad = [r.error or r.label for r in endpoints if not r.ok]
        views = self.views()
        if bad or views:
            error = "; ".join(bad + views)
            return self.result(Outcome.FAILED, endpoints, Stage.VERIFY, error, views=views)
        return self.result(Outcome.OK, endpoints)

    def views(self) -> list[str]:
        """What the consumer's process (its container's) sees that differs from its files."""
        return self.fx.stale_views() if self.fx.stale_views else []

    def stage_files(self) -> None:
        for spec in self.consumer.files:
            desired = desired_file(spec, self.lineage)
            current = self.fx.snapshot(spec.path)
            if spec.inplace:
                current = replace(current, inplace=True)  # put back into the same inode
            found = self.fx.compare(desired, current)
            warning = None
            if spec.link and desired.target is not None:
                problem = self.fx.reader_problem(desired.target, spec.owner, spec.group)
                if problem:
                    warning = f"{spec.owner_name} cannot follow the link: {problem}"
            changed = bool(found) or self.options.force
            if changed and not self.options.dry_run:
                try:
                    self.fx.place(desired)
                except PlacementError:
                    # A failed placement leaves the destination as it was, so there is nothing
                    # to put back (and on a full or read-only filesystem, putting it back
                    # would fail too), unless it failed after the rename.
                    if self.replaced(desired):
                        self.placed.append(current)
                    raise
                self.placed.append(current)
            self.file_results.append(FileResult(spec.path, changed, tuple(found), warning))

    def replaced(self, desired: files.Desired) -> bool:
        """Whether a placement that failed got as far as renaming ``desired`` into place
        (only the directory's fsync comes after); when unsure, say so, to restore it."""
        try:
            return not self.fx.compare(desired, self.fx.snapshot(desired.path))
        except PlacementError:
            return True

    def rollback(self, stage: Stage, error: str) -> ConsumerResult:
        problems = []
        for previous in reversed(self.placed):
            try:
                self.fx.restore(previous)
            except PlacementError as e:
                problems.append(str(e))
        if problems:
            error += "; ROLLBACK INCOMPLETE: " + "; ".join(problems)
        rolled_back = bool(self.placed) and not problems
        return self.result(Outcome.FAILED, stage=stage, error=error, rolled_back=rolled_back)

    def poll(self, within: float | None = None) -> tuple[EndpointResult, ...]:
        """Poll every endpoint until it serves the lineage's cert or the consumer's
        verify_timeout ends (a reload is rarely instant), or ``within`` seconds if shorter."""
        wait = self.consumer.verify_timeout
        if within is not None:
            wait = min(wait, within)
        deadline = time.monotonic() + wait
        return tuple(
            poll_endpoint(ep, self.lineage, self.fx.fetch_for(ep), deadline, self.fx.sleep)
            for ep in self.consumer.verify
        )
