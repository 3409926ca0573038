"""A real Synapse (PyPI ``matrix-synapse``) with its own TLS federation listener on loopback.

Synapse lives in its own venv made from Debian's ``/usr/bin/python3`` (a venv of the pyenv
``python3`` cannot be run by another user), cached across runs in ``SYNAPSE_VENV`` and rebuilt
when missing, broken or made for another requirement. It runs in the foreground as an
unprivileged user and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .stack import (
    STOP_TIMEOUT,
    _alive,
    _tail,
    _terminate,
    free_port,
    served_fingerprint,
)

__all__ = [
    "SYNAPSE_REQUIREMENT",
    "SYNAPSE_USER",
    "SYNAPSE_VENV",
    "Account",
    "Synapse",
    "SynapseVenvError",
    "ensure_account",
    "ensure_synapse_venv",
]

SYSTEM_PYTHON = Path("/usr/bin/python3")
SYNAPSE_VENV = Path(
    os.environ.get("CERTBOT_FANOUT_SYNAPSE_VENV", "/var/cache/certbot-fanout-tests/synapse-venv")
)
# Pinned so that every run (and CI) tests the same Synapse; the cache is rebuilt when it changes.
SYNAPSE_REQUIREMENT = os.environ.get(
    "CERTBOT_FANOUT_SYNAPSE_REQUIREMENT", "matrix-synapse==1.163.2"
)
SYNAPSE_USER = "fanout-synapse"

BUILD_TIMEOUT = 900.0
START_TIMEOUT = 90.0  # a cold import of Synapse takes a few seconds
_MARKER = ".certbot-fanout-complete"
# Synapse and its compiled parts (0.4 s; the whole homeserver import takes 1.6 s): what breaks
# when the system Python changes under the venv.
_SMOKE_IMPORT = "import synapse, synapse.synapse_rust, twisted.internet.ssl, nacl, pydantic, yaml"
_PORT_RETRIES = 3


class SynapseVenvError(RuntimeError):
    """The venv could not be built (no venv module, no index, failing install)."""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _venv_ok(venv: Path) -> bool:
    marker = venv / _MARKER
    try:
        if marker.read_text().strip() != SYNAPSE_REQUIREMENT:
            return False
    except OSError:
        return False
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _SMOKE_IMPORT],
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return check.returncode == 0


def _run_build_step(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            umask=0o022,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SynapseVenvError(f"{what} timed out after {BUILD_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise SynapseVenvError(f"{what} failed (exit {done.returncode}):\n{tail}")


def ensure_synapse_venv(venv: Path = SYNAPSE_VENV) -> Path:
    """The Python of a venv holding SYNAPSE_REQUIREMENT; built (~25 s, ~240 MB) if missing or
    broken. Concurrent callers wait on a lock next to the venv.

    Raises:
        SynapseVenvError: /usr/bin/python3 or its venv module is missing, or pip failed.
    """
    python = venv / "bin" / "python"
    if _venv_ok(venv):
        return python
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise SynapseVenvError(f"{SYSTEM_PYTHON} is missing (Debian package python3)")
    venv.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_ok(venv):  # another run built it while we waited
            return python
        shutil.rmtree(venv, ignore_errors=True)
        _run_build_step(
            [str(SYSTEM_PYTHON), "-m", "venv", str(venv)],
            f"{SYSTEM_PYTHON} -m venv (Debian package python3-venv)",
        )
        _run_build_step(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             SYNAPSE_REQUIREMENT],
            f"pip install {SYNAPSE_REQUIREMENT} into {venv}",
        )  # fmt: skip
        (venv / _MARKER).write_text(SYNAPSE_REQUIREMENT + "\n")
        venv.chmod(0o755)
        if not _venv_ok(venv):
            raise SynapseVenvError(f"{venv} was built but fails: python -c {_SMOKE_IMPORT!r}")
    return python


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def _account(name: str) -> Account | None:
    try:
        return Account(name, pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid)
    except KeyError:
        return None


@contextlib.contextmanager
def ensure_account(name: str = SYNAPSE_USER) -> Iterator[Account]:
    """A system user and group ``name``; created (and removed afterwards) if missing.
    Raises FileNotFoundError when it is missing and useradd is not available."""
    existing = _account(name)  # also one left by a killed run
    if existing is not None:
        yield existing
        return
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.access(useradd, os.X_OK):
        raise FileNotFoundError(f"no user {name} and no useradd to create it")
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "-s", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        created = _account(name)
        assert created is not None, f"useradd did not create {name}"
        yield created
    finally:
        userdel = shutil.which("userdel") or "/usr/sbin/userdel"
        subprocess.run([userdel, name], check=False, capture_output=True)


class Synapse:
    """Synapse with one TLS listener (federation) on 127.0.0.1:port, reading
    ``cert_path`` / ``key_path``; config generated with --generate-config, sqlite."""

    def __init__(
        self,
        python: Path,
        workdir: Path,
        account: Account,
        server_name: str,
        cert_path: Path,
        key_path: Path,
    ) -> None:
        self.python = python
        self.workdir = Path(workdir).resolve()
        self.account = account
        self.server_name = server_name
        self.cert_path = Path(cert_path).resolve()
        self.key_path = Path(key_path).resolve()
        self.port = free_port()
        self.config_path = self.workdir / "homeserver.yaml"
        self.log_path = self.workdir / "homeserver.log"
        self.console_path = self.workdir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("synapse not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reload_argv(self) -> list[str]:
        """``kill -HUP PID`` (``kill`` from PATH, as an admin's map would say): Synapse
        re-reads its certificate on SIGHUP."""
        return ["kill", "-HUP", str(self.pid)]

    def _as_user(self, argv: list[str], timeout: float) -> None:
        done = subprocess.run(
            argv,
            cwd=self.workdir,
            env=_clean_env(),
            user=self.account.uid,
            group=self.account.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def generate_config(self) -> None:
        """--generate-config as the service user, then the minimal changes for a TLS
        federation listener (a YAML edit of the generated file)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, self.account.uid, self.account.gid)
        self.workdir.chmod(0o750)
        self._as_user(
            [str(self.python), "-m", "synapse.app.homeserver", "--server-name", self.server_name,
             "--config-path", str(self.config_path), "--generate-config", "--report-stats=no"],
            120,
        )  # fmt: skip
        self.write_config()

    def write_config(self) -> None:
        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        config.update(
            listeners=[
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation"], "compress": False}],
                }
            ],
            tls_certificate_path=str(self.cert_path),
            tls_private_key_path=str(self.key_path),
            database={"name": "sqlite3", "args": {"database": str(self.workdir / "homeserver.db")}},
            trusted_key_servers=[],
            suppress_key_server_warning=True,
            report_stats=False,
            enable_metrics=False,
        )
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # The generated log config buffers INFO lines for up to 5 s; log straight to the file.
        log_config_path = Path(config["log_config"])
        log_config: dict[str, Any] = yaml.safe_load(log_config_path.read_text())
        log_config["root"]["handlers"] = ["file"]
        log_config_path.write_text(yaml.safe_dump(log_config, sort_keys=False))

    def start(self) -> None:
        """Start as the service user; wait until the listener completes a TLS handshake."""
        if self.running:
            raise RuntimeError("synapse already running")
        for attempt in range(_PORT_RETRIES):
            try:
                self._start_once()
                return
            except RuntimeError:
                console = _tail(self.console_path, 60) + _tail(self.log_path, 60)
                self.stop()
                if "Address already in use" in console and attempt + 1 < _PORT_RETRIES:
                    self.port = free_port()
                    self.write_config()
                    continue
                raise

    def _start_once(self) -> None:
        with open(self.console_path, "wb") as console:  # a file: the daemon keeps it open
            self._proc = subprocess.Popen(
                [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.workdir,
                env=_clean_env(),
                user=self.account.uid,
                group=self.account.gid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline and _alive(self._proc.pid):
            try:
                served_fingerprint("127.0.0.1", self.port, self.server_name, timeout=2)
                return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(
            f"synapse not serving TLS on 127.0.0.1:{self.port} (exit={self._proc.poll()},"
            f" last error={last!r}); console:\n{_tail(self.console_path)}\n"
            f"--- homeserver.log tail:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL) and reap it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _terminate(proc.pid)
        proc.wait(timeout=STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
