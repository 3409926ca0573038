"""STARTTLS endpoints of real databases and a directory: PostgreSQL 15, MariaDB, OpenLDAP.

One daemon of each per module, each reading TLS files that certbot-fanout placed (with the owner
and mode the daemon needs). For each dialect: certbot-fanout's probe and ``openssl s_client
-starttls`` agree on the served leaf, which is the lineage's; after a renewal, ``certbot-fanout
deploy`` (the real CLI) places, reloads the way an admin would (``pg_ctl reload``, ``FLUSH SSL``,
a cn=config modify) and proves the new certificate and its chain are served. And the issue's
acceptance test: PostgreSQL refusing a 0644 key on reload without a word is caught (exit 1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
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
from tests.support.daemons_db import (
    INITDB_BIN,
    LDAPMODIFY_BIN,
    MARIADB_BIN,
    MARIADB_INSTALL_DB_BIN,
    MARIADBD_BIN,
    PG_CTL_BIN,
    RUNUSER_BIN,
    SLAPADD_BIN,
    SLAPD_BIN,
    MariaDB,
    PostgreSQL,
    Slapd,
    missing_binaries,
)
from tests.support.integration import StarttlsService, deploy_with_map, pem_serial
from tests.support.lineages import LineageFactory
from tests.support.proc import public_dir
from tests.support.stack import OPENSSL_BIN, openssl_fingerprint, pem_fingerprint

PROBE_TIMEOUT = 10.0


@dataclass(kw_only=True)
class Service(StarttlsService):
    """One running daemon, the lineage it serves, and how certbot-fanout deploys to it."""

    dialect: Dialect
    daemon: PostgreSQL | MariaDB | Slapd

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def endpoints(self) -> dict[Dialect, int]:
        return {self.dialect: self.port}

    def reload_argv(self) -> list[str]:
        return self.daemon.reload_argv()

    def deploy(
        self, workdir: Path, consumer_map: dict[str, Any]
    ) -> subprocess.CompletedProcess[str]:
        """``certbot-fanout deploy`` for this lineage with ``consumer_map`` (JSON is YAML)."""
        return deploy_with_map(self.fanout, self.live, workdir, consumer_map)

    def served_by_openssl(self) -> str:
        return openssl_fingerprint(self.port, self.cert_name, self.dialect.value)


def _require(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runs database daemons as their service accounts")
    if missing := missing_binaries(*binaries, OPENSSL_BIN, RUNUSER_BIN):
        pytest.skip(f"not installed: {', '.join(missing)}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def db_lineages(ca: ThrowawayCA, tmp_path_factory: pytest.TempPathFactory) -> LineageFactory:
    """Lineages that live as long as the module's daemons."""
    return LineageFactory(ca, tmp_path_factory.mktemp("letsencrypt"))


ServiceFactory = Callable[..., Service]


@pytest.fixture(scope="module")
def make_service(
    fanout_bin: Path,
    db_lineages: LineageFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceFactory]:
    """Issue a lineage, let certbot-fanout place its files (files-only map), start the daemon
    on them. Every daemon is stopped by PID and its directory removed when the module ends."""
    started: list[tuple[PostgreSQL | MariaDB | Slapd, Path]] = []

    def make(
        consumer: str,
        dialect: Dialect,
        cert_name: str,
        daemon_class: type[PostgreSQL | MariaDB | Slapd],
        owner: str,
    ) -> Service:
        base = public_dir(f"certbot-fanout-{consumer}-")
        tls = base / "tls"
        tls.mkdir(mode=0o755)
        cert, key = tls / "fullchain.pem", tls / "privkey.pem"
        daemon = daemon_class(base / "daemon", cert, key)
        started.append((daemon, base))
        live, issued = db_lineages.issue(cert_name)
        service = Service(
            consumer=consumer,
            dialect=dialect,
            cert_name=cert_name,
            daemon=daemon,
            live=live,
            issued=issued,
            files=[
                {"path": str(cert), "content": "fullchain", "mode": "0644"},
                {
                    "path": str(key),
                    "content": "privkey",
                    "owner": owner,
                    "group": owner,
                    "mode": "0600",
                },
            ],
            lineages=db_lineages,
            fanout=fanout_bin,
        )
        placed = service.deploy(
            tmp_path_factory.mktemp(f"{consumer}-initial"), service.consumer_map(deploy=False)
        )
        assert placed.returncode == 0, explain(placed)
        assert key.stat().st_mode & 0o777 == 0o600
        if isinstance(daemon, PostgreSQL):
            daemon.initdb()
        elif isinstance(daemon, MariaDB):
            daemon.install_db()
        else:
            daemon.configure()
        daemon.start()
        return service

    try:
        yield make
    finally:
        for daemon, base in reversed(started):
            try:
                daemon.stop()
            finally:
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_service(make_service: ServiceFactory) -> Service:
    _require(INITDB_BIN, PG_CTL_BIN)
    return make_service("postgres-db", Dialect.POSTGRES, "pg.fanout.test", PostgreSQL, "postgres")


@pytest.fixture(scope="module")
def mariadb_service(make_service: ServiceFactory) -> Service:
    _require(MARIADBD_BIN, MARIADB_INSTALL_DB_BIN, MARIADB_BIN)
    return make_service("mariadb", Dialect.MYSQL, "sql.fanout.test", MariaDB, "mysql")


@pytest.fixture(scope="module")
def slapd_service(make_service: ServiceFactory) -> Service:
    _require(SLAPD_BIN, SLAPADD_BIN, LDAPMODIFY_BIN)
    return make_service("slapd", Dialect.LDAP, "ldap.fanout.test", Slapd, "openldap")


SERVICES = ["postgres_service", "mariadb_service", "slapd_service"]


@pytest.fixture(params=SERVICES, ids=["postgres", "mysql", "ldap"])
def service(request: pytest.FixtureRequest) -> Service:
    started: Service = request.getfixturevalue(request.param)
    return started


# --------------------------------------------------------------------------- tests


def test_probe_agrees_with_openssl(service: Service) -> None:
    """certbot-fanout's STARTTLS probe, openssl s_client -starttls and the lineage's cert.pem
    name the same leaf; the daemon sends fullchain (leaf, then chain.pem)."""
    served = fetch_served(
        "127.0.0.1", service.port, service.cert_name, PROBE_TIMEOUT, service.dialect
    )
    expected = pem_fingerprint(service.issued.cert_pem)
    assert hashlib.sha256(served.leaf).hexdigest() == expected
    assert service.served_by_openssl() == expected
    intermediate = ssl.PEM_cert_to_DER_cert(service.issued.chain_pem.decode())
    assert served.chain[:2] == (served.leaf, intermediate)


def test_deploy_after_renewal_serves_new_cert(service: Service, tmp_path: Path) -> None:
    """Renew, then the real CLI places the files, reloads the daemon, verifies over STARTTLS
    (leaf and chain): exit 0, and openssl s_client sees the new certificate."""
    old = pem_fingerprint(service.issued.cert_pem)
    assert service.served_by_openssl() == old
    new = pem_fingerprint(service.renew().cert_pem)
    assert new != old

    proc = service.deploy(tmp_path, service.consumer_map())

    assert proc.returncode == 0, explain(proc)
    assert service.served_by_openssl() == new
    served = fetch_served(
        "127.0.0.1", service.port, service.cert_name, PROBE_TIMEOUT, service.dialect
    )
    intermediate = ssl.PEM_cert_to_DER_cert(service.issued.chain_pem.decode())
    assert served.chain[:2] == (served.leaf, intermediate)


def test_postgres_silently_refusing_a_0644_key_is_caught(
    postgres_service: Service, tmp_path: Path
) -> None:
    """The issue's acceptance test. A key placed 0644 (owner postgres): ``pg_ctl reload``
    exits 0, PostgreSQL keeps the old certificate and only logs it; deploy must exit 1 naming
    the consumer and the old serial. Placed 0600 instead: exit 0, the new cert is served."""
    pg = postgres_service
    assert isinstance(pg.daemon, PostgreSQL)
    old_pem = pg.issued.cert_pem
    old = pem_fingerprint(old_pem)
    assert pg.served_by_openssl() == old
    new = pem_fingerprint(pg.renew().cert_pem)
    cert_spec, key_spec = pg.files
    loose_key = {**key_spec, "mode": "0644"}

    refused = pg.deploy(
        tmp_path / "0644",
        pg.consumer_map(files=[cert_spec, loose_key], verify_timeout=3),
    )

    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, explain(refused)
    assert pg.consumer in output
    assert "serves another certificate" in output
    assert f"serial {pem_serial(old_pem)}," in output
    assert pg.served_by_openssl() == old
    assert "was not reloaded" in pg.daemon.log()

    fixed = pg.deploy(tmp_path / "0600", pg.consumer_map())

    assert fixed.returncode == 0, explain(fixed)
    assert pg.served_by_openssl() == new
