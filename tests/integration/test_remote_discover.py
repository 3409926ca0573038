"""``discover --host`` (issue 15): what carries a lineage's certificate on another host of the
map: the copies its agent finds walking its own files (each test host's /srv/tls is its own),
its listening sockets, probed from the host itself through the connection (a service on its
loopback), and the paths its services' configurations name; all matched here against the
lineage and the map's consumers on that host. Real sshd and nginx on the test hosts of
tests/support/sshhosts.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import explain
from tests.support.hostworld import CERT, FULLCHAIN, World, consumer_entry
from tests.support.lineages import LineageFactory
from tests.support.sshhosts import SshHosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")

STALE = "/srv/tls/old/fullchain.pem"
STALE_KEY = "/srv/tls/old/privkey.pem"
NAMED = "/srv/tls/named/fullchain.pem"
SITE = "/etc/nginx/conf.d/site.conf"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SshHosts]:
    with SshHosts(tmp_path / "ssh") as made:
        # a's /etc/nginx is its own too: a configuration there names a copy on a.
        made.add_host("a", users=("svc",), tmpfs=("/srv/tls", "/etc/nginx"))
        made.add_host("b")
        yield made


def test_discover_on_a_host_finds_its_copies_and_credits_its_consumers(
    world: World, lineages: LineageFactory
) -> None:
    a = world.hosts.hosts["a"]
    a.run(["mkdir", "-p", "/srv/tls"])
    world.consumers = {"files-a": consumer_entry(a, "svc")}
    done = world.deploy()
    assert done.returncode == 0, explain(done)
    old = lineages.ca.issue([CERT])
    a.write(STALE, old.fullchain_pem, uid=a.users["svc"].uid, mode=0o640)  # a copy forgotten
    a.write(STALE_KEY, old.key_pem, mode=0o600)
    # A service only a itself reaches, serving the forgotten copy: probed through the connection.
    nginx = a.start_nginx(STALE, STALE_KEY, port=8443, listen="127.0.0.1")
    a.write(NAMED, old.fullchain_pem, mode=0o644)
    a.write(SITE, f"server {{\n    ssl_certificate {NAMED};\n}}\n".encode(), mode=0o644)
    found = world.cli("discover", "--host", "a")
    nginx.stop()
    assert found.returncode == 1, explain(found)  # something to review
    lines = found.stdout.splitlines()
    stale = next(line for line in lines if STALE in line)
    assert "STALE" in stale and "[consumer" not in stale, found.stdout
    mapped = next(line for line in lines if FULLCHAIN in line and "file" in line)
    assert "current" in mapped and "[consumer files-a]" in mapped, found.stdout
    # The entry to paste is for host a, owned by svc as a names it.
    assert 'host: "a"' in found.stdout, found.stdout
    assert f'path: "{STALE}"' in found.stdout and 'owner: "svc"' in found.stdout, found.stdout
    listener = next(line for line in lines if "127.0.0.1:8443" in line)
    assert listener.split()[0] == "listener" and "STALE" in listener, found.stdout
    named = next(line for line in lines if NAMED in line)
    assert named.split()[0] == "config" and f"(nginx: {SITE}:2)" in named, found.stdout
    assert "STALE" in named and "NOT COVERED" not in found.stdout, found.stdout
    # b has none of a's files: nothing of them is found there.
    on_b = world.cli("discover", "--host", "b")  # a host with no consumer in the map
    assert on_b.returncode == 0, explain(on_b)
    assert "files read on host b" in on_b.stdout, explain(on_b)
    assert "nothing on host b carries these certificates" in on_b.stdout, explain(on_b)
    refused = world.cli("discover", "--host", "nowhere")
    assert refused.returncode == 2 and "no host 'nowhere' in the map" in refused.stderr
