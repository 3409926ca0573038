"""Pure renderers of a deploy's results: a human summary and a stable JSON document."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

from certbot_fanout import files
from certbot_fanout.deploy import (
    ConsumerResult,
    DeployResult,
    EndpointResult,
    FileResult,
    Outcome,
    Stage,
)
from certbot_fanout.lineage import CertInfo
from certbot_fanout.status import Level, StatusReport

if TYPE_CHECKING:  # discover's imports stay off the deploy hook's path
    from certbot_fanout.discover import DiscoverReport, Find

JSON_VERSION = 1

# A reason a file was (or would be) placed, as it reads after "placed PATH": what was there
# before. JSON keeps the reasons themselves.
_BEFORE = {files.MISSING_REASON: "new file"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_text(result: DeployResult, verbose: bool = False) -> str:
    """One header line, one line per consumer (plus its notes when it failed), one summary."""
    lines = []
    expected = result.expected
    head = f"certbot-fanout: {result.certificate}"
    if expected:
        head += (
            f": serial {expected.serial}, not after {expected.not_after:%Y-%m-%d}, "
            f"SHA-256 {expected.fingerprint[:16]}..."
        )
    if result.dry_run:
        head += "\ndry run: nothing below was changed, run or probed"
    lines.append(head)
    width = max((len(c.name) for c in result.consumers), default=0)
    for consumer in result.consumers:
        lines.extend(_consumer_lines(consumer, width, verbose or result.dry_run, expected))
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"


def _waited(ep: EndpointResult) -> str:
    return f"still so after {ep.seconds:.1f} s and {_plural(ep.attempts, 'attempt')}"


def _consumer_lines(
    c: ConsumerResult, width: int, verbose: bool, expected: CertInfo | None
) -> list[str]:
    indent = " " * (width + 12)
    status = {Outcome.OK: "ok", Outcome.FAILED: "FAILED", Outcome.PLANNED: "plan"}[c.outcome]
    lines = [f"  {c.name:<{width}}  {status:<7} {_story(c)}"]
    detail = verbose or c.outcome is Outcome.FAILED
    for f in c.files:
        if detail and f.changed:
            verb = "would place" if c.outcome is Outcome.PLANNED else "placed"
            reasons = ", ".join(_BEFORE.get(r, r) for r in f.reasons) or "forced"
            lines.append(f"{indent}{verb} {f.path} ({reasons})")
        if f.warning:
            lines.append(f"{indent}warning: {f.path}: {f.warning}")
    for ep in c.endpoints:
        if ep.ok or c.outcome is not Outcome.FAILED:
            continue
        if ep.served is not None:
            lines.append(f"{indent}{ep.label} (SNI {ep.server_name}) serves another certificate")
            lines.append(f"{indent}  served:   {ep.served.describe()}")
            if expected is not None:
                lines.append(f"{indent}  expected: {expected.describe()}")
            lines.append(f"{indent}  {_waited(ep)}")
        else:
            lines.append(f"{indent}{ep.error}")
    if c.outcome is Outcome.FAILED and c.notes:
        for i, note in enumerate(c.notes.splitlines()):
            lines.append(f"{indent}{'notes: ' if i == 0 else '       '}{note}")
    return lines


def _story(c: ConsumerResult) -> str:
    changed = len(c.changed_files)
    if c.outcome is Outcome.PLANNED:
        steps = [
            f"would place {changed} of {_plural(len(c.files), 'file')}"
            if changed
            else ("files are current" if c.files else "no files")
        ]
        if c.tested and c.consumer.test:
            steps.append(f"run `{' '.join(c.consumer.test)}`")
        if c.reloaded and c.consumer.reload:
            steps.append(f"reload with `{' '.join(c.consumer.reload)}`")
        if c.consumer.verify:
            labels = ", ".join(e.label for e in c.consumer.verify)
            steps.append(f"verify {labels}")
        return ", ".join(steps)
    steps = []
    if changed:
        steps.append(f"placed {changed} of {_plural(len(c.files), 'file')}")
        if c.rolled_back:
            steps.append("rolled back")
    elif c.files:
        steps.append("files current")
    if c.tested and c.failed_stage is not Stage.TEST:
        steps.append("tested")
    if c.reloaded:
        steps.append("reloaded" + (f" ({c.reload_reason})" if c.reload_reason else ""))
    for ep in c.endpoints:
        if ep.ok:
            steps.append(f"verified {ep.label} in {_ms(ep.seconds)}")
    if c.failed_stage is Stage.VERIFY:
        steps.append("verify failed:")
    elif c.outcome is Outcome.FAILED:
        stage = c.failed_stage.value if c.failed_stage else "?"
        steps.append(f"failed at {stage}: {c.error}")
    return ", ".join(steps) if steps else "nothing to do"


def _summary(result: DeployResult) -> str:
    n = len(result.consumers)
    if result.dry_run:
        return f"{_plural(n, 'consumer')} planned; run without --dry-run to deploy."
    failed = len(result.failed)
    if failed:
        names = ", ".join(c.name for c in result.failed)
        return (
            f"{failed} of {_plural(n, 'consumer')} FAILED ({names}); "
            f"{n - failed} ok ({result.seconds:.2f} s)"
        )
    return f"all {_plural(n, 'consumer')} ok ({result.seconds:.2f} s)"


def failure_summary(result: DeployResult) -> str:
    """One line naming each failed consumer and why, e.g. for a Certbot PluginError."""
    parts = []
    for c in result.failed:
        stage = c.failed_stage.value if c.failed_stage else "?"
        if c.failed_stage is Stage.VERIFY:
            reasons = []
            for ep in c.endpoints:
                if ep.ok:
                    continue
                if ep.served is not None:
                    reasons.append(
                        f"{ep.label} still serves serial {ep.served.serial} "
                        f"(not after {ep.served.not_after:%Y-%m-%d}), not the new certificate"
                    )
                else:
                    reasons.append(ep.error or ep.label)
            why = "; ".join(reasons)
        else:
            why = c.error or "failed"
        parts.append(f"{c.name} failed at {stage}: {why}")
    return f"{len(parts)} of {_plural(len(result.consumers), 'consumer')} failed: " + " | ".join(
        parts
    )


def _cert_json(info: CertInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "subject": info.subject,
        "serial": info.serial,
        "not_after": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": info.fingerprint,
        "names": list(info.names),
    }


def _file_json(f: FileResult) -> dict[str, Any]:
    return {"path": f.path, "changed": f.changed, "reasons": list(f.reasons), "warning": f.warning}


def _endpoint_json(e: EndpointResult) -> dict[str, Any]:
    return {
        "host": e.endpoint.host,
        "port": e.endpoint.port,
        "server_name": e.server_name,
        "ok": e.ok,
        "seconds": round(e.seconds, 3),
        "attempts": e.attempts,
        "served": _cert_json(e.served),
        "error": e.error,
    }


def to_json(result: DeployResult) -> dict[str, Any]:
    """The documented JSON shape (``version`` 1); fields are only ever added."""
    return {
        "version": JSON_VERSION,
        "certificate": result.certificate,
        "dry_run": result.dry_run,
        "ok": not result.failed,
        "expected": _cert_json(result.expected),
        "seconds": round(result.seconds, 3),
        "consumers": [
            {
                "name": c.name,
                "outcome": c.outcome.value,
                "failed_stage": c.failed_stage.value if c.failed_stage else None,
                "error": c.error,
                "notes": c.notes,
                "files": [_file_json(f) for f in c.files],
                "tested": c.tested,
                "reloaded": c.reloaded,
                "reload_reason": c.reload_reason,
                "rolled_back": c.rolled_back,
                "endpoints": [_endpoint_json(e) for e in c.endpoints],
                "seconds": round(c.seconds, 3),
            }
            for c in result.consumers
        ],
    }


def render_json(result: DeployResult) -> str:
    return json.dumps(to_json(result), indent=2) + "\n"


# -- status ----------------------------------------------------------------------------------

STATUS_JSON_VERSION = 1


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_summary(report: StatusReport) -> str:
    """The monitoring-plugin status line: LEVEL, then what is wrong, worst first."""
    n = len(report.consumers)
    if not report.consumers:
        return "OK: no consumer in the map"
    counts = {lvl: [c.name for c in report.consumers if c.level == lvl] for lvl in Level}
    parts = []
    for lvl in (Level.UNKNOWN, Level.CRITICAL, Level.WARNING):
        if counts[lvl]:
            parts.append(f"{len(counts[lvl])} {lvl.name} ({', '.join(counts[lvl])})")
    parts.append(f"{len(counts[Level.OK])} of {_plural(n, 'consumer')} OK")
    text = f"{report.level.name}: " + "; ".join(parts)
    if report.repaired:
        text += f"; repaired: {', '.join(report.repaired)}"
    return text


def render_status_text(report: StatusReport) -> str:
    lines = [status_summary(report)]
    header = ("CONSUMER", "CERTIFICATE", "FILES", "ENDPOINTS", "EXPIRES", "LAST DEPLOYED", "STATE")
    rows = [header]
    for c in report.consumers:
        drifted = sum(1 for f in c.files if f.changed)
        files_cell = "-" if not c.files else (f"{drifted} DRIFTED" if drifted else "current")
        bad = sum(1 for e in c.endpoints if not e.ok)
        if not c.consumer.verify:
            ends = "-"
        elif not c.endpoints:
            ends = "not probed"
        else:
            ends = f"{bad} of {len(c.endpoints)} WRONG" if bad else f"{len(c.endpoints)} current"
        if c.expires is None or c.days_left is None:
            expires = "?"
        elif c.days_left < 0:
            expires = f"{c.expires:%Y-%m-%d} (expired {-c.days_left:.0f} d ago)"
        else:
            expires = f"{c.expires:%Y-%m-%d} ({c.days_left:.0f} d)"
        deployed = _when(c.record.last_deployed if c.record else None)
        rows.append((c.name, c.certificate, files_cell, ends, expires, deployed, c.level.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for c in report.consumers:
        for problem in c.problems:
            lines.append(f"{c.name}: {problem}")
        if c.problems and c.consumer.notes and c.level >= Level.CRITICAL:
            lines.append(f"{c.name}: notes: {' '.join(c.consumer.notes.split())}")
    for error in report.repair_errors:
        lines.append(f"repair: {error}")
    return "\n".join(lines) + "\n"


def status_json(report: StatusReport) -> dict[str, Any]:
    """The documented JSON shape of ``status --json`` (``version`` 1; fields only added)."""
    return {
        "version": STATUS_JSON_VERSION,
        "status": report.level.name,
        "exit_code": int(report.level),
        "summary": status_summary(report),
        "seconds": round(report.seconds, 3),
        "certificates": {name: _cert_json(info) for name, info in report.lineages.items()},
        "repaired": list(report.repaired),
        "repair_errors": list(report.repair_errors),
        "consumers": [
            {
                "name": c.name,
                "certificate": c.certificate,
                "status": c.level.name,
                "problems": list(c.problems),
                "files": [_file_json(f) for f in c.files],
                "endpoints": [_endpoint_json(e) for e in c.endpoints],
                "expires": c.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if c.expires else None,
                "days_left": round(c.days_left, 3) if c.days_left is not None else None,
                "last_deployed": _iso(c.record.last_deployed if c.record else None),
                "last_verified": _iso(c.record.last_verified if c.record else None),
                "seconds": round(c.seconds, 3),
            }
            for c in report.consumers
        ],
    }


def render_status_json(report: StatusReport) -> str:
    return json.dumps(status_json(report), indent=2) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_METRICS = (
    (
        "certbot_fanout_consumer_ok",
        "1 when the consumer's files are current and it serves the current certificate",
    ),
    (
        "certbot_fanout_consumer_status",
        "monitoring level of the consumer: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    ),
    (
        "certbot_fanout_files_current",
        "1 when every file of the consumer has the lineage's content, owner and mode",
    ),
    (
        "certbot_fanout_served_cert_expiry_timestamp_seconds",
        "not-after of the earliest-expiring certificate the consumer serves",
    ),
    (
        "certbot_fanout_last_deploy_timestamp_seconds",
        "when the consumer was last deployed successfully",
    ),
    (
        "certbot_fanout_last_verify_timestamp_seconds",
        "when the consumer was last proven to serve the current certificate",
    ),
    ("certbot_fanout_check_duration_seconds", "time this status run spent checking the consumer"),
    ("certbot_fanout_check_timestamp_seconds", "when this status run checked the consumer"),
)


def render_prometheus(report: StatusReport, now: float) -> str:
    """node_exporter textfile-collector metrics; every sample has consumer and certificate."""
    samples: dict[str, list[str]] = {name: [] for name, _ in _METRICS}
    for c in report.consumers:
        labels = f'consumer="{_label(c.name)}",certificate="{_label(c.certificate)}"'

        def add(metric: str, value: float | None, labels: str = labels) -> None:
            if value is not None:
                samples[metric].append(
                    f"{metric}{{{labels}}} {value:g}"
                    if isinstance(value, int)
                    else f"{metric}{{{labels}}} {value:.3f}"
                )

        # As documented: files current and every endpoint serving the current certificate
        # (an expiry warning alone does not make a consumer "not ok").
        add("certbot_fanout_consumer_ok", int(not c.drifted and c.level is not Level.UNKNOWN))
        add("certbot_fanout_consumer_status", int(c.level))
        add("certbot_fanout_files_current", int(c.files_current))
        add(
            "certbot_fanout_served_cert_expiry_timestamp_seconds",
            c.expires.timestamp() if c.expires else None,
        )
        add(
            "certbot_fanout_last_deploy_timestamp_seconds",
            c.record.last_deployed if c.record else None,
        )
        add(
            "certbot_fanout_last_verify_timestamp_seconds",
            c.record.last_verified if c.record else None,
        )
        add("certbot_fanout_check_duration_seconds", c.seconds)
        add("certbot_fanout_check_timestamp_seconds", now)
    lines = []
    for name, help_text in _METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(samples[name])
    return "\n".join(lines) + "\n"


# -- discover --------------------------------------------------------------------------------


def _expires(not_after: datetime.datetime) -> str:
    """``expires DATE``, or ``expired DATE`` once that is past."""
    past = not_after.tzinfo is not None and not_after < datetime.datetime.now(datetime.UTC)
    return f"{'expired' if past else 'expires'} {not_after:%Y-%m-%d}"


def _find_line(f: Find) -> str:
    state = "current" if f.current else "STALE"
    what = (
        f"{state}: serial {f.served.serial}, {_expires(f.served.not_after)}"
        if not f.reads_live
        else "reads certbot's live/ directly"
    )
    line = f"  {f.kind:<8}  {f.where}  {f.certificate} {what}"
    if f.via and f.kind == "config":
        line += f"  ({f.via})"
    if f.mapped_by:
        line += f"  [consumer {f.mapped_by}]"
    return line


def render_discover_text(report: DiscoverReport) -> str:
    from certbot_fanout.discover import snippet

    lines = []
    for name, lineage in report.lineages.items():
        lines.append(
            f"certbot-fanout discover: {name} ({', '.join(lineage.cert.names)}), current serial "
            f"{lineage.cert.serial}, {_expires(lineage.cert.not_after)}"
        )
    lines.append(
        f"  {report.listeners} listening sockets probed, {report.scanned_files} files read, "
        f"in {report.seconds:.1f} s"
    )
    lines.extend(f"  note: {note}" for note in report.notes)
    unmapped = [f for f in report.finds if not f.mapped]
    stale_mapped = [f for f in report.finds if f.mapped and not f.current]
    covered = [f for f in report.finds if f.mapped and f.current]
    for title, group in (
        ("NOT IN THE MAP", unmapped),
        ("IN THE MAP BUT STALE", stale_mapped),
        ("IN THE MAP", covered),
    ):
        if group:
            lines.append(f"{title}:")
            lines.extend(_find_line(f) for f in group)
    if not report.finds:
        lines.append("nothing on this host carries these certificates outside certbot's files")
    if unmapped:
        lines.append("Paste into the map (under consumers:) and complete the TODOs:")
        for i, f in enumerate(unmapped, 1):
            lines.extend(snippet(f, i).rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"
