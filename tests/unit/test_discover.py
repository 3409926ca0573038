"""discover: the unmapped listener, the forgotten copy, the service config nobody mapped."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from certbot_fanout import discover as discover_module
from certbot_fanout._pki import Issued, write_lineage
from certbot_fanout.config import parse_config
from certbot_fanout.discover import discover
from certbot_fanout.procnet import listening_sockets
from certbot_fanout.render_discover import render_discover_text
from tests.support.cli import invoke
from tests.support.cli import run as run_command
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer

NAME = "disc.test"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="writes a file under /etc")


@pytest.fixture
def old_and_new(lineages: LineageFactory) -> tuple[Path, Path]:
    """live/NAME now holds the renewed certificate; a copy of the first one is returned."""
    live, _ = lineages.issue(NAME, f"www.{NAME}")
    old = lineages.config_dir.parent / "old"
    old.mkdir()
    for name in ("fullchain.pem", "privkey.pem", "cert.pem"):
        shutil.copyfile(live / name, old / name)
    lineages.renew(NAME, f"www.{NAME}")
    return live, old


def run(lineages: LineageFactory, config: Path, *more: str) -> tuple[int, str]:
    argv = ["discover", "--config", str(config), "--config-dir", str(lineages.config_dir), *more]
    result = invoke(argv)
    return result.returncode, result.stdout


def test_listening_sockets_are_read_from_proc(tmp_path: Path) -> None:
    with Peer("silent") as peer:
        assert ("127.0.0.1", peer.port) in listening_sockets()
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 00000000:01BB 00000000:0000 0A 00000000:00000000\n"
        "   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000\n"
    )
    (tmp_path / "tcp6").write_text(
        "  sl  local_address                         remote_address\n"
        "   0: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A\n"
        "   1: 0000000000000000FFFF00000100007F:0019 00000000000000000000000000000000:0000 0A\n"
    )
    assert listening_sockets(str(tmp_path)) == [
        ("127.0.0.1", 8080), ("0.0.0.0", 443), ("::1", 8443), ("127.0.0.1", 25)
    ]  # fmt: skip


@needs_root
def test_finds_the_unmapped_stale_listener_and_the_forgotten_copy(
    lineages: LineageFactory,
    old_and_new: tuple[Path, Path],
    write_config: Callable[[str], Path],
    etc_dir: Path,
) -> None:
    live, old = old_and_new
    forgotten = etc_dir / "synapse" / "fullchain.pem"
    forgotten.parent.mkdir()
    shutil.copyfile(old / "fullchain.pem", forgotten)
    current_copy = etc_dir / "nginx.pem"
    shutil.copyfile(live / "fullchain.pem", current_copy)
    with (
        Peer("tls", live / "fullchain.pem", live / "privkey.pem") as mapped,
        Peer("tls", old / "fullchain.pem", old / "privkey.pem", bind="0.0.0.0") as stale,
    ):
        config = write_config(
            f"version: 1\nconsumers:\n  nginx:\n    certificate: {NAME}\n"
            f"    files: [{{path: {current_copy}, content: fullchain}}]\n"
            f"    verify: [{{host: 127.0.0.1, port: {mapped.port}}}]\n"
        )
        code, out = run(lineages, config)
    assert code == 1, out
    unmapped = out.split("NOT IN THE MAP:\n")[1].split("\nIN THE MAP")[0]
    assert re.search(rf"listener  127\.0\.0\.1:{stale.port}  {NAME} STALE: serial ", unmapped)
    assert re.search(rf"file      {forgotten}  {NAME} STALE: serial ", unmapped)
    assert f":{mapped.port}" not in unmapped, "a mapped endpoint is never called unmapped"
    assert str(current_copy) not in unmapped
    covered = out.split("\nIN THE MAP:\n")[1]
    assert re.search(
        rf"listener  127\.0\.0\.1:{mapped.port}  {NAME} current.*\[consumer nginx\]", covered
    )
    assert re.search(rf"file      {current_copy}  {NAME} current.*\[consumer nginx\]", covered)
    snippets = out.split('fill in each "<fill in: ...>":\n')[1]
    assert f'      - {{host: "127.0.0.1", port: {stale.port}}}' in snippets
    assert f'      - {{path: "{forgotten}", content: fullchain, owner: "root", group: "root", ' in (
        snippets
    )
    assert "PRIVATE KEY" not in out
    assert str(lineages.config_dir) not in out.split("\n", 1)[1], "certbot's own files are skipped"
    parse_config(
        "version: 1\nconsumers:\n" + re.sub(r'"<fill in: [^"]*>"', "['true']", snippets),
        "pasted",
    )  # the snippets are valid map entries once completed


def test_service_config_references_and_live_readers(
    lineages: LineageFactory,
    old_and_new: tuple[Path, Path],
    write_config: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    live, old = old_and_new
    conf = tmp_path / "nginx" / "sites-enabled" / "matrix"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "server {\n  listen 443 ssl;\n"
        f"  ssl_certificate {old}/fullchain.pem;\n  ssl_certificate_key {old}/privkey.pem;\n}}\n"
        "server {\n"
        f"  ssl_certificate {live}/fullchain.pem;\n}}\n"
    )
    config = write_config(f"version: 1\nconsumers:\n  other:\n    certificate: {NAME}\n")
    from certbot_fanout.discover import SERVICE_CONFIGS, ServiceConfig

    services = {
        "nginx": ServiceConfig((str(tmp_path / "nginx/**/*"),), SERVICE_CONFIGS["nginx"][1])
    }
    report = discover(
        parse_config(config.read_text(), str(config)),
        str(lineages.config_dir),
        roots=(),
        service_configs=services,
        proc_net=str(tmp_path / "no-proc"),
    )
    by_path = {f.where: f for f in report.finds}
    stale = by_path[f"{old}/fullchain.pem"]
    assert (stale.kind, stale.current, stale.mapped) == ("config", False, False)
    assert stale.via == f"nginx: {conf}:3"
    direct = by_path[f"{live}/fullchain.pem"]
    assert direct.reads_live and direct.current and not direct.mapped
    assert f"{old}/privkey.pem" not in by_path, "keys are not reported as certificates"

    config.write_text(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n    reload: nginx -s reload\n"
    )
    report = discover(
        parse_config(config.read_text(), str(config)),
        str(lineages.config_dir),
        roots=(),
        service_configs=services,
        proc_net=str(tmp_path / "no-proc"),
    )
    direct = next(f for f in report.finds if f.reads_live)
    assert direct.mapped_by == "web", "a consumer that reloads nginx covers it"


def test_the_scan_is_bounded_and_safe(
    lineages: LineageFactory,
    old_and_new: tuple[Path, Path],
    write_config: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    _, old = old_and_new
    scan = tmp_path / "scan"
    (scan / "a").mkdir(parents=True)
    (scan / "a" / "loop").symlink_to(scan, target_is_directory=True)
    os.mkfifo(scan / "a" / "fifo")
    big = scan / "big.pem"
    big.write_bytes((old / "fullchain.pem").read_bytes() + b"\0" * (2 << 20))
    shutil.copyfile(old / "fullchain.pem", scan / "a" / "copy.crt")
    (scan / "link.pem").symlink_to(old / "fullchain.pem")
    config = write_config("version: 1\n")
    report = discover(
        parse_config(config.read_text(), str(config)),
        str(lineages.config_dir),
        cert_names=[NAME],
        roots=(),
        extra_paths=[str(scan)],
        service_configs={},
        proc_net=str(tmp_path / "no-proc"),
    )
    assert [f.where for f in report.finds] == [str(scan / "a" / "copy.crt")]
    assert report.scanned_files == 2  # big.pem and copy.crt: the fifo and symlinks are not opened


def test_an_expired_copy_reads_as_expired(lineages: LineageFactory, tmp_path: Path) -> None:
    from certbot_fanout._pki import write_lineage

    now = datetime.datetime.now(datetime.UTC)
    expired = lineages.ca.issue([NAME], days=2, not_before=now - datetime.timedelta(days=3))
    write_lineage(str(lineages.config_dir), NAME, expired)
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "old.pem").write_bytes(expired.cert_pem)
    empty_proc = tmp_path / "proc-net"
    empty_proc.mkdir()
    report = discover(
        parse_config("version: 1\n"),
        str(lineages.config_dir),
        [NAME],
        roots=[str(copies)],
        proc_net=str(empty_proc),
        service_configs={},
    )
    text = render_discover_text(report)
    day = f"{now - datetime.timedelta(days=1):%Y-%m-%d}"
    assert f"current serial {report.lineages[NAME].cert.serial}, expired {day}" in text
    (line,) = [line for line in text.splitlines() if line.startswith(f"  file      {copies}/")]
    assert f"current: serial {report.lineages[NAME].cert.serial}, expired {day}" in line
    assert "expires" not in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_a_lineage_with_a_negative_serial_is_read_without_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    genpkey = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run_command([*genpkey, "-out", key], check=True)
    req = ["openssl", "req", "-x509", "-key", str(key), "-subj", f"/CN={NAME}", "-days", "1"]
    run_command([*req, "-set_serial", "-5", "-out", cert], check=True)  # openssl allows it
    issued = Issued(
        cert_pem=cert.read_bytes(), chain_pem=cert.read_bytes(), key_pem=key.read_bytes()
    )
    config_dir = tmp_path / "letsencrypt"
    write_lineage(str(config_dir), NAME, issued)
    (tmp_path / "no-proc").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = discover(
            parse_config("version: 1\n"),
            str(config_dir),
            [NAME],
            roots=(),
            proc_net=str(tmp_path / "no-proc"),
            service_configs={},
        )
    assert report.lineages[NAME].cert.serial == "-05"
    assert [str(w.message) for w in caught] == [], "the lineage is read inside the filter's scope"


def test_the_file_scan_stops_at_its_entry_budget(
    lineages: LineageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = lineages.issue(NAME)
    scan = tmp_path / "scan"
    scan.mkdir()
    for i in range(5):
        shutil.copyfile(live / "cert.pem", scan / f"copy{i}.pem")
    (tmp_path / "no-proc").mkdir()

    def look() -> tuple[int, tuple[str, ...]]:
        report = discover(
            parse_config("version: 1\n"),
            str(lineages.config_dir),
            [NAME],
            roots=[str(scan)],
            proc_net=str(tmp_path / "no-proc"),
            service_configs={},
        )
        return report.scanned_files, report.notes

    assert look() == (5, ())
    monkeypatch.setattr(discover_module, "MAX_ENTRIES", 3)
    assert look() == (2, (discover_module._SCAN_STOPPED,)), "the third entry ends the scan"
