"""A real Prosody (Debian package ``prosody``) on loopback for the XMPP STARTTLS tests.

Private config, data, pid file and log in a work directory every user can traverse; the daemon
runs in the foreground as the ``prosody`` user (no init system) and is stopped by PID.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from .stack import (
    KILL_BIN,
    START_TIMEOUT,
    STOP_TIMEOUT,
    _accepts,
    _alive,
    _find,
    _read_pid,
    _tail,
    _terminate,
    free_port,
)

__all__ = ["PROSODYCTL_BIN", "PROSODY_BIN", "PROSODY_USER", "Prosody", "openssl_fingerprint"]

PROSODY_BIN = _find("prosody", "/usr/bin/prosody")
PROSODYCTL_BIN = _find("prosodyctl", "/usr/bin/prosodyctl")
OPENSSL_BIN = _find("openssl", "/usr/bin/openssl")
PROSODY_USER = "prosody"

_PORT_RETRIES = 3
_BIND_FAILURE = "Failed to open server port"


def _lua(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Prosody:
    """Prosody with c2s (xmpp) and s2s (xmpp-server) on free 127.0.0.1 ports and one
    VirtualHost whose certificate and key are the given files."""

    def __init__(self, workdir: Path, vhost: str, cert_path: Path, key_path: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.vhost = vhost
        self.cert_path = Path(cert_path).resolve()
        self.key_path = Path(key_path).resolve()
        self.c2s_port = free_port()
        self.s2s_port = free_port()
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.data_dir = self.workdir / "data"
        self.pid_file = self.data_dir / "prosody.pid"
        self.log_path = self.data_dir / "prosody.log"
        self.console_path = self.workdir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("prosody not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reload_argv(self) -> list[str]:
        """``prosodyctl --config FILE reload``: SIGHUP to the PID in the configured pid file."""
        return [PROSODYCTL_BIN, "--config", str(self.config_path), "reload"]

    def hup_argv(self) -> list[str]:
        """``kill -HUP PID`` (no shell): what ``prosodyctl reload`` sends."""
        return [KILL_BIN, "-HUP", str(self.pid)]

    def write_config(self) -> None:
        w = self.workdir
        self.config_path.write_text(
            f"""-- certbot-fanout integration test: a private Prosody on loopback
pidfile = {_lua(str(self.pid_file))}
data_path = {_lua(str(self.data_dir))}
certificates = {_lua(str(w / "certs"))}
plugin_paths = {{ }}
modules_enabled = {{ "tls"; "saslauth"; "dialback"; "disco"; "posix"; }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
s2s_ports = {{ {self.s2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
component_ports = {{ }}
c2s_require_encryption = true
s2s_secure_auth = false
authentication = "internal_hashed"
storage = "internal"
log = {{ {{ levels = {{ min = "debug" }}; to = "file"; filename = {_lua(str(self.log_path))}; }} }}

VirtualHost {_lua(self.vhost)}
    ssl = {{
        certificate = {_lua(str(self.cert_path))};
        key = {_lua(str(self.key_path))};
    }}
"""
        )
        self.config_path.chmod(0o644)

    def start(self) -> None:
        """Start as the prosody user; wait until both ports accept connections."""
        if self._proc is not None:
            raise RuntimeError("prosody already running")
        account = pwd.getpwnam(PROSODY_USER)
        (self.workdir / "certs").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        for attempt in range(_PORT_RETRIES):
            self.write_config()
            try:
                self._start_once(account)
                return
            except RuntimeError:
                bind_failed = _BIND_FAILURE in _tail(self.log_path, 200)
                self.stop()
                if bind_failed and attempt + 1 < _PORT_RETRIES:
                    self.c2s_port, self.s2s_port = free_port(), free_port()
                    continue
                raise

    def _start_once(self, account: pwd.struct_passwd) -> None:
        self.log_path.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        with open(self.console_path, "wb") as console:  # a file: the daemon keeps it open
            self._proc = subprocess.Popen(
                [PROSODY_BIN, "--config", str(self.config_path), "-F"],
                cwd=self.data_dir,
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log = _tail(self.log_path, 200)
            ready = _accepts(self.c2s_port) and _accepts(self.s2s_port)
            if ready and _read_pid(self.pid_file) == self._proc.pid and _BIND_FAILURE not in log:
                return
            if _BIND_FAILURE in log or not _alive(self._proc.pid):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"prosody not ready on c2s {self.c2s_port} / s2s {self.s2s_port}"
            f" (exit={self._proc.poll()}); console:\n{_tail(self.console_path)}\n"
            f"--- prosody.log tail:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL) and reap it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _terminate(proc.pid)
        proc.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def __enter__(self) -> Prosody:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def openssl_fingerprint(
    port: int, name: str, starttls: str | None = None, host: str = "127.0.0.1"
) -> str:
    """SHA-256 hex (lower case, no colons) of the leaf that ``openssl s_client`` gets, with
    ``-starttls PROTO`` (and ``-xmpphost NAME`` for the XMPP dialects) when given."""
    argv = [OPENSSL_BIN, "s_client", "-connect", f"{host}:{port}", "-servername", name]
    if starttls is not None:
        argv += ["-starttls", starttls]
        if starttls.startswith("xmpp"):
            argv += ["-xmpphost", name]
    client = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
    )
    x509 = subprocess.run(
        [OPENSSL_BIN, "x509", "-noout", "-fingerprint", "-sha256"],
        input=client.stdout,
        capture_output=True,
        timeout=30,
        check=False,
    )
    out = x509.stdout.decode(errors="replace").strip()
    if x509.returncode != 0 or "=" not in out:
        raise AssertionError(
            f"openssl s_client {' '.join(argv[2:])} got no certificate (exit {client.returncode}):"
            f"\n{client.stderr.decode(errors='replace')[-2000:]}"
        )
    return out.split("=", 1)[1].replace(":", "").lower()
