"""The renderers of a status run: the monitoring-plugin status line
(``render_status_summary``), the table (``render_status_text``), the one line that names what
stays broken (``render_status_failures``), the stable JSON document
(``render_status_document``, ``render_status_json``, version :data:`STATUS_JSON_VERSION`) and
node_exporter textfile-collector metrics (``render_status_prometheus``).

Pure: every function reads only the report (or consumers) it is given and, for the metrics, the
moment of the run, passed in. The text passes every string it did not write itself through
``escape.printable``; JSON and the metrics have escapes of their own.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from certbot_fanout.escape import printable
from certbot_fanout.render_common import (
    ISO_FORMAT,
    cert_document,
    consumer_label,
    endpoint_document,
    file_document,
    plural,
)
from certbot_fanout.status import ConsumerStatus, Level, StatusReport

STATUS_JSON_VERSION = 1

_HEADER = ("CONSUMER", "CERTIFICATE", "FILES", "ENDPOINTS", "EXPIRES", "LAST DEPLOYED", "STATE")


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(ISO_FORMAT)


# -- text ------------------------------------------------------------------------------------


def render_status_summary(report: StatusReport) -> str:
    """The monitoring-plugin status line: LEVEL, then what is wrong, worst first."""
    n = len(report.consumers)
    if not report.consumers:
        return "OK: no consumer in the map"
    counts = {lvl: [printable(c.name) for c in report.consumers if c.level == lvl] for lvl in Level}
    parts = [
        f"{len(counts[lvl])} {lvl.name} ({', '.join(counts[lvl])})"
        for lvl in (Level.UNKNOWN, Level.CRITICAL, Level.WARNING)
        if counts[lvl]
    ]
    parts.append(f"{len(counts[Level.OK])} of {plural(n, 'consumer')} OK")
    text = f"{report.level.name}: " + "; ".join(parts)
    if report.repaired:
        text += f"; repaired: {printable(', '.join(report.repaired))}"
    return text


def render_status_failures(consumers: Iterable[ConsumerStatus]) -> str:
    """One line naming each given consumer and its problems, e.g. for a Certbot PluginError."""
    return " | ".join(f"{printable(c.name)}: {printable('; '.join(c.problems))}" for c in consumers)


def render_status_text(report: StatusReport) -> str:
    """The status line, a table with one row per consumer, then each problem on its own."""
    rows = [_HEADER, *(_row(c) for c in report.consumers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = [render_status_summary(report)]
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
    for c in report.consumers:
        lines.extend(_problem_lines(c))
    lines.extend(f"repair: {printable(error)}" for error in report.repair_errors)
    return "\n".join(lines) + "\n"


def _row(c: ConsumerStatus) -> tuple[str, ...]:
    deployed = _when(c.record.last_deployed if c.record else None)
    return (
        consumer_label(c.consumer),
        printable(c.certificate),
        _files_cell(c),
        _endpoints_cell(c),
        _expires_cell(c),
        deployed,
        c.level.name,
    )


def _files_cell(c: ConsumerStatus) -> str:
    if not c.files:
        return "-"
    drifted = sum(1 for f in c.files if f.changed)
    return f"{drifted} DRIFTED" if drifted else "current"


def _endpoints_cell(c: ConsumerStatus) -> str:
    if not c.consumer.verify:
        return "-"
    if not c.endpoints:
        return "not probed"
    bad = sum(1 for e in c.endpoints if not e.ok)
    cell = f"{bad} of {len(c.endpoints)} WRONG" if bad else f"{len(c.endpoints)} current"
    addresses = sum(len(e.addresses) for e in c.endpoints)
    if addresses != len(c.endpoints):
        cell += f" ({addresses} {'address' if addresses == 1 else 'addresses'})"
    return cell


def _expires_cell(c: ConsumerStatus) -> str:
    if c.expires is None or c.days_left is None:
        return "?"
    if c.days_left < 0:
        return f"{c.expires:%Y-%m-%d} (expired {-c.days_left:.0f} d ago)"
    return f"{c.expires:%Y-%m-%d} ({c.days_left:.0f} d)"


def _problem_lines(c: ConsumerStatus) -> list[str]:
    name = consumer_label(c.consumer)
    lines = [f"{name}: {printable(problem)}" for problem in c.problems]
    if c.problems and c.consumer.notes and c.level >= Level.CRITICAL:
        lines.append(f"{name}: notes: {printable(' '.join(c.consumer.notes.split()))}")
    lines.extend(
        f"{name}: note: {printable(e.label)} served over {e.legacy_protocol}, a legacy protocol"
        for e in c.endpoints
        if e.legacy_protocol
    )
    return lines


# -- JSON ------------------------------------------------------------------------------------


def render_status_document(report: StatusReport) -> dict[str, Any]:
    """The documented JSON shape of ``status --json`` (``version`` 1; fields only added)."""
    return {
        "version": STATUS_JSON_VERSION,
        "status": report.level.name,
        "exit_code": int(report.level),
        "summary": render_status_summary(report),
        "seconds": round(report.seconds, 3),
        "certificates": {name: cert_document(info) for name, info in report.lineages.items()},
        "repaired": list(report.repaired),
        "repair_errors": list(report.repair_errors),
        "consumers": [_consumer_document(c) for c in report.consumers],
    }


def _consumer_document(c: ConsumerStatus) -> dict[str, Any]:
    return {
        "name": c.name,
        "host": c.consumer.host,
        "certificate": c.certificate,
        "status": c.level.name,
        "problems": list(c.problems),
        "files": [file_document(f) for f in c.files],
        "endpoints": [endpoint_document(e) for e in c.endpoints],
        "expires": c.expires.strftime(ISO_FORMAT) if c.expires else None,
        "days_left": round(c.days_left, 3) if c.days_left is not None else None,
        "last_deployed": _iso(c.record.last_deployed if c.record else None),
        "last_verified": _iso(c.record.last_verified if c.record else None),
        "seconds": round(c.seconds, 3),
    }


def render_status_json(report: StatusReport) -> str:
    """:func:`render_status_document` as indented JSON text."""
    return json.dumps(render_status_document(report), indent=2) + "\n"


# -- Prometheus ------------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric(NamedTuple):
    """One gauge: its name, its help text, and its value for a consumer (None: no sample)."""

    name: str
    help: str
    value: Callable[[ConsumerStatus, float], float | None]  # (consumer, now)


_METRICS = (
    _Metric(
        "certbot_fanout_consumer_ok",
        "1 when the consumer's files are current and it serves the current certificate",
        # As documented: files current and every endpoint serving the current certificate
        # (an expiry warning alone does not make a consumer "not ok").
        lambda c, now: int(not c.drifted and c.level is not Level.UNKNOWN),
    ),
    _Metric(
        "certbot_fanout_consumer_status",
        "monitoring level of the consumer: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
        lambda c, now: int(c.level),
    ),
    _Metric(
        "certbot_fanout_files_current",
        "1 when every file of the consumer has the lineage's content, owner and mode",
        lambda c, now: int(c.files_current),
    ),
    _Metric(
        "certbot_fanout_served_cert_expiry_timestamp_seconds",
        "not-after of the earliest-expiring certificate the consumer serves",
        lambda c, now: c.expires.timestamp() if c.expires else None,
    ),
    _Metric(
        "certbot_fanout_last_deploy_timestamp_seconds",
        "when the consumer was last deployed successfully",
        lambda c, now: c.record.last_deployed if c.record else None,
    ),
    _Metric(
        "certbot_fanout_last_verify_timestamp_seconds",
        "when the consumer was last proven to serve the current certificate",
        lambda c, now: c.record.last_verified if c.record else None,
    ),
    _Metric(
        "certbot_fanout_check_duration_seconds",
        "time this status run spent checking the consumer",
        lambda c, now: c.seconds,
    ),
    _Metric(
        "certbot_fanout_check_timestamp_seconds",
        "when this status run checked the consumer",
        lambda c, now: now,
    ),
)


def render_status_prometheus(report: StatusReport, now: float) -> str:
    """node_exporter textfile-collector metrics; every sample has consumer and certificate.

    ``now`` is when this run checked the consumers (seconds since the epoch).
    """
    labels = [
        (
            c,
            f'consumer="{_label(c.name)}",certificate="{_label(c.certificate)}"'
            # A consumer on another host has the host too (an empty label is no label).
            + (f',host="{_label(c.consumer.host)}"' if c.consumer.host else ""),
        )
        for c in report.consumers
    ]
    lines = []
    for metric in _METRICS:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} gauge")
        for c, label in labels:
            value = metric.value(c, now)
            if value is None:
                continue
            number = f"{value:g}" if isinstance(value, int) else f"{value:.3f}"
            lines.append(f"{metric.name}{{{label}}} {number}")
    lines.extend(_address_samples(labels))
    return "\n".join(lines) + "\n"


_ADDRESS_METRIC = "certbot_fanout_endpoint_address_ok"


def _address_samples(labels: list[tuple[ConsumerStatus, str]]) -> list[str]:
    """One sample per address of every probed endpoint: 1 when it serves the current
    certificate, with the endpoint, the address and the key type asked for."""
    lines = [
        f"# HELP {_ADDRESS_METRIC} 1 when this address of the endpoint serves the current "
        "certificate",
        f"# TYPE {_ADDRESS_METRIC} gauge",
    ]
    for c, label in labels:
        for e in c.endpoints:
            key_type = e.key_type.value if e.key_type else ""
            for a in e.addresses:
                where = (
                    f'endpoint="{_label(e.label)}",address="{_label(a.label)}",'
                    f'key_type="{key_type}"'
                )
                lines.append(f"{_ADDRESS_METRIC}{{{label},{where}}} {int(a.ok)}")
    return lines
