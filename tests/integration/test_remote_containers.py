"""A consumer in a container on another host (issue 16 over issue 15's transport): a real
dockerd inside an ssh test host's own mount and network namespaces, its engine socket reached
through the run's ssh connection (``ssh -O forward -L``), the files placed by the agent there,
the reload sent through the engine, and the container's view read there by the agent.

Cases: a directory bind mount on the host (deployed, HUP, verified from here); a single-file
bind mount refused by deploy and named by check; once a naive copy has replaced that file,
`status` CRITICAL with the explanation the host's agent gives; a container that is not there
fails at connect."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import explain, json_document
from tests.support.docker import (
    DOCKERD,
    NGINX,
    NGINX_IMAGE,
    Dockerd,
    image_root,
    import_image,
    nginx_conf,
)
from tests.support.hostworld import CERT, FULLCHAIN, PRIVKEY, World
from tests.support.integration import require_binary
from tests.support.lineages import LineageFactory
from tests.support.sshhosts import HOST_RUN, SshHost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")
PORT = 8443


@pytest.fixture
def remote_dockerd(world: World, tmp_path: Path) -> Iterator[Dockerd]:
    """dockerd on host a, with the nginx image."""
    require_binary(DOCKERD, "docker.io")
    require_binary(NGINX, "nginx")
    host = world.hosts.hosts["a"]
    daemon = Dockerd(
        host.dir / "docker",
        enter=lambda argv: host.enter_argv(argv),
        run_dir=f"{HOST_RUN}/docker",
        from_here=host.path,
    )
    daemon.start()
    try:
        import_image(daemon, image_root(tmp_path / "image"), NGINX_IMAGE)
        yield daemon
    finally:
        daemon.stop()


def _run_nginx(host: SshHost, daemon: Dockerd, name: str, *volumes: str) -> None:
    conf = host.dir / f"conf-{name}"
    conf.mkdir()
    text = nginx_conf(PORT, "/certs/fullchain.pem", "/certs/privkey.pem", address=host.address)
    (conf / "nginx.conf").write_text(text)
    argv = ["run", "-d", "--name", name, "--network", "host", "-v", f"{conf}:/etc/nginx:ro"]
    for volume in volumes:
        argv += ["-v", volume]
    daemon.docker(*argv, NGINX_IMAGE, "/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf")


def _consumer(daemon: Dockerd, name: str, host: SshHost) -> dict[str, Any]:
    return {
        "host": host.label,
        "certificate": CERT,
        "container": {"name": name, "engine": daemon.socket_path},
        "files": [
            {"path": FULLCHAIN, "content": "fullchain", "mode": "0644"},
            {"path": PRIVKEY, "content": "privkey", "mode": "0600"},
        ],
        "reload": {"signal": "HUP"},
        "verify": [{"host": host.address, "port": PORT, "server_name": CERT}],
        "verify_timeout": 10,
    }


def test_a_container_on_another_host_is_deployed_through_its_engine_and_verified(
    world: World, remote_dockerd: Dockerd, lineages: LineageFactory
) -> None:
    a = world.hosts.hosts["a"]
    old = lineages.ca.issue([CERT])
    a.write(FULLCHAIN, old.fullchain_pem, mode=0o644)
    a.write(PRIVKEY, old.key_pem, mode=0o600)
    _run_nginx(a, remote_dockerd, "remote-web", "/srv/tls:/certs:ro")
    world.consumers = {"web": _consumer(remote_dockerd, "remote-web", a)}

    done = world.deploy("--json")

    assert done.returncode == 0, explain(done)
    (web,) = json_document(done)["consumers"]
    assert web["host"] == "a" and web["outcome"] == "ok" and web["reloaded"], web
    assert web["endpoints"][0]["ok"] and web["process_view"] == [], web
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem
    status = world.cli("status", "--json")
    assert status.returncode == 0, explain(status)

    world.consumers["web"]["container"]["name"] = "remote-absent"
    missing = world.deploy("--json")
    assert missing.returncode == 1, explain(missing)
    (absent,) = json_document(missing)["consumers"]
    assert absent["failed_stage"] == "connect", absent
    assert "no running container matches name remote-absent" in absent["error"], absent
    assert "on host a" in absent["error"], absent


def test_a_single_file_bind_mount_on_another_host_is_refused_then_caught_by_status(
    world: World, remote_dockerd: Dockerd, lineages: LineageFactory
) -> None:
    a = world.hosts.hosts["a"]
    old = lineages.ca.issue([CERT])
    a.write(FULLCHAIN, old.fullchain_pem, mode=0o644)
    a.write(PRIVKEY, old.key_pem, mode=0o600)
    _run_nginx(
        a,
        remote_dockerd,
        "remote-single",
        f"{FULLCHAIN}:/certs/fullchain.pem:ro",
        f"{PRIVKEY}:/certs/privkey.pem:ro",
    )
    world.consumers = {"web": _consumer(remote_dockerd, "remote-single", a)}

    refused = world.deploy()

    assert refused.returncode == 1, explain(refused)
    assert "through a single-file bind mount of /srv/tls/fullchain.pem" in refused.stdout
    assert a.read_bytes(FULLCHAIN) == old.fullchain_pem  # nothing placed
    # check sees what deploy refuses, through the same forwarded engine socket.
    checked = world.cli("check")
    assert checked.returncode == 1, explain(checked)
    assert "through a single-file bind mount of /srv/tls/fullchain.pem" in checked.stdout

    # A naive copy on the host, renamed over the mounted file: the container keeps the old.
    for path, data in ((FULLCHAIN, world.issued.fullchain_pem), (PRIVKEY, world.issued.key_pem)):
        a.write(f"{path}.new", data, mode=0o600)
        assert a.run(["mv", "-f", f"{path}.new", path]).returncode == 0
    status = world.cli("status", "--json")

    assert status.returncode == 2, explain(status)
    (web,) = json.loads(status.stdout)["consumers"]
    problems = " ".join(web["problems"])
    assert "container remote-single" in problems, problems
    assert "reads /certs/fullchain.pem through a single-file bind mount of a replaced file" in (
        problems
    )
    assert "restart the container" in problems
