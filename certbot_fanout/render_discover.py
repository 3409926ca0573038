"""The renderers of what discover found: the listing (``render_discover_text``), which ends
with a map entry to paste for each unmapped find (``render_discover_entry``), and the whole
first map that ``discover --write-map`` writes (``render_discover_map``).

Pure: every function reads only the report or find it is given; the facts an entry needs (a
file's owner and mode, what it holds) were gathered by discover when it read the file. The
listing passes every name found on this host (paths, configuration files, certificate names)
through ``escape.printable``.
"""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Callable

import yaml

from certbot_fanout.discover import DiscoverReport, Find, FindKind
from certbot_fanout.escape import printable
from certbot_fanout.lineage import CertInfo
from certbot_fanout.mapwriter import (
    FirstMap,
    LeftOut,
    MapConsumer,
    MapEndpoint,
    MapFile,
    consumer_for,
    refusal,
)

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
    lines.extend(_container_lines(report))
    lines.extend(_view_lines(report))
    if not (report.finds or report.containers or report.views) and report.complete:
        where = f"host {printable(report.host)}" if report.host else "this host"
        lines.append(f"nothing on {where} carries these certificates outside certbot's files")
    lines.extend(_paste_lines([f for f in report.finds if not f.mapped]))
    return "\n".join(lines) + "\n"


def _served(certificate: str, current: bool, served: CertInfo, now: datetime.datetime) -> str:
    state = "current" if current else "STALE"
    return (
        f"{printable(certificate)} {state}: serial {printable(served.serial)}, "
        f"{_expires(served.not_after, now)}"
    )


def _container_lines(report: DiscoverReport) -> list[str]:
    """Running containers whose mounts carry a certificate (docs/containers.md)."""
    if not report.containers:
        return []
    lines = ["CONTAINERS:"]
    for c in report.containers:
        mapped = f"[consumer {printable(c.mapped_by)}]" if c.mapped_by else "[not in the map]"
        lines.append(
            f"  container {printable(c.container)} ({c.ident})  {printable(c.source)} -> "
            f"{printable(c.inside)}  "
            f"{_served(c.certificate, c.current, c.served, report.checked_at)}  {mapped}"
        )
        if c.ports:
            lines.append(f"      publishes {printable(', '.join(c.ports))}")
        if c.single_file:
            lines.append(
                "      a single-file bind mount: an atomic replace on this host never reaches "
                "the container; mount the directory, or map the file with inplace: true"
            )
        if c.seen_current is False:
            lines.append(
                f"      STALE INSIDE: its main process sees other bytes at {printable(c.inside)}"
            )
        if not c.mapped_by:
            lines.append(
                f"      map it: container: {{name: {printable(c.container)}}} with this file "
                "(see docs/containers.md)"
            )
    return lines


def _view_lines(report: DiscoverReport) -> list[str]:
    """Processes reading an old copy through a bind mount of a replaced file."""
    if not report.views:
        return []
    lines = ["PROCESSES THAT READ AN OLD COPY:"]
    for v in report.views:
        lines.append(
            f"  PID {v.pid} ({printable(v.command)})  {printable(v.point)}  "
            f"{_served(v.certificate, False, v.served, report.checked_at)}  (a single-file bind "
            f"mount of {printable(v.original)}, since replaced: restart it, or mount the "
            "directory)"
        )
    return lines


def _paste_lines(unmapped: list[Find]) -> list[str]:
    if not unmapped:
        return []
    lines = ['Paste into the map (under consumers:) and fill in each "<fill in: ...>":']
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
    on = f" on host {printable(report.host)}" if report.host else ""
    lines.append(
        f"  {report.listeners} listening sockets probed, {report.scanned_files} files read"
        f"{on}, in {report.seconds:.1f} s"
    )
    lines.extend(f"  note: {printable(note)}" for note in report.notes)
    lines.extend(f"  NOT COVERED: {printable(shortfall)}" for shortfall in report.shortfalls)
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


# -- what to paste, and the first map ---------------------------------------------------------
#
# Every entry is emitted by a YAML emitter from values, never by formatting text: a found
# name is a double-quoted scalar (a find whose name holds a control character is left out,
# see mapwriter.refusal), and comments hold only the program's own words.


class _Dumper(yaml.SafeDumper):
    """Block sequences indented under their key (``files:`` then ``  - {...}``)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


class _Quoted(str):
    """A string emitted double-quoted, whatever it holds."""


def _represent_quoted(dumper: yaml.SafeDumper, value: _Quoted) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')


class _FlowMap(dict[str, object]):
    """A mapping emitted on one line: ``{path: "...", content: fullchain}``."""


class _FlowList(list[object]):
    """A list emitted on one line: ``["systemctl", "reload", "nginx"]``."""


def _represent_flow_map(dumper: yaml.SafeDumper, value: _FlowMap) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)


def _represent_flow_list(dumper: yaml.SafeDumper, value: _FlowList) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_Dumper.add_representer(_Quoted, _represent_quoted)
_Dumper.add_representer(_FlowMap, _represent_flow_map)
_Dumper.add_representer(_FlowList, _represent_flow_list)


def _dump(value: object) -> str:
    return yaml.dump(
        value,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=1 << 16,
        indent=2,
    )


def _file_value(f: MapFile) -> _FlowMap:
    content: object = f.content[0] if len(f.content) == 1 else _FlowList(f.content)
    return _FlowMap(
        {
            "path": _Quoted(f.path),
            "content": content,
            "owner": _Quoted(f.owner) if isinstance(f.owner, str) else f.owner,
            "group": _Quoted(f.group) if isinstance(f.group, str) else f.group,
            "mode": _Quoted(f"{f.mode:04o}"),
        }
    )


def _endpoint_value(e: MapEndpoint) -> _FlowMap:
    value = _FlowMap({"host": _Quoted(e.host), "port": e.port})
    if e.starttls:
        value["starttls"] = e.starttls
    return value


def _command_value(command: tuple[str, ...] | str) -> object:
    if isinstance(command, str):
        return _Quoted(command)
    return _FlowList(_Quoted(word) for word in command)


def _consumer_value(c: MapConsumer) -> dict[str, object]:
    body: dict[str, object] = {}
    if c.host is not None:
        body["host"] = _Quoted(c.host)
    body["certificate"] = _Quoted(c.certificate)
    if c.container is not None:
        container = _FlowMap({"name": _Quoted(c.container)})
        if c.engine is not None:
            container["engine"] = _Quoted(c.engine)
        body["container"] = container
    if isinstance(c.files, str):
        body["files"] = _Quoted(c.files)
    elif c.files:
        body["files"] = [_file_value(f) for f in c.files]
    if c.test:
        body["test"] = _command_value(c.test)
    if c.reload:
        body["reload"] = _command_value(c.reload)
    if c.verify:
        body["verify"] = [_endpoint_value(e) for e in c.verify]
    if c.notes:
        body["notes"] = _Quoted(c.notes)
    return body


def render_discover_consumer(c: MapConsumer) -> str:
    """One consumer entry, indented to go under ``consumers:``, after a comment that says what
    it is (in the program's words)."""
    entry = _dump({c.name: _consumer_value(c)})
    about = "".join(f"  # {line}\n" for line in textwrap.wrap(c.about, 94))
    return about + "".join(f"  {line}\n" for line in entry.splitlines())


def render_discover_entry(find: Find, index: int) -> str:
    """A consumer-map entry that would cover an unmapped find, its unknown fields left as
    placeholders; or, for a find whose name cannot go into a map, a comment saying so."""
    planned = consumer_for(find, f"found-{index}")
    if isinstance(planned, LeftOut):
        return f"  # find {index} left out: {planned.why} (rename it, or map it by hand)\n"
    return render_discover_consumer(planned)


def render_discover_map(first: FirstMap) -> str:
    """The whole map ``discover --write-map`` writes: version, a comment that says how to
    finish it, and every consumer."""
    lines = [
        "# A first consumer map, written by certbot-fanout discover --write-map from what it",
        '# found on this host. Each value "<fill in: ...>" is left for you to write:',
        "# certbot-fanout check names every one still there, then checks the host.",
        "# Every field is described in docs/map.md (certbot-fanout(8): FILES).",
    ]
    if first.config_dir is not None:
        if refusal(first.config_dir) is None:
            lines.append(
                f"# Written for certbot's directory {first.config_dir}: give every command "
                f"--config-dir {first.config_dir}."
            )
        else:
            lines.append("# Give every command the --config-dir that discover was given.")
    if first.left_out:
        lines.append(
            f"# {len(first.left_out)} find(s) left out: discover's listing says which and why."
        )
    text = "\n".join(lines) + "\n" + _dump({"version": 1})
    if not first.consumers:
        return text + "consumers: {}  # discover found nothing to put here\n"
    return text + "consumers:\n" + "".join(render_discover_consumer(c) for c in first.consumers)
