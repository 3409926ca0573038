"""Every key type of a name is verified by its own consumer (issue 14, items 2 and 6).

Certbot's usual dual-certificate setup, for real: two lineages for one name from a real ACME
server (pebble), an ECDSA one (certbot's default) and one issued with ``--key-type rsa
--cert-name NAME-rsa``, and one real nginx server block holding both certificates (RSA listed
first, as in nginx's own example). nginx presents the certificate that fits what the client
offers; a probe that offers everything always gets the ECDSA one. The map has one consumer per
lineage, both verifying the same endpoint.

Both lineages are issued and renewed once per module; every test starts nginx on the placed
copies, which hold each lineage's previous certificate until a deploy places the current one.
A "stale" lineage is one whose pair in nginx's configuration points at a forgotten copy of its
previous certificate, which no deploy touches. ``openssl s_client`` proves the bed first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import explain, json_document, run
from tests.support.integration import by_name, pem_serial, require_binary, write_copies
from tests.support.maps import write_map
from tests.support.monitoring import sections
from tests.support.stack import (
    NGINX_BIN,
    OPENSSL_BIN,
    Certbot,
    Nginx,
    NginxServer,
    Pebble,
    file_fingerprint,
    openssl_served,
    pem_fingerprint,
    served_fingerprint,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root")]

NAME = "keytypes.fanout.test"
RSA_LINEAGE = f"{NAME}-rsa"
LINEAGES = (NAME, RSA_LINEAGE)
CONSUMER = {NAME: "web-ecdsa", RSA_LINEAGE: "web-rsa"}
KEY_TYPE = {NAME: "ecdsa", RSA_LINEAGE: "rsa"}
ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 90
# What openssl offers to get one key type's certificate: TLS 1.3 signature algorithms, or
# TLS 1.2 cipher suites (with the matching signature algorithms).
OFFER = {
    ("TLSv1.3", "rsa"): ["-tls1_3", "-sigalgs", "RSA-PSS+SHA256"],
    ("TLSv1.3", "ecdsa"): ["-tls1_3", "-sigalgs", "ECDSA+SHA256"],
    ("TLSv1.2", "rsa"): ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
    ("TLSv1.2", "ecdsa"): ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
}
# nginx 1.22 (Debian 12) enables TLS 1.3 only when ssl_protocols names it.
BOTH = "TLSv1.2 TLSv1.3"
PROTOCOLS = [BOTH, "TLSv1.2", "TLSv1.3"]
PROTOCOL_IDS = ["tls1.2-and-1.3", "tls1.2-only", "tls1.3-only"]


# --------------------------------------------------------------------------- the bed


@dataclass(frozen=True)
class Dual:
    """The two lineages, renewed once; ``previous`` holds each one's files from before."""

    certbot: Certbot
    previous: dict[str, tuple[bytes, bytes]]  # lineage -> (fullchain, privkey)

    def current(self, lineage: str) -> tuple[bytes, bytes]:
        live = self.certbot.lineage(lineage)
        return (live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes()

    def cert_pem(self, lineage: str) -> bytes:
        return (self.certbot.lineage(lineage) / "cert.pem").read_bytes()

    def serial(self, lineage: str) -> str:
        return pem_serial(self.cert_pem(lineage))

    def previous_serial(self, lineage: str) -> str:
        return pem_serial(self.previous[lineage][0])

    def fingerprint(self, lineage: str) -> str:
        return file_fingerprint(self.certbot.lineage(lineage) / "cert.pem")


@pytest.fixture(scope="module")
def dual(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Dual:
    certbot = Certbot(pebble, tmp_path_factory.mktemp("certbot-dual"))
    certbot.issue(NAME)
    certbot.issue(NAME, cert_name=RSA_LINEAGE, options=["--key-type", "rsa"])
    before = Dual(certbot, {})
    previous = {lineage: before.current(lineage) for lineage in LINEAGES}
    certbot.renew()
    return Dual(certbot, previous)


@dataclass
class Bed:
    dual: Dual
    nginx: Nginx
    placed: dict[str, tuple[Path, Path]]
    tmp: Path

    @property
    def port(self) -> int:
        return self.nginx.port

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}"

    def consumer_map(self, lineages: tuple[str, ...] = LINEAGES) -> Path:
        """A map with a consumer for each of ``lineages``, all verifying the one endpoint."""
        consumers = {
            CONSUMER[lineage]: {
                "certificate": lineage,
                "files": [
                    {"path": str(self.placed[lineage][0]), "content": "fullchain"},
                    {"path": str(self.placed[lineage][1]), "content": "privkey", "mode": "0600"},
                ],
                "test": self.nginx.test_argv(),
                "reload": self.nginx.reload_argv(),
                "verify": [{"host": "127.0.0.1", "port": self.port, "server_name": NAME}],
                "verify_timeout": 2,
            }
            for lineage in lineages
        }
        return write_map(self.tmp / "map", {"version": 1, "consumers": consumers})

    def fanout(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable, "-m", "certbot_fanout", command,
            "--config", str(self.tmp / "map" / "consumers.yaml"),
            "--config-dir", str(self.dual.certbot.config_dir),
            "--state-file", str(self.tmp / "state.json"),
            "--lock-file", str(self.tmp / "fanout.lock"),
            *args,
        ]  # fmt: skip
        return run(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=CLI_TIMEOUT)

    def deploy(self, lineage: str) -> subprocess.CompletedProcess[str]:
        return self.fanout("deploy", "--cert-name", lineage)

    def status_json(self, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        proc = self.fanout("status", "--json", *args)
        return proc, json_document(proc)


@pytest.fixture
def start_bed(dual: Dual, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Bed]:
    """``start_bed(stale=LINEAGE | None, protocols=BOTH | "TLSv1.2" | "TLSv1.3")``: nginx on
    a port of its own with both lineages' pairs (a stale lineage's pair: a forgotten copy);
    with ``current``, the placed copies hold the current certificates from the start."""
    require_binary(NGINX_BIN, "nginx")

    beds: list[Bed] = []

    def start(stale: str | None = None, protocols: str = BOTH, *, current: bool = False) -> Bed:
        base = tmp_path / f"bed{len(beds)}"
        placed, pairs = {}, {}
        for lineage in LINEAGES:
            files = dual.current(lineage) if current else dual.previous[lineage]
            placed[lineage] = write_copies(base / "tls" / lineage, *files)
            forgotten = write_copies(base / "forgotten" / lineage, *dual.previous[lineage])
            pairs[lineage] = forgotten if lineage == stale else placed[lineage]
        server = NginxServer(("127.0.0.1",), (pairs[RSA_LINEAGE], pairs[NAME]), protocols)
        nginx = Nginx(base / "nginx", *pairs[NAME], server_name=NAME, servers=[server])
        request.addfinalizer(nginx.stop)
        nginx.start()
        beds.append(Bed(dual, nginx, placed, base))
        return beds[-1]

    return start


def offered(bed: Bed, protocol: str, key_type: str) -> str:
    """The SHA-256 of the leaf ``openssl s_client`` gets when it offers only ``key_type``."""
    return openssl_served(bed.port, NAME, options=OFFER[(protocol, key_type)]).fingerprint


def endpoint_of(doc: dict[str, Any], consumer: str) -> dict[str, Any]:
    (endpoint,) = by_name(doc)[consumer]["endpoints"]
    assert isinstance(endpoint, dict)
    return endpoint


def address_of(endpoint: dict[str, Any]) -> dict[str, Any]:
    assert "addresses" in endpoint, f"the endpoint lists no addresses: {endpoint}"
    (address,) = endpoint["addresses"]
    assert isinstance(address, dict)
    return address


def asks_for(line: str, key_type: str) -> bool:
    """Whether a message line names the key type (the lineage names do not count)."""
    without_names = line.replace(RSA_LINEAGE, "").replace(NAME, "")
    return re.search(rf"\b{key_type}\b", without_names, re.IGNORECASE) is not None


def test_the_bed_serves_each_key_type_to_a_client_that_offers_only_it(
    dual: Dual, start_bed: Callable[..., Bed]
) -> None:
    """Independent of the product: one lineage per key type; openssl offering only RSA (or only
    ECDSA) signature algorithms or cipher suites gets that lineage's certificate, over TLS 1.2
    and 1.3; a client that offers everything (Python's defaults) gets the ECDSA one."""
    ecdsa = x509.load_pem_x509_certificate(dual.cert_pem(NAME)).public_key()
    rsa_key = x509.load_pem_x509_certificate(dual.cert_pem(RSA_LINEAGE)).public_key()
    assert isinstance(ecdsa, ec.EllipticCurvePublicKey)
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    for lineage in LINEAGES:
        assert dual.previous_serial(lineage) != dual.serial(lineage)
    bed = start_bed()
    for protocol in ("TLSv1.2", "TLSv1.3"):
        for lineage in LINEAGES:
            got = offered(bed, protocol, KEY_TYPE[lineage])
            assert got == pem_fingerprint(dual.previous[lineage][0]), (protocol, lineage)
    assert served_fingerprint("127.0.0.1", bed.port, NAME) == pem_fingerprint(
        dual.previous[NAME][0]
    )
    for protocol in ("TLSv1.2", "TLSv1.3"):
        only = start_bed(protocols=protocol)
        other = "-tls1_3" if protocol == "TLSv1.2" else "-tls1_2"
        refused = run(
            [OPENSSL_BIN, "s_client", "-connect", f"127.0.0.1:{only.port}", other], timeout=30
        )
        assert refused.returncode != 0, f"{protocol} only, yet {other} was accepted"
        assert offered(only, protocol, "rsa") == pem_fingerprint(dual.previous[RSA_LINEAGE][0])
        only.nginx.stop()


# --------------------------------------------------------------------------- both current


def deploy_both(bed: Bed) -> dict[str, dict[str, Any]]:
    """``deploy --json`` of each lineage, which must succeed; each one's consumer document."""
    documents = {}
    for lineage in LINEAGES:
        deployed = bed.fanout("deploy", "--cert-name", lineage, "--json")
        assert deployed.returncode == 0, explain(deployed)
        documents[lineage] = by_name(json.loads(deployed.stdout))[CONSUMER[lineage]]
    return documents


def address_ok_samples(path: Path) -> dict[str, tuple[str, float]]:
    """certbot_fanout_endpoint_address_ok by consumer: (its key_type label, its value)."""
    found: dict[str, tuple[str, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == "certbot_fanout_endpoint_address_ok":
                consumer = sample.labels["consumer"]
                assert consumer not in found, f"two samples for {consumer}"
                found[consumer] = (sample.labels["key_type"], sample.value)
    return found


@pytest.mark.parametrize("protocols", PROTOCOLS, ids=PROTOCOL_IDS)
def test_both_lineages_current_deploy_and_status_ok(
    dual: Dual, start_bed: Callable[..., Bed], tmp_path: Path, protocols: str
) -> None:
    bed = start_bed(protocols=protocols)
    bed.consumer_map()
    for lineage, deployed in deploy_both(bed).items():
        (endpoint,) = deployed["endpoints"]
        assert endpoint["key_type"] == KEY_TYPE[lineage], endpoint
        assert address_of(endpoint)["key_type"] == KEY_TYPE[lineage], endpoint

    metrics = tmp_path / "fanout.prom"
    proc, doc = bed.status_json("--prometheus", str(metrics))
    assert proc.returncode == 0, explain(proc)
    assert doc["status"] == "OK", doc
    for lineage in LINEAGES:
        consumer = CONSUMER[lineage]
        assert by_name(doc)[consumer]["status"] == "OK", by_name(doc)[consumer]
        endpoint = endpoint_of(doc, consumer)
        assert endpoint["key_type"] == KEY_TYPE[lineage], endpoint
        address = address_of(endpoint)
        assert address["ok"] is True, address
        assert address["key_type"] == KEY_TYPE[lineage], address
        assert address["served"]["serial"] == dual.serial(lineage), address
    assert address_ok_samples(metrics) == {
        CONSUMER[lineage]: (KEY_TYPE[lineage], 1.0) for lineage in LINEAGES
    }


# --------------------------------------------------------------------------- one key type stale


def check_stale(dual: Dual, bed: Bed, stale: str) -> None:
    """``stale``'s consumer fails deploy (naming the endpoint and the stale certificate) and is
    CRITICAL in status, naming the endpoint, the key type it asked for and the stale
    certificate; the other lineage's consumer is fine."""
    fresh = RSA_LINEAGE if stale == NAME else NAME
    bed.consumer_map()
    deployed = bed.deploy(fresh)
    assert deployed.returncode == 0, explain(deployed)
    deployed = bed.deploy(stale)
    assert deployed.returncode == 1, explain(deployed)
    assert bed.where in deployed.stdout, explain(deployed)
    assert dual.previous_serial(stale) in deployed.stdout, explain(deployed)

    text = bed.fanout("status")
    assert text.returncode == 2, explain(text)
    problems = [
        line for line in text.stdout.splitlines() if line.startswith(f"{CONSUMER[stale]}: ")
    ]
    assert any(
        bed.where in line
        and dual.previous_serial(stale) in line
        and asks_for(line, KEY_TYPE[stale])
        for line in problems
    ), explain(text)
    assert not any(line.startswith(f"{CONSUMER[fresh]}: ") for line in text.stdout.splitlines()), (
        explain(text)
    )

    proc, doc = bed.status_json()
    assert proc.returncode == 2, explain(proc)
    consumers = by_name(doc)
    assert consumers[CONSUMER[fresh]]["status"] == "OK", consumers[CONSUMER[fresh]]
    assert consumers[CONSUMER[stale]]["status"] == "CRITICAL", consumers[CONSUMER[stale]]
    endpoint = endpoint_of(doc, CONSUMER[stale])
    assert endpoint["key_type"] == KEY_TYPE[stale], endpoint
    address = address_of(endpoint)
    assert address["ok"] is False, address
    assert address["key_type"] == KEY_TYPE[stale], address
    assert address["served"]["serial"] == dual.previous_serial(stale), address
    fresh_address = address_of(endpoint_of(doc, CONSUMER[fresh]))
    assert fresh_address["served"]["serial"] == dual.serial(fresh), fresh_address


@pytest.mark.parametrize("protocols", PROTOCOLS, ids=PROTOCOL_IDS)
def test_a_stale_rsa_certificate_behind_a_current_ecdsa_one_is_caught(
    dual: Dual, start_bed: Callable[..., Bed], protocols: str
) -> None:
    check_stale(dual, start_bed(stale=RSA_LINEAGE, protocols=protocols), RSA_LINEAGE)


def test_a_stale_ecdsa_certificate_behind_a_current_rsa_one_is_caught(
    dual: Dual, start_bed: Callable[..., Bed]
) -> None:
    check_stale(dual, start_bed(stale=NAME), NAME)


# --------------------------------------------------------------------------- discover


def discover_both(bed: Bed) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    """``discover`` of both lineages; its result and its sections."""
    found = bed.fanout(
        "discover", "--cert-name", NAME, "--cert-name", RSA_LINEAGE, "--probe-budget", "15"
    )
    return found, sections(found.stdout)


def listener_line(bed: Bed, lineage: str, serial: str) -> str:
    """A regular expression for discover's line of the bed's listener carrying ``lineage``."""
    return (
        rf"^  listener\s+{re.escape(bed.where)}\s+{re.escape(lineage)} current: serial "
        rf"{serial}, expires \S+"
    )


def test_discover_finds_the_listener_for_both_lineages(
    dual: Dual, start_bed: Callable[..., Bed]
) -> None:
    """discover probes each key type: the one nginx listener (serving both current
    certificates, no deploy needed) carries both lineages, each current and in the map."""
    bed = start_bed(current=True)
    bed.consumer_map()
    found, parts = discover_both(bed)
    covered = "\n".join(parts.get("IN THE MAP", []))
    for lineage in LINEAGES:
        pattern = listener_line(bed, lineage, dual.serial(lineage))
        assert re.search(pattern, covered, re.MULTILINE), explain(found)
    elsewhere = [
        line
        for title, lines in parts.items()
        if title != "IN THE MAP"
        for line in lines
        if bed.where in line
    ]
    assert elsewhere == [], explain(found)
    assert found.returncode == 0 or "NOT COVERED" in found.stdout, explain(found)


def test_discover_credits_each_lineage_on_the_listener_to_its_own_consumer(
    dual: Dual, start_bed: Callable[..., Bed]
) -> None:
    """Both consumers verify the one endpoint; the RSA certificate found there is covered by
    the RSA lineage's consumer, not by the first consumer whose endpoint matches."""
    bed = start_bed(current=True)
    bed.consumer_map()
    found, parts = discover_both(bed)
    covered = "\n".join(parts.get("IN THE MAP", []))
    for lineage in LINEAGES:
        pattern = listener_line(bed, lineage, dual.serial(lineage))
        pattern += rf"  \[consumer {CONSUMER[lineage]}\]$"
        assert re.search(pattern, covered, re.MULTILINE), explain(found)


def test_discover_says_the_listener_of_a_lineage_without_a_consumer_is_not_in_the_map(
    dual: Dual, start_bed: Callable[..., Bed]
) -> None:
    """Only the ECDSA lineage has a consumer: the RSA certificate the same listener serves is
    NOT IN THE MAP (no consumer verifies it there), whatever covers the ECDSA one."""
    bed = start_bed(current=True)
    bed.consumer_map(lineages=(NAME,))
    found, parts = discover_both(bed)
    assert found.returncode == 1, explain(found)
    covered = "\n".join(parts.get("IN THE MAP", []))
    unmapped = "\n".join(parts.get("NOT IN THE MAP", []))
    ecdsa = listener_line(bed, NAME, dual.serial(NAME)) + rf"  \[consumer {CONSUMER[NAME]}\]$"
    assert re.search(ecdsa, covered, re.MULTILINE), explain(found)
    rsa_line = listener_line(bed, RSA_LINEAGE, dual.serial(RSA_LINEAGE)) + "$"
    assert re.search(rsa_line, unmapped, re.MULTILINE), explain(found)
