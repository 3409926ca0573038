"""discover bounded against hostile users, phase by phase, and quiet about odd certificates.

Every user of a host shapes what discover reads: a service account owns its configuration
directory (a FIFO there hung discover forever; two ``x -> .`` links made its ``**`` walk
exponential), anyone can listen on hundreds of ports (their silence ate the whole budget and
discover then said "nothing found" with exit 0), and anyone can plant files (a megabyte of PEM
blocks, thousands of hard links). Each test runs discover as it runs for the admin, as a
subprocess with a timeout where a hang is the failure, and records what it measured in the
``discover bounds`` area: ``discover_hangs`` (runs that hit the timeout), ``false_nothing_found``
(runs that ran out of a budget yet exited 0 or said nothing was found), ``tracebacks`` and
``warnings_leaked`` (cryptography's warnings about odd certificates on stderr).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certbot_fanout import discover as discover_module
from certbot_fanout._pki import Issued, write_lineage
from certbot_fanout.config import parse_config
from certbot_fanout.discover import (
    Budgets,
    DiscoverReport,
    discover,
)
from certbot_fanout.fswalk import MAX_PEM_BLOCKS
from certbot_fanout.procnet import listening_sockets_by_owner
from tests.support.cli import explain, run, timed_out
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer
from tests.support.proc import Account, chown_to, ensure_account
from tests.support.tally import record

AREA = "discover bounds"
NAME = "bounds.test"
ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 25.0  # a run that takes longer hung: every budget here is a few seconds
SILENT_LISTENERS = 300
SERVICE_USER = "fanout-disc"
# The silent listeners run as the service account, which may not read a virtualenv in a home.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plants files as root, other users")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def fanout(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """certbot-fanout as the admin runs it: a process of its own, killed after RUN_TIMEOUT (a
    run that was killed comes back with exit -9)."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    try:
        return run(
            [sys.executable, "-m", "certbot_fanout", *argv],
            env={**environ, **(env or {})},
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        return timed_out(e)


def hung(result: subprocess.CompletedProcess[str]) -> int:
    return int(result.returncode == -9)


def tracebacks(result: subprocess.CompletedProcess[str]) -> int:
    return (result.stdout + result.stderr).count("Traceback")


def nothing_found(result: subprocess.CompletedProcess[str]) -> bool:
    return "nothing on this host carries" in result.stdout


@pytest.fixture
def stale_copy(lineages: LineageFactory, tmp_path: Path) -> Path:
    """live/NAME holds a renewed certificate; the returned fullchain is a copy of the first."""
    live, _ = lineages.issue(NAME)
    copy = tmp_path / "copies" / "old-fullchain.pem"
    copy.parent.mkdir()
    shutil.copyfile(live / "fullchain.pem", copy)
    lineages.renew(NAME)
    return copy


@pytest.fixture
def empty_map(write_config: Callable[[str], Path]) -> Path:
    return write_config("version: 1\n")


def discover_argv(lineages: LineageFactory, config: Path, *more: str) -> list[str]:
    return [
        "discover",
        "--config",
        str(config),
        "--config-dir",
        str(lineages.config_dir),
        "--cert-name",
        NAME,
        *more,
    ]


@pytest.fixture(scope="module")
def service_user() -> Iterator[Account]:
    if os.geteuid() != 0:
        pytest.skip("creates a service account")
    with ensure_account(SERVICE_USER) as user:
        yield user


# -- phase 1: configurations never open a FIFO or device, never follow directory symlinks -------


@pytest.fixture
def postgres_cluster(service_user: Account) -> Iterator[Path]:
    """A cluster directory under the real /etc/postgresql (where discover's globs look), owned by
    the service account as Debian's postgres owns its own; removed afterwards."""
    top = Path("/etc/postgresql")
    made_top = not top.exists()
    top.mkdir(mode=0o755, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix="certbot-fanout-test-", dir=top))
    version.chmod(0o755)
    cluster = version / "main"
    (cluster / "conf.d").mkdir(parents=True)
    for d in (cluster, cluster / "conf.d"):
        chown_to(d, service_user, 0o755)
    try:
        yield cluster
    finally:
        shutil.rmtree(version, ignore_errors=True)
        if made_top:
            with contextlib.suppress(OSError):  # only if nothing else was put there meanwhile
                top.rmdir()


def plant_specials(directory: Path, prefix: str = "", suffix: str = ".conf") -> list[str]:
    """A FIFO, a kmsg device node and a symlink to /dev/kmsg: an open of the first and a read
    of the others block forever."""
    fifo, node, link = (
        directory / f"{prefix}{n}{suffix}" for n in ("00-fifo", "01-kmsg", "02-dev")
    )
    os.mkfifo(fifo)
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 11))
    link.symlink_to("/dev/kmsg")
    return [str(fifo), str(node), str(link)]


@needs_root
def test_a_fifo_or_device_in_a_service_config_dir_never_hangs_discover(
    lineages: LineageFactory, stale_copy: Path, empty_map: Path, postgres_cluster: Path
) -> None:
    conf_d = postgres_cluster / "conf.d"
    plant_specials(conf_d)
    (conf_d / "zz-tls.conf").write_text(f"ssl_cert_file = '{stale_copy}'\n")
    scan = stale_copy.parent.parent / "scan"
    scan.mkdir()
    plant_specials(scan, suffix=".pem")
    shutil.copyfile(stale_copy, scan / "forgotten.pem")
    result = fanout(*discover_argv(lineages, empty_map, "--path", str(scan), "--probe-budget", "2"))
    named = f"(postgresql: {conf_d}/zz-tls.conf:1)"
    record(AREA, cases=1, discover_hangs=hung(result), tracebacks=tracebacks(result))
    assert result.returncode == 1, explain(result)
    assert named in result.stdout, "the configurations after the FIFO are read"
    assert f"file      {scan}/forgotten.pem  {NAME} STALE" in result.stdout, explain(result)
    assert not any(n in result.stdout for n in ("00-fifo", "01-kmsg", "02-dev")), explain(result)


@needs_root
def test_directory_symlinks_in_a_config_tree_are_never_followed(
    lineages: LineageFactory, stale_copy: Path, tmp_path: Path
) -> None:
    nginx = tmp_path / "nginx"
    (nginx / "sites").mkdir(parents=True)
    for d in (nginx, nginx / "sites"):
        (d / "x").symlink_to(".", target_is_directory=True)
        (d / "y").symlink_to(".", target_is_directory=True)
    (nginx / "sites" / "site.conf").write_text(f"ssl_certificate {stale_copy};\n")
    (tmp_path / "no-proc").mkdir()
    code = f"""
from certbot_fanout.config import parse_config
from certbot_fanout.discover import SERVICE_CONFIGS, ServiceConfig, discover
services = {{"nginx": ServiceConfig(("{nginx}/**/*.conf",), SERVICE_CONFIGS["nginx"].pattern)}}
report = discover(parse_config("version: 1\\n"), "{lineages.config_dir}", ["{NAME}"], roots=(),
                  proc_net="{tmp_path}/no-proc", service_configs=services)
print(sorted(f.via for f in report.finds), report.shortfalls)
"""
    started = time.monotonic()
    try:
        result = run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT)}, timeout=10)
    except subprocess.TimeoutExpired as e:
        result = timed_out(e)
    seconds = time.monotonic() - started
    record(
        AREA,
        cases=1,
        discover_hangs=hung(result),
        tracebacks=tracebacks(result),
        symlink_walk_seconds=seconds,
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout.strip() == f"['nginx: {nginx}/sites/site.conf:1'] ()", explain(result)


# -- phase 2: listeners, root's first, within their own budget -----------------------------------

_LISTEN = """
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def silent_listeners(service_user: Account) -> Iterator[list[int]]:
    """SILENT_LISTENERS sockets on loopback, owned by the service account, that accept and
    never say a word."""
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-I", "-c", _LISTEN, str(SILENT_LISTENERS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        user=service_user.uid,
        group=service_user.gid,
        extra_groups=[],
        cwd="/",
    )
    try:
        assert proc.stdout is not None
        ports = [int(p) for p in proc.stdout.readline().split()]
        assert len(ports) == SILENT_LISTENERS, "the listeners did not start"
        yield ports
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_root
def test_listeners_are_ordered_by_owner(
    silent_listeners: list[int], service_user: Account, tmp_path: Path
) -> None:
    owners = {s.port: s.uid for s in listening_sockets_by_owner() if s.address == "127.0.0.1"}
    assert {owners.get(p) for p in silent_listeners} == {service_user.uid}
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:0001 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
        "   1: 0100007F:0002 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108\n"
        "   2: 0100007F:0003 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        "   3: 0100007F:0004 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534\n"
        "   4: 0100007F:0005 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    )
    order = [(s.port, s.uid) for s in listening_sockets_by_owner(str(tmp_path))]
    assert order == [(3, 0), (5, 0), (2, 108), (1, 1000), (4, 65534)]


@needs_root
def test_silent_listeners_cannot_skip_the_file_scan_nor_hide_roots_service(
    lineages: LineageFactory, stale_copy: Path, empty_map: Path, silent_listeners: list[int]
) -> None:
    old = stale_copy.parent
    key = old / "privkey.pem"
    key.write_bytes((lineages.config_dir / "archive" / NAME / "privkey1.pem").read_bytes())
    scan = old.parent / "scan"
    scan.mkdir()
    shutil.copyfile(stale_copy, scan / "forgotten.pem")
    with Peer("tls", stale_copy, key) as roots_service:
        result = fanout(
            *discover_argv(lineages, empty_map, "--path", str(scan), "--probe-budget", "3"),
            "--scan-budget",
            "2",  # less than the listeners': it counts from the scan's own start
        )
    unprobed = "listening sockets not probed: the listener budget of 3 s ran out"
    shortfall_stated = "NOT COVERED: " in result.stdout and unprobed in result.stdout
    record(
        AREA,
        cases=1,
        discover_hangs=hung(result),
        false_nothing_found=int(result.returncode == 0 or not shortfall_stated),
        tracebacks=tracebacks(result),
    )
    assert result.returncode == 1, explain(result)
    assert shortfall_stated, explain(result)
    assert f"listener  127.0.0.1:{roots_service.port}  {NAME} STALE" in result.stdout, (
        "root's listener is probed before the service account's silent ones"
    )
    assert f"file      {scan}/forgotten.pem  {NAME} STALE" in result.stdout, (
        "the file scan runs on its own budget"
    )


@needs_root
def test_a_budget_that_ran_out_is_never_nothing_found(
    lineages: LineageFactory, empty_map: Path, silent_listeners: list[int], tmp_path: Path
) -> None:
    lineages.issue(NAME)
    scan = tmp_path / "scan"
    scan.mkdir()
    for i in range(50):
        (scan / f"{i}.txt").write_text("nothing to see\n")
    runs = [
        fanout(*discover_argv(lineages, empty_map, "--path", str(scan), "--probe-budget", "1")),
        fanout(
            *discover_argv(lineages, empty_map, "--path", str(scan), "--probe-budget", "1"),
            "--scan-budget",
            "0.001",
        ),
    ]
    record(
        AREA,
        cases=len(runs),
        discover_hangs=sum(hung(r) for r in runs),
        false_nothing_found=sum(r.returncode == 0 or nothing_found(r) for r in runs),
        tracebacks=sum(tracebacks(r) for r in runs),
    )
    for result in runs:
        assert result.returncode == 1, explain(result)
        assert not nothing_found(result), explain(result)
        assert "NOT COVERED: " in result.stdout and " not probed" in result.stdout
    assert "NOT COVERED: the file scan stopped in " in runs[1].stdout, explain(runs[1])


# -- phase 3: the file scan, per file ------------------------------------------------------------


def look(lineages: LineageFactory, scan: Path, tmp_path: Path, **more: object) -> DiscoverReport:
    (tmp_path / "no-proc").mkdir(exist_ok=True)
    config = more.pop("config", parse_config("version: 1\n"))
    return discover(
        config,  # type: ignore[arg-type]
        str(lineages.config_dir),
        [NAME],
        roots=[str(scan)],
        proc_net=str(tmp_path / "no-proc"),
        service_configs={},
        **more,  # type: ignore[arg-type]
    )


def test_the_file_scan_checks_its_deadline_per_file(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    scan = tmp_path / "one-big-directory"
    scan.mkdir()
    pem = (live / "fullchain.pem").read_bytes()
    files = 3000
    for i in range(files):
        (scan / f"{i}.pem").write_bytes(pem)
    report = look(lineages, scan, tmp_path, budgets=Budgets(files=0.02))
    stopped = f"the file scan stopped in {scan} after {report.scanned_files} files"
    record(
        AREA,
        cases=1,
        false_nothing_found=int(report.complete),
        files_read_past_deadline=report.scanned_files if report.complete else 0,
    )
    assert not report.complete and report.scanned_files < files
    assert report.shortfalls[0].startswith(stopped), report.shortfalls


def test_a_file_is_parsed_up_to_a_bound_and_hard_links_are_read_once(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    scan = tmp_path / "scan"
    scan.mkdir()
    cert = (live / "cert.pem").read_bytes()
    (scan / "many.pem").write_bytes(cert * 500)  # half a megabyte of certificates
    first = scan / "link-000.pem"
    first.write_bytes(cert)
    links = [scan / f"link-{i:03}.pem" for i in range(1, 60)]
    for link in links:
        os.link(first, link)
    mapped = links[-1]
    config = parse_config(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n"
        f"    files: [{{path: {mapped}, content: cert}}]\n"
    )
    report = look(lineages, scan, tmp_path, config=config)
    many = next(f for f in report.finds if f.where == str(scan / "many.pem"))
    linked = [f for f in report.finds if f.where != str(scan / "many.pem")]
    assert many.copy is not None
    record(
        AREA,
        cases=2,
        certificates_parsed_over_bound=max(0, many.copy.certificates - MAX_PEM_BLOCKS),
        hard_links_read_again=len(linked) - 1,
    )
    assert many.copy.certificates == MAX_PEM_BLOCKS
    assert len(linked) == 1, [f.where for f in linked]
    assert linked[0].mapped_by == "web", "a hard link to a mapped file is that file"


def test_the_file_scan_entry_budget_names_where_it_stopped(
    lineages: LineageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = lineages.issue(NAME)
    scan = tmp_path / "scan"
    (scan / "a").mkdir(parents=True)
    for i in range(5):
        shutil.copyfile(live / "cert.pem", scan / "a" / f"{i}.pem")
    monkeypatch.setattr(discover_module, "MAX_ENTRIES", 4)
    report = look(lineages, scan, tmp_path)
    assert report.shortfalls == (
        f"the file scan stopped in {scan}/a after 2 files (its budget of 4 entries ran out)",
    )


# -- cryptography's warnings about odd certificates ---------------------------------------------


def openssl_cert(tmp_path: Path, stem: str, serial: int) -> tuple[Path, Path]:
    key, cert = tmp_path / f"{stem}.key", tmp_path / f"{stem}.pem"
    genpkey = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run([*genpkey, "-out", key], check=True)
    req = ["openssl", "req", "-x509", "-key", str(key), "-subj", f"/CN={NAME}", "-days", "2"]
    san = ["-addext", f"subjectAltName=DNS:{NAME}"]
    run([*req, *san, "-set_serial", str(serial), "-out", cert], check=True)  # openssl allows it
    return cert, key


@needs_root
@needs_openssl
def test_cryptography_warnings_about_odd_certificates_never_reach_stderr(tmp_path: Path) -> None:
    cert, key = openssl_cert(tmp_path, "lineage", -5)
    served, served_key = openssl_cert(tmp_path, "other", -7)
    config_dir = tmp_path / "letsencrypt"
    pem = cert.read_bytes()
    write_lineage(
        str(config_dir), NAME, Issued(cert_pem=pem, chain_pem=pem, key_pem=key.read_bytes())
    )
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copyfile(served, copies / "odd.pem")
    placed = tmp_path / "placed"
    placed.mkdir()
    shutil.copyfile(served, placed / "fullchain.pem")
    with Peer("tls", served, served_key) as peer:
        config = tmp_path / "consumers.yaml"
        config.write_text(
            f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n"
            f"    files: [{{path: {placed}/fullchain.pem, content: fullchain}}]\n"
            f"    verify: [{{host: 127.0.0.1, port: {peer.port}}}]\n"
        )
        common = ["--config", str(config), "--config-dir", str(config_dir)]
        env = {"CERTBOT_FANOUT_STATE": str(tmp_path / "state.json")}
        runs = [
            fanout("status", *common, env=env),
            fanout("check", *common, env=env),
            fanout("deploy", *common, "--cert-name", NAME, "--dry-run", env=env),
            fanout(
                "discover", *common, "--cert-name", NAME, "--path", str(copies),
                "--probe-budget", "2", env=env,
            ),
        ]  # fmt: skip
    leaked = [r for r in runs if "Warning" in r.stderr or "cryptography" in r.stderr]
    record(
        AREA,
        cases=len(runs),
        warnings_leaked=len(leaked),
        tracebacks=sum(tracebacks(r) for r in runs),
        discover_hangs=hung(runs[-1]),
    )
    assert not leaked, "\n".join(explain(r) for r in leaked)
    assert f"{copies}/odd.pem" in runs[-1].stdout, explain(runs[-1])
    assert "serial -07" in runs[-1].stdout, "the odd certificate is still read and listed"


@needs_root
def test_a_config_symlink_is_followed_only_where_only_root_could_have_put_it(
    lineages: LineageFactory, stale_copy: Path, tmp_path: Path, service_user: Account
) -> None:
    available = tmp_path / "sites-available"
    available.mkdir()
    other_copy = stale_copy.with_name("other.pem")
    shutil.copyfile(stale_copy, other_copy)
    roots, theirs = tmp_path / "sites-enabled", tmp_path / "theirs"
    for d, copy in ((roots, stale_copy), (theirs, other_copy)):
        (available / d.name).write_text(f"ssl_certificate {copy};\n")
        d.mkdir(mode=0o755)
        (d / "site").symlink_to(available / d.name)
    chown_to(theirs, service_user, 0o755)
    (tmp_path / "no-proc").mkdir()
    pattern = discover_module.SERVICE_CONFIGS["nginx"].pattern
    report = discover(
        parse_config("version: 1\n"),
        str(lineages.config_dir),
        [NAME],
        roots=(),
        proc_net=str(tmp_path / "no-proc"),
        service_configs={
            "nginx": discover_module.ServiceConfig((f"{roots}/*", f"{theirs}/*"), pattern)
        },
    )
    assert [f.via for f in report.finds] == [f"nginx: {roots}/site:1"]
