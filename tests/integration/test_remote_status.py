"""Consumers on other hosts, before and after the deploy (issue 15): ``check`` looks at each
consumer's directories, owners and programs on its own host; ``status`` checks each consumer's
files on its own host over ssh and probes its endpoints from here, ``--repair`` redeploys what
drifted there, the Prometheus textfile labels each sample with its host, an unreachable host is
CRITICAL for its own consumers only, and an endpoint only its host reaches (``via: host``) is
proven through the ssh connection. Real sshd and nginx on the test hosts of
tests/support/sshhosts.py."""

from __future__ import annotations

import hashlib
import os
import ssl

import pytest

from tests.support.cli import explain, json_document
from tests.support.hostworld import (
    CERT,
    FULLCHAIN,
    PRIVKEY,
    World,
    consumer_entry,
    start_nginx_with,
)
from tests.support.lineages import LineageFactory
from tests.support.stack import settled_workers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")


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
    refused = world.cli("status", "--json")
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
    current = world.cli("status", "--json")
    assert current.returncode == 0, explain(current)
    found = {c["name"]: c for c in json_document(current)["consumers"]}
    assert {n: (c["host"], c["status"]) for n, c in found.items()} == {
        "web-a": ("a", "OK"),
        "files-b": ("b", "OK"),
    }
    # A stale copy on b only: b's consumer is CRITICAL, named with its host; a stays OK.
    b.write(FULLCHAIN, b"stale\n", mode=0o644)
    prometheus = world.dir / "fanout.prom"
    stale = world.cli("status", "--prometheus", str(prometheus))
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
    repaired = world.cli("status", "--repair", "--json")
    assert repaired.returncode == 0, explain(repaired)
    assert json_document(repaired)["repaired"] == ["files-b"]
    assert b.read_bytes(FULLCHAIN) == world.issued.fullchain_pem
    # b down: its consumer's files cannot be checked (CRITICAL, with ssh's reason); a is OK.
    b.stop()
    down = world.cli("status", "--json")
    assert down.returncode == 2, explain(down)
    found = {c["name"]: c for c in json_document(down)["consumers"]}
    assert found["web-a"]["status"] == "OK"
    assert found["files-b"]["status"] == "CRITICAL"
    [problem] = found["files-b"]["problems"]
    assert problem.startswith("files not checked: host b") and "refused" in problem, problem
    nginx.stop()


def test_check_looks_at_each_consumers_directories_users_and_programs_on_its_host(
    world: World,
) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    # Each host's /srv/tls is its own: this directory and this program exist on b only.
    b.write("/srv/tls/only-b/.keep", b"", mode=0o644)
    b.write("/srv/tls/reload.sh", b"#!/bin/sh\nexit 0\n", mode=0o755)
    in_only_b = [{"path": "/srv/tls/only-b/key.pem", "content": "privkey", "mode": "0600"}]
    world.consumers = {
        "ok-b": {
            "host": "b",
            "certificate": CERT,
            "files": in_only_b,
            "reload": ["/srv/tls/reload.sh"],
        },
        "dir-a": {"host": "a", "certificate": CERT, "files": in_only_b},
        "prog-a": {"host": "a", "certificate": CERT, "reload": ["/srv/tls/reload.sh"]},
        "user-b": consumer_entry(b, "svc"),  # svc exists on a only
        "via-a": {
            "host": "a",
            "certificate": CERT,
            "verify": [{"host": "127.0.0.1", "port": 8443, "via": "host"}],
        },
    }
    found = world.cli("check")
    assert found.returncode == 1, explain(found)
    problems = [line for line in found.stdout.splitlines() if line.startswith("PROBLEM: ")]
    by_name: dict[str, list[str]] = {}
    for line in problems:
        name, _, text = line.removeprefix("PROBLEM: ").partition(": ")
        by_name.setdefault(name, []).append(text)
    assert "ok-b" not in by_name, by_name
    [dir_a] = by_name["dir-a"]
    assert dir_a.startswith("the directory /srv/tls/only-b does not exist on host a"), dir_a
    [prog_a] = by_name["prog-a"]
    assert "the reload command `/srv/tls/reload.sh` cannot run on host a" in prog_a, prog_a
    [user_b] = by_name["user-b"]
    assert "user svc does not exist on b" in user_b, user_b
    [via_a] = by_name["via-a"]
    assert "a could not open a connection to it" in via_a, via_a
    # A host down: its consumers get ssh's reason; the other host's are still checked.
    a.stop()
    down = world.cli("check")
    assert down.returncode == 1, explain(down)
    assert "PROBLEM: dir-a: host a (" in down.stdout and "refused" in down.stdout, down.stdout
    assert "PROBLEM: ok-b" not in down.stdout, down.stdout
