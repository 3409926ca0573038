"""STARTTLS endpoints of real mail and file-transfer daemons: Dovecot, Postfix, vsftpd, and NNTP.

One daemon of each per module, on loopback ports chosen at run time, each reading TLS files that
certbot-fanout placed: Dovecot (imap, pop3, sieve, lmtp on one master), Postfix (smtp, one
``[privkey, fullchain]`` file), vsftpd (ftp: explicit FTPS) and, since no real NNTP server is
cheap to run, the minimal NNTP STARTTLS server of ``daemons_mail``. For each dialect:
certbot-fanout's probe and ``openssl s_client -starttls`` agree on the served leaf and chain,
which are the lineage's; after a renewal, ``certbot-fanout deploy`` (the real CLI) places the
files, reloads the way an admin would (``doveadm reload``, ``postfix reload``, a vsftpd restart,
SIGHUP) and proves every endpoint serves the new certificate and its chain. And vsftpd, which
keeps its old certificate on SIGHUP, is caught (exit 1) and then repaired by a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout._pki import ThrowawayCA
from certbot_fanout.model import Dialect
from certbot_fanout.probe import fetch_served
from tests.support.cli import explain
from tests.support.daemons_mail import (
    DOVEADM_BIN,
    DOVECOT_BIN,
    POSTFIX_BIN,
    VSFTPD_BIN,
    Dovecot,
    NntpServer,
    Postfix,
    Vsftpd,
)
from tests.support.integration import StarttlsService, deploy_with_map, pem_der, pem_serial
from tests.support.lineages import LineageFactory
from tests.support.proc import public_tempdir
from tests.support.stack import KILL_BIN, OPENSSL_BIN, openssl_served, pem_fingerprint

PROBE_TIMEOUT = 10.0

Daemon = Dovecot | Postfix | Vsftpd | NntpServer

# What each needs beyond its main binary: Dovecot's protocol services come in separate packages.
_DOVECOT_PARTS = {
    "/usr/lib/dovecot/imap-login": "dovecot-imapd",
    "/usr/lib/dovecot/pop3-login": "dovecot-pop3d",
    "/usr/lib/dovecot/managesieve-login": "dovecot-managesieved",
    "/usr/lib/dovecot/lmtp": "dovecot-lmtpd",
}


def _require(root_reason: str, binaries: dict[str, str]) -> None:
    """Skip unless root and every binary (path -> Debian package) is installed."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {root_reason}")
    needed = {OPENSSL_BIN: "openssl", KILL_BIN: "procps", **binaries}
    missing = sorted({pkg for path, pkg in needed.items() if not os.access(path, os.X_OK)})
    if missing:
        pytest.skip(f"not installed (Debian packages): {' '.join(missing)}")


@dataclass(kw_only=True)
class Service(StarttlsService):
    """One running daemon, the lineage it serves, and how certbot-fanout deploys to it."""

    daemon: Daemon

    @property
    def endpoints(self) -> dict[Dialect, int]:
        d = self.daemon
        if isinstance(d, Dovecot):
            return {Dialect(proto): port for proto, port in d.ports.items()}
        if isinstance(d, Postfix):
            return {Dialect.SMTP: d.port}
        if isinstance(d, Vsftpd):
            return {Dialect.FTP: d.port}
        return {Dialect.NNTP: d.port}

    def reload_argv(self) -> list[str]:
        """How an admin reloads it: ``doveadm reload``, ``postfix reload``, SIGHUP; vsftpd
        reads its certificate only at start (SIGHUP keeps the old one): it is restarted."""
        d = self.daemon
        return d.restart_argv() if isinstance(d, Vsftpd) else d.reload_argv()

    def test_argv(self) -> list[str] | None:
        return self.daemon.check_argv() if isinstance(self.daemon, Postfix) else None

    def deploy(
        self, workdir: Path, consumer_map: dict[str, Any]
    ) -> subprocess.CompletedProcess[str]:
        """``certbot-fanout deploy --json`` for this lineage with ``consumer_map`` (JSON is
        YAML); lock and state files stay in ``workdir``."""
        state = str(workdir / "state.json")
        return deploy_with_map(
            self.fanout, self.live, workdir, consumer_map, "--state-file", state, "--json"
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the lineage's current cert.pem."""
        return pem_fingerprint(self.issued.cert_pem)

    @property
    def fullchain_der(self) -> tuple[bytes, bytes]:
        return pem_der(self.issued.cert_pem), pem_der(self.issued.chain_pem)

    def seen_by_openssl(self, dialect: Dialect) -> tuple[str, tuple[bytes, ...]]:
        seen = openssl_served(
            self.endpoints[dialect], self.cert_name, dialect.value, showcerts=True
        )
        return seen.fingerprint, seen.chain


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report\n{explain(proc)}") from None
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mail_base() -> Iterator[Path]:
    """The module's directory: traversable by every user (Dovecot's login processes and
    Postfix's daemons run as their own accounts); removed when the module ends."""
    with public_tempdir("certbot-fanout-mail-") as path:
        yield path


@pytest.fixture(scope="module")
def mail_lineages(ca: ThrowawayCA, mail_base: Path) -> LineageFactory:
    """Lineages that live as long as the module's daemons."""
    config_dir = mail_base / "letsencrypt"
    config_dir.mkdir()
    return LineageFactory(ca, config_dir)


ServiceFactory = Callable[[str, str, list[dict[str, Any]], Daemon], Service]


@pytest.fixture(scope="module")
def make_service(
    request: pytest.FixtureRequest,
    fanout_bin: Path,
    mail_lineages: LineageFactory,
) -> ServiceFactory:
    """Issue a lineage, let certbot-fanout place the daemon's files (files-only map), start
    the daemon on them; a finaliser stops it by PID when the module ends."""

    def make(consumer: str, cert_name: str, files: list[dict[str, Any]], daemon: Daemon) -> Service:
        live, issued = mail_lineages.issue(cert_name)
        service = Service(
            consumer=consumer,
            cert_name=cert_name,
            daemon=daemon,
            live=live,
            issued=issued,
            files=files,
            lineages=mail_lineages,
            fanout=fanout_bin,
        )
        placed = service.deploy(daemon.workdir / "initial", service.consumer_map(deploy=False))
        assert placed.returncode == 0, explain(placed)
        request.addfinalizer(daemon.stop)
        daemon.start()
        return service

    return make


def _tls_dir(mail_base: Path, consumer: str) -> Path:
    tls = mail_base / consumer / "tls"
    tls.mkdir(parents=True, mode=0o755)
    return tls


def _cert_and_key(tls: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(tls / "fullchain.pem"), "content": "fullchain", "mode": "0644"},
        {"path": str(tls / "privkey.pem"), "content": "privkey", "mode": "0600"},
    ]


@pytest.fixture(scope="module")
def dovecot(make_service: ServiceFactory, mail_base: Path) -> Service:
    _require(
        "runs Dovecot, whose login processes drop to the dovenull account",
        {DOVECOT_BIN: "dovecot-core", DOVEADM_BIN: "dovecot-core", **_DOVECOT_PARTS},
    )
    tls = _tls_dir(mail_base, "dovecot")
    daemon = Dovecot(mail_base / "dovecot" / "daemon", tls / "fullchain.pem", tls / "privkey.pem")
    return make_service("dovecot", "imap.fanout.test", _cert_and_key(tls), daemon)


@pytest.fixture(scope="module")
def postfix(make_service: ServiceFactory, mail_base: Path) -> Service:
    _require("runs Postfix, whose daemons run as the postfix account", {POSTFIX_BIN: "postfix"})
    tls = _tls_dir(mail_base, "postfix")
    # Postfix wants the key first, then the certificate, then the chain: one file (0600).
    files = [{"path": str(tls / "smtpd.pem"), "content": ["privkey", "fullchain"]}]
    daemon = Postfix(mail_base / "postfix" / "daemon", tls / "smtpd.pem", "smtp.fanout.test")
    return make_service("postfix", "smtp.fanout.test", files, daemon)


@pytest.fixture(scope="module")
def vsftpd(make_service: ServiceFactory, mail_base: Path) -> Service:
    _require("runs vsftpd, which binds and drops privileges", {VSFTPD_BIN: "vsftpd"})
    tls = _tls_dir(mail_base, "vsftpd")
    daemon = Vsftpd(mail_base / "vsftpd" / "daemon", tls / "fullchain.pem", tls / "privkey.pem")
    return make_service("vsftpd", "ftp.fanout.test", _cert_and_key(tls), daemon)


@pytest.fixture(scope="module")
def nntp(make_service: ServiceFactory, mail_base: Path) -> Service:
    _require("places root-owned 0600 keys", {})
    tls = _tls_dir(mail_base, "news")
    daemon = NntpServer(mail_base / "news" / "daemon", tls / "fullchain.pem", tls / "privkey.pem")
    return make_service("news", "news.fanout.test", _cert_and_key(tls), daemon)


DIALECTS = [
    ("dovecot", Dialect.IMAP),
    ("dovecot", Dialect.POP3),
    ("dovecot", Dialect.SIEVE),
    ("dovecot", Dialect.LMTP),
    ("postfix", Dialect.SMTP),
    ("vsftpd", Dialect.FTP),
    ("nntp", Dialect.NNTP),
]
SERVICES = ["dovecot", "postfix", "vsftpd", "nntp"]


@pytest.fixture(params=SERVICES)
def service(request: pytest.FixtureRequest) -> Service:
    started: Service = request.getfixturevalue(request.param)
    return started


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("service_name", "dialect"), DIALECTS, ids=[d.value for _, d in DIALECTS])
def test_probe_agrees_with_openssl(
    request: pytest.FixtureRequest, service_name: str, dialect: Dialect
) -> None:
    """certbot-fanout's STARTTLS probe, ``openssl s_client -starttls`` and the lineage's
    cert.pem name the same leaf; the daemon sends fullchain (leaf, then chain.pem)."""
    service: Service = request.getfixturevalue(service_name)
    port = service.endpoints[dialect]

    served = fetch_served("127.0.0.1", port, service.cert_name, PROBE_TIMEOUT, dialect)
    by_openssl, openssl_chain = service.seen_by_openssl(dialect)

    assert hashlib.sha256(served.leaf).hexdigest() == by_openssl == service.fingerprint
    assert served.chain == openssl_chain == service.fullchain_der


def test_deploy_after_renewal_serves_new_cert(service: Service, tmp_path: Path) -> None:
    """Renew, then the real CLI places the files, (tests,) reloads the daemon and verifies every
    endpoint over STARTTLS, leaf and chain: exit 0; openssl s_client sees the new certificate
    on every dialect. A reload keeps the daemon's PID; only vsftpd is restarted."""
    old = service.fingerprint
    pid = service.daemon.pid
    for dialect in service.endpoints:
        assert service.seen_by_openssl(dialect)[0] == old
    new = pem_fingerprint(service.renew().cert_pem)
    assert new != old

    proc = service.deploy(tmp_path, service.consumer_map())

    assert proc.returncode == 0, explain(proc)
    (consumer,) = _report(proc)["consumers"]
    assert consumer["outcome"] == "ok"
    assert consumer["reloaded"] is True
    assert consumer["tested"] is bool(service.test_argv())
    assert all(f["changed"] for f in consumer["files"])
    verified = {(e["port"], e["ok"]) for e in consumer["endpoints"]}
    assert verified == {(port, True) for port in service.endpoints.values()}
    for dialect in service.endpoints:
        assert service.seen_by_openssl(dialect) == (new, service.fullchain_der), dialect
    if isinstance(service.daemon, Vsftpd):
        assert service.daemon.pid != pid
    else:
        assert service.daemon.pid == pid


def test_vsftpd_sighup_keeps_the_old_cert_and_is_caught(vsftpd: Service, tmp_path: Path) -> None:
    """vsftpd re-reads vsftpd.conf on SIGHUP but keeps the certificate it loaded at start. A
    map that 'reloads' it with SIGHUP: the reload exits 0, the old certificate stays, and
    deploy exits 1 naming the old serial. With the map fixed to restart it, the next deploy
    (files already current) finds the stale endpoint, restarts, and exits 0."""
    daemon = vsftpd.daemon
    assert isinstance(daemon, Vsftpd)
    old_pem = vsftpd.issued.cert_pem
    pid = daemon.pid
    new = pem_fingerprint(vsftpd.renew().cert_pem)

    hup = vsftpd.deploy(
        tmp_path / "sighup", vsftpd.consumer_map(reload=daemon.sighup_argv(), verify_timeout=3)
    )

    assert hup.returncode == 1, explain(hup)
    (consumer,) = _report(hup)["consumers"]
    assert consumer["reloaded"] is True
    assert consumer["failed_stage"] == "verify"
    assert f"serial {pem_serial(old_pem)}," in consumer["error"]
    assert daemon.pid == pid
    assert vsftpd.seen_by_openssl(Dialect.FTP)[0] == pem_fingerprint(old_pem)

    fixed = vsftpd.deploy(tmp_path / "restart", vsftpd.consumer_map())

    assert fixed.returncode == 0, explain(fixed)
    (consumer,) = _report(fixed)["consumers"]
    assert not any(f["changed"] for f in consumer["files"])
    assert "not serving the current certificate" in consumer["reload_reason"]
    assert daemon.pid != pid
    assert vsftpd.seen_by_openssl(Dialect.FTP) == (new, vsftpd.fullchain_der)
