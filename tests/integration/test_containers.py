"""Consumers in containers and behind private mounts, with a real Docker daemon.

One ``dockerd`` (Debian's docker.io) for the module, with its own data root, exec root and
socket, no bridge and no iptables; containers on the host network. The image is made here:
busybox and a copy of Debian's nginx with its libraries, ``docker import``-ed (nothing from a
registry). Each test runs its containers, deploys a renewal with the real CLI, and asks the
container's nginx over TLS on loopback what it serves.

The trap under test: a file given to a container (or to a process in a private mount
namespace) through a *single-file* bind mount keeps its old inode after an atomic rename on
the host, so the service serves the old certificate while every file on disk is current.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import explain, run
from tests.support.docker import (
    DOCKER,
    DOCKERD,
    NGINX,
    NGINX_IMAGE,
    Dockerd,
    image_root,
    import_image,
    nginx_conf,
)
from tests.support.integration import require_binary
from tests.support.lineages import LineageFactory
from tests.support.maps import write_map
from tests.support.stack import file_fingerprint, free_port, served_fingerprint

CERT = "box.fanout.test"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    for binary, what in ((DOCKERD, "docker.io"), (DOCKER, "docker.io"), (NGINX, "nginx")):
        require_binary(binary, what)
    if os.geteuid() != 0:
        pytest.skip("needs root: runs dockerd")
    base = tmp_path_factory.mktemp("docker")
    daemon = Dockerd(base)
    daemon.start()
    try:
        import_image(daemon, image_root(base / "image"), NGINX_IMAGE)
        yield daemon
    finally:
        daemon.stop()


@dataclass
class Box:
    """One test's world: a lineage, host directories to mount, containers to run."""

    fanout: Path
    dockerd: Dockerd
    lineages: LineageFactory
    work: Path
    live: Path
    names: list[str] = field(default_factory=list)

    def renew(self) -> None:
        self.live, _ = self.lineages.renew(CERT)

    def conf_dir(self, name: str, port: int, cert_dir: str = "/certs") -> Path:
        conf = self.work / f"conf-{name}"
        conf.mkdir(exist_ok=True)
        text = nginx_conf(port, f"{cert_dir}/fullchain.pem", f"{cert_dir}/privkey.pem")
        (conf / "nginx.conf").write_text(text)
        return conf

    def certs_dir(self, name: str) -> Path:
        certs = self.work / f"certs-{name}"
        certs.mkdir(exist_ok=True)
        for part in ("fullchain.pem", "privkey.pem"):
            shutil.copyfile(self.live / part, certs / part)
        return certs

    def start(self, name: str, port: int, *volumes: str, labels: tuple[str, ...] = ()) -> None:
        """nginx in container ``name`` on 127.0.0.1:port, its nginx.conf mounted (a
        directory), the ``volumes`` as ``docker run -v`` takes them."""
        conf = self.conf_dir(name, port)
        argv = ["run", "-d", "--name", name, "--network", "host", "-v", f"{conf}:/etc/nginx:ro"]
        for volume in volumes:
            argv += ["-v", volume]
        for label in labels:
            argv += ["--label", label]
        self.dockerd.docker(*argv, NGINX_IMAGE, "/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf")
        self.names.append(name)
        wait_serving(port)

    def copy_into(self, name: str, directory: str = "/certs") -> None:
        """The lineage's files put into the container's own filesystem (no mount)."""
        for part in ("fullchain.pem", "privkey.pem"):
            self.dockerd.docker("cp", "-L", str(self.live / part), f"{name}:{directory}/{part}")

    def map(self, consumers: dict[str, Any]) -> Path:
        return write_map(self.work, {"version": 1, "consumers": consumers})

    def consumer(
        self, container: dict[str, str], files: list[dict[str, Any]], port: int, **more: Any
    ) -> dict[str, Any]:
        return {
            "certificate": CERT,
            "container": {**container, "engine": str(self.dockerd.socket)},
            "files": files,
            "reload": {"signal": "HUP"},
            "verify": [{"host": "127.0.0.1", "port": port, "server_name": CERT}],
            "verify_timeout": 10,
            **more,
        }

    def deploy(self, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            [
                str(self.fanout),
                "deploy",
                "--config",
                str(config),
                "--lineage",
                str(self.live),
                "--lock-file",
                str(self.work / "fanout.lock"),
                "--state-file",
                str(self.work / "state.json"),
                *extra,
            ]
        )

    def status(self, config: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        result = run(
            [
                str(self.fanout),
                "status",
                "--json",
                "--config",
                str(config),
                "--config-dir",
                str(self.lineages.config_dir),
                "--state-file",
                str(self.work / "state.json"),
            ]
        )
        return result, json.loads(result.stdout)

    def served(self, port: int) -> str:
        return served_fingerprint("127.0.0.1", port, CERT)

    def settled(self, port: int, timeout: float = 5) -> str:
        """What ``port`` serves once it serves the current certificate (for ~100 ms after a
        reload, nginx's old worker still answers beside the new one), or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (served := self.served(port)) != self.current() and time.monotonic() < deadline:
            time.sleep(0.05)
        return served

    def current(self) -> str:
        return file_fingerprint(self.live / "cert.pem")

    def remove(self) -> None:
        if self.names:
            self.dockerd.docker("rm", "-f", *self.names, check=False)


def wait_serving(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            served_fingerprint("127.0.0.1", port, CERT, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def file_mounts(certs: Path) -> tuple[str, str]:
    """``docker run -v`` of each of the two files in ``certs`` on its own (single-file bind
    mounts, the trap), at /certs."""
    return (
        f"{certs}/fullchain.pem:/certs/fullchain.pem:ro",
        f"{certs}/privkey.pem:/certs/privkey.pem:ro",
    )


@pytest.fixture
def box(
    fanout_bin: Path, dockerd: Dockerd, lineages: LineageFactory, tmp_path: Path
) -> Iterator[Box]:
    live, _ = lineages.issue(CERT)
    world = Box(fanout_bin, dockerd, lineages, tmp_path, live)
    try:
        yield world
    finally:
        world.remove()


def consumer_doc(result: subprocess.CompletedProcess[str], name: str) -> dict[str, Any]:
    doc = json.loads(result.stdout)
    return next(c for c in doc["consumers"] if c["name"] == name)


def test_a_directory_bind_mount_is_placed_on_the_host_reloaded_by_signal_and_verified(
    box: Box,
) -> None:
    port = free_port()
    certs = box.certs_dir("web")
    box.start("fanout-dir", port, f"{certs}:/certs:ro")
    old = box.served(port)
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    config = box.map({"web": box.consumer({"name": "fanout-dir"}, files, port)})

    result = box.deploy(config, "--json")

    assert result.returncode == 0, explain(result)
    web = consumer_doc(result, "web")
    assert web["outcome"] == "ok" and web["reloaded"], web
    assert box.settled(port) == box.current() != old
    status, doc = box.status(config)
    assert status.returncode == 0, explain(status)
    assert doc["consumers"][0]["problems"] == []


def test_a_single_file_bind_mount_is_refused_and_a_replaced_one_is_caught_by_status(
    box: Box,
) -> None:
    port = free_port()
    certs = box.certs_dir("single")
    box.start("fanout-single", port, *file_mounts(certs))
    old = box.served(port)
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    config = box.map({"web": box.consumer({"name": "fanout-single"}, files, port)})
    before = (certs / "fullchain.pem").read_bytes()

    refused = box.deploy(config)

    assert refused.returncode == 1, explain(refused)
    assert "single-file bind mount" in refused.stdout, explain(refused)
    assert "Mount the directory" in refused.stdout and "inplace: true" in refused.stdout
    assert (certs / "fullchain.pem").read_bytes() == before  # nothing placed
    assert box.served(port) == old

    # What a naive hook does: copy and rename over the mounted file; the container keeps the
    # old inode, and nothing on the host shows it.
    for part in ("fullchain.pem", "privkey.pem"):
        shutil.copyfile(box.live / part, certs / f".{part}.new")
        os.rename(certs / f".{part}.new", certs / part)
    box.dockerd.docker("kill", "-s", "HUP", "fanout-single")

    status, doc = box.status(config)

    assert status.returncode == 2, explain(status)
    problems = " ".join(doc["consumers"][0]["problems"])
    assert "through a single-file bind mount of a replaced file" in problems, problems
    assert "/certs/fullchain.pem" in problems and "restart the container" in problems
    assert box.served(port) == old


def test_a_single_file_bind_mount_with_inplace_is_rewritten_and_served_after_the_reload(
    box: Box,
) -> None:
    port = free_port()
    certs = box.certs_dir("inplace")
    box.start("fanout-inplace", port, *file_mounts(certs))
    inode = (certs / "privkey.pem").stat().st_ino
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain", "inplace": True},
        {"path": str(certs / "privkey.pem"), "content": "privkey", "inplace": True},
    ]
    config = box.map({"web": box.consumer({"name": "fanout-inplace"}, files, port)})

    result = box.deploy(config)

    assert result.returncode == 0, explain(result)
    assert (certs / "privkey.pem").stat().st_ino == inode
    assert (certs / "privkey.pem").stat().st_mode & 0o777 == 0o600
    assert box.settled(port) == box.current()
    status, _ = box.status(config)
    assert status.returncode == 0, explain(status)


def test_a_single_file_bind_mount_is_placed_atomically_when_the_reload_restarts_it(
    box: Box,
) -> None:
    port = free_port()
    certs = box.certs_dir("restart")
    box.start("fanout-restart", port, *file_mounts(certs))
    pid = box.dockerd.docker("inspect", "-f", "{{.State.Pid}}", "fanout-restart").stdout.strip()
    inode = (certs / "privkey.pem").stat().st_ino
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    consumer = box.consumer({"name": "fanout-restart"}, files, port, reload={"restart": True})
    config = box.map({"web": consumer})

    result = box.deploy(config, "--json")

    assert result.returncode == 0, explain(result)
    assert consumer_doc(result, "web")["process_view"] == []
    assert (certs / "privkey.pem").stat().st_ino != inode  # renamed over, atomically
    again = box.dockerd.docker("inspect", "-f", "{{.State.Pid}}", "fanout-restart").stdout
    assert again.strip() != pid  # restarted
    assert box.settled(port) == box.current()


def test_a_compose_service_is_found_by_its_label_and_reloaded_by_exec(box: Box) -> None:
    port = free_port()
    certs = box.certs_dir("compose")
    labels = ("com.docker.compose.service=web", "com.docker.compose.project=fanout")
    box.start("fanout-compose-web-1", port, f"{certs}:/certs:ro", labels=labels)
    old = box.served(port)
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    exec_reload = {"exec": ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf", "-s", "reload"]}
    consumer = box.consumer({"compose_service": "web"}, files, port, reload=exec_reload)
    config = box.map({"web": consumer})

    result = box.deploy(config)

    assert result.returncode == 0, explain(result)
    assert box.settled(port) == box.current() != old
    failing = {"exec": ["/usr/sbin/nginx", "-c", "/etc/nginx/missing.conf", "-t"]}
    box.renew()
    broken = box.map({"web": box.consumer({"compose_service": "web"}, files, port, reload=failing)})
    failed = box.deploy(broken, "--json")
    assert failed.returncode == 1, explain(failed)
    web = consumer_doc(failed, "web")
    assert web["failed_stage"] == "reload" and web["rolled_back"], web
    assert "exited with 1" in web["error"] and "missing.conf" in web["error"], web


def test_a_path_no_mount_carries_is_copied_into_the_container(box: Box) -> None:
    port = free_port()
    box.conf_dir("copied", port)
    conf = box.conf_dir("copied", port)
    # nginx needs its files before it starts: create the container, copy them in, start it.
    box.dockerd.docker(
        "create",
        "--name",
        "fanout-copied",
        "--network",
        "host",
        "-v",
        f"{conf}:/etc/nginx:ro",
        NGINX_IMAGE,
        "/usr/sbin/nginx",
        "-c",
        "/etc/nginx/nginx.conf",
    )
    box.names.append("fanout-copied")
    box.copy_into("fanout-copied")
    box.dockerd.docker("start", "fanout-copied")
    wait_serving(port)
    old = box.served(port)
    box.renew()
    files = [
        {"path": "/certs/fullchain.pem", "content": "fullchain"},
        {"path": "/certs/privkey.pem", "content": "privkey"},
    ]
    config = box.map({"web": box.consumer({"name": "fanout-copied"}, files, port)})

    result = box.deploy(config)

    assert result.returncode == 0, explain(result)
    assert box.settled(port) == box.current() != old
    assert not Path("/certs/privkey.pem").exists()  # inside the container, not here
    listing = box.dockerd.docker("exec", "fanout-copied", "ls", "-ln", "/certs").stdout
    assert ".fanout-" not in listing, listing  # no temporary file left behind
    key_line = next(line for line in listing.splitlines() if "privkey.pem" in line)
    assert key_line.startswith("-rw-------"), listing
    again = box.deploy(config, "--json")
    assert again.returncode == 0, explain(again)
    assert not consumer_doc(again, "web")["reloaded"]  # idempotent: nothing to copy
    status, doc = box.status(config)  # the files checked inside the container
    assert status.returncode == 0 and doc["consumers"][0]["problems"] == [], explain(status)
    box.dockerd.docker("exec", "fanout-copied", "rm", "/certs/privkey.pem")
    status, doc = box.status(config)
    assert status.returncode == 2, explain(status)
    assert "/certs/privkey.pem: missing" in doc["consumers"][0]["problems"], doc


def test_a_reload_command_still_works_for_a_container(box: Box) -> None:
    port = free_port()
    certs = box.certs_dir("command")
    box.start("fanout-command", port, f"{certs}:/certs:ro")
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    kill = [DOCKER, "-H", f"unix://{box.dockerd.socket}", "kill", "-s", "HUP", "fanout-command"]
    config = box.map({"web": box.consumer({"name": "fanout-command"}, files, port, reload=kill)})

    result = box.deploy(config, "--json")

    assert result.returncode == 0, explain(result)
    assert consumer_doc(result, "web")["reloaded"]
    assert box.settled(port) == box.current()


def test_containers_matched_by_label_are_each_reloaded_and_verified(box: Box) -> None:
    certs = box.certs_dir("shared")
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        box.start(f"fanout-label{i}", port, f"{certs}:/certs:ro", labels=("fanout.test/tls=1",))
    box.start("fanout-other", free_port(), f"{certs}:/certs:ro", labels=("fanout.test/tls=0",))
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    consumer = box.consumer({"label": "fanout.test/tls=1"}, files, ports[0])
    consumer["verify"] = [{"host": "127.0.0.1", "port": p, "server_name": CERT} for p in ports]
    config = box.map({"web": consumer})

    result = box.deploy(config)

    assert result.returncode == 0, explain(result)
    assert [box.settled(p) for p in ports] == [box.current()] * 2
    # The unlabelled container was not signalled: its nginx still serves the old pair, which
    # it read at start (the files under its mount are new, but it was never reloaded).
    assert (
        box.dockerd.docker("inspect", "-f", "{{.State.Running}}", "fanout-other").stdout.strip()
        == "true"
    )


def test_an_engine_that_is_down_fails_the_consumer_clearly(box: Box) -> None:
    certs = box.certs_dir("down")
    files = [{"path": str(certs / "fullchain.pem"), "content": "fullchain"}]
    consumer = box.consumer({"name": "fanout-none"}, files, free_port())
    consumer["container"]["engine"] = str(box.work / "no-engine.sock")
    config = box.map({"web": consumer})

    result = box.deploy(config)

    assert result.returncode == 1, explain(result)
    assert "cannot connect" in result.stdout and "no-engine.sock" in result.stdout, explain(result)
    assert "Traceback" not in result.stdout + result.stderr
    status, doc = box.status(config)
    assert status.returncode == 2, explain(status)
    assert "cannot connect" in " ".join(doc["consumers"][0]["problems"])


def test_a_missing_container_fails_the_consumer_clearly(box: Box) -> None:
    certs = box.certs_dir("missing")
    files = [{"path": str(certs / "fullchain.pem"), "content": "fullchain"}]
    config = box.map({"web": box.consumer({"name": "fanout-absent"}, files, free_port())})

    result = box.deploy(config)

    assert result.returncode == 1, explain(result)
    assert "no running container matches name fanout-absent" in result.stdout, explain(result)


def test_a_container_gone_mid_run_fails_its_reload_and_puts_the_files_back(box: Box) -> None:
    port = free_port()
    certs = box.certs_dir("gone")
    box.start("fanout-gone", port, f"{certs}:/certs:ro")
    before = (certs / "privkey.pem").read_bytes()
    box.renew()
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": str(certs / "privkey.pem"), "content": "privkey"},
    ]
    # Its test removes it: after the files are placed, before the reload.
    remove = [DOCKER, "-H", f"unix://{box.dockerd.socket}", "rm", "-f", "fanout-gone"]
    config = box.map({"web": box.consumer({"name": "fanout-gone"}, files, port, test=remove)})

    result = box.deploy(config, "--json")

    assert result.returncode == 1, explain(result)
    web = consumer_doc(result, "web")
    assert web["failed_stage"] == "reload" and "is gone" in web["error"], web
    assert web["rolled_back"], web
    assert (certs / "privkey.pem").read_bytes() == before


@dataclass
class PrivateMount:
    """A process in its own mount namespace given one file through a bind mount at a path of
    its own, as systemd's ``BindReadOnlyPaths=SOURCE:TARGET`` of a file does: ``sleep`` under
    ``unshare --mount``. (A bind of a file onto its own path is not the trap: replacing the
    file from another namespace detaches that mount, since Linux 3.18.)"""

    process: subprocess.Popen[bytes]
    pid_file: Path

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def private_mount(tmp_path: Path) -> Iterator[Any]:
    started: list[PrivateMount] = []

    def start(source: Path, target: Path) -> PrivateMount:
        pid_file = tmp_path / f"private-{len(started)}.pid"
        target.touch()
        script = 'mount --bind "$1" "$2" && echo $$ >"$3" && exec sleep 600'
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        process = subprocess.Popen([*unshare, str(source), str(target), str(pid_file)])
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert process.poll() is None and time.monotonic() < deadline, "unshare failed"
            time.sleep(0.02)
        mounted = PrivateMount(process, pid_file)
        started.append(mounted)
        return mounted

    yield start
    for mounted in started:
        mounted.stop()


def test_a_process_with_a_private_single_file_mount_is_caught_by_deploy_and_status(
    fanout_bin: Path, lineages: LineageFactory, tmp_path: Path, private_mount: Any
) -> None:
    live, _ = lineages.issue(CERT)
    target = tmp_path / "tls" / "fullchain.pem"
    target.parent.mkdir()
    shutil.copyfile(live / "fullchain.pem", target)
    seen_at = tmp_path / "service" / "cert.pem"  # where the process reads it
    seen_at.parent.mkdir()
    mounted = private_mount(target, seen_at)
    live, _ = lineages.renew(CERT)
    consumer: dict[str, Any] = {
        "certificate": CERT,
        "files": [{"path": str(target), "content": "fullchain"}],
        "process": {"pid_file": str(mounted.pid_file)},
    }
    config = write_map(tmp_path, {"version": 1, "consumers": {"daemon": consumer}})
    common = ["--config", str(config), "--state-file", str(tmp_path / "state.json")]

    result = run(
        [
            str(fanout_bin),
            "deploy",
            *common,
            "--lineage",
            str(live),
            "--lock-file",
            str(tmp_path / "lock"),
        ]
    )

    assert result.returncode == 1, explain(result)
    pid = mounted.process.pid
    expected = f"PID {pid} reads {seen_at} through a single-file bind mount of a replaced file"
    assert expected in result.stdout and str(target) in result.stdout, explain(result)
    assert target.read_bytes() == (live / "fullchain.pem").read_bytes()  # right on disk
    status = run([str(fanout_bin), "status", *common, "--config-dir", str(lineages.config_dir)])
    assert status.returncode == 2, explain(status)
    assert "single-file bind mount of a replaced file" in status.stdout, explain(status)
    found = run([
        str(fanout_bin), "discover", "--config", str(config),
        "--config-dir", str(lineages.config_dir), "--cert-name", CERT,
    ])  # fmt: skip
    assert found.returncode == 1, explain(found)
    assert f"PID {pid} (sleep)  {seen_at}  {CERT} STALE" in found.stdout, explain(found)
    assert f"a single-file bind mount of {target}, since replaced" in found.stdout

    # inplace: the same inode rewritten, which the process's mount still shows.
    consumer["files"][0]["inplace"] = True
    fresh = private_mount(target, seen_at)
    live, _ = lineages.renew(CERT)
    consumer["process"] = {"pid_file": str(fresh.pid_file)}
    config = write_map(tmp_path, {"version": 1, "consumers": {"daemon": consumer}})
    result = run(
        [
            str(fanout_bin),
            "deploy",
            *common,
            "--lineage",
            str(live),
            "--lock-file",
            str(tmp_path / "lock"),
        ]
    )
    assert result.returncode == 0, explain(result)
    seen = Path(f"/proc/{fresh.process.pid}/root{seen_at}").read_bytes()
    assert seen == (live / "fullchain.pem").read_bytes()


def test_discover_lists_containers_carrying_the_certificate_and_processes_on_an_old_copy(
    box: Box,
) -> None:
    port, other_port = free_port(), free_port()
    certs = box.certs_dir("seen")
    box.start("fanout-seen", port, f"{certs}:/certs:ro")
    single = box.certs_dir("single-seen")
    box.start("fanout-stale", other_port, *file_mounts(single))
    box.renew()
    for part in ("fullchain.pem", "privkey.pem"):  # a naive hook's atomic replace
        shutil.copyfile(box.live / part, single / f".{part}.new")
        os.rename(single / f".{part}.new", single / part)
    files = [{"path": str(certs / "fullchain.pem"), "content": "fullchain"}]
    config = box.map({"seen": box.consumer({"name": "fanout-seen"}, files, port)})

    result = run([
        str(box.fanout), "discover", "--config", str(config),
        "--config-dir", str(box.lineages.config_dir), "--cert-name", CERT,
    ])  # fmt: skip

    assert result.returncode == 1, explain(result)
    out = result.stdout
    assert "CONTAINERS:" in out, explain(result)
    seen_line = next(line for line in out.splitlines() if "container fanout-seen" in line)
    assert f"{certs}/fullchain.pem -> /certs/fullchain.pem" in seen_line
    assert "STALE" in seen_line and "[consumer seen]" in seen_line  # not deployed yet
    stale = [line for line in out.splitlines() if "container fanout-stale" in line]
    assert stale and all("[not in the map]" in line for line in stale), out
    assert "a single-file bind mount: an atomic replace on this host never reaches" in out
    assert "STALE INSIDE: its main process sees other bytes at /certs/fullchain.pem" in out
    pid = box.dockerd.docker("inspect", "-f", "{{.State.Pid}}", "fanout-stale").stdout.strip()
    assert "PROCESSES THAT READ AN OLD COPY:" in out
    assert f"PID {pid} (nginx)  /certs/fullchain.pem  {CERT} STALE" in out, out


def test_discover_writes_a_first_map_with_a_consumer_for_each_container(box: Box) -> None:
    port, other_port = free_port(), free_port()
    certs = box.certs_dir("first-dir")
    box.start("fanout-first-dir", port, f"{certs}:/certs:ro")
    single = box.certs_dir("first-file")
    box.start("fanout-first-file", other_port, *file_mounts(single))
    # The map names the test's engine (discover asks the engines a map names).
    files = [{"path": "/nonexistent/x.pem", "content": "fullchain"}]
    config = box.map({"other": box.consumer({"name": "fanout-nowhere"}, files, port)})
    written = box.work / "first.yaml"

    result = run([
        str(box.fanout), "discover", "--config", str(config),
        "--config-dir", str(box.lineages.config_dir), "--cert-name", CERT,
        "--path", str(box.work), "--write-map", str(written),
    ])  # fmt: skip

    assert written.exists(), explain(result)
    first = yaml.safe_load(written.read_text())["consumers"]
    assert first["fanout-first-dir"]["container"] == {
        "name": "fanout-first-dir",
        "engine": str(box.dockerd.socket),
    }, first
    assert first["fanout-first-file"]["container"]["name"] == "fanout-first-file"
    for name, where in (("fanout-first-dir", certs), ("fanout-first-file", single)):
        paths = [f["path"] for f in first[name]["files"]]
        assert paths[0] == str(where / "fullchain.pem"), first[name]
    assert "single-file bind mount" in first["fanout-first-file"]["notes"]
    assert "single-file" not in first["fanout-first-dir"]["notes"]
    # The copies the containers mount, and the ports their nginx listens on, are theirs: no
    # consumer of their own (nor an "nginx" of this host for the listeners).
    assert sorted(first) == ["fanout-first-dir", "fanout-first-file"], written.read_text()
    assert [e["port"] for e in first["fanout-first-dir"]["verify"]] == [port]
    assert [e["port"] for e in first["fanout-first-file"]["verify"]] == [other_port]

    # Filled in, it is a map check reads: the directory mount is fine, the single file is
    # what deploy would refuse.
    written.write_text(_filled(written.read_text(), certs, single))
    for where in (certs, single):
        (where / "privkey.pem").chmod(0o600)  # as the map says (copyfile left it 0644)
    checked = run([
        str(box.fanout), "check", "--config", str(written),
        "--config-dir", str(box.lineages.config_dir), "--no-probe",
    ])  # fmt: skip
    assert checked.returncode == 1, explain(checked)
    assert "fanout-first-file" in checked.stdout and "single-file bind mount" in checked.stdout
    assert "fanout-first-dir:" not in checked.stdout, explain(checked)


def _filled(text: str, *dirs: Path) -> str:
    """The written map with each key path to fill in set to the privkey.pem beside the
    certificate it goes with, and each reload to a signal."""
    out = []
    for line in text.splitlines():
        if '"<fill in: the path on this host of the private key' in line:
            where = next(d for d in dirs if f"fanout-first-{d.name.split('-')[-1]}" in line)
            line = re.sub(r'"<fill in: [^"]*>"', f'"{where}/privkey.pem"', line)
        line = re.sub(r'reload: "<fill in: [^"]*>"', "reload: {signal: HUP}", line)
        out.append(line)
    return "\n".join(out) + "\n"


def test_check_looks_at_the_containers_and_not_at_paths_copied_into_them(box: Box) -> None:
    port = free_port()
    certs = box.certs_dir("checked")
    box.start("fanout-checked", port, *file_mounts(certs))
    files = [
        {"path": str(certs / "fullchain.pem"), "content": "fullchain"},
        {"path": "/inside-only/chain.pem", "content": "chain"},  # copied in
    ]
    config = box.map({
        "web": box.consumer({"name": "fanout-checked"}, files, port),
        "gone": box.consumer({"name": "fanout-nowhere"}, [{**files[0], "path": "/x.pem"}], port),
    })  # fmt: skip

    result = run([
        str(box.fanout), "check", "--config", str(config),
        "--config-dir", str(box.lineages.config_dir),
    ])  # fmt: skip

    assert result.returncode == 1, explain(result)
    out = result.stdout
    assert "through a single-file bind mount of" in out, explain(result)
    assert "no running container matches name fanout-nowhere" in out
    assert "/inside-only" not in out  # not a directory of this host's to create
