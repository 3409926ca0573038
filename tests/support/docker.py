"""A real Docker daemon for the container tests, with nothing from a registry.

``Dockerd`` runs Debian's ``dockerd`` with its own data root, exec root, socket and pid file,
``--iptables=false --bridge=none`` (containers use the host network), inside a private mount
namespace whose tmpfs holds its data root: whatever it mounts goes with the namespace when it
is stopped (by PID). ``build_nginx_image`` imports a small root made on the spot: busybox
(static) and a copy of Debian's nginx with the libraries it links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from .cli import run

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
BUSYBOX = "/bin/busybox"
NGINX = "/usr/sbin/nginx"
NGINX_IMAGE = "local/fanout-nginx"
BUSYBOX_APPLETS = ("sh", "mv", "cat", "ls", "sleep", "rm", "kill", "true")
START_TIMEOUT = 30.0


class Dockerd:
    """``dockerd`` under ``base``, started and stopped by the tests.

    On a test host (tests.support.sshhosts), ``enter`` wraps its argv to run it inside the
    host's namespaces, ``run_dir`` is where its socket, exec root and pid file are as the host
    sees them (short: a unix socket's path is at most 107 bytes), and ``from_here`` turns such
    a path into the one this process reaches it at (``socket``)."""

    def __init__(
        self,
        base: Path,
        enter: Callable[[list[str]], list[str]] | None = None,
        run_dir: str | None = None,
        from_here: Callable[[str], Path] | None = None,
    ) -> None:
        self.base = base
        self.enter = enter or (lambda argv: argv)
        self.run_dir = run_dir or str(base)
        self.socket_path = f"{self.run_dir}/docker.sock"  # as the daemon's host names it
        self.socket = from_here(self.socket_path) if from_here else Path(self.socket_path)
        self.log = base / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.base / "root").mkdir(parents=True, exist_ok=True)
        if self.run_dir == str(self.base):
            (self.base / "exec").mkdir(exist_ok=True)
        argv = [
            DOCKERD,
            f"--data-root={self.base / 'root'}",
            f"--exec-root={self.run_dir}/exec",
            f"--host=unix://{self.socket_path}",
            f"--pidfile={self.run_dir}/docker.pid",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--userland-proxy=false",
        ]
        script = (
            f'mount -t tmpfs -o mode=0710 fanout-docker "$1" && shift && {cgroup_script()}exec "$@"'
        )
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.enter([*unshare, str(self.base / "root"), *argv]),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log.read_text()[-3000:]}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"dockerd not ready in {START_TIMEOUT} s: {self.log.read_text()[-3000:]}"
        )

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, "-H", f"unix://{self.socket}", *args], check=check)

    def stop(self) -> None:
        """Remove every container, then stop the daemon (its whole session) by its PID."""
        if self.process is None:
            return
        if self.process.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # containerd and its shims are in the daemon's session: none may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


def cgroup_script() -> str:
    """Shell steps that mount this machine's cgroup hierarchies on /sys/fs/cgroup where they
    are missing (``ip netns exec`` mounts a fresh sysfs, without them), for dockerd."""
    steps = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        dash = fields.index("-")
        point, fstype, options = fields[4], fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup2" and point == "/sys/fs/cgroup":
            unified = "mount -t cgroup2 none /sys/fs/cgroup"
            return f"{{ [ -e /sys/fs/cgroup/cgroup.controllers ] || {unified}; }} && "
        if fstype == "cgroup" and point.startswith("/sys/fs/cgroup/"):
            wanted = ",".join(o for o in options.split(",") if o not in ("rw", "ro"))
            steps.append(f"mkdir -p {point} && mount -t cgroup -o {wanted} cgroup {point}")
    if not steps:
        return ""
    mount_all = " && ".join(["mount -t tmpfs cgroup /sys/fs/cgroup", *steps])
    return f"{{ [ -e /sys/fs/cgroup/devices ] || {{ {mount_all}; }}; }} && "


def _copy_with_libraries(binary: str, root: Path) -> None:
    """``binary`` and every library ``ldd`` names, at their own paths under ``root``."""
    paths = [binary]
    for line in run(["ldd", binary], check=True).stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                paths.append(word)
    for path in paths:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


def image_root(root: Path, nginx: bool = True) -> Path:
    """A minimal root: busybox and its applets, root and nobody, and (``nginx``) nginx."""
    for sub in ("bin", "etc", "tmp", "run", "certs", "var/lib/nginx", "var/log/nginx"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    if nginx:
        _copy_with_libraries(NGINX, root)
    return root


def import_image(dockerd: Dockerd, root: Path, name: str) -> None:
    """``root`` imported as image ``name`` (``docker import`` of its tar)."""
    archive = root.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    dockerd.docker("import", str(archive), name)
    archive.unlink()


def nginx_conf(port: int, cert: str, key: str, address: str = "127.0.0.1") -> str:
    """An nginx.conf for a container (host network): one TLS server on ADDRESS:port."""
    return f"""daemon off;
user root;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server {{
        listen {address}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        return 204;
    }}
}}
"""
