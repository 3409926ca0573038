"""discover's entries and first map: emitted by a YAML emitter, never a command from a name.

Real files with hostile names (a newline and ``test: [...]``, quotes, colons, ``#``, a leading
``-``, non-UTF-8 bytes, terminal escapes) are found by a real discover; each entry to paste and
the whole first map are loaded by the real config loader: each yields exactly the found path,
or leaves the find out with a note, and never a command the program did not write.
``--write-map`` never overwrites and leaves no half file; ``check`` names each placeholder.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from certbot_fanout.config import parse_config
from certbot_fanout.discover import SERVICE_CONFIGS, DiscoverReport, ServiceConfig, discover
from certbot_fanout.errors import FanoutError, UnfinishedMap
from certbot_fanout.mapwriter import plan_map, write_new_file
from certbot_fanout.model import Config
from certbot_fanout.render_discover import render_discover_entry, render_discover_map
from tests.support.cli import invoke
from tests.support.lineages import LineageFactory
from tests.support.tally import record

NAME = "writemap.test"
AREA = "discover entries"
FILLED = ["true"]

# Path components under the scanned directory: each file is a copy of the certificate.
HOSTILE: tuple[tuple[bytes, ...], ...] = (
    (b"x.pem\n    test: [touch, ", b"tmp", b"pwned]"),
    (b"x.pem\n  evil:\n    certificate: y\n    reload: [touch, pwned]",),
    (b"q\"uo'te.pem",),
    (b"'single.pem",),
    (b"co: lon.pem",),
    (b"hash #x.pem",),
    (b"-lead.pem",),
    (b"- [seq, item].pem",),
    (b"{flow: map}, [seq].pem",),
    (b"&anchor *alias !tag |bar >gt.pem",),
    (b"%percent @at `back.pem",),
    (b"\xff\xfe-not-utf8.pem",),
    (b"tab\there.pem",),
    (b"esc\x1b[31mred.pem",),
    (b"crlf\r\nline.pem",),
    ("u\u2028line-separator.pem".encode(),),
    ("\u00fcn\u00ef c\u00f6de.pem".encode(),),
    (b"  spaces  .pem",),
    (b"null",),
    (b"~",),
    (b"<fill in: a trap>",),
)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


KEY = "/nonexistent/filled-in/privkey.pem"


def _fill(text: str) -> str:
    """The map with each key path left to fill in set to ``KEY``, and every other
    placeholder (a reload command) replaced by the command ``true``."""
    text = re.sub(r'path: "<fill in: [^"]*>"', f'path: "{KEY}"', text)
    return re.sub(r'"<fill in: [^"]*>"', '["true"]', text)


def _hostile_host(lineages: LineageFactory, root: Path) -> tuple[DiscoverReport, list[str]]:
    """A real lineage; under ``root`` a copy of its fullchain at each hostile path, and a
    service configuration with a hostile name that names one of them; what discover finds."""
    live, _ = lineages.issue(NAME)
    fullchain = (live / "fullchain.pem").read_bytes()
    scan = root / "scan"
    expected = []
    for parts in HOSTILE:
        path = os.path.join(os.fsencode(scan), *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(fullchain)
        expected.append(os.fsdecode(path))
    confs = root / "confs"
    confs.mkdir()
    named = scan / "named.pem"
    named.write_bytes(fullchain)
    conf = os.path.join(os.fsencode(confs), b"site.conf\n    reload: [touch, pwned]")
    with open(conf, "w") as f:
        f.write(f"ssl_certificate {named};\n")
    expected.append(str(named))
    nginx = ServiceConfig((str(confs / "*"),), SERVICE_CONFIGS["nginx"].pattern)
    (root / "no-proc").mkdir()
    report = discover(
        Config("<none>", ()),
        str(lineages.config_dir),
        [NAME],
        roots=[str(scan)],
        proc_net=str(root / "no-proc"),
        service_configs={"nginx": nginx},
    )
    return report, expected


def test_hostile_names_in_entries_and_maps_yield_only_the_found_path(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    report, expected = _hostile_host(lineages, tmp_path)
    found = {f.where for f in report.finds}
    assert set(expected) <= found, sorted(set(expected) - found)
    bad: list[str] = []  # entries that yielded a command, or a path, no one found
    refused = 0
    for i, find in enumerate(report.finds, 1):
        entry = render_discover_entry(find, i)
        comments = [line for line in entry.splitlines() if line.lstrip().startswith("#")]
        if CONTROL.search(find.where) or any("\udc80" <= c <= "\udcff" for c in find.where):
            refused += 1
            if entry.strip() != comments[0].strip() or "left out" not in entry:
                bad.append(f"not refused with a note: {find.where!r}: {entry!r}")
            continue
        config = parse_config("version: 1\nconsumers:\n" + _fill(entry), "pasted")
        (consumer,) = config.consumers
        paths = [spec.path for spec in consumer.files if spec.path != KEY]
        preset = find.reference is not None
        expected_test = ("nginx", "-t") if preset else None
        expected_reload = ("systemctl", "reload", "nginx") if preset else tuple(FILLED)
        if paths != [find.where] or consumer.test != expected_test:
            bad.append(f"{find.where!r}: files {paths}, test {consumer.test}")
        if consumer.reload != expected_reload:
            bad.append(f"{find.where!r}: reload {consumer.reload}")
        if any(find.where in line or "pwned" in line for line in comments):
            bad.append(f"a found name in a comment: {comments}")
    first = plan_map(report)
    text = render_discover_map(first)
    config = parse_config(_fill(text), "written")
    placed = [spec.path for c in config.consumers for spec in c.files if spec.path != KEY]
    commands = [cmd for c in config.consumers for cmd in (c.test, c.reload) if cmd is not None]
    if sorted(placed) != sorted(f.where for f in report.finds if f.where not in _left(first)):
        bad.append(f"the map places {placed}")
    if any("pwned" in " ".join(cmd) for cmd in commands):
        bad.append(f"the map runs {commands}")
    if any("pwned" in line for line in text.splitlines() if line.lstrip().startswith("#")):
        bad.append("a found name in the map's comments")
    record(AREA, cases=len(report.finds) + 1, commands_from_names=len(bad))
    assert not bad, bad
    assert refused == len(first.left_out) == 7, [left.why for left in first.left_out]


def _left(first: object) -> set[str]:
    return {left.where for left in getattr(first, "left_out", ())}


def test_write_map_never_overwrites_and_leaves_no_half_file(
    lineages: LineageFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lineages.issue(NAME)
    base = ["discover", "--config-dir", str(lineages.config_dir), "--cert-name", NAME]
    existing = tmp_path / "existing.yaml"
    existing.write_text("version: 1\n")
    target = tmp_path / "target"
    target.write_text("untouched\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    overwritten = 0
    for path in (existing, link, dangling):
        result = invoke([*base, "--path", str(tmp_path / "empty"), "--write-map", str(path)])
        stderr = capsys.readouterr().err
        overwritten += result.returncode != 2 or "never overwrites a map" not in stderr
    overwritten += existing.read_text() != "version: 1\n" or target.read_text() != "untouched\n"
    overwritten += (tmp_path / "nowhere.yaml").exists()
    fresh = tmp_path / "fresh.yaml"
    result = invoke([*base, "--path", str(tmp_path / "empty"), "--write-map", str(fresh)])
    st = os.lstat(fresh)
    record(AREA, cases=4, maps_overwritten=overwritten)
    assert overwritten == 0
    assert result.returncode in (0, 1), capsys.readouterr().err
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert f"wrote a first map to {fresh}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_a_map_that_does_not_fit_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", str(small)], check=True
    )
    try:
        with pytest.raises(FanoutError, match="cannot write the map"):
            write_new_file(str(small / "map.yaml"), "# x\n" * 100_000)
        left = os.listdir(small)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    record(AREA, cases=1, half_maps_left=len(left))
    assert left == []


def test_check_and_deploy_name_each_placeholder(
    lineages: LineageFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, _ = lineages.issue(NAME)
    scan = tmp_path / "srv"
    scan.mkdir()
    (scan / "copy.pem").write_bytes((live / "fullchain.pem").read_bytes())
    written = tmp_path / "first.yaml"
    common = ["--config-dir", str(lineages.config_dir)]
    result = invoke(
        ["discover", *common, "--cert-name", NAME, "--path", str(scan), "--write-map", str(written)]
    )
    assert result.returncode == 1, capsys.readouterr().err  # something to review: the copy
    text = written.read_text()
    with pytest.raises(UnfinishedMap) as unfinished:
        parse_config(text, str(written))
    fields = [f.key_path for f in unfinished.value.fields]
    assert fields == ["consumers.copy.reload"]
    check = invoke(["check", "--config", str(written), *common, "--no-probe"])
    assert check.returncode == 2, check.stdout
    (line,) = [ln for ln in check.stdout.splitlines() if ln.startswith("UNFINISHED: ")]
    assert re.match(rf"UNFINISHED: {written}:\d+:\d+: consumers\.copy\.reload: fill in ", line)
    deploy = invoke(["deploy", "--config", str(written), *common, "--cert-name", NAME, "--dry-run"])
    assert deploy.returncode == 2 and "consumers.copy.reload: fill in" in capsys.readouterr().err
    written.write_text(_fill(text))
    check = invoke(["check", "--config", str(written), *common, "--no-probe"])
    assert check.returncode == 0, check.stdout
    deploy = invoke(["deploy", "--config", str(written), *common, "--cert-name", NAME, "--dry-run"])
    assert deploy.returncode == 0, deploy.stdout + capsys.readouterr().err
