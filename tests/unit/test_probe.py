"""Real handshakes with loopback servers, including the ones that must fail in time."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from _lineages import LineageFactory
from _servers import Peer

from certbot_fanout.errors import ProbeError
from certbot_fanout.lineage import fingerprint, read_lineage
from certbot_fanout.probe import fetch_leaf


@pytest.fixture
def live(lineages: LineageFactory) -> Path:
    return lineages.issue("probe.test", "alt.probe.test")[0]


def test_fetches_the_served_leaf_with_sni(live: Path) -> None:
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem") as peer:
        der = fetch_leaf("127.0.0.1", peer.port, "alt.probe.test", 5)
    assert fingerprint(der) == read_lineage(str(live)).cert.fingerprint
    assert peer.server_names == ["alt.probe.test"]


def test_ip_address_host_without_server_name_sends_no_sni(live: Path) -> None:
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem") as peer:
        fetch_leaf("127.0.0.1", peer.port, None, 5)
    assert peer.server_names == [None]


def test_refused_connection_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProbeError, match=rf"127.0.0.1:{port}: connection refused"):
        fetch_leaf("127.0.0.1", port, "x.test", 2)


def test_unresolvable_host_is_named() -> None:
    with pytest.raises(ProbeError, match=r"cannot resolve no-such-host\.invalid"):
        fetch_leaf("no-such-host.invalid", 443, None, 2)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("silent", "TLS handshake not finished within 1 s"),
        ("drip", "TLS handshake not finished within 1 s"),
        ("garbage", "TLS handshake failed"),
        ("close", "TLS handshake failed|connection reset"),
    ],
)
def test_hostile_peers_fail_clearly_within_the_timeout(behaviour: str, message: str) -> None:
    with Peer(behaviour) as peer:
        start = time.monotonic()
        with pytest.raises(ProbeError, match=message):
            fetch_leaf("127.0.0.1", peer.port, "x.test", 1.0)
        assert time.monotonic() - start < 1.5


def test_tls_alert_is_reported(live: Path) -> None:
    with (
        Peer("alert", live / "fullchain.pem", live / "privkey.pem") as peer,
        pytest.raises(ProbeError, match="TLS handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ):
        fetch_leaf("127.0.0.1", peer.port, "probe.test", 2)
