"""A real Synapse (PyPI ``matrix-synapse``) with its own TLS federation listener on loopback.

Synapse lives in its own venv made from Debian's ``/usr/bin/python3`` (a venv of the pyenv
``python3`` cannot be run by another user), cached across runs in ``SYNAPSE_VENV`` and rebuilt
when missing, broken or made for another requirement. It runs in the foreground as an
unprivileged user and is stopped by PID.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from .cli import CommandFailed, run
from .proc import (
    Account,
    ChildDaemon,
    alive,
    chown_to,
    free_port,
    retry_if_port_taken,
    spawn,
    tail,
)
from .stack import served_fingerprint

__all__ = [
    "SYNAPSE_REQUIREMENT",
    "SYNAPSE_USER",
    "SYNAPSE_VENV",
    "Synapse",
    "SynapseVenvError",
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


class SynapseVenvError(RuntimeError):
    """The venv could not be built (no venv module, no index, failing install)."""


def clean_env() -> dict[str, str]:
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
    check = run([venv / "bin" / "python", "-c", _SMOKE_IMPORT], env=clean_env(), timeout=120)
    return check.returncode == 0


def _run_build_step(argv: list[str], what: str) -> None:
    try:
        run(argv, timeout=BUILD_TIMEOUT, env=clean_env(), umask=0o022, check=True)
    except subprocess.TimeoutExpired as exc:
        raise SynapseVenvError(f"{what} timed out after {BUILD_TIMEOUT:g} s") from exc
    except CommandFailed as exc:
        done = exc.result
        last = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise SynapseVenvError(f"{what} failed (exit {done.returncode}):\n{last}") from exc


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


class Synapse(ChildDaemon):
    """Synapse with one TLS listener (federation) on 127.0.0.1:port, reading
    ``cert_path`` / ``key_path``; config generated with --generate-config, sqlite."""

    label = "synapse"

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

    def reload_argv(self) -> list[str]:
        """``kill -HUP PID`` (``kill`` from PATH, as an admin's map would say): Synapse
        re-reads its certificate on SIGHUP."""
        return ["kill", "-HUP", str(self.pid)]

    def generate_config(self) -> None:
        """--generate-config as the service user, then the minimal changes for a TLS
        federation listener (a YAML edit of the generated file)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        chown_to(self.workdir, self.account, 0o750)
        run(
            [str(self.python), "-m", "synapse.app.homeserver", "--server-name", self.server_name,
             "--config-path", str(self.config_path), "--generate-config", "--report-stats=no"],
            timeout=120,
            cwd=self.workdir,
            env=clean_env(),
            user=self.account,
            check=True,
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
        retry_if_port_taken(
            self._start_once,
            self.stop,
            lambda: (
                "Address already in use" in tail(self.console_path, 60) + tail(self.log_path, 60)
            ),
            self._new_port,
        )

    def _new_port(self) -> None:
        self.port = free_port()
        self.write_config()

    def _start_once(self) -> None:
        self._proc = spawn(
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            self.console_path,
            append=False,
            cwd=self.workdir,
            env=clean_env(),
            user=self.account,
        )
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline and alive(self._proc.pid):
            try:
                served_fingerprint("127.0.0.1", self.port, self.server_name, timeout=2)
                return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(
            f"synapse not serving TLS on 127.0.0.1:{self.port} (exit={self._proc.poll()},"
            f" last error={last!r}); console:\n{tail(self.console_path)}\n"
            f"--- homeserver.log tail:\n{tail(self.log_path)}"
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
