"""STARTTLS for the databases: PostgreSQL's SSLRequest and MySQL's SSL Request after the
server's handshake packet."""

from __future__ import annotations

import struct

from certbot_fanout.starttls.talk import MAX_PLAINTEXT_BYTES, Plaintext, show

_POSTGRES_SSL_REQUEST_CODE = 80877103

_MYSQL_CLIENT_SSL = 0x0800
_MYSQL_CLIENT_PROTOCOL_41 = 0x0200
_MYSQL_CLIENT_SECURE_CONNECTION = 0x8000
_MYSQL_CLIENT_LONG_PASSWORD = 0x0001


def postgres(talk: Plaintext, name: str) -> None:
    talk.stage = "SSLRequest"
    talk.send(struct.pack("!II", 8, _POSTGRES_SSL_REQUEST_CODE))
    answer = talk.exactly(1)  # one byte only: anything after it must come through TLS
    if answer == b"N":
        raise talk.fail("the server refuses TLS (ssl = off?)")
    if answer != b"S":
        raise talk.fail(f"expected 'S', got {talk.shown()}")


def mysql(talk: Plaintext, name: str) -> None:
    header = talk.exactly(4)
    size = int.from_bytes(header[:3], "little")
    if size > MAX_PLAINTEXT_BYTES:
        raise talk.fail(
            f"expected a MySQL handshake, got {talk.shown()} (a packet of {size} bytes, too large)"
        )
    payload = talk.exactly(size)
    if payload[:1] == b"\xff":
        message = payload[9:] if payload[3:4] == b"#" else payload[3:]
        raise talk.fail(f"the server refused the connection: {show(message)}")
    if payload[:1] != b"\x0a":
        raise talk.fail(f"expected a protocol 10 handshake, got {show(payload[:20])}")
    end = payload.find(b"\0", 1)
    offset = end + 1 + 4 + 8 + 1  # server version, connection id, auth data, filler
    if end < 0 or len(payload) < offset + 2:
        raise talk.fail("truncated handshake packet")
    capabilities = int.from_bytes(payload[offset : offset + 2], "little")
    if not capabilities & _MYSQL_CLIENT_SSL:
        raise talk.fail("the server does not offer TLS (no CLIENT_SSL; have_ssl off?)")
    talk.stage = "SSLRequest"
    flags = (
        _MYSQL_CLIENT_SSL
        | _MYSQL_CLIENT_PROTOCOL_41
        | _MYSQL_CLIENT_SECURE_CONNECTION
        | _MYSQL_CLIENT_LONG_PASSWORD
    )
    request = struct.pack("<IIB", flags, 1 << 24, 33) + b"\0" * 23
    talk.send(len(request).to_bytes(3, "little") + bytes([(header[3] + 1) % 256]) + request)
