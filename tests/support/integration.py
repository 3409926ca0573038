"""What the integration tests share beyond the daemons: the set-up steps (a binary or skip, a
Certbot cloned from a module's template, a service account), lineage files and their copies,
file states, ``certbot-fanout deploy`` with a map, consumer maps, a real nginx consumer whose
commands are counted, and the STARTTLS services of test_starttls_db / test_starttls_mail."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certbot_fanout._pki import Issued, ThrowawayCA
from certbot_fanout.lineage import serial_hex
from certbot_fanout.model import Dialect

from .cli import run
from .lineages import LineageFactory
from .maps import flow, write_map
from .proc import Account, ensure_account
from .stack import (
    Certbot,
    Nginx,
    children,
    file_fingerprint,
    served_fingerprint,
    settled_workers,
)

CERT_NAME = "web.fanout.test"
SH = "/bin/sh"


# --------------------------------------------------------------------------- set-up


def require_binary(path: str, what: str) -> None:
    """Skip the test unless ``path`` is an executable (``what`` names it in the reason)."""
    if not os.access(path, os.X_OK):
        pytest.skip(f"{what} not installed ({path} is not executable)")


def clone_certbot(template: Certbot, basedir: Path, extra_env: dict[str, str]) -> Certbot:
    """A Certbot with its own config/work/logs dirs holding a copy of the template's lineage
    and account; the absolute paths in renewal/*.conf are rewritten to the copy, so that
    `certbot renew` renews the copy. (Saves a ~2.4 s issuance per test.)"""
    clone = Certbot(template.pebble, basedir, extra_env=extra_env)
    shutil.copytree(template.config_dir, clone.config_dir, symlinks=True)
    old, new = f"{template.basedir}/", f"{clone.basedir}/"
    for conf in (clone.config_dir / "renewal").glob("*.conf"):
        text = conf.read_text()
        assert old in text, f"{conf} does not name {old}; certbot changed its layout?"
        conf.write_text(text.replace(old, new))
    return clone


def service_account(name: str) -> Iterator[Account]:
    """Yield the system user and group ``name``, created for the while (and removed after) if
    missing; skips the test when it is missing and cannot be created. For ``yield from``."""
    accounts = ensure_account(name)
    try:
        account = accounts.__enter__()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        yield account
    finally:
        accounts.__exit__(None, None, None)


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileState:
    data: bytes
    ino: int
    mtime_ns: int
    ctime_ns: int | None
    uid: int
    gid: int
    mode: int


def file_state(path: Path, *, ctime: bool = True) -> FileState:
    """Bytes, inode, mtime, (ctime,) owner and mode of ``path`` (not following a symlink)."""
    st = path.lstat()
    return FileState(
        path.read_bytes(), st.st_ino, st.st_mtime_ns, st.st_ctime_ns if ctime else None,
        st.st_uid, st.st_gid, st.st_mode & 0o7777,
    )  # fmt: skip


def write_copies(directory: Path, fullchain: bytes, key: bytes) -> tuple[Path, Path]:
    """fullchain.pem and privkey.pem (0600) with these bytes in ``directory`` (made)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert.write_bytes(fullchain)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    return cert, key_path


# --------------------------------------------------------------------------- lineages


def lineage_files(certbot: Certbot, name: str = CERT_NAME) -> tuple[bytes, bytes]:
    """(fullchain.pem, privkey.pem) of live/NAME."""
    live = certbot.lineage(name)
    return (live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes()


def lineage_fingerprint(certbot: Certbot, name: str = CERT_NAME) -> str:
    """SHA-256 of live/NAME/cert.pem."""
    return file_fingerprint(certbot.lineage(name) / "cert.pem")


def log_text(certbot: Certbot) -> str:
    """certbot's letsencrypt.log (certbot starts a new one at every run)."""
    return (certbot.logs_dir / "letsencrypt.log").read_text(errors="replace")


def renewal_params(certbot: Certbot, name: str = CERT_NAME) -> dict[str, str]:
    """The [renewalparams] of renewal/NAME.conf as strings."""
    text = (certbot.config_dir / "renewal" / f"{name}.conf").read_text()
    assert "[renewalparams]" in text, text
    section = text.split("[renewalparams]", 1)[1].split("\n[", 1)[0]
    params = {}
    for line in section.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            params[key.strip()] = value.strip()
    return params


def pem_der(pem: bytes) -> bytes:
    """DER of a one-certificate PEM."""
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def pem_serial(pem: bytes) -> str:
    """The serial as certbot-fanout (and ``openssl x509 -serial``) prints it."""
    return serial_hex(x509.load_pem_x509_certificate(pem).serial_number)


def self_made(ca: ThrowawayCA) -> tuple[bytes, bytes, str]:
    """(fullchain, key, fingerprint) of a certificate for CERT_NAME that Pebble never issued."""
    issued = ca.issue([CERT_NAME])
    return (
        issued.fullchain_pem,
        issued.key_pem,
        hashlib.sha256(pem_der(issued.cert_pem)).hexdigest(),
    )


# --------------------------------------------------------------------------- the CLI


def deploy_with_map(
    fanout: Path, live: Path, workdir: Path, consumer_map: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    """``certbot-fanout deploy --lineage LIVE`` plus ``args``, with ``consumer_map`` written to
    WORKDIR/consumers.yaml (JSON is YAML) and the lock file in ``workdir``."""
    config = write_map(workdir, consumer_map)
    return run(
        [
            str(fanout),
            "deploy",
            "--config",
            str(config),
            "--lineage",
            str(live),
            "--lock-file",
            str(workdir / "fanout.lock"),
            *args,
        ]
    )


@dataclass(kw_only=True)
class StarttlsService:
    """A daemon's STARTTLS endpoints serving a lineage from a LineageFactory, as one consumer
    of a map the real CLI deploys."""

    consumer: str
    cert_name: str
    live: Path
    issued: Issued
    files: list[dict[str, Any]]
    lineages: LineageFactory
    fanout: Path

    def renew(self) -> Issued:
        """Renew the lineage; the new certificate."""
        _, self.issued = self.lineages.renew(self.cert_name)
        return self.issued

    @property
    def endpoints(self) -> dict[Dialect, int]:
        raise NotImplementedError

    def reload_argv(self) -> list[str]:
        raise NotImplementedError

    def test_argv(self) -> list[str] | None:
        return None

    def consumer_map(
        self,
        *,
        deploy: bool = True,
        files: list[dict[str, Any]] | None = None,
        reload: list[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A version 1 consumer map for this service (verifying every endpoint over STARTTLS);
        without ``deploy``, files only."""
        consumer: dict[str, Any] = {"certificate": self.cert_name, "files": files or self.files}
        if deploy:
            if test := self.test_argv():
                consumer["test"] = test
            consumer["reload"] = reload or self.reload_argv()
            consumer["verify"] = [
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "server_name": self.cert_name,
                    "starttls": dialect.value,
                }
                for dialect, port in self.endpoints.items()
            ]
            consumer["verify_timeout"] = 20
        consumer.update(extra)
        return {"version": 1, "consumers": {self.consumer: consumer}}


def hook_command(fanout: Path, lock: Path) -> str:
    """What an admin would give certbot: the bare command, config from the environment."""
    return f"{shlex.quote(str(fanout))} --lock-file {shlex.quote(str(lock))}"


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The consumers of a ``deploy --json`` or ``status --json`` document by name."""
    consumers = doc["consumers"]
    assert isinstance(consumers, list), doc
    return {str(c["name"]): c for c in consumers}


# --------------------------------------------------------------------------- nginx consumer


def counted(counter: Path, word: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run through sh, appending ``word`` to ``counter`` first."""
    script = f"echo {word} >> {shlex.quote(str(counter))} && exec {shlex.join(argv)}"
    return [SH, "-c", script]


def events(counter: Path) -> list[str]:
    """The words ``counted`` commands appended to ``counter``, in order."""
    return counter.read_text().split() if counter.exists() else []


def nginx_serves(nginx: Nginx, server_name: str) -> str:
    """The leaf nginx serves once a reload has settled (one worker left)."""
    settled_workers(nginx.pid)
    return served_fingerprint("127.0.0.1", nginx.port, server_name)


@dataclass
class WebConsumer:
    """A real nginx reading its own root-owned copies of a lineage; its test and reload
    commands append 'test' / 'reload' to ``counter``."""

    name: str
    certificate: str
    nginx: Nginx
    cert: Path
    key: Path
    counter: Path
    reload: Sequence[str] | None = None  # default: nginx -s reload (counted)
    verify_timeout: float | None = 20  # None: the map's default

    @property
    def placed(self) -> tuple[Path, Path]:
        return self.cert, self.key

    def served(self) -> str:
        return nginx_serves(self.nginx, self.certificate)

    def events(self) -> list[str]:
        return events(self.counter)

    def drift_to(self, fullchain: bytes, key: bytes) -> None:
        """Overwrite the placed copies by hand and reload nginx, as a careless admin would."""
        self.cert.write_bytes(fullchain)
        self.key.write_bytes(key)
        before = frozenset(children(self.nginx.pid))
        run(self.nginx.reload_argv(), timeout=30, check=True)
        settled_workers(self.nginx.pid, replacing=before)

    def yaml(self) -> str:
        reload = self.reload or counted(self.counter, "reload", self.nginx.reload_argv())
        timeout = (
            "" if self.verify_timeout is None else f"    verify_timeout: {self.verify_timeout}\n"
        )
        return f"""\
  {self.name}:
    certificate: {self.certificate}
    files:
      - {{path: {flow(str(self.cert))}, content: fullchain, mode: "0644"}}
      - {{path: {flow(str(self.key))}, content: privkey, mode: "0600"}}
    test: {flow(counted(self.counter, "test", self.nginx.test_argv()))}
    reload: {flow(list(reload))}
    verify:
      - {{host: 127.0.0.1, port: {self.nginx.port}, server_name: {self.certificate}}}
{timeout}"""
