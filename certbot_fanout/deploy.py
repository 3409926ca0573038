"""Orchestration: each consumer staged, tested, reloaded and verified, all of them in parallel.

One consumer's failure (or bug) becomes that consumer's result; it never stops or corrupts
another. The side effects arrive through :class:`Effects`, so the flow can be exercised with
stand-ins where a real resource is impossible; the defaults are the real modules.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from certbot_fanout import commands, files, probe, state
from certbot_fanout.errors import CommandError, PlacementError, ProbeError
from certbot_fanout.lineage import (
    CertInfo,
    Lineage,
    cert_info_from_der,
    chain_problem,
    fingerprint,
    read_lineage,
)
from certbot_fanout.lock import default_lock_path, run_lock
from certbot_fanout.model import DEFAULT_JOBS, Config, Consumer, Endpoint, FileSpec

logger = logging.getLogger(__name__)

PROBE_ATTEMPT_TIMEOUT = 10.0
SETTLE_SECONDS = 1.0
_FIRST_RETRY_DELAY = 0.02
_MAX_RETRY_DELAY = 0.5


@dataclass(frozen=True)
class Effects:
    """The side effects a deploy needs; the defaults touch the real system."""

    snapshot: Callable[[str], files.Snapshot] = files.snapshot
    tidy: Callable[[str], None] = files.remove_leftovers
    place: Callable[[files.Desired], None] = files.place
    restore: Callable[[files.Snapshot], None] = files.restore
    run: Callable[[Sequence[str], float, str], commands.CommandResult] = commands.run_command
    fetch: probe.Fetch = probe.fetch_served
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class DeployOptions:
    force: bool = False
    dry_run: bool = False
    jobs: int = DEFAULT_JOBS
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
    INTERNAL = "internal"


@dataclass(frozen=True)
class FileResult:
    path: str
    changed: bool
    reasons: tuple[str, ...] = ()
    warning: str | None = None


@dataclass(frozen=True)
class EndpointResult:
    endpoint: Endpoint
    server_name: str | None
    ok: bool
    seconds: float = 0.0
    attempts: int = 0
    served: CertInfo | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return self.endpoint.label


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


def desired_file(spec: FileSpec, lineage: Lineage) -> files.Desired:
    if spec.link:
        return files.Desired(
            path=spec.path,
            uid=spec.owner,
            gid=spec.group,
            target=lineage.live_path(spec.content[0]),
        )
    return files.Desired(
        path=spec.path,
        uid=spec.owner,
        gid=spec.group,
        mode=spec.mode,
        data=lineage.content(spec.content),
    )


def deploy(
    config: Config,
    lineage: Lineage,
    options: DeployOptions = DeployOptions(),
    effects: Effects = Effects(),
) -> DeployResult:
    """Deploy ``lineage`` to every consumer of it in ``config``, in parallel."""
    start = effects.clock()
    consumers = config.consumers_for(lineage.name)
    results: list[ConsumerResult] = []
    if consumers:
        workers = max(1, min(options.jobs, len(consumers)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout") as pool:
            results = list(pool.map(lambda c: _guarded(c, lineage, options, effects), consumers))
    return DeployResult(
        certificate=lineage.name,
        expected=lineage.cert,
        consumers=tuple(results),
        dry_run=options.dry_run,
        seconds=effects.clock() - start,
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
        finished=[c.name for c in result.consumers],
    )


def _guarded(
    consumer: Consumer, lineage: Lineage, options: DeployOptions, effects: Effects
) -> ConsumerResult:
    start = effects.clock()
    run = None
    try:
        run = _ConsumerRun(consumer, lineage, options, effects)
        return run.run()
    except Exception as e:  # a bug must cost one consumer, not the run
        logger.debug("consumer %s crashed", consumer.name, exc_info=True)
        error = f"internal error: {type(e).__name__}: {e} (run with --debug for details)"
        if run is not None and run.placed and not run.committed:
            # Files the test never accepted must not stay behind a crash.
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
            seconds=effects.clock() - start,
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
        self.start = effects.clock()
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
            seconds=self.fx.clock() - self.start,
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
                        self.fx.tidy(spec.path)

    def _run(self) -> ConsumerResult:
        c = self.consumer
        try:
            self.stage_files()
        except PlacementError as e:
            return self.rollback(Stage.PLACE, str(e))

        changed = any(f.changed for f in self.file_results)
        if self.options.force:
            self.reload_reason = "forced"
        elif changed:
            self.reload_reason = "files changed"
        elif not c.files and not c.verify:
            # Nothing to compare: the service reads live/ itself and nothing shows what it
            # serves, so the renewal is the change. (With endpoints, what they serve decides.)
            self.reload_reason = "no files of its own"
        elif c.name in self.options.interrupted and not c.verify:
            # Nothing shows what it serves, and the last run died before it was done with it.
            self.reload_reason = "the last run was interrupted"

        if self.options.dry_run:
            self.tested = bool(c.test) and bool(self.reload_reason)
            self.reloaded = bool(c.reload) and bool(self.reload_reason)
            return self.result(Outcome.PLANNED)

        if not self.reload_reason and c.verify and c.reload:
            # Files are current; if the service still serves something else, reload to repair.
            # A reload moments ago (a deploy hook before the installer, nginx's old workers
            # draining) can still show the old certificate briefly: give it a moment first.
            current = self.verify(within=SETTLE_SECONDS)
            stale = [r for r in current if not r.ok]
            if not stale:
                return self.result(Outcome.OK, current)
            self.reload_reason = f"{stale[0].label} not serving the current certificate"

        if self.reload_reason:
            if c.test:
                try:
                    self.fx.run(c.test, c.reload_timeout, "test")
                    self.tested = True
                except CommandError as e:
                    self.tested = True
                    return self.rollback(Stage.TEST, str(e))
            if c.reload:
                try:
                    self.fx.run(c.reload, c.reload_timeout, "reload")
                    self.reloaded = True
                except CommandError as e:
                    # Put the files back, as after a failed test: the service's state is
                    # unknown, and files left current would hide from the next run (and from
                    # `status`) that this consumer was never reloaded onto them.
                    return self.rollback(Stage.RELOAD, str(e))
            self.committed = True

        endpoints = self.verify()
        bad = [r for r in endpoints if not r.ok]
        if bad:
            error = "; ".join(r.error or r.label for r in bad)
            return self.result(Outcome.FAILED, endpoints, Stage.VERIFY, error)
        return self.result(Outcome.OK, endpoints)

    def stage_files(self) -> None:
        for spec in self.consumer.files:
            desired = desired_file(spec, self.lineage)
            current = self.fx.snapshot(spec.path)
            reasons = files.differences(desired, current)
            warning = None
            if spec.link and desired.target is not None:
                problem = files.reader_problem(desired.target, spec.owner, spec.group)
                if problem:
                    warning = f"{spec.owner_name} cannot follow the link: {problem}"
            changed = bool(reasons) or self.options.force
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
            self.file_results.append(FileResult(spec.path, changed, tuple(reasons), warning))

    def replaced(self, desired: files.Desired) -> bool:
        """Whether a placement that failed got as far as renaming ``desired`` into place
        (only the directory's fsync comes after); when unsure, say so, to restore it."""
        try:
            return not files.differences(desired, self.fx.snapshot(desired.path))
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

    def verify(self, within: float | None = None) -> tuple[EndpointResult, ...]:
        """Poll every endpoint until it serves the lineage's cert or the consumer's
        verify_timeout ends (a reload is rarely instant), or ``within`` seconds if shorter."""
        wait = self.consumer.verify_timeout
        if within is not None:
            wait = min(wait, within)
        deadline = self.fx.clock() + wait
        return tuple(
            poll_endpoint(ep, self.lineage, self.fx, deadline) for ep in self.consumer.verify
        )


def poll_endpoint(ep: Endpoint, lineage: Lineage, fx: Effects, deadline: float) -> EndpointResult:
    """Probe ``ep`` until it serves the lineage's certificate or ``deadline`` (on ``fx.clock``)
    passes; at least once, backing off from 20 ms to 0.5 s between attempts."""
    start = fx.clock()
    delay = _FIRST_RETRY_DELAY
    attempts = 0
    while True:
        attempts += 1
        timeout = min(max(deadline - fx.clock(), 1.0), PROBE_ATTEMPT_TIMEOUT)
        result = probe_endpoint(ep, lineage, fx.fetch, timeout)
        now = fx.clock()
        if result.ok or now + delay >= deadline:
            error = result.error
            if error and now - start >= 1.0:
                error += f" (still after {now - start:.1f} s, {attempts} attempts)"
            return replace(result, seconds=now - start, attempts=attempts, error=error)
        fx.sleep(delay)
        delay = min(delay * 2, _MAX_RETRY_DELAY)


def probe_endpoint(
    ep: Endpoint,
    lineage: Lineage,
    fetch: probe.Fetch,
    timeout: float,
) -> EndpointResult:
    """One look at what ``ep`` serves: ok when it is the lineage's certificate (and, unless
    turned off, its chain). ``served`` holds what it served when that was readable."""
    expected = lineage.cert
    server_name = ep.server_name or lineage.default_server_name
    try:
        got = fetch(ep.host, ep.port, server_name, timeout, ep.starttls)
    except ProbeError as e:
        return EndpointResult(ep, server_name, False, attempts=1, error=str(e))
    if fingerprint(got.leaf) != expected.fingerprint:
        served = cert_info_from_der(got.leaf)
        error = (
            f"{ep.label} (SNI {server_name}) serves {served.describe()}; "
            f"expected serial {expected.serial}, not after "
            f"{expected.not_after:%Y-%m-%d %H:%M:%S} UTC, SHA-256 {expected.fingerprint}"
        )
        return EndpointResult(ep, server_name, False, attempts=1, served=served, error=error)
    problem = chain_problem(got.chain, lineage) if ep.check_chain else None
    if problem:
        return EndpointResult(
            ep, server_name, False, attempts=1, error=f"{ep.label} (SNI {server_name}) {problem}"
        )
    return EndpointResult(ep, server_name, True, attempts=1, served=expected)
