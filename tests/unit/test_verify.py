"""Every address of an endpoint is proven on its own, and a stale answer is asked again for the
whole settle time: real TLS servers on 127.0.0.1 and ::1, the real probe, the real resolver
(``localhost`` from the machine's hosts file, which on Debian names both addresses)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout import verify
from certbot_fanout._pki import ThrowawayCA
from certbot_fanout.errors import ProbeError
from certbot_fanout.lineage import Lineage, read_lineage
from certbot_fanout.model import Endpoint, Family, Part
from certbot_fanout.probe import fetch_served
from tests.support.cli import explain
from tests.support.hosts import available, python_with_hosts
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer

NAME = "every.test"
HOST = "both.every.test"  # 127.0.0.1 and ::1, in the hosts file of the probing process


class Pair:
    """The previous and the current certificate of one lineage, as files a server can load."""

    def __init__(self, lineages: LineageFactory, tmp_path: Path) -> None:
        _, old = lineages.issue(NAME)
        self.old_cert, self.old_key = tmp_path / "old.pem", tmp_path / "old.key"
        self.old_cert.write_bytes(old.fullchain_pem)
        self.old_key.write_bytes(old.key_pem)
        self.live, _ = lineages.renew(NAME)
        self.cert, self.key = self.live / "fullchain.pem", self.live / "privkey.pem"

    @property
    def lineage(self) -> Lineage:
        return read_lineage(str(self.live))


@pytest.fixture
def pair(lineages: LineageFactory, tmp_path: Path) -> Pair:
    return Pair(lineages, tmp_path)


def _both(v4: tuple[Path, Path], v6: tuple[Path, Path]) -> Iterator[int]:
    """Servers on 127.0.0.1 and [::1] on one port number, serving ``v4`` and ``v6``."""
    for _ in range(20):
        first = Peer("tls", *v4, bind="127.0.0.1")
        try:
            second = Peer("tls", *v6, bind="::1", port=first.port)
        except OSError:  # that port is taken on ::1: try another
            first.close()
            continue
        with first, second:
            yield first.port
        return
    pytest.fail("no port free on both 127.0.0.1 and ::1")


def _probe(tmp_path: Path, live: Path, host: str, port: int, family: str | None = None) -> Any:
    """The endpoint document of one look at ``host:port``, from a process where ``host`` is
    127.0.0.1 and ::1 (a hosts file of its own, in a private mount namespace)."""
    why = available()
    if why:
        pytest.skip(why)
    code = (
        "import json, sys\n"
        "from certbot_fanout import verify\n"
        "from certbot_fanout.lineage import read_lineage\n"
        "from certbot_fanout.model import Endpoint, Family, Part\n"
        "from certbot_fanout.probe import fetch_served\n"
        "from certbot_fanout.render_common import endpoint_document\n"
        f"family = Family({family!r}) if {family!r} else None\n"
        f"ep = Endpoint({host!r}, {port}, family=family)\n"
        f"result = verify.probe_endpoint(ep, read_lineage({str(live)!r}), fetch_served, 5)\n"
        "print(json.dumps(endpoint_document(result)))\n"
    )
    done = python_with_hosts(tmp_path, {HOST: ["127.0.0.1", "::1"]}, code)
    assert done.returncode == 0, explain(done)
    return json.loads(done.stdout)


def test_a_literal_is_its_own_only_address_and_family_filters() -> None:
    assert verify.addresses("::1", 443, None, 2) == ["::1"]
    assert verify.addresses("127.0.0.1", 443, Family.IPV4, 2) == ["127.0.0.1"]
    with pytest.raises(ProbeError) as no_v6:
        verify.addresses("127.0.0.1", 443, Family.IPV6, 2)
    assert str(no_v6.value) == "127.0.0.1:443: 127.0.0.1 has no ipv6 address"


def test_a_name_that_does_not_resolve_is_named() -> None:
    with pytest.raises(ProbeError) as failed:
        verify.addresses("nothing.invalid", 443, None, 2)
    assert str(failed.value).startswith("nothing.invalid:443: cannot resolve nothing.invalid: ")


@pytest.mark.parametrize("stale", ["127.0.0.1", "::1"])
def test_a_stale_address_fails_the_endpoint_and_is_named(
    pair: Pair, tmp_path: Path, stale: str
) -> None:
    current, old = (pair.cert, pair.key), (pair.old_cert, pair.old_key)
    v4, v6 = (old, current) if stale == "127.0.0.1" else (current, old)
    for port in _both(v4, v6):
        doc = _probe(tmp_path, pair.live, HOST, port)
    assert doc["ok"] is False
    shown = f"[{stale}]:{port}" if ":" in stale else f"{stale}:{port}"
    by_address = {a["address"]: a for a in doc["addresses"]}
    assert set(by_address) == {"127.0.0.1", "::1"}
    assert by_address[stale]["ok"] is False
    assert by_address[stale]["served"]["serial"] != pair.lineage.cert.serial
    assert all(a["ok"] for a in doc["addresses"] if a["address"] != stale)
    assert doc["error"].startswith(f"{HOST}:{port}: {shown} (SNI {NAME}, asked for ECDSA) serves ")


def test_every_address_current_and_in_the_json(pair: Pair, tmp_path: Path) -> None:
    served = (pair.cert, pair.key)
    for port in _both(served, served):
        doc = _probe(tmp_path, pair.live, HOST, port)
    assert doc["ok"] is True, doc["error"]
    listed = [
        (a["host"], a["address"], a["port"], a["ok"], a["key_type"]) for a in doc["addresses"]
    ]
    assert sorted(listed) == [  # in the resolver's order (RFC 6724 puts ::1 first)
        (HOST, "127.0.0.1", port, True, "ecdsa"),
        (HOST, "::1", port, True, "ecdsa"),
    ]
    assert doc["key_type"] == "ecdsa" and doc["host"] == HOST and doc["family"] is None


def test_family_ipv4_leaves_a_stale_ipv6_address_unchecked(pair: Pair, tmp_path: Path) -> None:
    for port in _both((pair.cert, pair.key), (pair.old_cert, pair.old_key)):
        doc = _probe(tmp_path, pair.live, HOST, port, family="ipv4")
        unfiltered = _probe(tmp_path, pair.live, HOST, port)
    assert doc["ok"] is True, doc["error"]
    assert [a["address"] for a in doc["addresses"]] == ["127.0.0.1"]
    assert doc["family"] == "ipv4"
    assert unfiltered["ok"] is False  # the same servers, every address


def test_an_address_nothing_listens_on_fails_the_endpoint(pair: Pair, tmp_path: Path) -> None:
    with Peer("tls", pair.cert, pair.key, bind="127.0.0.1") as only_v4:
        doc = _probe(tmp_path, pair.live, HOST, only_v4.port)
    assert doc["ok"] is False
    port = only_v4.port
    assert f"{HOST}:{port}: [::1]:{port}: connection refused" in doc["error"]


def test_a_stale_answer_is_asked_again_for_the_whole_settle_time(pair: Pair) -> None:
    # The docs say a second; the back-off used to give up after 0.62 s (20+40+80+160+320 ms).
    with Peer("tls", pair.old_cert, pair.old_key) as stale:
        ep = Endpoint("127.0.0.1", stale.port)
        start = time.monotonic()
        result = verify.poll_endpoint(ep, pair.lineage, fetch_served, start + verify.SETTLE_SECONDS)
        looked = time.monotonic() - start
    assert not result.ok
    assert result.seconds >= verify.SETTLE_SECONDS
    assert looked >= verify.SETTLE_SECONDS
    assert result.error is not None and "(still after 1.0 s, " in result.error


def test_an_address_found_current_is_not_asked_again(pair: Pair) -> None:
    calls: list[str] = []

    def counting(host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return fetch_served(host, *args, **kwargs)

    with Peer("tls", pair.old_cert, pair.old_key) as stale:
        verify.poll_endpoint(
            Endpoint("127.0.0.1", stale.port), pair.lineage, counting, time.monotonic() + 0.3
        )
    with Peer("tls", pair.cert, pair.key) as current:
        calls.clear()
        result = verify.poll_endpoint(
            Endpoint("127.0.0.1", current.port), pair.lineage, counting, time.monotonic() + 0.3
        )
    assert result.ok and calls == ["127.0.0.1"]


def test_a_chain_out_of_order_passes_with_a_warning_that_status_counts(
    pair: Pair, ca: ThrowawayCA, tmp_path: Path
) -> None:
    # The root first, then the intermediate: clients build the path anyway (RFC 8446 4.4.2),
    # so the endpoint is current, but the order is worth a look.
    lineage = pair.lineage
    shuffled = tmp_path / "root-first.pem"
    shuffled.write_bytes(lineage.pems[Part.CERT] + ca.root_pem + lineage.pems[Part.CHAIN])
    with Peer("tls", shuffled, pair.key) as peer:
        result = verify.probe_endpoint(Endpoint("127.0.0.1", peer.port), lineage, fetch_served, 5)
    assert result.ok, result.error
    (warning,) = result.warnings
    assert warning.startswith(f"127.0.0.1:{peer.port}: ")
    assert "order" in warning
