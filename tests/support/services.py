"""SIGHUP-reloading loopback TLS services (the demo's server process) for tests.

A consumer's reload appends to a marker file and sends the signal, so tests can count reloads.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Service:
    workdir: Path
    proc: subprocess.Popen[bytes]
    port: int
    marker: Path

    @property
    def cert(self) -> Path:
        return self.workdir / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.workdir / "privkey.pem"

    def reloads(self) -> int:
        return len(self.marker.read_text().splitlines()) if self.marker.exists() else 0

    def reload_argv(self) -> list[str]:
        return ["sh", "-c", f"echo reload >> {self.marker} && kill -HUP {self.proc.pid}"]


def start_service_fixture(tmp_path: Path) -> Iterator[Callable[[str, Path], Service]]:
    started: list[Service] = []

    def start(label: str, live: Path) -> Service:
        workdir = tmp_path / label
        workdir.mkdir()
        (workdir / "fullchain.pem").write_bytes((live / "fullchain.pem").read_bytes())
        (workdir / "privkey.pem").write_bytes((live / "privkey.pem").read_bytes())
        (workdir / "privkey.pem").chmod(0o600)
        port_file = workdir / "port"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "certbot_fanout._demo_server",
                "--cert",
                str(workdir / "fullchain.pem"),
                "--key",
                str(workdir / "privkey.pem"),
                "--port-file",
                str(port_file),
            ],
        )
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
            time.sleep(0.01)
        svc = Service(workdir, proc, int(port_file.read_text()), workdir / "reloads")
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.proc.terminate()
        svc.proc.wait(5)
