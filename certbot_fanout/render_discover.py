"""The renderers of what discover found: the listing (``render_discover_text``), which ends
with a map entry to paste for each unmapped find (``render_discover_entry``).

Pure: every function reads only the report or find it is given; the facts an entry needs (a
file's owner and mode, what it holds) were gathered by discover when it read the file. The
listing passes every name found on this host (paths, configuration files, certificate names)
through ``escape.printable``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from certbot_fanout.discover import Copy, DiscoverReport, Find, FindKind, Listener, Reference
from certbot_fanout.escape import printable

# How the listing groups the finds, in order: the title and which finds it holds.
_GROUPS: tuple[tuple[str, Callable[[Find], bool]], ...] = (
    ("NOT IN THE MAP", lambda f: not f.mapped),
    ("IN THE MAP BUT STALE", lambda f: f.mapped and not f.current),
    ("IN THE MAP", lambda f: f.mapped and f.current),
)


def _expires(not_after: datetime.datetime, now: datetime.datetime) -> str:
    """``expires DATE``, or ``expired DATE`` once that is past."""
    past = not_after.tzinfo is not None and not_after < now
    return f"{'expired' if past else 'expires'} {not_after:%Y-%m-%d}"


def render_discover_text(report: DiscoverReport) -> str:
    """What was looked for and how widely, each find by group, then what to paste."""
    lines = _header_lines(report)
    for title, belongs in _GROUPS:
        group = [f for f in report.finds if belongs(f)]
        if group:
            lines.append(f"{title}:")
            lines.extend(_find_line(f, report.checked_at) for f in group)
    if not report.finds:
        lines.append("nothing on this host carries these certificates outside certbot's files")
    lines.extend(_paste_lines([f for f in report.finds if not f.mapped]))
    return "\n".join(lines) + "\n"


def _paste_lines(unmapped: list[Find]) -> list[str]:
    if not unmapped:
        return []
    lines = ["Paste into the map (under consumers:) and complete the TODOs:"]
    for i, f in enumerate(unmapped, 1):
        lines.extend(render_discover_entry(f, i).rstrip("\n").splitlines())
    return lines


def _header_lines(report: DiscoverReport) -> list[str]:
    lines = [
        f"certbot-fanout discover: {printable(name)} ({printable(', '.join(lineage.cert.names))}), "
        f"current serial {printable(lineage.cert.serial)}, "
        f"{_expires(lineage.cert.not_after, report.checked_at)}"
        for name, lineage in report.lineages.items()
    ]
    lines.append(
        f"  {report.listeners} listening sockets probed, {report.scanned_files} files read, "
        f"in {report.seconds:.1f} s"
    )
    lines.extend(f"  note: {printable(note)}" for note in report.notes)
    return lines


def _find_line(f: Find, now: datetime.datetime) -> str:
    state = "current" if f.current else "STALE"
    what = (
        "reads certbot's live/ directly"
        if f.reads_live
        else f"{state}: serial {printable(f.served.serial)}, {_expires(f.served.not_after, now)}"
    )
    line = f"  {f.kind:<8}  {printable(f.where)}  {printable(f.certificate)} {what}"
    if f.kind is FindKind.CONFIG:
        line += f"  ({printable(f.via)})"
    if f.mapped_by:
        line += f"  [consumer {printable(f.mapped_by)}]"
    return line


# -- what to paste ---------------------------------------------------------------------------


def render_discover_entry(find: Find, index: int) -> str:
    """A consumer-map entry that would cover an unmapped find (to be completed by a human)."""
    name = f"found-{index}"
    # Find.__post_init__ holds each kind to its facts: the asserts only tell the type checker.
    if find.kind is FindKind.LISTENER:
        assert find.listener is not None
        return _listener_entry(name, find, find.listener)
    if find.kind is FindKind.CONFIG and find.reads_live:
        assert find.reference is not None
        return _live_reader_entry(name, find, find.reference)
    assert find.copy is not None
    return _copy_entry(name, find, find.copy)


def _listener_entry(name: str, find: Find, listener: Listener) -> str:
    starttls = f", starttls: {listener.starttls.value}" if listener.starttls else ""
    return (
        f"  {name}:   # the service listening on {find.where}\n"
        f"    certificate: {find.certificate}\n"
        f"    reload: TODO    # how this service reloads its certificate\n"
        f"    verify:\n"
        f"      - {{host: {listener.host}, port: {listener.port}{starttls}}}\n"
    )


def _live_reader_entry(name: str, find: Find, reference: Reference) -> str:
    return (
        f"  {name}:   # {reference.via} reads certbot's files directly\n"
        f"    certificate: {find.certificate}\n"
        f"    reload: TODO    # reload {reference.service} after every renewal\n"
    )


def _copy_entry(name: str, find: Find, copy: Copy) -> str:
    mode = copy.mode
    parts = ["fullchain" if copy.certificates > 1 else "cert"]
    if copy.holds_key:
        parts = ["privkey", *parts]
        mode &= 0o770  # a key is never for others to read
    content = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    origin = f"named in {find.via}" if find.kind is FindKind.CONFIG else "found on disk"
    return (
        f"  {name}:   # {origin}\n"
        f"    certificate: {find.certificate}\n"
        f"    files:\n"
        f"      - {{path: {find.where}, content: {content}, owner: {copy.uid}, group: {copy.gid}, "
        f'mode: "{mode:04o}"}}\n'
        f"    reload: TODO    # how the service reading this file reloads it\n"
    )
