"""The STARTTLS package on its own, without TLS: the registry covers every dialect, each
dialect's negotiation succeeds against a server side played over a real socket pair, and the
bounded reader stops at its size and time bounds.

The hostile cases (every way a peer can misbehave, per dialect) live in test_hostile_peers.py and
the real daemons in the integration tests; here each dialect's happy path is one small table
entry, so a new dialect comes with its own.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Dialect
from certbot_fanout.starttls import NEGOTIATE, negotiate
from certbot_fanout.starttls.talk import MAX_PLAINTEXT_BYTES, RECV_BYTES, Plaintext

NAME = "starttls.test"
TIMEOUT = 5.0

# A server side: ("send", bytes) sends them, ("recv", bytes) reads exactly that many bytes and
# records them (what the client sent), in order.
Script = tuple[tuple[str, bytes], ...]


@dataclass
class PairPeer:
    """The server end of a socket pair, playing ``script`` in a thread."""

    sock: socket.socket
    script: Script
    received: list[bytes] = field(default_factory=list)

    def play(self) -> None:
        self.sock.settimeout(TIMEOUT)
        try:
            for action, data in self.script:
                if action == "send":
                    self.sock.sendall(data)
                    continue
                got = b""
                while len(got) < len(data):
                    chunk = self.sock.recv(len(data) - len(got))
                    if not chunk:
                        break
                    got += chunk
                self.received.append(got)
        except OSError:
            pass  # the client gave up; the test's assertions say what it saw


@contextmanager
def pair(script: Script) -> Iterator[tuple[socket.socket, PairPeer]]:
    """A non-blocking client socket (as the probe leaves it) and the peer playing ``script``."""
    client, server = socket.socketpair()
    client.setblocking(False)
    peer = PairPeer(server, script)
    thread = threading.Thread(target=peer.play, daemon=True)
    thread.start()
    try:
        yield client, peer
    finally:
        client.close()
        thread.join(TIMEOUT)
        server.close()


def _xmpp(namespace: bytes) -> Script:
    return (
        (
            "recv",
            b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
            b" xmlns='" + namespace + b"' to='" + NAME.encode() + b"' version='1.0'>",
        ),
        (
            "send",
            b"<?xml version='1.0'?><stream:stream xmlns='" + namespace + b"' xmlns:stream="
            b"'http://etherx.jabber.org/streams' from='starttls.test' id='s1' version='1.0'>"
            b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
            b"</starttls></stream:features>",
        ),
        ("recv", b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        ("send", b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    )


def _smtp(hello: bytes) -> Script:
    return (
        ("send", b"220-mx.starttls.test ESMTP\r\n220 ready\r\n"),
        ("recv", hello + b" localhost\r\n"),
        ("send", b"250-mx.starttls.test\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"),
        ("recv", b"STARTTLS\r\n"),
        ("send", b"220 2.0.0 Ready to start TLS\r\n"),
    )


_LDAP_STARTTLS_REQUEST = b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + b"1.3.6.1.4.1.1466.20037"
_LDAP_SUCCESS = b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00"
_MYSQL_HANDSHAKE_PAYLOAD = (
    b"\x0a8.0.36\0"
    + struct.pack("<I", 7)
    + b"abcdefgh\0"
    + struct.pack("<HBHH", 0xFFFF, 33, 2, 0x00FF)
    + b"\x15"
    + b"\0" * 10
    + b"ijklmnopqrst\0mysql_native_password\0"
)
# SSL Request, sequence 1: CLIENT_SSL | PROTOCOL_41 | SECURE_CONNECTION | LONG_PASSWORD,
# max packet 16 MiB, utf8mb4_general_ci (33), 23 bytes of filler.
_MYSQL_SSL_REQUEST = (
    b"\x20\x00\x00\x01" + b"\x01\x8a\x00\x00" + b"\x00\x00\x00\x01" + b"\x21" + b"\0" * 23
)

# Each dialect's server side, correct up to its go-ahead for TLS, grouped by family.
DIALOGS: dict[Dialect, Script] = {
    # mail and news
    Dialect.SMTP: _smtp(b"EHLO"),
    Dialect.LMTP: _smtp(b"LHLO"),
    Dialect.IMAP: (
        ("send", b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
        ("recv", b"F1 STARTTLS\r\n"),
        ("send", b"* OK an untagged line first\r\nF1 OK Begin TLS negotiation now.\r\n"),
    ),
    Dialect.POP3: (
        ("send", b"+OK Dovecot ready.\r\n"),
        ("recv", b"STLS\r\n"),
        ("send", b"+OK Begin TLS negotiation now.\r\n"),
    ),
    Dialect.FTP: (
        ("send", b"220 (vsFTPd 3.0.3)\r\n"),
        ("recv", b"AUTH TLS\r\n"),
        ("send", b"234 Proceed with negotiation.\r\n"),
    ),
    Dialect.NNTP: (
        ("send", b"201 news.starttls.test ready (no posting)\r\n"),
        ("recv", b"STARTTLS\r\n"),
        ("send", b"382 Continue with TLS negotiation\r\n"),
    ),
    Dialect.SIEVE: (
        ("send", b'"IMPLEMENTATION" "Dovecot"\r\n"SASL" ""\r\n"STARTTLS"\r\nOK "ready"\r\n'),
        ("recv", b"STARTTLS\r\n"),
        ("send", b'OK "Begin TLS negotiation now"\r\n'),
    ),
    # XMPP
    Dialect.XMPP: _xmpp(b"jabber:client"),
    Dialect.XMPP_SERVER: _xmpp(b"jabber:server"),
    # LDAP
    Dialect.LDAP: (("recv", _LDAP_STARTTLS_REQUEST), ("send", _LDAP_SUCCESS)),
    # databases
    Dialect.POSTGRES: (("recv", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), ("send", b"S")),
    Dialect.MYSQL: (
        ("send", len(_MYSQL_HANDSHAKE_PAYLOAD).to_bytes(3, "little") + b"\x00"),
        ("send", _MYSQL_HANDSHAKE_PAYLOAD),
        ("recv", _MYSQL_SSL_REQUEST),
    ),
}


def test_the_registry_has_a_negotiator_for_every_dialect() -> None:
    assert set(NEGOTIATE) == set(Dialect)
    assert all(callable(negotiator) for negotiator in NEGOTIATE.values())


def test_every_dialect_has_a_dialog_here() -> None:
    assert set(DIALOGS) == set(Dialect)


@pytest.mark.parametrize("dialect", list(Dialect), ids=lambda d: d.value)
def test_each_dialect_reaches_the_go_ahead(dialect: Dialect) -> None:
    script = DIALOGS[dialect]
    with pair(script) as (client, peer):
        negotiate(
            client,
            dialect,
            NAME,
            deadline=time.monotonic() + TIMEOUT,
            where=f"peer ({dialect.value})",
            timeout=TIMEOUT,
        )
        # The client's last request is complete before the peer can record it.
        wanted = [data for action, data in script if action == "recv"]
        until = time.monotonic() + TIMEOUT
        while len(peer.received) < len(wanted) and time.monotonic() < until:
            time.sleep(0.01)
    assert peer.received == wanted


def test_plaintext_after_the_go_ahead_is_refused() -> None:
    *before, (_, go_ahead) = DIALOGS[Dialect.POP3]
    script = (*before, ("send", go_ahead + b"+OK injected\r\n"))  # in one write
    with pair(script) as (client, _), pytest.raises(ProbeError) as caught:
        negotiate(
            client,
            Dialect.POP3,
            NAME,
            deadline=time.monotonic() + TIMEOUT,
            where="peer (pop3)",
            timeout=TIMEOUT,
        )
    assert str(caught.value).startswith("peer (pop3): after the STARTTLS go-ahead: the server sent")
    assert "possible STARTTLS injection" in str(caught.value)


def _talk(client: socket.socket, timeout: float) -> Plaintext:
    return Plaintext(client, time.monotonic() + timeout, "peer", timeout)


def test_one_read_takes_at_most_recv_bytes() -> None:
    with pair((("send", b"+OK\r\n" + b"x" * (2 * RECV_BYTES)),)) as (client, _):
        select.select([client], [], [], TIMEOUT)
        time.sleep(0.05)  # everything is there: only the read's own bound limits it
        talk = _talk(client, TIMEOUT)
        assert talk.line() == b"+OK"
        assert talk.received <= RECV_BYTES
        assert len(talk.buffer) == talk.received - len(b"+OK\r\n")


def test_an_endless_answer_stops_at_the_size_bound() -> None:
    flood = b"x" * (MAX_PLAINTEXT_BYTES + RECV_BYTES)
    with pair((("send", flood),)) as (client, _), pytest.raises(ProbeError) as caught:
        _talk(client, TIMEOUT).line()
    assert str(caught.value) == (
        f"peer: greeting: more than {MAX_PLAINTEXT_BYTES} bytes without the expected answer"
    )


def test_a_silent_peer_costs_the_deadline_and_no_more() -> None:
    with pair(()) as (client, _):
        talk = _talk(client, 0.3)
        started = time.monotonic()
        with pytest.raises(ProbeError) as caught:
            talk.line()
        elapsed = time.monotonic() - started
    assert str(caught.value) == "peer: greeting: no answer within 0.3 s"
    assert 0.25 <= elapsed < 2.0
