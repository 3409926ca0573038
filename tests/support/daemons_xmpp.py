"""A real Prosody (Debian package ``prosody``) on loopback for the XMPP STARTTLS tests.

Private config, data, pid file and log in a work directory every user can traverse; the daemon
runs in the foreground as the ``prosody`` user (no init system) and is stopped by PID.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .proc import (
    KILL_BIN,
    ChildDaemon,
    accepts,
    account,
    alive,
    chown_to,
    find_binary,
    free_port,
    read_pid,
    retry_if_port_taken,
    spawn,
    tail,
    wait_until,
)

__all__ = ["PROSODYCTL_BIN", "PROSODY_BIN", "PROSODY_USER", "Prosody"]

PROSODY_BIN = find_binary("prosody", "/usr/bin/prosody")
PROSODYCTL_BIN = find_binary("prosodyctl", "/usr/bin/prosodyctl")
PROSODY_USER = "prosody"

_BIND_FAILURE = "Failed to open server port"


def _lua(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Prosody(ChildDaemon):
    """Prosody with c2s (xmpp) and s2s (xmpp-server) on free 127.0.0.1 ports and one
    VirtualHost whose certificate and key are the given files."""

    label = "prosody"

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
        (self.workdir / "certs").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chown_to(self.data_dir, account(PROSODY_USER))
        retry_if_port_taken(
            self._start_once,
            self.stop,
            lambda: _BIND_FAILURE in tail(self.log_path, 200),
            self._new_ports,
        )

    def _new_ports(self) -> None:
        self.c2s_port, self.s2s_port = free_port(), free_port()

    def _start_once(self) -> None:
        self.write_config()
        self.log_path.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        proc = self._proc = spawn(
            [PROSODY_BIN, "--config", str(self.config_path), "-F"],
            self.console_path,
            append=False,
            cwd=self.data_dir,
            user=account(PROSODY_USER),
        )

        def ready() -> bool:
            listening = accepts(self.c2s_port) and accepts(self.s2s_port)
            own = read_pid(self.pid_file) == proc.pid  # not another process on those ports
            return listening and own and _BIND_FAILURE not in tail(self.log_path, 200)

        wait_until(
            f"prosody on c2s {self.c2s_port} / s2s {self.s2s_port}",
            ready,
            lambda: alive(proc.pid) and _BIND_FAILURE not in tail(self.log_path, 200),
            lambda: (
                f"console:\n{tail(self.console_path)}\n--- prosody.log tail:\n{tail(self.log_path)}"
            ),
        )

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
