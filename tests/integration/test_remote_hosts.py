"""Consumers on other hosts (issue 15), through real sshd on test hosts in their own network and
mount namespaces (tests/support/sshhosts.py): the CLI runs in the controller namespace and
deploys over OpenSSH, and the proof comes from probing each host's nginx from there.

Cases: a deploy across two hosts (owners resolved on each, the service proven, a second run
touching nothing); a host down (its consumer fails at connect, the other is done); a changed
host key (refused, named); a user missing on one host (refused before anything there is
touched); a failing test on one host (its files put back, the other host's done); no python3
on a target; the agent under Debian 11's Python 3.9."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout._pki import Issued
from tests.support.cli import explain, json_document, run
from tests.support.hostworld import (
    CERT,
    FULLCHAIN,
    PRIVKEY,
    World,
    consumer_entry,
    start_nginx_with,
)
from tests.support.integration import CERT_NAME
from tests.support.lineages import LineageFactory
from tests.support.netns import served_in
from tests.support.oldpython import ensure_python39
from tests.support.sshhosts import SshHosts
from tests.support.stack import Certbot, settled_workers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and sshd")


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["consumers"]}


def test_a_deploy_across_two_hosts_is_proven_and_then_idempotent(
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
    done = world.deploy("--json")
    assert done.returncode == 0, explain(done)
    found = _by_name(json_document(done))
    assert found["web-a"]["host"] == "a" and found["files-b"]["host"] == "b"
    assert found["web-a"]["reloaded"] and found["web-a"]["endpoints"][0]["ok"]
    svc = a.users["svc"].uid
    key = a.stat(PRIVKEY)
    assert (key.uid, key.mode) == (svc, 0o600)
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem
    assert b.read_bytes(FULLCHAIN) == world.issued.fullchain_pem
    assert (b.stat(PRIVKEY).uid, b.stat(PRIVKEY).mode) == (0, 0o600)
    assert not Path(FULLCHAIN).exists() or Path(FULLCHAIN).read_bytes() != world.issued.key_pem
    # For ~100 ms after a reload nginx's old worker still accepts beside the new one.
    settled_workers(nginx.pid, replacing=before)
    served = served_in(world.hosts.controller, a.address, 443, CERT)
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(world.issued.cert_pem.decode())).hexdigest()
    assert served.fingerprint == expected
    inodes = (a.stat(PRIVKEY).inode, b.stat(PRIVKEY).inode)
    again = world.deploy("--json")
    assert again.returncode == 0, explain(again)
    assert not any(c["reloaded"] for c in json_document(again)["consumers"])
    assert (a.stat(PRIVKEY).inode, b.stat(PRIVKEY).inode) == inodes
    nginx.stop()


def test_a_host_down_fails_only_its_own_consumer(world: World) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    world.consumers = {"files-a": consumer_entry(a, "svc"), "files-b": consumer_entry(b, "root")}
    b.stop()
    done = world.deploy("--json")
    assert done.returncode == 1, explain(done)
    found = _by_name(json_document(done))
    assert found["files-a"]["outcome"] == "ok"
    assert found["files-b"]["failed_stage"] == "connect"
    assert "host b (root@198.18.0.12)" in found["files-b"]["error"]
    assert "Connection refused" in found["files-b"]["error"]
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem


def test_a_changed_host_key_is_refused_and_named(world: World) -> None:
    a = world.hosts.hosts["a"]
    world.consumers = {"files-a": consumer_entry(a, "svc")}
    a.new_host_key()
    done = world.deploy()
    assert done.returncode == 1, explain(done)
    assert "failed at connect: host a" in done.stdout
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stdout + done.stderr or (
        "Host key verification failed" in done.stdout
    )
    assert not a.exists(PRIVKEY)


def test_a_user_missing_on_one_host_is_refused_before_anything_there_is_touched(
    world: World,
) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    world.consumers = {"files-a": consumer_entry(a, "svc"), "files-b": consumer_entry(b, "svc")}
    done = world.deploy("--json")
    assert done.returncode == 1, explain(done)
    found = _by_name(json_document(done))
    assert found["files-a"]["outcome"] == "ok"
    assert found["files-b"]["failed_stage"] == "place"
    assert "user svc does not exist on b" in found["files-b"]["error"]
    assert not b.exists(FULLCHAIN) and not b.exists(PRIVKEY)


def test_a_failing_test_on_one_host_puts_its_files_back(world: World) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    b.write(PRIVKEY, b"the old key\n", mode=0o600)
    world.consumers = {
        "files-a": consumer_entry(a, "svc", {"test": ["true"]}),
        "files-b": consumer_entry(b, "root", {"test": ["false"], "reload": ["true"]}),
    }
    done = world.deploy("--json")
    assert done.returncode == 1, explain(done)
    found = _by_name(json_document(done))
    assert found["files-a"]["outcome"] == "ok"
    assert found["files-b"]["failed_stage"] == "test" and found["files-b"]["rolled_back"]
    assert b.read_bytes(PRIVKEY) == b"the old key\n"
    assert not b.exists(FULLCHAIN)
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem


def test_no_python3_on_the_target_is_a_clear_error(hosts: SshHosts, world: World) -> None:
    bare = hosts.add_host("c", path_env="/nonexistent")
    hosts.refresh_known_hosts()
    world.consumers = {"files-c": consumer_entry(bare, "root")}
    done = world.deploy()
    assert done.returncode == 1, explain(done)
    assert "python3 not found on the target" in done.stdout, explain(done)
    assert "set hosts.c.python" in done.stdout


def test_the_agent_runs_under_debian_11s_python_3_9(hosts: SshHosts, world: World) -> None:
    old = hosts.add_host("d", python=ensure_python39(), users=("svc",))
    hosts.refresh_known_hosts()
    version = old.run([str(ensure_python39()), "-c", "import sys; print(sys.version_info[:2])"])
    assert version.stdout.strip() == b"(3, 9)"
    world.consumers = {"files-d": consumer_entry(old, "svc", {"test": ["true"]})}
    done = world.deploy("--json")
    assert done.returncode == 0, explain(done)
    assert old.read_bytes(PRIVKEY) == world.issued.key_pem
    assert (old.stat(PRIVKEY).uid, old.stat(PRIVKEY).mode) == (old.users["svc"].uid, 0o600)


def test_a_full_disk_on_a_target_fails_that_consumer_and_leaves_its_files_whole(
    hosts: SshHosts, world: World
) -> None:
    full = hosts.add_host("e", tmpfs_size="12k")
    hosts.refresh_known_hosts()
    full.write(PRIVKEY, b"the old key\n", mode=0o600)
    filler = b"x" * 4096
    with contextlib.suppress(OSError):
        for i in range(4):
            full.write(f"/srv/tls/filler{i}", filler)
    world.consumers = {"files-e": consumer_entry(full, "root")}
    done = world.deploy("--json")
    assert done.returncode == 1, explain(done)
    (found,) = json_document(done)["consumers"]
    assert found["failed_stage"] == "place", found
    assert "No space left on device" in found["error"], found
    assert full.read_bytes(PRIVKEY) == b"the old key\n"
    listing = full.run(["ls", "-A", "/srv/tls"]).stdout.decode().split()
    assert not [n for n in listing if n.startswith(".")], listing  # no temporary file left


def test_a_connection_killed_mid_run_tears_nothing_and_the_next_run_repairs(
    world: World,
) -> None:
    a = world.hosts.hosts["a"]
    a.write(PRIVKEY, b"the old key\n", mode=0o600)
    world.consumers = {"files-a": consumer_entry(a, "svc", {"reload": ["sleep", "3"]})}
    argv = world.argv("deploy", "--lineage", str(world.live), "--json")
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 20
        while a.read_bytes(PRIVKEY) != world.issued.key_pem and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # in the reload now
        assert a.kill_sessions()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    (found,) = json.loads(out)["consumers"]
    assert found["failed_stage"] == "reload" and "connection lost" in found["error"], found
    # Nothing torn: the key is whole (the new one: it was placed before the cut).
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem
    listing = a.run(["ls", "-A", "/srv/tls"]).stdout.decode().split()
    assert not [n for n in listing if n.startswith(".")], listing
    again = world.deploy("--json")
    assert again.returncode == 0, explain(again)
    (repaired,) = json_document(again)["consumers"]
    assert repaired["reloaded"] and repaired["reload_reason"] == "the last run was interrupted"


def _key_line(issued: Issued) -> bytes:
    return issued.key_pem.splitlines()[1]


def _sample(needle: bytes, stop: threading.Event, seen: list[str], count: list[int]) -> None:
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            for part in ("cmdline", "environ"):
                with contextlib.suppress(OSError):
                    data = Path(f"/proc/{pid}/{part}").read_bytes()
                    if needle in data:
                        seen.append(f"{pid} {part}")
        count[0] += 1


def test_no_key_bytes_in_any_process_argv_or_environment_during_a_deploy(world: World) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    world.consumers = {
        "files-a": consumer_entry(a, "svc", {"test": ["sleep", "0.5"], "reload": ["sleep", "0.5"]}),
        "files-b": consumer_entry(
            b, "root", {"test": ["sleep", "0.5"], "reload": ["sleep", "0.5"]}
        ),
    }
    stop, count = threading.Event(), [0]
    seen: list[str] = []
    sampler = threading.Thread(target=_sample, args=(_key_line(world.issued), stop, seen, count))
    sampler.start()
    try:
        done = world.deploy()
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, explain(done)
    assert a.read_bytes(PRIVKEY) == world.issued.key_pem  # the key did cross
    assert count[0] >= 5, count  # the whole process table was read again and again
    assert seen == []


def test_a_refused_key_fails_that_host_with_sshs_reason(world: World) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    world.consumers = {"files-a": consumer_entry(a, "svc"), "files-b": consumer_entry(b, "root")}
    a.revoke_client_key()
    done = world.deploy("--json")
    assert done.returncode == 1, explain(done)
    found = _by_name(json_document(done))
    assert found["files-a"]["failed_stage"] == "connect"
    assert "host a (root@198.18.0.11)" in found["files-a"]["error"]
    assert "Permission denied" in found["files-a"]["error"]
    assert found["files-b"]["outcome"] == "ok"
    assert not a.exists(PRIVKEY)


def _served_starttls(netns: str, address: str, port: int, dialect: str) -> str:
    """The SHA-256 of the leaf an endpoint serves after STARTTLS, asked from ``netns``."""
    done = run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "openssl",
            "s_client",
            "-connect",
            f"{address}:{port}",
            "-starttls",
            dialect,
        ],
        timeout=20,
    )
    leaf = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", done.stdout, re.S)
    assert leaf is not None, explain(done)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.group(0))).hexdigest()


def test_certbot_renew_with_the_deploy_hook_reaches_two_hosts_and_proves_each(
    world: World, certbot: Certbot, fanout_bin: Path, tmp_path: Path, lineages: LineageFactory
) -> None:
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    old = lineages.ca.issue([CERT_NAME])
    nginx = start_nginx_with(a, old)
    before = settled_workers(nginx.pid)
    b.write(FULLCHAIN, old.fullchain_pem, mode=0o644)
    b.write(PRIVKEY, old.key_pem, mode=0o600)
    dovecot = b.start_dovecot(FULLCHAIN, PRIVKEY, port=143)
    world.consumers = {
        "nginx-a": {
            **consumer_entry(a, "svc"),
            "certificate": CERT_NAME,
            "test": nginx.test_argv,
            "reload": nginx.reload_argv,
            "verify": [{"host": a.address, "port": 443, "server_name": CERT_NAME}],
        },
        "dovecot-b": {
            **consumer_entry(b, "root"),
            "certificate": CERT_NAME,
            "test": dovecot.test_argv,
            "reload": dovecot.reload_argv,
            "verify": [{"host": b.address, "port": 143, "starttls": "imap"}],
        },
    }
    config = world.write_map()
    assert Path(certbot.extra_env["CERTBOT_FANOUT_CONFIG"]) == config
    hook = shlex.join(
        world.hosts.controller_argv(
            [
                str(fanout_bin),
                "--lock-file",
                str(tmp_path / "hook.lock"),
                "--state-file",
                str(tmp_path / "hook-state.json"),
            ]
        )
    )
    result = certbot.renew("--deploy-hook", hook)
    log = (certbot.logs_dir / "letsencrypt.log").read_text()
    assert f"Running deploy-hook command: {hook}" in log, explain(result)
    assert "returned error code" not in log, log[-3000:]
    live = certbot.lineage(CERT_NAME)
    key = (live / "privkey.pem").read_bytes()
    fullchain = (live / "fullchain.pem").read_bytes()
    leaf = hashlib.sha256(ssl.PEM_cert_to_DER_cert((live / "cert.pem").read_text())).hexdigest()
    for host in (a, b):
        assert host.read_bytes(PRIVKEY) == key and host.read_bytes(FULLCHAIN) == fullchain
    assert (a.stat(PRIVKEY).uid, a.stat(PRIVKEY).mode) == (a.users["svc"].uid, 0o600)
    settled_workers(nginx.pid, replacing=before)
    assert served_in(world.hosts.controller, a.address, 443, CERT_NAME).fingerprint == leaf
    assert _served_starttls(world.hosts.controller, b.address, 143, "imap") == leaf
    state = json.loads((tmp_path / "hook-state.json").read_text())
    assert state, "the hook recorded the deploy"
    nginx.stop()
    dovecot.stop()


def test_the_installer_deploys_to_a_host_and_runs_each_test_where_its_consumer_lives(
    world: World, certbot: Certbot, lineages: LineageFactory, tmp_path: Path
) -> None:
    """`certbot install -i fanout` (certbot 5.8, run where the hosts are reached) deploys to
    nginx on host a and proves it; the installer's config_test runs a's test on a and b's on
    b, and names the consumer whose test fails there."""
    a, b = world.hosts.hosts["a"], world.hosts.hosts["b"]
    nginx = start_nginx_with(a, lineages.ca.issue([CERT_NAME]))
    before = settled_workers(nginx.pid)
    world.consumers = {
        "nginx-a": {
            **consumer_entry(a, "svc"),
            "certificate": CERT_NAME,
            "test": nginx.test_argv,
            "reload": nginx.reload_argv,
            "verify": [{"host": a.address, "port": 443, "server_name": CERT_NAME}],
        },
    }
    config = world.write_map()
    state = {"CERTBOT_FANOUT_STATE": str(tmp_path / "installer-state.json")}
    installer = Certbot(
        certbot.pebble,
        certbot.basedir,
        certbot_argv=world.hosts.controller_argv(certbot.certbot_argv),
        extra_env={**certbot.extra_env, **state},
    )
    result = installer.run(
        "install", "--cert-name", CERT_NAME, "-i", "fanout", "--fanout-config", str(config)
    )
    assert result.returncode == 0, explain(result)
    live = certbot.lineage(CERT_NAME)
    assert a.read_bytes(PRIVKEY) == (live / "privkey.pem").read_bytes()
    settled_workers(nginx.pid, replacing=before)
    leaf = hashlib.sha256(ssl.PEM_cert_to_DER_cert((live / "cert.pem").read_text())).hexdigest()
    assert served_in(world.hosts.controller, a.address, 443, CERT_NAME).fingerprint == leaf

    # config_test: each test where its consumer lives (a marker only a's /srv/tls can hold).
    world.consumers["marker-a"] = {
        "host": "a",
        "certificate": CERT_NAME,
        "test": ["sh", "-c", "touch /srv/tls/tested-here"],
    }
    world.consumers["failing-b"] = {"host": "b", "certificate": CERT_NAME, "test": ["false"]}
    code = (
        "import sys, types\n"
        "from certbot import errors\n"
        "from certbot_fanout.plugin import Installer\n"
        "try:\n"
        f"    Installer(types.SimpleNamespace(fanout_config={str(world.write_map())!r}),"
        " 'fanout').config_test()\n"
        "except errors.MisconfigurationError as e:\n"
        "    print(e)\n"
    )
    tested = run(world.hosts.controller_argv([sys.executable, "-c", code]), timeout=120)
    assert tested.returncode == 0, explain(tested)
    assert "config test failed for failing-b:" in tested.stdout, explain(tested)
    assert "nginx-a" not in tested.stdout and "marker-a" not in tested.stdout, tested.stdout
    assert a.exists("/srv/tls/tested-here") and not b.exists("/srv/tls/tested-here")
    nginx.stop()
