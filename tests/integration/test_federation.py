"""Verify the way Matrix federation does: a real Synapse with its own TLS federation listener,
a real nginx serving ``https://example.test/.well-known/matrix/server`` and dnsmasq answering A,
AAAA and SRV, each in network namespaces these tests create (198.18.0.0/24 and 2001:2::/64,
nothing else is ever a target); certbot-fanout runs in the controller namespace, where names
resolve through that dnsmasq, and checks the endpoint ``{federation: example.test, ca_file:
CA}`` of a consumer of the lineage ``example.test`` (names example.test and hs.example.test,
from a private CA).

"Stale" means a service serves the lineage's previous certificate: the lineage holds two
versions, and a scene leaves one service on the first.

The first tests prove the bed itself (names resolve through its dnsmasq, both services answer
over TLS with the lineage's certificates, nothing is left behind); the rest are the issue's
federation cases, through the real CLI. One bed (one Synapse) serves the whole module: a scene
swaps certificates (SIGHUP), the well-known (nginx reload) and the DNS records (dnsmasq
restart) between cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout._pki import ThrowawayCA
from certbot_fanout.model import address_label as label
from tests.support.cli import explain
from tests.support.federation import (
    DELEGATED,
    FED_PORT,
    HTTPS_PORT,
    SERVER,
    SRV_PORT,
    SRV_TARGET,
    SYNAPSE_HOST,
    WEB_HOST,
    FederationBed,
    Scene,
    WellKnown,
    federation_bed,
)
from tests.support.integration import by_name, require_binary
from tests.support.netns import (
    DNS_V4,
    DNSMASQ_BIN,
    IP_BIN,
    NETNS_ETC,
    Dnsmasq,
    Srv,
    TestNetwork,
    leftovers,
    sweep_leftovers,
)
from tests.support.proc import Account, alive, public_tempdir
from tests.support.stack import NGINX_BIN, OPENSSL_BIN

REPO = Path(__file__).resolve().parents[2]
CONSUMER = "matrix"
WELL_KNOWN_URL = f"the well-known at https://{SERVER}/.well-known/matrix/server"
VERIFY_TIMEOUT = 2  # seconds a stale case waits in deploy before it fails

# The scenes: which name resolves to which host, the SRV records, the well-known, and which
# version of the lineage each service serves (0: the previous one; -1: the current one).
BOTH_NAMES = {SERVER: WEB_HOST, DELEGATED: SYNAPSE_HOST}
WELL_KNOWN = Scene(
    names=BOTH_NAMES,
    well_known=WellKnown({"m.server": f"{DELEGATED}:{FED_PORT}"}, "max-age=86400"),  # 24 h
)
BY_SRV = Scene(names=BOTH_NAMES, srv=[Srv(f"_matrix-fed._tcp.{SERVER}", DELEGATED, SRV_PORT)])
PLAIN = Scene(names={SERVER: SYNAPSE_HOST})  # no well-known (nothing on 443), no SRV
# The well-known delegates to hs.example.test without a port; only its SRV record names the
# host and port Synapse listens on.
STALE_SRV_TARGET = Scene(
    names={SERVER: WEB_HOST, SRV_TARGET: SYNAPSE_HOST},
    srv=[Srv(f"_matrix-fed._tcp.{DELEGATED}", SRV_TARGET, SRV_PORT)],
    well_known=WellKnown({"m.server": DELEGATED}),
    synapse_serves=0,
)
STALE_WELL_KNOWN = replace(WELL_KNOWN, web_serves=0)
DEPRECATED_SRV = Scene(names=BOTH_NAMES, srv=[Srv(f"_matrix._tcp.{SERVER}", DELEGATED, SRV_PORT)])
LONG_CACHE = replace(
    WELL_KNOWN, well_known=replace(WELL_KNOWN.well_known, cache_control="max-age=259200")
)  # 72 h: Synapse clamps a well-known's lifetime to 48 h


# --------------------------------------------------------------------------- fixtures


def _require_network_tools() -> None:
    require_binary(IP_BIN, "ip (Debian package iproute2)")
    require_binary(DNSMASQ_BIN, "dnsmasq (Debian package dnsmasq-base)")
    require_binary(OPENSSL_BIN, "openssl")


@pytest.fixture(scope="module")
def network_tools(root: None) -> None:
    """Skip without root or the tools; sweep what a killed run of these tests left."""
    _require_network_tools()
    sweep_leftovers()


@pytest.fixture(scope="module")
def bed(
    network_tools: None, synapse_python: Path, synapse_account: Account, ca: ThrowawayCA
) -> Iterator[FederationBed]:
    """The federation test bed (tests/support/federation.py), once per module."""
    require_binary(NGINX_BIN, "nginx")
    with (
        public_tempdir("certbot-fanout-federation-") as workdir,
        federation_bed(workdir, synapse_python, synapse_account, ca) as built,
    ):
        yield built


# --------------------------------------------------------------------------- helpers


def federation_map(bed: FederationBed, name: str) -> Path:
    """A map whose one consumer only verifies the federation endpoint (no files, no
    reload: the scene put the services where the case needs them)."""
    endpoint = {"federation": SERVER, "ca_file": str(bed.ca_file)}
    consumer = {"certificate": SERVER, "verify": [endpoint], "verify_timeout": VERIFY_TIMEOUT}
    return bed.write_map({CONSUMER: consumer}, name)


def run_json(
    result: subprocess.CompletedProcess[str], code: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON document and its consumer CONSUMER's one endpoint; asserts the exit code."""
    assert result.returncode == code, explain(result)
    doc: dict[str, Any] = json.loads(result.stdout)
    endpoints = by_name(doc)[CONSUMER]["endpoints"]
    assert len(endpoints) == 1, endpoints
    endpoint: dict[str, Any] = endpoints[0]
    return doc, endpoint


def addresses(endpoint: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The endpoint's probed addresses by (address, port)."""
    found = {(a["address"], a["port"]): a for a in endpoint["addresses"]}
    assert len(found) == len(endpoint["addresses"]), endpoint["addresses"]
    return found


def assert_addresses(
    endpoint: dict[str, Any],
    bed: FederationBed,
    host: str,
    name: str,
    port: int,
    server_name: str,
    ok: bool,
    version: int = -1,
) -> None:
    """Every address of bed host ``host`` was probed as an address of the DNS name ``name``
    on ``port`` with SNI ``server_name``, and each served version ``version`` of the lineage
    (``ok`` as expected)."""
    found = addresses(endpoint)
    for address in bed.hosts[host].addresses:
        entry = found.get((address, port))
        assert entry is not None, f"{label(address, port)} not probed: {sorted(found)}"
        assert (entry["host"], entry["server_name"]) == (name, server_name), entry
        assert entry["ok"] is ok, entry
        assert entry["served"] is not None, entry
        assert entry["served"]["sha256"] == bed.fingerprint(version), entry


def assert_current(bed: FederationBed, config: Path) -> dict[str, Any]:
    """deploy --json exits 0 and status (text) exits 0 (OK); the deploy's endpoint."""
    _, endpoint = run_json(bed.deploy(config, "--json"), 0)
    assert endpoint["federation"] == SERVER, endpoint
    assert endpoint["ok"] is True, endpoint
    assert endpoint["warnings"] == [], endpoint
    status = bed.status(config)
    assert status.returncode == 0, explain(status)
    assert "OK" in status.stdout, explain(status)
    return endpoint


# --------------------------------------------------------------------------- the bed


def test_the_bed_resolves_names_through_its_dnsmasq(bed: FederationBed) -> None:
    """From the controller namespace, A, AAAA and SRV come from the bed's dnsmasq (through
    getaddrinfo and dnspython, both reading the namespace's resolv.conf); names it does not
    know are NXDOMAIN; the machine's own resolver file is not the namespace's."""
    bed.scene(BY_SRV)
    syn = bed.hosts[SYNAPSE_HOST]

    resolv = bed.run(["cat", "/etc/resolv.conf"])
    assert resolv.stdout.startswith(f"nameserver {DNS_V4}\n"), explain(resolv)
    assert Path("/etc/resolv.conf").read_text() != resolv.stdout

    ahosts = bed.run(["getent", "ahosts", DELEGATED])
    assert ahosts.returncode == 0, explain(ahosts)
    assert {line.split()[0] for line in ahosts.stdout.splitlines()} == set(syn.addresses)
    missing = bed.run(["getent", "hosts", f"nothing.{SERVER}"])
    assert missing.returncode == 2, explain(missing)  # 2: not found

    query = (
        "import dns.resolver as r\n"
        "def ask(name, kind):\n"
        "    try:\n"
        "        return sorted(x.to_text() for x in r.resolve(name, kind))\n"
        "    except r.NXDOMAIN:\n"
        "        return 'NXDOMAIN'\n"
        f"print(ask('_matrix-fed._tcp.{SERVER}', 'SRV'))\n"
        f"print(ask('_matrix._tcp.{SERVER}', 'SRV'))\n"
        f"print(ask('{DELEGATED}', 'AAAA'))\n"
        f"print(ask('{DELEGATED}', 'A'))\n"
    )
    answers = bed.run([sys.executable, "-c", query])
    assert answers.returncode == 0, explain(answers)
    assert answers.stdout.splitlines() == [
        str([f"10 0 {SRV_PORT} {DELEGATED}."]),
        "NXDOMAIN",
        str([syn.ipv6]),
        str([syn.ipv4]),
    ], explain(answers)
    assert f"query[SRV] _matrix-fed._tcp.{SERVER} from" in bed.dns.log()


def test_the_bed_serves_federation_and_the_well_known_over_tls(bed: FederationBed) -> None:
    """openssl s_client in the controller namespace: Synapse's federation ports and nginx's
    443 each serve the lineage's certificate on every address, verified against the private
    CA for the right names; a scene can leave a service on the previous certificate; the
    well-known answers over HTTPS with its JSON and Cache-Control."""
    bed.scene(WELL_KNOWN)
    syn, web = bed.hosts[SYNAPSE_HOST], bed.hosts[WEB_HOST]
    current = bed.fingerprint()
    for address in syn.addresses:
        for port in (FED_PORT, SRV_PORT):
            for name in (SERVER, DELEGATED):
                served = bed.served(address, port, name)
                assert (served.fingerprint, served.verified) == (current, True), served
    for address in web.addresses:
        served = bed.served(address, HTTPS_PORT, SERVER)
        assert (served.fingerprint, served.verified) == (current, True), served
    # The check can fail: a name the certificate does not hold does not verify.
    wrong = bed.served(syn.ipv4, FED_PORT, "elsewhere.test")
    assert wrong.verified is False and wrong.verify_error, wrong

    fetch = (
        "import ssl, urllib.request\n"
        f"ctx = ssl.create_default_context(cafile={str(bed.ca_file)!r})\n"
        f"r = urllib.request.urlopen('https://{SERVER}/.well-known/matrix/server', context=ctx)\n"
        "print(r.headers['Cache-Control']); print(r.read().decode())\n"
    )
    got = bed.run([sys.executable, "-c", fetch])
    assert got.returncode == 0, explain(got)
    cache, body = got.stdout.splitlines()
    assert cache == "max-age=86400"
    assert json.loads(body) == {"m.server": f"{DELEGATED}:{FED_PORT}"}

    bed.scene(STALE_WELL_KNOWN)
    for address in web.addresses:
        served = bed.served(address, HTTPS_PORT, SERVER)
        assert (served.fingerprint, served.verified) == (bed.fingerprint(0), True), served
    for address in syn.addresses:
        assert bed.served(address, FED_PORT, DELEGATED).fingerprint == current


def _tree_of(stem: str) -> list[str]:
    return [str(p) for p in NETNS_ETC.glob(f"{stem}*")] if NETNS_ETC.is_dir() else []


def test_a_closed_network_leaves_no_namespace_directory_or_process(
    network_tools: None, tmp_path: Path
) -> None:
    """A network with two hosts, its dnsmasq, a daemon and a process that left its parent:
    closing it leaves no namespace, no /etc/netns directory and no process; neither does a
    network whose building fails half-way. (The set-up and teardown times are printed.)"""
    started = time.monotonic()
    with TestNetwork() as net:
        host = net.add_host("a")
        net.add_host("b")
        Dnsmasq(net, tmp_path / "dns").serve({f"a.{SERVER}": host.addresses})
        built = time.monotonic() - started
        daemon = net.spawn(host.netns, ["sleep", "600"], tmp_path / "sleep.log")
        # A process nobody holds a handle of: setsid -f forks it off and exits.
        subprocess.run(
            host.argv(["setsid", "-f", "sleep", "601"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True, timeout=30,
        )  # fmt: skip
        stem, pids = net.stem, net.pids()
        assert daemon.pid in pids and len(pids) == 3, pids  # dnsmasq, sleep 600, sleep 601
        assert len(leftovers(stem)) == 3 + 1 + 3, leftovers(stem)  # 3 netns, 1 etc, 3 pids
        closing = time.monotonic()
    closed = time.monotonic() - closing
    assert leftovers(stem) == [] and _tree_of(stem) == []
    assert not any(alive(p) for p in pids), pids
    print(f"\nnetwork of 2 hosts with dnsmasq: up {built:.3f} s, down {closed:.3f} s")

    stems: list[str] = []

    def build_half_way() -> None:
        with TestNetwork() as broken:
            stems.append(broken.stem)
            broken.add_host("a")
            broken.add_host("a")  # a second host of one label: ValueError

    with pytest.raises(ValueError, match="host a exists"):
        build_half_way()
    assert stems and leftovers(stems[0]) == []


def test_the_leftovers_of_a_killed_run_are_swept(network_tools: None) -> None:
    """A run killed with its network up leaves namespaces, /etc/netns and a process behind;
    ``sweep_leftovers`` removes them by name, and leaves a live run's network alone."""
    script = (
        "import os, signal, subprocess\n"
        "from tests.support.netns import TestNetwork\n"
        "net = TestNetwork(); net.open(); host = net.add_host('a')\n"
        "subprocess.run(host.argv(['setsid', '-f', 'sleep', '602']), check=True,\n"
        "               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(net.stem, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL, killed
    stem = killed.stdout.strip()
    left = leftovers(stem)
    assert any(x.startswith("pid ") for x in left) and _tree_of(stem), left

    with TestNetwork() as live:
        removed = sweep_leftovers()
        assert f"{stem}-ctl" in removed and f"{stem}-h1" in removed, removed
        assert leftovers(stem) == []
        assert not any(name.startswith(live.stem) for name in removed), removed
        assert leftovers(live.stem), "the live network was swept"


# --------------------------------------------------------------------------- federation


def test_delegation_by_well_known(bed: FederationBed) -> None:
    """A real deploy: Synapse's and nginx's copies placed, Synapse sent SIGHUP, nginx
    reloaded, and the federation endpoint proven through the well-known's delegation to
    hs.example.test:8448, on both of Synapse's addresses, and the well-known's own HTTPS on
    both of nginx's. The 24 h cache lifetime warns of nothing."""
    bed.scene(replace(WELL_KNOWN, synapse_serves=0, web_serves=0))
    syn, nginx, acct = bed.synapse, bed.nginx, bed.account
    web_host = bed.hosts[WEB_HOST]
    endpoint = {"federation": SERVER, "ca_file": str(bed.ca_file)}
    consumers = {
        "synapse": {
            "certificate": SERVER,
            "files": [
                {"path": str(syn.cert_path), "content": "fullchain",
                 "owner": acct.name, "group": acct.name},
                {"path": str(syn.key_path), "content": "privkey",
                 "owner": acct.name, "group": acct.name, "mode": "0600"},
            ],
            "reload": syn.reload_argv(),
            "verify": [endpoint],
            "verify_timeout": 20,
        },
        "web": {
            "certificate": SERVER,
            "files": [
                {"path": str(nginx.cert_path), "content": "fullchain"},
                {"path": str(nginx.key_path), "content": "privkey"},
            ],
            # nginx -t binds its listeners: it runs on the web host, as an admin's would.
            "test": web_host.argv(nginx.test_argv()),
            "reload": web_host.argv(nginx.reload_argv()),
            "verify": [{"host": SERVER, "port": HTTPS_PORT}],
            "verify_timeout": 20,
        },
    }  # fmt: skip
    config = bed.write_map(consumers, "well-known-deploy")

    result = bed.deploy(config, "--json")

    assert result.returncode == 0, explain(result)
    doc = json.loads(result.stdout)
    synapse = by_name(doc)["synapse"]
    assert synapse["reloaded"] is True, synapse
    (fed,) = synapse["endpoints"]
    assert fed["federation"] == SERVER and fed["ok"] is True, fed
    assert "well-known" in fed["resolution"], fed
    assert f"{DELEGATED}:{FED_PORT}" in fed["resolution"], fed
    assert fed["warnings"] == [], fed
    assert_addresses(fed, bed, SYNAPSE_HOST, DELEGATED, FED_PORT, DELEGATED, ok=True)
    assert_addresses(fed, bed, WEB_HOST, SERVER, HTTPS_PORT, SERVER, ok=True)
    for address in bed.hosts[SYNAPSE_HOST].addresses:
        assert bed.served(address, FED_PORT, DELEGATED).fingerprint == bed.fingerprint()

    status = bed.status(config, "--json")
    assert status.returncode == 0, explain(status)
    doc = json.loads(status.stdout)
    assert doc["status"] == "OK", doc
    (fed,) = by_name(doc)["synapse"]["endpoints"]
    assert_addresses(fed, bed, SYNAPSE_HOST, DELEGATED, FED_PORT, DELEGATED, ok=True)


def test_delegation_by_srv(bed: FederationBed) -> None:
    """No well-known (nginx answers 404): _matrix-fed._tcp.example.test names
    hs.example.test:8449, probed on both addresses with SNI example.test."""
    bed.scene(BY_SRV)
    config = federation_map(bed, "srv")
    endpoint = assert_current(bed, config)
    assert f"_matrix-fed._tcp.{SERVER}" in endpoint["resolution"], endpoint
    assert f"{DELEGATED}:{SRV_PORT}" in endpoint["resolution"], endpoint
    assert_addresses(endpoint, bed, SYNAPSE_HOST, DELEGATED, SRV_PORT, SERVER, ok=True)
    # check connects where peers would (each SRV target's address, the well-known's server).
    checked = bed.cli("check", "--config", str(config), "--config-dir", str(bed.config_dir))
    assert checked.returncode == 0, explain(checked)
    bed.scene(replace(BY_SRV, srv=[Srv(f"_matrix-fed._tcp.{SERVER}", DELEGATED, 8450)]))
    checked = bed.cli("check", "--config", str(config), "--config-dir", str(bed.config_dir))
    assert checked.returncode == 1, explain(checked)
    refused = f":8450 (of federation {SERVER}) (Connection refused)"
    assert refused in checked.stdout, explain(checked)


def test_plain_8448(bed: FederationBed) -> None:
    """No well-known (nothing listens on example.test:443), no SRV: example.test:8448."""
    bed.scene(PLAIN)
    endpoint = assert_current(bed, federation_map(bed, "plain"))
    assert "no well-known" in endpoint["resolution"], endpoint
    assert "no SRV" in endpoint["resolution"], endpoint
    assert f"{SERVER}:{FED_PORT}" in endpoint["resolution"], endpoint
    assert_addresses(endpoint, bed, SYNAPSE_HOST, SERVER, FED_PORT, SERVER, ok=True)


def test_a_stale_srv_target_behind_a_current_well_known(bed: FederationBed) -> None:
    """The well-known (current) delegates to hs.example.test; only the SRV record
    _matrix-fed._tcp.hs.example.test leads to synapse.example.test:8449, which serves the
    previous certificate: deploy fails (1) and status is CRITICAL (2), naming each stale
    address and the path that led there."""
    bed.scene(STALE_SRV_TARGET)
    config = federation_map(bed, "stale-srv-target")
    syn = bed.hosts[SYNAPSE_HOST]

    deployed = bed.deploy(config)

    assert deployed.returncode == 1, explain(deployed)
    text = deployed.stdout + deployed.stderr
    assert f"federation {SERVER} (" in text, explain(deployed)
    assert f"_matrix-fed._tcp.{DELEGATED}" in text, explain(deployed)
    assert f"{SRV_TARGET}:{SRV_PORT}" in text, explain(deployed)
    assert "serves another certificate" in text, explain(deployed)
    for address in syn.addresses:
        assert f"{label(address, SRV_PORT)} (SNI {DELEGATED}" in text, explain(deployed)

    doc, endpoint = run_json(bed.status(config, "--json"), 2)
    assert doc["status"] == "CRITICAL", doc
    assert endpoint["ok"] is False, endpoint
    assert f"_matrix-fed._tcp.{DELEGATED}" in endpoint["resolution"], endpoint
    assert_addresses(
        endpoint, bed, SYNAPSE_HOST, SRV_TARGET, SRV_PORT, DELEGATED, ok=False, version=0
    )
    assert_addresses(endpoint, bed, WEB_HOST, SERVER, HTTPS_PORT, SERVER, ok=True)
    problems = " ".join(by_name(doc)[CONSUMER]["problems"])
    assert f"{label(syn.ipv4, SRV_PORT)} (SNI {DELEGATED}" in problems, problems


def test_a_well_known_served_with_a_stale_certificate(bed: FederationBed) -> None:
    """Synapse is current, but nginx serves the well-known with the previous certificate:
    the well-known's HTTPS is a consumer of the certificate too, and fails the endpoint."""
    bed.scene(STALE_WELL_KNOWN)
    config = federation_map(bed, "stale-well-known")
    web = bed.hosts[WEB_HOST]

    deployed = bed.deploy(config)

    assert deployed.returncode == 1, explain(deployed)
    text = deployed.stdout + deployed.stderr
    assert f"federation {SERVER} (" in text, explain(deployed)
    assert "serves another certificate" in text, explain(deployed)
    for address in web.addresses:
        # The stale address is the well-known's, not a place the resolution led to: say so.
        where = f"{WELL_KNOWN_URL}: {label(address, HTTPS_PORT)} (SNI {SERVER}"
        assert where in text, explain(deployed)

    doc, endpoint = run_json(bed.status(config, "--json"), 2)
    assert doc["status"] == "CRITICAL", doc
    assert_addresses(endpoint, bed, WEB_HOST, SERVER, HTTPS_PORT, SERVER, ok=False, version=0)
    assert_addresses(endpoint, bed, SYNAPSE_HOST, DELEGATED, FED_PORT, DELEGATED, ok=True)
    status = bed.status(config)
    assert status.returncode == 2, explain(status)
    for address in web.addresses:
        where = f"{WELL_KNOWN_URL}: {label(address, HTTPS_PORT)} (SNI {SERVER}"
        assert where in status.stdout, explain(status)


def test_the_deprecated_srv_record_warns(bed: FederationBed) -> None:
    """Only the deprecated _matrix._tcp record leads to Synapse: every address is current,
    so deploy succeeds, but status is a WARNING (1) that says the deprecated SRV is used."""
    bed.scene(DEPRECATED_SRV)
    config = federation_map(bed, "deprecated-srv")

    deployed = bed.deploy(config)
    assert deployed.returncode == 0, explain(deployed)

    doc, endpoint = run_json(bed.status(config, "--json"), 1)
    assert doc["status"] == "WARNING", doc
    assert f"_matrix._tcp.{SERVER}" in endpoint["resolution"], endpoint
    assert any(
        f"_matrix._tcp.{SERVER}" in w and "deprecated" in w.lower() for w in endpoint["warnings"]
    ), endpoint
    assert_addresses(endpoint, bed, SYNAPSE_HOST, DELEGATED, SRV_PORT, SERVER, ok=True)


def test_a_well_known_cache_lifetime_over_48_hours_warns(bed: FederationBed) -> None:
    """The well-known says max-age=259200 (72 h); Synapse keeps a delegation at most 48 h,
    so peers may hold the old one that long: status is a WARNING (1) that says so."""
    bed.scene(LONG_CACHE)
    config = federation_map(bed, "long-cache")

    deployed = bed.deploy(config)
    assert deployed.returncode == 0, explain(deployed)

    doc, endpoint = run_json(bed.status(config, "--json"), 1)
    assert doc["status"] == "WARNING", doc
    assert any("cache" in w.lower() for w in endpoint["warnings"]), endpoint
    assert_addresses(endpoint, bed, SYNAPSE_HOST, DELEGATED, FED_PORT, DELEGATED, ok=True)
