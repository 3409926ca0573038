"""Real handshakes with loopback servers, including the ones that must fail in time."""

from __future__ import annotations

import json
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from certbot_fanout._pki import ThrowawayCA
from certbot_fanout.errors import ProbeError
from certbot_fanout.lineage import chain_problem, fingerprint, read_lineage
from certbot_fanout.model import Dialect, Endpoint, Part
from certbot_fanout.probe import Served, fetch_leaf, fetch_served
from certbot_fanout.verify import probe_endpoint
from tests.support.cli import explain, invoke
from tests.support.lineages import LineageFactory
from tests.support.maps import config_text
from tests.support.peers import Peer, ScriptedPeer, Step
from tests.support.tally import record


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


# -- STARTTLS: the exchange, and peers that misbehave at each stage ---------------------------

SMTP_OK: list[Step] = [
    ("send", b"220-mx.test ESMTP\r\n220 ready\r\n"),
    ("line", b""),
    ("send", b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
    ("line", b""),
    ("send", b"220 2.0.0 go ahead\r\n"),
    ("tls", b""),
]


def test_smtp_starttls_reaches_the_certificate(live: Path) -> None:
    with ScriptedPeer(SMTP_OK, live / "fullchain.pem", live / "privkey.pem") as peer:
        served = fetch_served("127.0.0.1", peer.port, "probe.test", 5, Dialect.SMTP)
    lineage = read_lineage(str(live))
    assert fingerprint(served.leaf) == lineage.cert.fingerprint
    assert served.chain == (served.leaf, *lineage.chain_der)
    assert peer.received == [b"EHLO localhost\r\n", b"STARTTLS\r\n"]


def test_every_dialect_has_a_negotiation() -> None:
    from certbot_fanout.starttls import NEGOTIATE

    assert set(NEGOTIATE) == set(Dialect)


@pytest.mark.parametrize(
    ("dialect", "steps", "message"),
    [
        (
            Dialect.SMTP,
            [("send", b"220 mx\r\n"), ("line", b""), ("send", b"250-mx\r\n250 SIZE 10\r\n")],
            r"\(smtp\): EHLO: the server does not offer STARTTLS",
        ),
        (
            Dialect.SMTP,
            [*SMTP_OK[:4], ("send", b"454 4.7.0 TLS not available\r\n")],
            r"STARTTLS: expected 220, got '454 4.7.0 TLS not available'",
        ),
        (
            Dialect.IMAP,
            [("send", b"* OK ready\r\n"), ("line", b""), ("send", b"F1 NO not now\r\n")],
            r"\(imap\): STARTTLS: the server refused STARTTLS: 'F1 NO not now'",
        ),
        (
            Dialect.POP3,
            [("send", b"SSH-2.0-OpenSSH_9.2\r\n")],
            r"\(pop3\): greeting: expected '\+OK', got 'SSH-2.0-OpenSSH_9.2'",
        ),
        (Dialect.SMTP, [("sleep", 5.0)], r"\(smtp\): greeting: no answer within 1 s"),
        (Dialect.IMAP, [("drip", b"* OK a very slow greeting\r\n")], "no answer within 1 s"),
        (
            Dialect.SMTP,
            [("send", b"220 mx\r\n"), ("line", b"")],
            "EHLO: the server closed the connection",
        ),
        (Dialect.SMTP, [("send", b"x" * 70000)], "more than 65536 bytes"),
        (
            Dialect.POSTGRES,
            [("read", 8), ("send", b"N")],
            r"\(postgres\): SSLRequest: the server refuses TLS",
        ),
        (
            Dialect.SMTP,
            [*SMTP_OK[:4], ("send", b"220 2.0.0 go ahead\r\n250 injected\r\n"), ("tls", b"")],
            "after the STARTTLS go-ahead: the server sent b'250 injected",
        ),
        (
            Dialect.POSTGRES,
            [("read", 8), ("send", b"SE"), ("tls", b"")],
            "possible STARTTLS injection",
        ),
        # a message names what came of an answer, also when the probe has taken part of it
        (
            Dialect.SMTP,
            [("send", b"220 mx\r\n"), ("line", b""), ("send", b"250-mx\r\n"), ("sleep", 5.0)],
            r"EHLO: no answer within 1 s, only 8 bytes of one: '250-mx\r\n'$",
        ),
        (
            Dialect.LDAP,
            [("recv", 5.0), ("send", b"\x30\x0c"), ("sleep", 5.0)],
            r"StartTLS request: no answer within 1 s, only 2 bytes of one: '0\x0c'$",
        ),
        (
            Dialect.IMAP,
            [("send", b"* OK ready\r\n"), ("line", b""), ("send", b"* CAPABILITY\r\n")],
            r"STARTTLS: the server closed the connection after sending '\* CAPABILITY\r\n'$",
        ),
    ],
    ids=[
        "no-starttls-offered",
        "starttls-refused",
        "imap-no",
        "garbage",
        "silent",
        "drip",
        "hang-up",
        "flood",
        "postgres-ssl-off",
        "smtp-injection",
        "postgres-injection",
        "smtp-half-a-reply",
        "ldap-half-a-message",
        "imap-line-then-close",
    ],
)
def test_hostile_starttls_peers_fail_at_their_stage_in_time(
    live: Path, dialect: Dialect, steps: list[Step], message: str
) -> None:
    with ScriptedPeer(steps, live / "fullchain.pem", live / "privkey.pem") as peer:
        start = time.monotonic()
        with pytest.raises(ProbeError, match=message):
            fetch_served("127.0.0.1", peer.port, "probe.test", 1.0, dialect)
        assert time.monotonic() - start < 1.5


def test_tls_alert_after_the_go_ahead(live: Path) -> None:
    # The server waits for the ClientHello, then answers with a handshake_failure alert.
    steps: list[Step] = [*SMTP_OK[:5], ("read", 5), ("send", b"\x15\x03\x03\x00\x02\x02\x28")]
    with (
        ScriptedPeer(steps) as peer,
        pytest.raises(ProbeError, match=r"\(smtp\): TLS handshake failed"),
    ):
        fetch_served("127.0.0.1", peer.port, "probe.test", 2, Dialect.SMTP)


# -- the served chain ------------------------------------------------------------------------


def test_leaf_only_endpoint_is_named_as_such(live: Path) -> None:
    lineage = read_lineage(str(live))
    with Peer("tls", live / "cert.pem", live / "privkey.pem") as peer:
        served = fetch_served("127.0.0.1", peer.port, "probe.test", 5)
    assert served.chain == (served.leaf,)
    assert chain_problem(served.chain, lineage) == (
        "serves cert.pem without the chain: no intermediate certificate was sent "
        "(point the service at fullchain.pem)"
    )


def test_a_different_intermediate_is_named(live: Path, lineages: LineageFactory) -> None:
    lineage = read_lineage(str(live))
    other = ThrowawayCA("another CA").issue(["probe.test"])
    mixed = live.parent.parent / "mixed.pem"
    mixed.write_bytes(lineage.pems[Part.CERT] + other.chain_pem)
    with Peer("tls", mixed, live / "privkey.pem") as peer:
        served = fetch_served("127.0.0.1", peer.port, "probe.test", 5)
    problem = chain_problem(served.chain, lineage) or ""
    assert problem.startswith("sends intermediate CN=another CA intermediate")
    assert "where chain.pem has CN=certbot-fanout tests intermediate" in problem


def test_the_right_chain_with_an_extra_root_is_fine(live: Path, ca: ThrowawayCA) -> None:
    lineage = read_lineage(str(live))
    with_root = live.parent.parent / "with-root.pem"
    with_root.write_bytes(lineage.pems[Part.FULLCHAIN] + ca.root_pem)
    with Peer("tls", with_root, live / "privkey.pem") as peer:
        served = fetch_served("127.0.0.1", peer.port, "probe.test", 5)
    assert len(served.chain) == 3
    assert chain_problem(served.chain, lineage) is None


# -- legacy endpoints: TLS 1.0 and 1.1 only, read but said so -------------------------------

LEGACY_AREA = "legacy endpoints"


def _version(name: str) -> ssl.TLSVersion:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are deprecated
        return ssl.TLSVersion[name]


@pytest.mark.parametrize(("version", "shown"), [("TLSv1", "TLSv1"), ("TLSv1_1", "TLSv1.1")])
def test_an_endpoint_that_speaks_only_a_legacy_version_is_read_and_said_so(
    live: Path, version: str, shown: str
) -> None:
    only = _version(version)
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem", versions=(only, only)) as peer:
        try:
            served: Served | None = fetch_served("127.0.0.1", peer.port, "probe.test", 5)
        except ProbeError:
            served = None
    record(LEGACY_AREA, cases=1, unverified=int(served is None))
    assert served is not None, "a TLS 1.0/1.1-only endpoint must still be read"
    assert fingerprint(served.leaf) == read_lineage(str(live)).cert.fingerprint
    assert (served.protocol, served.legacy_protocol) == (shown, shown)
    assert peer.protocols == [shown]


@pytest.mark.parametrize(
    ("versions", "shown"),
    [(None, "TLSv1.3"), (("TLSv1_2", "TLSv1_2"), "TLSv1.2"), (("TLSv1", "TLSv1_3"), "TLSv1.3")],
    ids=["default", "tls1.2-only", "tls1.0-to-1.3"],
)
def test_a_modern_endpoint_is_read_with_the_modern_handshake_alone(
    live: Path, versions: tuple[str, str] | None, shown: str
) -> None:
    limits = None if versions is None else (_version(versions[0]), _version(versions[1]))
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem", versions=limits) as peer:
        served = fetch_served("127.0.0.1", peer.port, "probe.test", 5)
    legacy_handshakes = len(peer.server_names) - 1
    record(LEGACY_AREA, cases=1, weaker_retries_without_cause=legacy_handshakes)
    assert (served.protocol, served.legacy_protocol) == (shown, None)
    assert peer.server_names == ["probe.test"], "one handshake, no second, weaker one"


def test_an_endpoint_that_refuses_the_name_is_not_asked_again_with_legacy_versions(
    live: Path,
) -> None:
    with (
        Peer("alert", live / "fullchain.pem", live / "privkey.pem") as peer,
        pytest.raises(ProbeError, match=r"SSLV3_ALERT_HANDSHAKE_FAILURE$") as failed,
    ):
        fetch_served("127.0.0.1", peer.port, "probe.test", 2)
    record(LEGACY_AREA, cases=1, weaker_retries_without_cause=len(peer.server_names) - 1)
    assert peer.server_names == ["probe.test"]
    assert "TLS 1.0" not in str(failed.value)


def test_a_legacy_endpoint_that_then_fails_keeps_both_reasons(live: Path) -> None:
    only = _version("TLSv1")
    with (
        Peer("alert", live / "fullchain.pem", live / "privkey.pem", versions=(only, only)) as p,
        pytest.raises(ProbeError) as failed,
    ):
        fetch_served("127.0.0.1", p.port, "probe.test", 2)
    assert str(failed.value) == (
        f"127.0.0.1:{p.port}: TLS handshake failed: TLSV1_ALERT_PROTOCOL_VERSION; with TLS 1.0 "
        f"and 1.1 allowed too: 127.0.0.1:{p.port}: TLS handshake failed: "
        "SSLV3_ALERT_HANDSHAKE_FAILURE"
    )


def test_a_legacy_endpoint_serving_another_certificate_still_fails(
    live: Path, lineages: LineageFactory
) -> None:
    other, _ = lineages.issue("other.test")
    only = _version("TLSv1")
    with Peer("tls", other / "fullchain.pem", other / "privkey.pem", versions=(only, only)) as p:
        endpoint = Endpoint("127.0.0.1", p.port, server_name="probe.test")
        result = probe_endpoint(endpoint, read_lineage(str(live)), fetch_served, 5)
    record(LEGACY_AREA, cases=1, verdicts_changed=int(result.ok))
    assert not result.ok and result.legacy_protocol == "TLSv1"
    assert result.served is not None and "serial" in (result.error or "")


def test_the_reports_say_which_legacy_version_was_spoken(
    live: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    only = _version("TLSv1_1")
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem", versions=(only, only)) as p:
        config = write_config(
            config_text(
                "  appliance:\n    certificate: probe.test\n"
                f"    verify: [{{host: 127.0.0.1, port: {p.port}}}]\n"
            )
        )
        common = ["--config", str(config), "--config-dir", str(live.parent.parent)]
        common += ["--state-file", str(tmp_path / "state.json")]
        text = invoke([*common, "status"])
        document = invoke([*common, "status", "--json"])
        deployed = invoke(
            [*common, "--lock-file", str(tmp_path / "lock"), "deploy", "--lineage", str(live)]
        )
    assert text.returncode == 0, explain(text)
    assert f"appliance: note: 127.0.0.1:{p.port} served over TLSv1.1, a legacy protocol" in (
        text.stdout
    )
    endpoints = json.loads(document.stdout)["consumers"][0]["endpoints"]
    assert [e["legacy_protocol"] for e in endpoints] == ["TLSv1.1"]
    assert deployed.returncode == 0, explain(deployed)
    assert "(served over TLSv1.1, a legacy protocol)" in deployed.stdout, deployed.stdout
