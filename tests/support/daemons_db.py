"""Real database and directory daemons on loopback: PostgreSQL 15, MariaDB, OpenLDAP slapd.

Each one runs from its own directory under a base that every user can traverse (the service
accounts postgres, mysql and openldap must reach their files), on a free 127.0.0.1 port picked
at start, under its own service account, and is stopped by PID. No system configuration is read
or written: no /etc/postgresql, no /etc/mysql, no /etc/ldap, no systemd.

Stand-alone apart from the process helpers of ``proc`` and the runner of ``cli``: no pytest, no
project imports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.parse
from pathlib import Path

from .cli import run
from .proc import (
    ChildDaemon,
    accepts,
    account,
    chown_to,
    find_binary,
    free_port,
    owned_dir,
    public_dir,
    read_pid,
    retry_if_port_taken,
    spawn,
    tail,
    terminate,
    wait_port_free,
    wait_ports,
    wait_until,
)

__all__ = [
    "INITDB_BIN",
    "LDAPMODIFY_BIN",
    "MARIADBD_BIN",
    "MARIADB_BIN",
    "MARIADB_INSTALL_DB_BIN",
    "PG_BINDIR",
    "PG_CTL_BIN",
    "RUNUSER_BIN",
    "SLAPADD_BIN",
    "SLAPD_BIN",
    "MariaDB",
    "PostgreSQL",
    "Slapd",
    "missing_binaries",
    "public_dir",
]

PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
PG_CTL_BIN = str(PG_BINDIR / "pg_ctl")
INITDB_BIN = str(PG_BINDIR / "initdb")
MARIADBD_BIN = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB_BIN = "/usr/bin/mariadb-install-db"
MARIADB_BIN = "/usr/bin/mariadb"
SLAPD_BIN = "/usr/sbin/slapd"
SLAPADD_BIN = "/usr/sbin/slapadd"
LDAPMODIFY_BIN = "/usr/bin/ldapmodify"
RUNUSER_BIN = find_binary("runuser", "/usr/sbin/runuser")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def missing_binaries(*paths: str) -> list[str]:
    """The paths among ``paths`` that are not executable files."""
    return [p for p in paths if not os.access(p, os.X_OK)]


# --------------------------------------------------------------------------- PostgreSQL


class PostgreSQL:
    """A PostgreSQL 15 cluster of its own: initdb as postgres, ``pg_ctl start``, ssl = on with
    ssl_cert_file / ssl_key_file at the given paths (which must exist before start)."""

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        self.base = base
        self.cert_file = cert_file
        self.key_file = key_file
        self.data = base / "data"
        self.run_dir = base / "run"
        self.log_path = self.run_dir / "postgresql.log"
        self.port = 0
        self._pid: int | None = None

    def _as_postgres(self, *argv: str) -> list[str]:
        return [RUNUSER_BIN, "-u", "postgres", "--", *argv]

    def reload_argv(self) -> list[str]:
        """``pg_ctl -D DATA reload`` as postgres (SIGHUP to the postmaster)."""
        return self._as_postgres(PG_CTL_BIN, "-D", str(self.data), "reload")

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError("postgres not running")
        return self._pid

    def initdb(self) -> None:
        postgres = account("postgres")
        owned_dir(self.data, postgres)
        owned_dir(self.run_dir, postgres, 0o755)
        run(
            self._as_postgres(
                INITDB_BIN, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
            ),
            timeout=START_TIMEOUT,
            check=True,
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\ninclude = 'fanout-test.conf'\n")

    def _write_settings(self) -> None:
        settings = self.data / "fanout-test.conf"
        settings.write_text(
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.run_dir}'\n"
            "ssl = on\n"
            f"ssl_cert_file = '{self.cert_file}'\n"
            f"ssl_key_file = '{self.key_file}'\n"
            "fsync = off\n"
            "max_connections = 10\n"
            "shared_buffers = 16MB\n"
        )
        chown_to(settings, account("postgres"))

    def start(self) -> None:
        """Start the postmaster (``pg_ctl -w start``) and remember its PID."""
        retry_if_port_taken(
            self._start_once, self.stop, lambda: "could not bind" in tail(self.log_path, 10)
        )

    def _start_once(self) -> None:
        self.port = free_port()
        self._write_settings()
        start = self._as_postgres(
            PG_CTL_BIN, "-D", str(self.data), "-l", str(self.log_path), "-w", "start"
        )
        rc = subprocess.call(
            start,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=START_TIMEOUT,
        )
        self._pid = read_pid(self.data / "postmaster.pid") if rc == 0 else None
        if self._pid is None:
            raise RuntimeError(f"postgres failed to start (exit {rc}):\n{tail(self.log_path)}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster); the backends go with it. Idempotent."""
        pid, self._pid = self._pid, None
        if pid is not None:
            terminate(pid, signal.SIGINT, STOP_TIMEOUT)
            wait_port_free(self.port, STOP_TIMEOUT)


# --------------------------------------------------------------------------- foreground


class _ForegroundDaemon(ChildDaemon):
    """A daemon under ``base`` that runs as our child, reads ``cert_file`` / ``key_file`` and
    listens on a port picked at every start."""

    stop_timeout = STOP_TIMEOUT

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        self.base = base
        self.cert_file = cert_file
        self.key_file = key_file
        self.run_dir = base / "run"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then reap our child and wait for the port. Idempotent."""
        super().stop()
        wait_port_free(self.port, STOP_TIMEOUT)


# --------------------------------------------------------------------------- MariaDB


class MariaDB(_ForegroundDaemon):
    """mariadbd with its own datadir (mariadb-install-db), socket, pid file and error log under
    ``base``, running as mysql, TLS from --ssl-cert / --ssl-key."""

    label = "mariadbd"

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        super().__init__(base, cert_file, key_file)
        self.data = base / "data"
        self.socket = self.run_dir / "mysqld.sock"
        self.pid_file = self.run_dir / "mysqld.pid"
        self.log_path = self.run_dir / "error.log"

    def reload_argv(self) -> list[str]:
        """``FLUSH SSL`` through the client over the unix socket, as root (unix_socket auth)."""
        return [
            MARIADB_BIN,
            "--no-defaults",
            "--protocol=socket",
            f"--socket={self.socket}",
            "--user=root",
            "--batch",
            "--execute=FLUSH SSL",
        ]

    def install_db(self) -> None:
        mysql = account("mysql")
        owned_dir(self.data, mysql)
        owned_dir(self.run_dir, mysql, 0o755)
        run(
            [
                MARIADB_INSTALL_DB_BIN,
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.data}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            timeout=120,
            check=True,
        )

    def start(self) -> None:
        """Start mariadbd in the foreground (our child) and wait until it accepts on the port."""
        retry_if_port_taken(
            self._start_once, self.stop, lambda: "Address already in use" in tail(self.log_path)
        )

    def _start_once(self) -> None:
        self.port = free_port()
        self.log_path.unlink(missing_ok=True)
        self._proc = spawn(
            [
                MARIADBD_BIN,
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--pid-file={self.pid_file}",
                f"--log-error={self.log_path}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--ssl-cert={self.cert_file}",
                f"--ssl-key={self.key_file}",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--performance-schema=OFF",
            ],
            None,
        )
        wait_until(
            f"mariadbd on port {self.port}",
            lambda: self.socket.exists() and accepts(self.port),
            lambda: self.running,
            lambda: tail(self.log_path),
            START_TIMEOUT,
        )


# --------------------------------------------------------------------------- slapd


class Slapd(_ForegroundDaemon):
    """OpenLDAP slapd with a minimal cn=config (slapd.d made by slapadd) holding only the TLS
    settings and an access rule that lets root manage cn=config over ldapi:// with SASL
    EXTERNAL; listens on ldap://127.0.0.1:PORT/ (StartTLS) and a private ldapi socket; runs
    as openldap (slapd -u/-g drops root after binding)."""

    label = "slapd"

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        super().__init__(base, cert_file, key_file)
        self.config_dir = base / "slapd.d"
        self.ldapi_path = self.run_dir / "ldapi"
        self.log_path = base / "slapd.log"
        self.reload_ldif = base / "reload-tls.ldif"

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.ldapi_path), safe="")

    def reload_argv(self) -> list[str]:
        """Replace olcTLSCertificateFile/KeyFile in cn=config with the same values: slapd
        builds a new TLS context from the files, no restart (ldapmodify over ldapi, EXTERNAL)."""
        return [
            LDAPMODIFY_BIN,
            "-Q",
            "-Y",
            "EXTERNAL",
            "-H",
            self.ldapi_url,
            "-f",
            str(self.reload_ldif),
        ]

    def configure(self) -> None:
        """Write the cn=config LDIF, load it with slapadd, hand the result to openldap."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir()
        openldap = account("openldap")
        owned_dir(self.run_dir, openldap, 0o755)
        peercred_root = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"
        ldif = self.base / "config.ldif"
        ldif.write_text(
            f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.run_dir / "slapd.pid"}
olcArgsFile: {self.run_dir / "slapd.args"}
olcTLSCertificateFile: {self.cert_file}
olcTLSCertificateKeyFile: {self.key_file}

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact={peercred_root} manage by * none
"""
        )
        run(
            [SLAPADD_BIN, "-n0", "-F", str(self.config_dir), "-l", str(ldif)],
            timeout=START_TIMEOUT,
            check=True,
        )
        for path in (self.config_dir, *self.config_dir.rglob("*")):
            chown_to(path, openldap)
        self.reload_ldif.write_text(
            f"""dn: cn=config
changetype: modify
replace: olcTLSCertificateFile
olcTLSCertificateFile: {self.cert_file}
-
replace: olcTLSCertificateKeyFile
olcTLSCertificateKeyFile: {self.key_file}
-
"""
        )

    def start(self) -> None:
        """Start slapd in the foreground (``-d 0``: our child) and wait for the port."""
        retry_if_port_taken(self._start_once, self.stop, lambda: "errno=98" in tail(self.log_path))

    def _start_once(self) -> None:
        self.port = free_port()
        self.ldapi_path.unlink(missing_ok=True)
        self._proc = spawn(
            [
                SLAPD_BIN,
                "-h",
                f"ldap://127.0.0.1:{self.port}/ {self.ldapi_url}",
                "-F",
                str(self.config_dir),
                "-u",
                "openldap",
                "-g",
                "openldap",
                "-d",
                "0",
            ],
            self.log_path,
        )
        wait_ports(
            f"slapd on port {self.port}",
            {"ldap": self.port},
            lambda: self.running,
            lambda: tail(self.log_path),
            START_TIMEOUT,
        )
