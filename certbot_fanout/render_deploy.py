"""The renderers of a deploy's result: the human summary (``render_deploy_text``), the one line
a Certbot error carries (``render_deploy_failures``), and the stable JSON document
(``render_deploy_document``, ``render_deploy_json``, version :data:`DEPLOY_JSON_VERSION`).

Pure: every function reads only the result it is given. The text passes every string it did
not write itself through ``escape.printable``; the JSON document keeps them as they are.
"""

from __future__ import annotations

import json
from typing import Any

from certbot_fanout import files
from certbot_fanout.deploy import (
    ConsumerResult,
    DeployResult,
    Outcome,
    Stage,
)
from certbot_fanout.escape import printable
from certbot_fanout.lineage import CertInfo
from certbot_fanout.render_common import (
    cert_document,
    consumer_label,
    endpoint_document,
    file_document,
    plural,
)
from certbot_fanout.verify import AddressResult, EndpointResult

DEPLOY_JSON_VERSION = 1

# A reason a file was (or would be) placed, as it reads after "placed PATH": what was there
# before. JSON keeps the reasons themselves.
# How a difference reads in the text report, where its kind has words of its own.
_SHOWN = {files.DifferenceKind.MISSING: "new file"}

_STATUS_WORD = {Outcome.OK: "ok", Outcome.FAILED: "FAILED", Outcome.PLANNED: "plan"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# -- text ------------------------------------------------------------------------------------


def render_deploy_text(result: DeployResult, verbose: bool = False) -> str:
    """One header line, one line per consumer (plus its notes when it failed), one summary."""
    lines = [_header(result)]
    width = max((len(consumer_label(c.consumer)) for c in result.consumers), default=0)
    for consumer in result.consumers:
        lines.extend(_consumer_lines(consumer, width, verbose or result.dry_run, result.expected))
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"


def _header(result: DeployResult) -> str:
    head = f"certbot-fanout: {printable(result.certificate)}"
    expected = result.expected
    if expected:
        head += (
            f": serial {expected.serial}, not after {expected.not_after:%Y-%m-%d}, "
            f"SHA-256 {expected.fingerprint[:16]}..."
        )
    if result.dry_run:
        head += "\ndry run: nothing below was changed, run or probed"
    return head


def _waited(ep: EndpointResult) -> str:
    return f"still so after {ep.seconds:.1f} s and {plural(ep.attempts, 'attempt')}"


def _consumer_lines(
    c: ConsumerResult, width: int, verbose: bool, expected: CertInfo | None
) -> list[str]:
    indent = " " * (width + 12)
    lines = [f"  {consumer_label(c.consumer):<{width}}  {_STATUS_WORD[c.outcome]:<7} {_story(c)}"]
    lines.extend(indent + line for line in _file_lines(c, verbose or c.outcome is Outcome.FAILED))
    lines.extend(
        indent + f"warning: {printable(ep.label)}: {printable(w)}"
        for ep in c.endpoints
        for w in ep.warnings
    )
    if c.outcome is Outcome.FAILED:
        lines.extend(indent + line for line in _endpoint_failure_lines(c, expected))
        lines.extend(indent + line for line in _note_lines(c.notes))
    return lines


def _file_lines(c: ConsumerResult, detail: bool) -> list[str]:
    """Each placed file (when the detail is wanted) and each file's warning."""
    verb = "would place" if c.outcome is Outcome.PLANNED else "placed"
    lines = []
    for f in c.files:
        if detail and f.changed:
            reasons = ", ".join(_SHOWN.get(d.kind, d.message) for d in f.differences) or "forced"
            lines.append(f"{verb} {printable(f.path)} ({printable(reasons)})")
        if f.warning:
            lines.append(f"warning: {printable(f.path)}: {printable(f.warning)}")
    return lines


def _endpoint_failure_lines(c: ConsumerResult, expected: CertInfo | None) -> list[str]:
    """What each endpoint that failed verification served, or why it could not be probed."""
    lines = []
    for ep in c.endpoints:
        if ep.ok:
            continue
        stale = [a for a in ep.addresses if a.stale]
        if not stale:
            lines.append(printable(f"{ep.error}"))
            continue
        for a in stale:
            assert a.served is not None
            lines.append(f"{printable(_address_where(ep, a))} serves another certificate")
            lines.append(f"  served:   {printable(a.served.describe())}")
            if expected is not None:
                lines.append(f"  expected: {printable(expected.describe())}")
        others = [a.error for a in ep.addresses if not a.ok and a not in stale and a.error]
        lines.extend(printable(error) for error in others)
        lines.append(f"  {_waited(ep)}")
    lines.extend(printable(view) for view in c.views)
    return lines


def _address_where(ep: EndpointResult, a: AddressResult) -> str:
    """``[::1]:443 (SNI name)``, after the endpoint's own label when it is not that address."""
    asked = f", asked for {ep.key_type.name}" if ep.key_type else ""
    where = f"{a.label} (SNI {a.server_name}{asked})"
    return f"{a.via}: {where}" if a.via else where


def _note_lines(notes: str) -> list[str]:
    return [
        f"{'notes: ' if i == 0 else '       '}{printable(note)}"
        for i, note in enumerate(notes.splitlines())
    ]


def _story(c: ConsumerResult) -> str:
    """What was done (or would be) for one consumer, as one line."""
    if c.outcome is Outcome.PLANNED:
        return ", ".join(_planned_steps(c))
    steps = [*_placed_steps(c), *_run_steps(c), *_verdict_steps(c)]
    return ", ".join(steps) if steps else "nothing to do"


def _planned_steps(c: ConsumerResult) -> list[str]:
    changed = len(c.changed_files)
    if changed:
        steps = [f"would place {changed} of {plural(len(c.files), 'file')}"]
    else:
        steps = ["files are current" if c.files else "no files"]
    if c.tested and c.consumer.test:
        steps.append(f"run `{printable(' '.join(c.consumer.test))}`")
    if c.reloaded and c.consumer.reload:
        steps.append(f"reload with `{printable(' '.join(c.consumer.reload))}`")
    if c.consumer.verify:
        steps.append(f"verify {printable(', '.join(e.label for e in c.consumer.verify))}")
    return steps


def _placed_steps(c: ConsumerResult) -> list[str]:
    changed = len(c.changed_files)
    if not changed:
        return ["files current"] if c.files else []
    steps = [f"placed {changed} of {plural(len(c.files), 'file')}"]
    if c.rolled_back:
        steps.append("rolled back")
    return steps


def _run_steps(c: ConsumerResult) -> list[str]:
    steps = []
    if c.tested and c.failed_stage is not Stage.TEST:
        steps.append("tested")
    if c.reloaded:
        steps.append("reloaded" + (f" ({printable(c.reload_reason)})" if c.reload_reason else ""))
    steps.extend(
        f"verified {printable(ep.label)}{_addresses_note(ep)} in {_ms(ep.seconds)}"
        + (f" (served over {ep.legacy_protocol}, a legacy protocol)" if ep.legacy_protocol else "")
        for ep in c.endpoints
        if ep.ok
    )
    return steps


def _addresses_note(ep: EndpointResult) -> str:
    """`` (at 127.0.0.1, ::1)`` when the endpoint is not one address given as such."""
    shown = [a.label for a in ep.addresses]
    if shown == [ep.label]:
        return ""
    return f" (at {printable(', '.join(shown))})"


def _verdict_steps(c: ConsumerResult) -> list[str]:
    if c.failed_stage is Stage.VERIFY:
        return ["verify failed:"]
    if c.outcome is Outcome.FAILED:
        stage = c.failed_stage.value if c.failed_stage else "?"
        return [f"failed at {stage}: {printable(str(c.error))}"]
    return []


def _summary(result: DeployResult) -> str:
    n = len(result.consumers)
    if result.dry_run:
        return f"{plural(n, 'consumer')} planned; run without --dry-run to deploy."
    failed = len(result.failed)
    if failed:
        names = printable(", ".join(c.name for c in result.failed))
        return (
            f"{failed} of {plural(n, 'consumer')} FAILED ({names}); "
            f"{n - failed} ok ({result.seconds:.2f} s)"
        )
    return f"all {plural(n, 'consumer')} ok ({result.seconds:.2f} s)"


def render_deploy_failures(result: DeployResult) -> str:
    """One line naming each failed consumer and why, e.g. for a Certbot PluginError."""
    parts = []
    for c in result.failed:
        stage = c.failed_stage.value if c.failed_stage else "?"
        parts.append(f"{printable(c.name)} failed at {stage}: {printable(_why(c))}")
    return f"{len(parts)} of {plural(len(result.consumers), 'consumer')} failed: " + " | ".join(
        parts
    )


def _why(c: ConsumerResult) -> str:
    if c.failed_stage is not Stage.VERIFY:
        return c.error or "failed"
    reasons: list[str] = []
    for ep in c.endpoints:
        if ep.ok:
            continue
        stale = [a for a in ep.addresses if a.stale and a.served is not None]
        reasons.extend(
            f"{_address_where(ep, a)} still serves serial {a.served.serial} "
            f"(not after {a.served.not_after:%Y-%m-%d}), not the new certificate"
            for a in stale
            if a.served is not None
        )
        if not stale:
            reasons.append(ep.error or ep.label)
    reasons.extend(c.views)
    return "; ".join(reasons)


# -- JSON ------------------------------------------------------------------------------------


def render_deploy_document(result: DeployResult) -> dict[str, Any]:
    """The documented JSON shape (``version`` 1); fields are only ever added."""
    return {
        "version": DEPLOY_JSON_VERSION,
        "certificate": result.certificate,
        "dry_run": result.dry_run,
        "ok": not result.failed,
        "expected": cert_document(result.expected),
        "seconds": round(result.seconds, 3),
        "consumers": [_consumer_document(c) for c in result.consumers],
    }


def _consumer_document(c: ConsumerResult) -> dict[str, Any]:
    return {
        "name": c.name,
        "host": c.consumer.host,
        "outcome": c.outcome.value,
        "failed_stage": c.failed_stage.value if c.failed_stage else None,
        "error": c.error,
        "notes": c.notes,
        "files": [file_document(f) for f in c.files],
        "tested": c.tested,
        "reloaded": c.reloaded,
        "reload_reason": c.reload_reason,
        "rolled_back": c.rolled_back,
        "endpoints": [endpoint_document(e) for e in c.endpoints],
        "process_view": list(c.views),
        "seconds": round(c.seconds, 3),
    }


def render_deploy_json(result: DeployResult) -> str:
    """:func:`render_deploy_document` as indented JSON text."""
    return json.dumps(render_deploy_document(result), indent=2) + "\n"
