"""Consumers on other hosts, after the deploy (issue 15): ``status`` checks each consumer's
files on its own host over ssh and probes its endpoints from here, ``--repair`` redeploys what
drifted there, the Prometheus textfile labels each sample with its host, an unreachable host is
CRITICAL for its own consumers only, and an endpoint only its host reaches (``via: host``) is
proven through the ssh connection. Real sshd and nginx on the test hosts of
tests/support/sshhosts.py."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import explain, json_document
from tests.support.hostworld import (
    CERT,
    FULLCHAIN,
    PRIVKEY,
    World,
    consumer_entry,
    start_nginx_with,
    status,
)
from tests.support.lineages import LineageFactory
from tests.support.sshhosts import SshHosts
from tests.support.stack import settled_workers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SshHosts]:
    with SshHosts(tmp_path / "ssh") as made:
        made.add_host("a", users=("svc",))
        made.add_host("b")
        yield made


@pytest.fixture
def world(hosts: SshHosts, tmp_path: Path, lineages: LineageFactory) -> World:
    return World(hosts, tmp_path, lineages)


def _fingerprint(pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()


def test_via_host_proves_what_the_hosts_own_loopback_serves(
    world: World, lineages: LineageFactory
) -> None:
    a = world.hosts.hosts["a"]
    old = lineages.ca.issue([CERT])
    a.write(FULLCHAIN, old.fullchain_pem, mode=0o644)
    a.write(PRIVKEY, old.key_pem, mode=0o600)
    nginx = a.start_nginx(FULLCHAIN, PRIVKEY, port=8443, listen="127.0.0.1")
    before = settled_workers(nginx.pid)
    loopback = {"host": "127.0.0.1", "port": 8443, "server_name": CERT}
    world.consumers = {
        "web-a": consumer_entry(
            a,
            "svc",
            {
                "test": nginx.test_argv,
                "reload": nginx.reload_argv,
                "verify": [{**loopback, "via": "host"}],
            },
        )
    }
    done = world.deploy("--json")
    assert done.returncode == 0, explain(done)
    [consumer] = json_document(done)["consumers"]
    [endpoint] = consumer["endpoints"]
    assert (endpoint["via"], endpoint["ok"]) == ("host", True), endpoint
    assert endpoint["served"]["sha256"] == _fingerprint(world.issued.cert_pem)
    assert [x["address"] for x in endpoint["addresses"]] == ["127.0.0.1"]
    # The same loopback probed from here is refused with the way out, not probed here.
    world.consumers["web-a"]["verify"] = [loopback]
    world.consumers["web-a"]["verify_timeout"] = 2
    here = world.deploy("--force")
    assert here.returncode == 1, explain(here)
    assert "is the loopback of a" in here.stdout + here.stderr
    assert "via: host" in here.stdout + here.stderr
    # Through a: nothing listens on 8444 there; the error says it was a's connection.
    settled_workers(nginx.pid, replacing=before)
    world.consumers["web-a"]["verify"] = [{**loopback, "port": 8444, "via": "host"}]
    refused = status(world, "--json")
    assert refused.returncode == 2, explain(refused)
    [checked] = json_document(refused)["consumers"]
    error = checked["endpoints"][0]["error"]
    assert "a could not open a connection to it (ssh: " in error, checked
    nginx.stop()


def test_status_checks_files_on_their_hosts_and_repair_fixes_them_there(
    world: World, lineages: LineageFactory
) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    nginx = start_nginx_with(a, lineages.ca.issue([CERT]))
    before = settled_workers(nginx.pid)
    world.consumers = {
        "web-a": consumer_entry(
            a,
            "svc",
            {
                "test": nginx.test_argv,
                "reload": nginx.reload_argv,
                "verify": [{"host": a.address, "port": 443, "server_name": CERT}],
            },
        ),
        "files-b": consumer_entry(b, "root"),
    }
    done = world.deploy()
    assert done.returncode == 0, explain(done)
    settled_workers(nginx.pid, replacing=before)
    current = status(world, "--json")
    assert current.returncode == 0, explain(current)
    found = {c["name"]: c for c in json_document(current)["consumers"]}
    assert {n: (c["host"], c["status"]) for n, c in found.items()} == {
        "web-a": ("a", "OK"),
        "files-b": ("b", "OK"),
    }
    # A stale copy on b only: b's consumer is CRITICAL, named with its host; a stays OK.
    b.write(FULLCHAIN, b"stale\n", mode=0o644)
    prometheus = world.dir / "fanout.prom"
    stale = status(world, "--prometheus", str(prometheus))
    assert stale.returncode == 2, explain(stale)
    assert f"files-b @b: {FULLCHAIN}: content differs" in stale.stdout, stale.stdout
    metrics = prometheus.read_text()
    assert (
        'certbot_fanout_files_current{consumer="files-b",certificate="example.org",host="b"} 0'
        in metrics
    )
    assert (
        'certbot_fanout_files_current{consumer="web-a",certificate="example.org",host="a"} 1'
        in metrics
    )
    assert a.read_bytes(FULLCHAIN) == world.issued.fullchain_pem  # a was never touched
    repaired = status(world, "--repair", "--json")
    assert repaired.returncode == 0, explain(repaired)
    assert json_document(repaired)["repaired"] == ["files-b"]
    assert b.read_bytes(FULLCHAIN) == world.issued.fullchain_pem
    # b down: its consumer's files cannot be checked (CRITICAL, with ssh's reason); a is OK.
    b.stop()
    down = status(world, "--json")
    assert down.returncode == 2, explain(down)
    found = {c["name"]: c for c in json_document(down)["consumers"]}
    assert found["web-a"]["status"] == "OK"
    assert found["files-b"]["status"] == "CRITICAL"
    [problem] = found["files-b"]["problems"]
    assert problem.startswith("files not checked: host b") and "refused" in problem, problem
    nginx.stop()
