"""The renderers are pure and split by command; discover gathers what its entries need."""

from __future__ import annotations

import ast
import datetime
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from certbot_fanout import cli
from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.check import CheckReport, Problem
from certbot_fanout.config import parse_config
from certbot_fanout.discover import (
    SERVICE_CONFIGS,
    Copy,
    DiscoverReport,
    Find,
    FindKind,
    Listener,
    Reference,
    ServiceConfig,
    discover,
)
from certbot_fanout.lineage import CertInfo, Lineage
from certbot_fanout.model import Consumer, Dialect
from certbot_fanout.render_check import render_check_text
from certbot_fanout.render_common import plural
from certbot_fanout.render_discover import render_discover_entry, render_discover_text
from certbot_fanout.render_status import render_status_failures
from certbot_fanout.status import ConsumerStatus, Level

PACKAGE = Path(cli.__file__).parent
RENDERERS = sorted(PACKAGE.glob("render_*.py"))
# What a pure renderer never imports: the file system, processes, sockets, the clock.
IMPURE = {"os", "pathlib", "shutil", "glob", "socket", "subprocess", "time", "io", "tempfile"}
NAME = "render.test"
NOT_AFTER = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
CERT = CertInfo("CN=render.test", "0a1b", NOT_AFTER, "ab" * 32, (NAME,))
COPY = Copy(certificates=1, holds_key=False, uid=0, gid=0, mode=0o644)
LISTENER = Listener(host="127.0.0.1", port=443, starttls=None)
NAMED = Reference(service="nginx", conf="/etc/nginx/nginx.conf", line=2)
LIVE = Reference(service="nginx", conf="/etc/nginx/nginx.conf", line=3, reads_live=True)


def test_there_is_one_renderer_module_per_command_and_no_report_module() -> None:
    assert [p.name for p in RENDERERS] == [
        "render_check.py",
        "render_common.py",
        "render_deploy.py",
        "render_discover.py",
        "render_status.py",
    ]
    assert not (PACKAGE / "report.py").exists()


@pytest.mark.parametrize("path", RENDERERS, ids=lambda p: p.stem)
def test_a_renderer_imports_no_io_and_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), "the module docstring says what it holds"
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"now", "today", "utcnow", "time"}, f"line {node.lineno}"
    assert not imported & IMPURE


@pytest.mark.parametrize("path", RENDERERS, ids=lambda p: p.stem)
def test_public_renderers_are_named_after_their_command(path: Path) -> None:
    command = path.stem.removeprefix("render_")
    public = [
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    ]
    assert public
    if command != "common":
        assert all(name.startswith(f"render_{command}_") for name in public), public


def _report(*finds: Find, checked_at: datetime.datetime | None = None) -> DiscoverReport:
    lineage = Lineage(name=NAME, live_dir=f"/le/live/{NAME}", pems={}, cert=CERT)
    return DiscoverReport(
        lineages={NAME: lineage},
        finds=finds,
        notes=(),
        seconds=1.25,
        scanned_files=7,
        listeners=3,
        checked_at=checked_at or datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
    )


def _copy_find(path: str, copy: Copy, reference: Reference | None = None) -> Find:
    kind = FindKind.CONFIG if reference else FindKind.FILE
    return Find(kind, path, NAME, CERT, False, reference=reference, copy=copy)


def _entry_fields(entry: str, name: str) -> dict[str, Any]:
    """The consumer an entry to paste holds, as the YAML it is."""
    loaded: dict[str, Any] = yaml.safe_load(entry)
    return dict(loaded[name])


def test_the_entry_for_a_copy_uses_the_facts_gathered_when_it_was_read(tmp_path: Path) -> None:
    gone = str(tmp_path / "never-existed.pem")  # rendering stats nothing
    key_and_chain = Copy(certificates=2, holds_key=True, uid=104, gid=112, mode=0o664)
    entry = render_discover_entry(_copy_find(gone, key_and_chain), 3)
    assert entry.splitlines()[0] == "  # a copy of the certificate found on disk"
    (file,) = _entry_fields(entry, "found-3")["files"]
    assert file["path"] == gone and file["content"] == ["privkey", "fullchain"]
    assert file["mode"] == "0660", "a file holding a key is never suggested readable by others"
    cert_only = Copy(certificates=1, holds_key=False, uid=0, gid=0, mode=0o644)
    named = Reference(service="nginx", conf="/etc/nginx/sites-enabled/x", line=4)
    entry = render_discover_entry(_copy_find(gone, cert_only, named), 1)
    fields = _entry_fields(entry, "found-1")
    assert fields["files"][0] == {
        "path": gone, "content": "cert", "owner": "root", "group": "root", "mode": "0644"
    }  # fmt: skip
    assert fields["reload"] == ["systemctl", "reload", "nginx"], "the nginx preset's"
    assert "/etc/nginx/sites-enabled/x:4" in fields["notes"]
    assert "/etc/nginx" not in "".join(line for line in entry.splitlines() if "#" in line[:4])


def test_the_entries_for_a_listener_and_a_live_reader() -> None:
    listener = Listener(host="::1", port=587, starttls=Dialect.SMTP)
    find = Find(FindKind.LISTENER, "[::1]:587 (smtp)", NAME, CERT, False, listener=listener)
    entry = render_discover_entry(find, 1)
    assert "  # a service listening on port 587, which serves the certificate" in entry
    assert '      - {host: "::1", port: 587, starttls: smtp}' in entry
    # The service's name comes from the find, not from its description.
    reader = Reference(service="post:gres", conf="/etc/pg.conf", line=9, reads_live=True)
    find = Find(FindKind.CONFIG, f"/le/live/{NAME}/cert.pem", NAME, CERT, True, reference=reader)
    entry = render_discover_entry(find, 2)
    fields = _entry_fields(entry, "found-2")
    assert "files" not in fields and fields["reload"].startswith("<fill in: the command")
    assert "/etc/pg.conf:9" in fields["notes"] and "post:gres" not in entry


@pytest.mark.parametrize(
    ("kind", "facts", "message"),
    [
        (FindKind.LISTENER, {}, "a listener find carries listener, not nothing"),
        (FindKind.LISTENER, {"copy": COPY}, "a listener find carries listener, not copy"),
        (FindKind.FILE, {"listener": LISTENER}, "a file find carries copy, not listener"),
        (FindKind.FILE, {"copy": COPY, "reference": NAMED}, "carries copy, not reference and copy"),
        (FindKind.CONFIG, {"copy": COPY}, "a config find carries reference and copy, not copy"),
        (FindKind.CONFIG, {"reference": NAMED}, "carries reference and copy, not reference"),
        (
            FindKind.CONFIG,
            {"reference": LIVE, "copy": COPY},
            "carries reference, not reference and",
        ),
    ],
)
def test_a_find_carries_the_facts_of_its_kind_and_no_other(
    kind: FindKind, facts: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Find(kind, "/srv/x.pem", NAME, CERT, False, **facts)


def test_every_kind_is_listed_by_its_word_and_expiry_is_judged_at_checked_at() -> None:
    copy = Copy(certificates=1, holds_key=False, uid=0, gid=0, mode=0o644)
    listener = Listener(host="127.0.0.1", port=443, starttls=None)
    finds = (
        Find(FindKind.LISTENER, "127.0.0.1:443", NAME, CERT, True, "web", listener=listener),
        _copy_find("/srv/a.pem", copy, Reference("nginx", "/etc/nginx/nginx.conf", 2)),
        _copy_find("/srv/b.pem", copy),
    )
    text = render_discover_text(_report(*finds))
    for find in finds:
        assert f"  {find.kind.value:<8}  {find.where}  {NAME} " in text
    assert "expired" not in text
    later = render_discover_text(_report(*finds, checked_at=NOT_AFTER + datetime.timedelta(1)))
    assert "expired 2030-06-01" in later and "expires" not in later
    assert [k.value for k in FindKind] == ["listener", "config", "file"]


def test_discover_gathers_the_copy_and_filters_warnings_only_while_it_looks(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    config_dir = tmp_path / "letsencrypt"
    live = write_lineage(str(config_dir), NAME, ca.issue([NAME]))
    copies = tmp_path / "copies"
    copies.mkdir()
    copy = copies / "both.pem"
    copy.write_bytes(
        Path(live, "fullchain.pem").read_bytes() + Path(live, "privkey.pem").read_bytes()
    )
    copy.chmod(0o640)
    (tmp_path / "no-proc").mkdir()
    before = list(warnings.filters)
    report = discover(
        parse_config("version: 1\n"),
        str(config_dir),
        [NAME],
        roots=[str(copies)],
        proc_net=str(tmp_path / "no-proc"),
        service_configs={},
    )
    assert warnings.filters == before, "no process-wide warning filter is left behind"
    (find,) = report.finds
    assert find.kind is FindKind.FILE and find.listener is None and find.reference is None
    st = os.stat(copy)
    assert find.copy == Copy(
        certificates=2, holds_key=True, uid=st.st_uid, gid=st.st_gid, mode=0o640
    )
    entry = render_discover_entry(find, 1)
    shutil.rmtree(copies)
    assert render_discover_entry(find, 1) == entry, "the entry reads nothing from disk"
    (file,) = _entry_fields(entry, "found-1")["files"]
    assert file["content"] == ["privkey", "fullchain"] and file["mode"] == "0640"


def test_the_service_table_is_typed() -> None:
    for service, entry in SERVICE_CONFIGS.items():
        assert isinstance(entry, ServiceConfig), service
        assert entry.globs and entry.pattern.groups >= 1, service


def test_every_sub_command_has_one_handler() -> None:
    assert set(cli._COMMANDS) == set(cli.build_parser().commands)


def test_plural() -> None:
    assert (plural(1, "file"), plural(0, "file"), plural(2, "file")) == (
        "1 file",
        "0 files",
        "2 files",
    )


def test_the_status_failures_line_names_each_consumer_and_its_problems() -> None:
    web = ConsumerStatus(
        Consumer("web", NAME), Level.CRITICAL, problems=("/srv/web.pem: mode 0644", "stale")
    )
    db = ConsumerStatus(Consumer("db", NAME), Level.UNKNOWN, problems=("cannot read",))
    # The words the installer has failed certbot with since before the renderer held them.
    assert (
        render_status_failures([web, db]) == "web: /srv/web.pem: mode 0644; stale | db: cannot read"
    )
    assert render_status_failures([]) == ""


def test_the_check_text_lists_each_problem_then_the_verdict() -> None:
    problems = (Problem("web", "no such program: nginx"), Problem(f"certificate {NAME}", "gone"))
    failed = CheckReport(problems, consumers=2, files=1, endpoints=0, probed=False)
    assert render_check_text(failed, "/etc/map.yaml") == (
        "PROBLEM: web: no such program: nginx\n"
        f"PROBLEM: certificate {NAME}: gone\n"
        "2 problem(s) in /etc/map.yaml (2 consumers, 1 file, 0 endpoints (not probed))\n"
    )
    fine = CheckReport((), consumers=1, files=3, endpoints=1, probed=True)
    assert render_check_text(fine, "m.yaml") == (
        "OK: m.yaml checks out (1 consumer, 3 files, 1 endpoint)\n"
    )
