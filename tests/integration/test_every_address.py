"""Every address of a name is verified on its own (issue 14, items 1 and 6).

A real nginx serves one name on 127.0.0.1 and on [::1] of one port, from two server blocks:
one reads the files the consumer places, the other a forgotten copy of last renewal's
certificate. The map names the host (``dual.example.test``, or ``localhost``), and the name is
resolved as every client resolves it: through /etc/hosts, here a hosts file bind-mounted over
/etc/hosts in a private mount namespace the CLI runs in (the machine's own /etc/hosts is never
touched). The real CLI (``python -m certbot_fanout``) deploys and checks; ``openssl s_client``
proves the bed on its own first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certbot_fanout._pki import Issued, ThrowawayCA
from tests.support.cli import explain, json_document, run
from tests.support.hosts import with_hosts_file
from tests.support.integration import pem_serial, require_binary, write_copies
from tests.support.lineages import LineageFactory
from tests.support.maps import write_map
from tests.support.stack import (
    NGINX_BIN,
    Nginx,
    NginxServer,
    children,
    file_fingerprint,
    openssl_served,
    pem_fingerprint,
    settled_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root")]

NAME = "dual.example.test"
PARTLY = "partly.example.test"  # 127.0.0.1, where nginx listens, and 127.0.0.2, where nothing does
ROOT = Path(__file__).resolve().parents[2]
HOSTS = f"""\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
127.0.0.1 {NAME}
::1 {NAME}
127.0.0.1 {PARTLY}
127.0.0.2 {PARTLY}
"""
V4, V6 = "127.0.0.1", "::1"
CLI_TIMEOUT = 60


def label(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --------------------------------------------------------------------------- the bed


@pytest.fixture(scope="module")
def hosts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hosts") / "hosts"
    path.write_text(HOSTS)
    path.chmod(0o644)
    return path


@dataclass(frozen=True)
class Renewed:
    """A lineage NAME renewed once: live/ holds ``current``; ``previous`` is last renewal's."""

    config_dir: Path
    previous: Issued
    current: Issued


@pytest.fixture(scope="module")
def renewed(tmp_path_factory: pytest.TempPathFactory) -> Renewed:
    config_dir = tmp_path_factory.mktemp("letsencrypt")
    lineages = LineageFactory(ThrowawayCA("every address"), config_dir)
    _, previous = lineages.issue(NAME)
    _, current = lineages.renew(NAME)
    return Renewed(config_dir, previous, current)


@dataclass
class Bed:
    """nginx on V4 and V6 of one port; the consumer places ``placed``, nginx's other block may
    read ``forgotten`` (last renewal's certificate) instead."""

    renewed: Renewed
    nginx: Nginx
    placed: tuple[Path, Path]
    tmp: Path
    hosts: Path

    @property
    def port(self) -> int:
        return self.nginx.port

    def consumer_map(self, host: str = NAME, **endpoint: Any) -> Path:
        cert, key = self.placed
        consumer = {
            "certificate": NAME,
            "files": [
                {"path": str(cert), "content": "fullchain", "mode": "0644"},
                {"path": str(key), "content": "privkey", "mode": "0600"},
            ],
            "test": self.nginx.test_argv(),
            "reload": self.nginx.reload_argv(),
            "verify": [{"host": host, "port": self.port, "server_name": NAME, **endpoint}],
            "verify_timeout": 2,
        }
        return write_map(self.tmp / "map", {"version": 1, "consumers": {"web": consumer}})

    def fanout(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI in a private mount namespace whose /etc/hosts is ``hosts``."""
        argv = [
            sys.executable, "-m", "certbot_fanout", command,
            "--config", str(self.tmp / "map" / "consumers.yaml"),
            "--config-dir", str(self.renewed.config_dir),
            "--state-file", str(self.tmp / "state.json"),
            "--lock-file", str(self.tmp / "fanout.lock"),
            *args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return run(with_hosts_file(self.hosts, argv), env=env, timeout=CLI_TIMEOUT)

    def deploy(self) -> subprocess.CompletedProcess[str]:
        return self.fanout("deploy", "--cert-name", NAME)

    def status_json(self, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        proc = self.fanout("status", "--json", *args)
        return proc, json_document(proc)


@pytest.fixture
def start_bed(
    renewed: Renewed, hosts_file: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Bed]:
    """``start_bed(stale=ADDRESS | None)``: nginx with the placed copies (last renewal's
    certificate until a deploy) on both addresses, except on ``stale``, which reads a
    forgotten copy of last renewal's certificate that no deploy touches."""
    require_binary(NGINX_BIN, "nginx")
    previous = renewed.previous

    def start(stale: str | None = None) -> Bed:
        placed = write_copies(tmp_path / "tls" / "placed", previous.fullchain_pem, previous.key_pem)
        forgotten = write_copies(
            tmp_path / "tls" / "forgotten", previous.fullchain_pem, previous.key_pem
        )
        servers = [
            NginxServer((f"[{a}]" if ":" in a else a,), (forgotten if a == stale else placed,))
            for a in (V4, V6)
        ]
        nginx = Nginx(tmp_path / "nginx", *placed, server_name=NAME, servers=servers)
        request.addfinalizer(nginx.stop)
        nginx.start()
        return Bed(renewed, nginx, placed, tmp_path, hosts_file)

    return start


def served_at(address: str, port: int) -> str:
    """The leaf's SHA-256 that ``openssl s_client`` gets from one address, -4 or -6."""
    family = "-6" if ":" in address else "-4"
    host = f"[{address}]" if ":" in address else address
    return openssl_served(port, NAME, host=host, options=[family]).fingerprint


def fingerprint(issued: Issued) -> str:
    return pem_fingerprint(issued.cert_pem)


def addresses(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The one consumer's one endpoint's addresses by IP literal."""
    (consumer,) = doc["consumers"]
    (endpoint,) = consumer["endpoints"]
    assert "addresses" in endpoint, f"the endpoint lists no addresses: {endpoint}"
    found = {str(a["address"]): a for a in endpoint["addresses"]}
    assert len(found) == len(endpoint["addresses"]), endpoint["addresses"]
    return found


def address_ok_samples(path: Path) -> dict[str, float]:
    """certbot_fanout_endpoint_address_ok samples in a metrics file, by their address label."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == "certbot_fanout_endpoint_address_ok":
                address = sample.labels["address"]
                assert address not in samples, f"two samples for {address}"
                assert sample.labels["consumer"] == "web", sample
                assert sample.labels["certificate"] == NAME, sample
                samples[address] = sample.value
    return samples


def test_the_bed_serves_different_certificates_per_address(start_bed: Callable[..., Bed]) -> None:
    """Independent of the product: openssl sees last renewal's certificate on 127.0.0.1 and the
    current one on [::1]; inside the namespace the name has both addresses, outside it none."""
    bed = start_bed(stale=V4)
    write_copies(bed.tmp / "tls" / "placed", bed.renewed.current.fullchain_pem,
                 bed.renewed.current.key_pem)  # fmt: skip
    before = frozenset(children(bed.nginx.pid))
    run(bed.nginx.reload_argv(), timeout=30, check=True)
    settled_workers(bed.nginx.pid, replacing=before)
    current = file_fingerprint(bed.renewed.config_dir / "live" / NAME / "cert.pem")
    assert current == fingerprint(bed.renewed.current)
    assert served_at(V4, bed.port) == fingerprint(bed.renewed.previous)
    assert served_at(V6, bed.port) == current
    inside = run(with_hosts_file(bed.hosts, ["getent", "ahosts", NAME]), timeout=30)
    got = {line.split()[0] for line in inside.stdout.splitlines()}
    assert got == {V4, V6}, explain(inside)
    outside = run(["getent", "ahosts", NAME], timeout=30)
    assert outside.returncode == 2, "the test name leaked into this machine's resolver"


# --------------------------------------------------------------------------- one address stale


@pytest.mark.parametrize("host", [NAME, "localhost"])
@pytest.mark.parametrize("stale", [V4, V6], ids=["stale-ipv4", "stale-ipv6"])
def test_a_stale_address_fails_deploy_and_status_naming_it(
    start_bed: Callable[..., Bed], tmp_path: Path, host: str, stale: str
) -> None:
    bed = start_bed(stale=stale)
    fresh = V6 if stale == V4 else V4
    bed.consumer_map(host=host)
    previous_serial = pem_serial(bed.renewed.previous.cert_pem)
    current_serial = pem_serial(bed.renewed.current.cert_pem)

    deployed = bed.deploy()
    assert deployed.returncode == 1, explain(deployed)
    assert label(stale, bed.port) in deployed.stdout, explain(deployed)
    assert previous_serial in deployed.stdout, explain(deployed)

    text = bed.fanout("status")
    assert text.returncode == 2, explain(text)
    assert text.stdout.startswith("CRITICAL"), explain(text)
    problems = [line for line in text.stdout.splitlines() if line.startswith("web: ")]
    assert any(label(stale, bed.port) in p and previous_serial in p for p in problems), explain(
        text
    )
    assert not any(label(fresh, bed.port) in p for p in problems), explain(text)

    metrics = tmp_path / "fanout.prom"
    proc, doc = bed.status_json("--prometheus", str(metrics))
    assert proc.returncode == 2, explain(proc)
    found = addresses(doc)
    assert set(found) == {V4, V6}, found
    assert found[stale]["ok"] is False, found[stale]
    assert found[stale]["served"]["serial"] == previous_serial, found[stale]
    assert found[fresh]["ok"] is True, found[fresh]
    assert found[fresh]["served"]["serial"] == current_serial, found[fresh]
    for entry in found.values():
        assert entry["host"] == host, entry
        assert entry["port"] == bed.port, entry
        assert entry["server_name"] == NAME, entry
    assert address_ok_samples(metrics) == {
        label(stale, bed.port): 0.0,
        label(fresh, bed.port): 1.0,
    }


# --------------------------------------------------------------------------- every address current


def test_both_addresses_current_deploy_and_status_ok(
    start_bed: Callable[..., Bed], tmp_path: Path
) -> None:
    bed = start_bed()
    bed.consumer_map()
    deployed = bed.fanout("deploy", "--cert-name", NAME, "--json")
    assert deployed.returncode == 0, explain(deployed)
    proved = addresses(json.loads(deployed.stdout))
    assert set(proved) == {V4, V6}, proved
    assert all(entry["ok"] is True for entry in proved.values()), proved

    metrics = tmp_path / "fanout.prom"
    proc, doc = bed.status_json("--prometheus", str(metrics))
    assert proc.returncode == 0, explain(proc)
    assert doc["status"] == "OK", doc
    current_serial = pem_serial(bed.renewed.current.cert_pem)
    found = addresses(doc)
    assert set(found) == {V4, V6}, found
    for entry in found.values():
        assert entry["ok"] is True, entry
        assert entry["error"] is None, entry
        assert entry["served"]["serial"] == current_serial, entry
        assert entry["host"] == NAME, entry
    assert address_ok_samples(metrics) == {label(V4, bed.port): 1.0, label(V6, bed.port): 1.0}


def test_family_ipv4_checks_only_the_ipv4_address(start_bed: Callable[..., Bed]) -> None:
    """``family: ipv4``: [::1] serves last renewal's certificate, and is not checked."""
    bed = start_bed(stale=V6)
    bed.consumer_map(family="ipv4")
    deployed = bed.deploy()
    assert deployed.returncode == 0, explain(deployed)
    proc, doc = bed.status_json()
    assert proc.returncode == 0, explain(proc)
    found = addresses(doc)
    assert set(found) == {V4}, found
    assert found[V4]["ok"] is True, found
    (endpoint,) = doc["consumers"][0]["endpoints"]
    assert endpoint["family"] == "ipv4", endpoint


def test_an_address_nothing_listens_on_is_critical_naming_it(
    start_bed: Callable[..., Bed],
) -> None:
    bed = start_bed()
    bed.consumer_map()
    deployed = bed.deploy()
    assert deployed.returncode == 0, explain(deployed)
    bed.consumer_map(host=PARTLY)
    text = bed.fanout("status")
    assert text.returncode == 2, explain(text)
    dead = label("127.0.0.2", bed.port)
    problems = [line for line in text.stdout.splitlines() if line.startswith("web: ")]
    assert any(dead in p for p in problems), explain(text)
    proc, doc = bed.status_json()
    assert proc.returncode == 2, explain(proc)
    found = addresses(doc)
    assert set(found) == {V4, "127.0.0.2"}, found
    assert found[V4]["ok"] is True, found[V4]
    assert found["127.0.0.2"]["ok"] is False, found["127.0.0.2"]
    assert found["127.0.0.2"]["served"] is None, found["127.0.0.2"]
    assert found["127.0.0.2"]["error"], found["127.0.0.2"]


@pytest.fixture(autouse=True)
def _no_leak() -> Iterator[None]:
    """The hosts file never reaches this machine's own /etc/hosts."""
    before = Path("/etc/hosts").read_bytes()
    yield
    assert Path("/etc/hosts").read_bytes() == before
