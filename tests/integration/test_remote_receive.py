"""A least-privilege host (issue 15, ``mode: receive``): the controller's key is forced, in the
target's ``authorized_keys``, to ``certbot-fanout receive`` with ``restrict``. The target's own
map decides paths, owners, the test and the reload; the controller hands over only the
lineages that map uses, and proves from outside what the target serves. Real sshd and nginx on
a test host of tests/support/sshhosts.py; the target runs this checkout's certbot-fanout."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import explain, json_document, run
from tests.support.hostworld import CERT, FULLCHAIN, PRIVKEY, World, cli_path, start_nginx_with
from tests.support.lineages import LineageFactory
from tests.support.netns import served_in
from tests.support.sshhosts import SshHost, SshHosts
from tests.support.stack import pem_fingerprint, settled_workers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")

OTHER = "other.example.org"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SshHosts]:
    with SshHosts(tmp_path / "ssh") as made:
        made.add_host("r", users=("svc",))
        yield made


@pytest.fixture
def world(hosts: SshHosts, tmp_path: Path, lineages: LineageFactory) -> World:
    return World(hosts, tmp_path, lineages, mode="receive")


def _force_receive(host: SshHost, target_map: Path) -> list[str]:
    """The target's map and authorized_keys line: the key may run `certbot-fanout receive`
    on that map and nothing else. Returns the forced command's words."""
    words = [
        cli_path(),
        "receive",
        "--config",
        str(target_map),
        "--state-file",
        str(host.dir / "receive-state.json"),
        "--lock-file",
        str(host.dir / "receive.lock"),
    ]
    key = host.hosts.identity.with_suffix(".pub").read_text().strip()
    host.authorized_keys.write_text(f'command="{shlex.join(words)}",restrict {key}\n')
    return words


def _target_map(host: SshHost, nginx: Any, path: Path) -> Path:
    document = {
        "version": 1,
        "consumers": {
            "web": {
                "certificate": CERT,
                "files": [
                    {"path": FULLCHAIN, "content": "fullchain", "owner": "svc", "mode": "0644"},
                    {"path": PRIVKEY, "content": "privkey", "owner": "svc", "mode": "0600"},
                ],
                "test": nginx.test_argv,
                "reload": nginx.reload_argv,
                "verify": [{"host": host.address, "port": 443, "server_name": CERT}],
            }
        },
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def test_receive_mode_deploys_by_the_targets_own_map_and_takes_only_its_lineages(
    hosts: SshHosts, world: World, lineages: LineageFactory, tmp_path: Path
) -> None:
    r = hosts.hosts["r"]
    old = lineages.ca.issue([CERT])
    nginx = start_nginx_with(r, old)
    before = settled_workers(nginx.pid)
    _force_receive(r, _target_map(r, nginx, r.dir / "consumers.yaml"))
    # The key runs receive whatever is asked: `id` gets receive's hello, not a shell.
    forced = run(hosts.ssh_argv(r, "id"), timeout=60)
    assert "uid=" not in forced.stdout, explain(forced)
    assert '"mode":"receive"' in forced.stdout, explain(forced)
    assert f'"certificates":["{CERT}"]' in forced.stdout, explain(forced)

    other_live, _ = lineages.issue(OTHER)
    verify = [{"host": r.address, "port": 443, "server_name": CERT}]
    world.consumers = {
        "web-r": {"host": "r", "certificate": CERT, "verify": verify},
        "other-r": {"host": "r", "certificate": OTHER},
    }
    planned = world.deploy("--dry-run", "--json")
    assert planned.returncode == 0, explain(planned)
    [plan] = json_document(planned)["consumers"]
    assert plan["outcome"] == "planned" and plan["reloaded"], plan
    assert r.read_bytes(PRIVKEY) == old.key_pem, "a dry run placed nothing"

    done = world.deploy("--json")
    assert done.returncode == 0, explain(done)
    [consumer] = json_document(done)["consumers"]
    assert (consumer["host"], consumer["outcome"], consumer["reloaded"]) == ("r", "ok", True)
    assert {f["path"] for f in consumer["files"] if f["changed"]} == {FULLCHAIN, PRIVKEY}
    assert consumer["endpoints"][0]["ok"], consumer
    key = r.stat(PRIVKEY)
    assert (key.uid, key.mode) == (r.users["svc"].uid, 0o600)  # svc as r numbers it
    assert r.read_bytes(PRIVKEY) == world.issued.key_pem
    settled_workers(nginx.pid, replacing=before)
    served = served_in(hosts.controller, r.address, 443, CERT)
    assert served.fingerprint == pem_fingerprint(world.issued.cert_pem)
    again = world.deploy("--json")
    assert again.returncode == 0, explain(again)
    assert not json_document(again)["consumers"][0]["reloaded"]

    # A lineage the target's map does not use is not handed over.
    refused = world.cli("deploy", "--lineage", str(other_live))
    assert refused.returncode == 1, explain(refused)
    assert f"its own map has no consumer of {OTHER}, so it was not handed over" in refused.stdout
    state = json.loads((r.dir / "receive-state.json").read_text())
    assert OTHER not in json.dumps(state), state
    nginx.stop()


def test_a_map_cannot_give_files_or_commands_for_a_receive_host(world: World) -> None:
    world.consumers = {
        "web-r": {
            "host": "r",
            "certificate": CERT,
            "files": [{"path": FULLCHAIN, "content": "fullchain"}],
        }
    }
    refused = world.deploy()
    assert refused.returncode == 2, explain(refused)
    assert "host r is in receive mode: its own map decides the files" in refused.stderr
