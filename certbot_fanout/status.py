"""Is every consumer current? Files on disk, what each endpoint serves, expiry, last deploy.

Levels follow the monitoring-plugins convention, so ``certbot-fanout status`` is a Nagios or
Icinga check as it stands: a non-current certificate served anywhere, a stale copy on disk or a
failed probe is CRITICAL; a wrong owner or mode, or an expiry within the warning window, is a
WARNING; an unreadable config or lineage is UNKNOWN.
"""

from __future__ import annotations

import datetime
import enum
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from certbot_fanout import files, probe
from certbot_fanout.deploy import (
    SETTLE_SECONDS,
    DeployOptions,
    Effects,
    EndpointResult,
    FileResult,
    deploy_lineage,
    desired_file,
    poll_endpoint,
)
from certbot_fanout.errors import FanoutError, PlacementError
from certbot_fanout.lineage import CertInfo, Lineage, lineage_dir, read_lineage
from certbot_fanout.model import DEFAULT_CERTBOT_DIR, DEFAULT_JOBS, Config, Consumer
from certbot_fanout.state import ConsumerRecord, load_state

DEFAULT_WARN_DAYS = 21.0
DEFAULT_CRIT_DAYS = 7.0


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


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


def check_status(
    config: Config,
    state_path: str | None,
    options: StatusOptions = StatusOptions(),
    fetch: probe.Fetch = probe.fetch_served,
    now: float | None = None,
) -> StatusReport:
    """Check every consumer of every certificate in ``config``; changes nothing."""
    start = time.monotonic()
    now = time.time() if now is None else now
    records = load_state(state_path) if state_path else {}
    lineages: dict[str, Lineage | str] = {}
    for name in config.certificates:
        try:
            lineages[name] = read_lineage(lineage_dir(options.config_dir, name))
        except FanoutError as e:
            lineages[name] = str(e)

    def one(consumer: Consumer) -> ConsumerStatus:
        return _check_consumer(
            consumer, lineages[consumer.certificate], records.get(consumer.name),
            options, fetch, now,
        )  # fmt: skip

    results: list[ConsumerStatus] = []
    if config.consumers:
        workers = max(1, min(options.jobs, len(config.consumers)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="status") as pool:
            results = list(pool.map(one, config.consumers))
    level = max((c.level for c in results), default=Level.OK)
    return StatusReport(
        consumers=tuple(results),
        lineages={k: v.cert if isinstance(v, Lineage) else None for k, v in lineages.items()},
        level=level,
        seconds=time.monotonic() - start,
    )


def _check_consumer(
    consumer: Consumer,
    lineage: Lineage | str,
    record: ConsumerRecord | None,
    options: StatusOptions,
    fetch: probe.Fetch,
    now: float,
) -> ConsumerStatus:
    start = time.monotonic()
    if isinstance(lineage, str):
        return ConsumerStatus(consumer, Level.UNKNOWN, (lineage,), record=record)
    problems: list[tuple[Level, str]] = []
    file_results = []
    for spec in consumer.files:
        desired = desired_file(spec, lineage)
        try:
            reasons = files.differences(desired, files.snapshot(spec.path))
        except PlacementError as e:
            reasons = [str(e)]
        file_results.append(FileResult(spec.path, bool(reasons), tuple(reasons)))
        if reasons:
            stale = not all(r.startswith(("owner ", "group ", "mode ")) for r in reasons)
            problems.append(
                (Level.CRITICAL if stale else Level.WARNING, f"{spec.path}: {', '.join(reasons)}")
            )
    endpoints: list[EndpointResult] = []
    if options.probe:
        fx = Effects(fetch=fetch)
        for ep in consumer.verify:
            # A service reloaded a moment ago may still answer from an old worker: a stale
            # answer is only believed after SETTLE_SECONDS of asking again.
            result = poll_endpoint(ep, lineage, fx, fx.clock() + SETTLE_SECONDS)
            endpoints.append(result)
            if not result.ok:
                problems.append((Level.CRITICAL, result.error or ep.label))

    served = [e.served for e in endpoints if e.served is not None]
    expires = min((c.not_after for c in served), default=lineage.cert.not_after)
    days_left = (expires.timestamp() - now) / 86400
    what = "the certificate served" if served else "the certificate"
    when = (
        f"{what} expires {expires:%Y-%m-%d %H:%M} UTC (in {days_left:.1f} days)"
        if days_left >= 0
        else f"{what} expired {-days_left:.1f} days ago ({expires:%Y-%m-%d %H:%M} UTC)"
    )
    if days_left <= options.crit_days:
        problems.append((Level.CRITICAL, when))
    elif days_left <= options.warn_days:
        problems.append((Level.WARNING, when))
    level = max((lvl for lvl, _ in problems), default=Level.OK)
    return ConsumerStatus(
        consumer=consumer,
        level=level,
        problems=tuple(text for _, text in problems),
        files=tuple(file_results),
        endpoints=tuple(endpoints),
        expires=expires,
        days_left=days_left,
        record=record,
        seconds=time.monotonic() - start,
    )


def repair(
    config: Config,
    report: StatusReport,
    state_path: str | None,
    options: StatusOptions = StatusOptions(),
    lock_path: str | None = None,
    deploy_options: DeployOptions | None = None,
) -> tuple[list[str], list[str]]:
    """Redeploy, through the deploy path, every consumer that drifted. Returns the names of the
    consumers redeployed successfully and one message per failure."""
    repaired: list[str] = []
    errors: list[str] = []
    drifted = [c.consumer for c in report.consumers if c.drifted and c.level != Level.UNKNOWN]
    for certificate in dict.fromkeys(c.certificate for c in drifted):
        subset = Config(config.source, tuple(c for c in drifted if c.certificate == certificate))
        try:
            result = deploy_lineage(
                subset,
                lineage_dir(options.config_dir, certificate),
                deploy_options or DeployOptions(),
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
    return Config(config.source, config.consumers_for(certificate))
