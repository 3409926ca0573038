"""Is every consumer current? Files on disk, what each endpoint serves, expiry, last deploy.

Levels follow the monitoring-plugins convention, so ``certbot-fanout status`` is a Nagios or
Icinga check as it stands: a non-current certificate served anywhere, a stale copy on disk or a
failed probe is CRITICAL; a wrong owner, group or mode (the table FILE_SEVERITY), or an expiry
within the warning window, is a WARNING; an unreadable config or lineage is UNKNOWN.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from certbot_fanout import files
from certbot_fanout.deploy import (
    DeployOptions,
    Effects,
    FileResult,
    Places,
    deploy_lineage,
    desired_file,
)
from certbot_fanout.errors import FanoutError
from certbot_fanout.lineage import CertInfo, Lineage, lineage_dir, read_lineage
from certbot_fanout.model import (
    DEFAULT_CERTBOT_DIR,
    DEFAULT_CRIT_DAYS,
    DEFAULT_HOST_JOBS,
    DEFAULT_JOBS,
    DEFAULT_WARN_DAYS,
    Config,
    Consumer,
    FileSpec,
)
from certbot_fanout.state import ConsumerRecord, load_state
from certbot_fanout.verify import SETTLE_SECONDS, EndpointResult, poll_endpoint


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# How serious each kind of file difference is. A copy that is not the lineage's (or not there,
# or unreadable) is stale: CRITICAL. A wrong owner, group or mode still holds the current
# certificate: a WARNING. Every kind is here (a test checks), so a new one cannot be forgotten.
FILE_SEVERITY: Mapping[files.DifferenceKind, Level] = {
    files.DifferenceKind.MISSING: Level.CRITICAL,
    files.DifferenceKind.NOT_A_SYMLINK: Level.CRITICAL,
    files.DifferenceKind.SYMLINK_TARGET: Level.CRITICAL,
    files.DifferenceKind.NOT_A_COPY: Level.CRITICAL,
    files.DifferenceKind.CONTENT: Level.CRITICAL,
    files.DifferenceKind.OWNER: Level.WARNING,
    files.DifferenceKind.GROUP: Level.WARNING,
    files.DifferenceKind.MODE: Level.WARNING,
    # An ACL is a grant the map never made: on a key it lets others read it, on any file it
    # may let others replace what the service loads. CRITICAL for every part alike.
    files.DifferenceKind.ACL: Level.CRITICAL,
    files.DifferenceKind.UNREADABLE: Level.CRITICAL,
}


def file_level(found: Iterable[files.Difference]) -> Level:
    """The level of a file with the differences ``found``: the worst of their kinds."""
    return max((FILE_SEVERITY[d.kind] for d in found), default=Level.OK)


@dataclass(frozen=True)
class ConsumerStatus:
    consumer: Consumer
    level: Level
    problems: tuple[str, ...] = ()
    files: tuple[FileResult, ...] = ()
    endpoints: tuple[EndpointResult, ...] = ()
    expires: datetime.datetime | None = None
    days_left: float | None = None
    record: ConsumerRecord | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def certificate(self) -> str:
        return self.consumer.certificate

    @property
    def files_current(self) -> bool:
        return not any(f.changed for f in self.files)

    @property
    def drifted(self) -> bool:
        """Something a deploy can fix: a file or what an endpoint serves."""
        return not self.files_current or any(not e.ok for e in self.endpoints)


@dataclass(frozen=True)
class StatusReport:
    consumers: tuple[ConsumerStatus, ...]
    lineages: dict[str, CertInfo | None]
    level: Level
    seconds: float
    repaired: tuple[str, ...] = ()
    repair_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusOptions:
    config_dir: str = DEFAULT_CERTBOT_DIR
    warn_days: float = DEFAULT_WARN_DAYS
    crit_days: float = DEFAULT_CRIT_DAYS
    probe: bool = True
    jobs: int = DEFAULT_JOBS
    host_jobs: int = DEFAULT_HOST_JOBS  # other hosts connected to at once


def check_status(
    config: Config,
    state_path: str | None,
    options: StatusOptions = StatusOptions(),
    effects: Effects | None = None,
) -> StatusReport:
    """Check every consumer of every certificate in ``config``; changes nothing. ``effects``
    reach this host (a consumer on another host is reached through its ssh session)."""
    start = time.monotonic()
    now = time.time()
    records = load_state(state_path) if state_path else {}
    lineages: dict[str, Lineage | str] = {}
    for name in config.certificates:
        try:
            lineages[name] = read_lineage(lineage_dir(options.config_dir, name))
        except FanoutError as e:
            lineages[name] = str(e)

    results: list[ConsumerStatus] = []
    with contextlib.ExitStack() as stack:
        places = Places(effects or Effects())
        places.open_hosts(stack, config, options.host_jobs)

        def one(consumer: Consumer) -> ConsumerStatus:
            lineage = lineages[consumer.certificate]
            record = records.get(consumer.name)
            if record is not None and record.host != consumer.host:
                record = None  # deployed on another host, before the map moved it
            return _consumer_status(consumer, lineage, record, options, now, places)

        if config.consumers:
            workers = max(1, min(options.jobs, len(config.consumers)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="status") as pool:
                results = places.map(pool, one, config.consumers)
    level = max((c.level for c in results), default=Level.OK)
    return StatusReport(
        consumers=tuple(results),
        lineages={k: v.cert if isinstance(v, Lineage) else None for k, v in lineages.items()},
        level=level,
        seconds=time.monotonic() - start,
    )


def _consumer_status(
    consumer: Consumer,
    lineage: Lineage | str,
    record: ConsumerRecord | None,
    options: StatusOptions,
    now: float,
    places: Places,
) -> ConsumerStatus:
    """One consumer's files (on its host), endpoints and expiry, each problem at its level."""
    start = time.monotonic()
    if isinstance(lineage, str):
        return ConsumerStatus(consumer, Level.UNKNOWN, (lineage,), record=record)
    problems: list[tuple[Level, str]] = []
    file_results = []
    try:
        located, fx = places.locate(consumer)
    except FanoutError as e:  # its host unreachable, or an owner missing there
        # Not UNKNOWN: the next renewal will fail to reach it too, and that is worth a page.
        problems.append((Level.CRITICAL, f"files not checked: {e}"))
        located, fx = consumer, places.from_here(consumer)
    else:
        for spec in located.files:
            result = _file_status(spec, lineage, fx)
            file_results.append(result)
            if result.changed:
                level = file_level(result.differences)
                problems.append((level, f"{spec.path}: {', '.join(result.reasons)}"))
        if fx.refused:
            problems.append((Level.WARNING, f"the next deploy will refuse it: {fx.refused}"))
        if fx.stale_views:
            # Files right on disk but not as the service reads them: the Synapse story again.
            problems.extend((Level.CRITICAL, problem) for problem in fx.stale_views())
    endpoints = _probe_endpoints(consumer, lineage, fx) if options.probe else ()
    problems.extend((Level.CRITICAL, e.error or e.label) for e in endpoints if not e.ok)
    problems.extend((Level.WARNING, f"{e.label}: {w}") for e in endpoints for w in e.warnings)
    expires, days_left, expiry = _expiry(endpoints, lineage, options, now)
    if expiry is not None:
        problems.append(expiry)
    return ConsumerStatus(
        consumer=consumer,
        level=max((lvl for lvl, _ in problems), default=Level.OK),
        problems=tuple(text for _, text in problems),
        files=tuple(file_results),
        endpoints=endpoints,
        expires=expires,
        days_left=days_left,
        record=record,
        seconds=time.monotonic() - start,
    )


def _file_status(spec: FileSpec, lineage: Lineage, fx: Effects) -> FileResult:
    """How the file at ``spec.path`` (where ``fx`` reaches) is not what a deploy of
    ``lineage`` would place."""
    try:
        found = fx.compare(desired_file(spec, lineage), fx.snapshot(spec.path))
    except FanoutError as e:  # unreadable, or the host's connection lost while reading
        found = [files.Difference(files.DifferenceKind.UNREADABLE, str(e))]
    return FileResult(spec.path, bool(found), tuple(found))


def _probe_endpoints(
    consumer: Consumer, lineage: Lineage, fx: Effects
) -> tuple[EndpointResult, ...]:
    """What each endpoint serves. A service reloaded a moment ago may still answer from an
    old worker: a stale answer is only believed after SETTLE_SECONDS of asking again."""
    return tuple(
        poll_endpoint(ep, lineage, fx.fetch_for(ep), time.monotonic() + SETTLE_SECONDS, fx.sleep)
        for ep in consumer.verify
    )


def _expiry(
    endpoints: tuple[EndpointResult, ...], lineage: Lineage, options: StatusOptions, now: float
) -> tuple[datetime.datetime, float, tuple[Level, str] | None]:
    """When the certificate served (or, unprobed, the lineage's) expires, in how many days,
    and the problem that is when it is within the critical or the warning window."""
    served = [a.served for e in endpoints for a in e.addresses if a.own and a.served is not None]
    expires = min((c.not_after for c in served), default=lineage.cert.not_after)
    days_left = (expires.timestamp() - now) / 86400
    if days_left > options.crit_days and days_left > options.warn_days:
        return expires, days_left, None
    what = "the certificate served" if served else "the certificate"
    when = (
        f"{what} expires {expires:%Y-%m-%d %H:%M} UTC (in {days_left:.1f} days)"
        if days_left >= 0
        else f"{what} expired {-days_left:.1f} days ago ({expires:%Y-%m-%d %H:%M} UTC)"
    )
    level = Level.CRITICAL if days_left <= options.crit_days else Level.WARNING
    return expires, days_left, (level, when)


def repair(
    config: Config,
    report: StatusReport,
    state_path: str | None,
    options: StatusOptions = StatusOptions(),
    lock_path: str | None = None,
) -> tuple[list[str], list[str]]:
    """Redeploy, through the deploy path, every consumer that drifted. Returns the names of the
    consumers redeployed successfully and one message per failure."""
    repaired: list[str] = []
    errors: list[str] = []
    drifted = [c.consumer for c in report.consumers if c.drifted and c.level != Level.UNKNOWN]
    for certificate in dict.fromkeys(c.certificate for c in drifted):
        subset = Config(
            config.source,
            tuple(c for c in drifted if c.certificate == certificate),
            config.hosts,
        )
        try:
            result = deploy_lineage(
                subset,
                lineage_dir(options.config_dir, certificate),
                DeployOptions(),
                lock_path=lock_path,
                state_path=state_path,
            )
        except FanoutError as e:
            errors.append(f"{certificate}: {e}")
            continue
        assert result is not None
        for c in result.consumers:
            if c.failed_stage is None:
                repaired.append(c.name)
            else:
                errors.append(f"{c.name}: repair failed at {c.failed_stage.value}: {c.error}")
    return repaired, errors


def check_and_repair(
    config: Config,
    state_path: str | None,
    options: StatusOptions = StatusOptions(),
    lock_path: str | None = None,
) -> StatusReport:
    """Check, redeploy what drifted, and report the state after the repair."""
    before = check_status(config, state_path, options)
    if not any(c.drifted for c in before.consumers):
        return before
    repaired, errors = repair(config, before, state_path, options, lock_path)
    after = check_status(config, state_path, options)
    return replace(
        after,
        repaired=tuple(repaired),
        repair_errors=tuple(errors),
        seconds=before.seconds + after.seconds,
    )


def restrict(config: Config, certificate: str) -> Config:
    """The part of ``config`` about one certificate."""
    return Config(config.source, config.consumers_for(certificate), config.hosts)
