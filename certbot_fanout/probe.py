"""Fetch what an endpoint serves, like a client would, within a hard deadline.

Direct TLS, or a STARTTLS negotiation in the service's own protocol first (SMTP, LMTP, IMAP,
POP3, FTP, NNTP, ManageSieve, XMPP, PostgreSQL, LDAP, MySQL). Every read is bounded in bytes and
by one deadline for the whole exchange, so a silent, slow or garbage-speaking peer costs at most
the timeout. Plaintext the server sends after its go-ahead is refused (a STARTTLS injection).
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Dialect

MAX_PLAINTEXT_BYTES = 64 * 1024
RECV_BYTES = 4096  # one plaintext read
_EHLO_NAME = b"localhost"


@dataclass(frozen=True)
class Served:
    """What a server presented: its leaf, and every certificate it sent (DER, leaf first;
    empty when this Python cannot tell)."""

    leaf: bytes
    chain: tuple[bytes, ...]


# What deploy, status and discover call to learn what an endpoint serves: fetch_served, or a
# test's stand-in. Arguments: host, port, server name (SNI), timeout in seconds, STARTTLS dialect.
Fetch = Callable[[str, int, str | None, float, Dialect | None], Served]


@functools.cache
def _client_context() -> ssl.SSLContext:
    # Trust is not the question here: we read the leaf and compare it byte for byte with the
    # lineage's. check_hostname must be switched off before verify_mode can be CERT_NONE.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ssl.SSLError):
        # A service with a weak key or a SHA-1 signature still deserves an answer about what
        # it serves.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def fetch_served(
    host: str,
    port: int,
    server_name: str | None,
    timeout: float,
    starttls: Dialect | None = None,
) -> Served:
    """Connect to ``host:port``, negotiate STARTTLS if asked, complete a TLS handshake with SNI
    ``server_name``, and return what the server presented.

    Raises:
        ProbeError: naming the endpoint and the stage that failed (connect, greeting, the
            STARTTLS exchange, the TLS handshake), all within ``timeout`` seconds.
    """
    where = f"{host}:{port}" + (f" ({starttls.value})" if starttls else "")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise ProbeError(f"{where}: cannot resolve {host}: {e.strerror}") from None
    except ConnectionRefusedError:
        raise ProbeError(f"{where}: connection refused (is the service running?)") from None
    except TimeoutError:
        raise ProbeError(f"{where}: no TCP connection within {timeout:g} s") from None
    except OSError as e:
        raise ProbeError(f"{where}: cannot connect: {e.strerror or e}") from None
    with sock:
        sock.setblocking(False)
        if starttls is not None:
            talk = _Plaintext(sock, deadline, where, timeout)
            _NEGOTIATE[starttls](talk, server_name or host)
            talk.ensure_nothing_pending()
        try:
            tls = _client_context().wrap_socket(
                sock, server_hostname=server_name or None, do_handshake_on_connect=False
            )
        except ConnectionResetError:  # wrap_socket reads from a socket it finds unconnected
            raise ProbeError(
                f"{where}: TLS handshake failed: the server reset the connection"
            ) from None
        except (OSError, ValueError) as e:
            detail = getattr(e, "strerror", None) or e
            raise ProbeError(f"{where}: TLS handshake failed: cannot start TLS: {detail}") from None
        with tls:
            _handshake(tls, deadline, where, timeout)
            leaf = tls.getpeercert(binary_form=True)
            chain = _peer_chain(tls)
    if not leaf:
        raise ProbeError(f"{where}: the server presented no certificate")
    return Served(leaf=leaf, chain=chain)


def fetch_leaf(host: str, port: int, server_name: str | None, timeout: float) -> bytes:
    """The DER of the leaf certificate a direct-TLS endpoint presents."""
    return fetch_served(host, port, server_name, timeout).leaf


def _peer_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...]:
    public = getattr(tls, "get_unverified_chain", None)  # Python >= 3.13
    if public is not None:
        return tuple(public() or ())
    sslobj = getattr(tls, "_sslobj", None)  # 3.10-3.12: the same call, not yet public
    private = getattr(sslobj, "get_unverified_chain", None)
    if private is None:
        return ()
    return tuple(c.public_bytes(ssl._ssl.ENCODING_DER) for c in private() or ())  # type: ignore[attr-defined]


def _handshake(tls: ssl.SSLSocket, deadline: float, where: str, timeout: float) -> None:
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            events = select.POLLIN
        except ssl.SSLWantWriteError:
            events = select.POLLOUT
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            reason = e.reason or "the server closed the connection"
            raise ProbeError(f"{where}: TLS handshake failed: {reason}") from None
        except ssl.SSLError as e:
            reason = e.reason or str(e)
            hint = _HANDSHAKE_HINTS.get(reason, "")
            raise ProbeError(f"{where}: TLS handshake failed: {reason}{hint}") from None
        except ConnectionResetError:
            raise ProbeError(
                f"{where}: TLS handshake failed: the server reset the connection"
            ) from None
        except OSError as e:
            raise ProbeError(f"{where}: TLS handshake failed: {e.strerror or e}") from None
        if not _wait(tls.fileno(), events, deadline):
            raise ProbeError(f"{where}: TLS handshake not finished within {timeout:g} s")


_NOT_TLS = " (the server did not answer in TLS: a plaintext port, or one that needs STARTTLS?)"
_HANDSHAKE_HINTS = {
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "RECORD_LAYER_FAILURE": _NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": _NOT_TLS,
    "HTTP_REQUEST": _NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": " (the server closed the connection)",
}


def _wait(fd: int, events: int, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(remaining * 1000))


class _Plaintext:
    """The plaintext part of a STARTTLS exchange: bounded reads, one deadline, named stages."""

    def __init__(self, sock: socket.socket, deadline: float, where: str, timeout: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.where = where
        self.timeout = timeout
        self.buffer = bytearray()
        self.received = 0
        # The part of the current answer (everything since the last request) already taken
        # from the buffer: its size, and its first bytes for a message.
        self.taken = 0
        self.taken_head = b""
        self.stage = "greeting"

    def fail(self, problem: str) -> ProbeError:
        return ProbeError(f"{self.where}: {self.stage}: {problem}")

    def _fill(self) -> None:
        if not _wait(self.sock.fileno(), select.POLLIN, self.deadline):
            n = self.taken + len(self.buffer)
            partial = f", only {n} byte{'s' * (n != 1)} of one: {self.shown()}" if n else ""
            raise self.fail(f"no answer within {self.timeout:g} s{partial}")
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            raise self.fail(f"connection error: {e.strerror or e}") from None
        if not data:
            after = f" after sending {self.shown()}" if self.taken or self.buffer else ""
            raise self.fail(f"the server closed the connection{after}")
        self.received += len(data)
        if self.received > MAX_PLAINTEXT_BYTES:
            raise self.fail(f"more than {MAX_PLAINTEXT_BYTES} bytes without the expected answer")
        self.buffer += data

    def shown(self) -> str:
        """The current answer as far as it came (parsed or still buffered), for a message."""
        return _show(self.taken_head + bytes(self.buffer[:80]), 60)

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.taken += n
        if len(self.taken_head) < 80:
            self.taken_head += data[: 80 - len(self.taken_head)]
        return data

    def begins(self) -> bytes:
        """The first bytes that are not white space, waiting for them."""
        while not self.buffer.lstrip():
            self._fill()
        return bytes(self.buffer.lstrip()[:1])

    def send(self, data: bytes) -> None:
        self.taken, self.taken_head = 0, b""
        view = memoryview(data)
        while view:
            if not _wait(self.sock.fileno(), select.POLLOUT, self.deadline):
                raise self.fail(f"cannot send within {self.timeout:g} s")
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue
            except OSError as e:
                raise self.fail(f"connection error: {e.strerror or e}") from None

    def line(self) -> bytes:
        """One line without its CR LF."""
        while b"\n" not in self.buffer:
            self._fill()
        return self._take(self.buffer.index(b"\n") + 1)[:-1].rstrip(b"\r")

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        return self._take(n)

    def until(self, *markers: bytes) -> tuple[bytes, bytes]:
        """Read until one of ``markers`` appears; return (text up to and including it, marker)."""
        while True:
            for marker in markers:
                at = self.buffer.find(marker)
                if at >= 0:
                    return self._take(at + len(marker)), marker
            self._fill()

    def ensure_nothing_pending(self) -> None:
        """After the go-ahead the server must wait for our ClientHello: anything it already
        sent would be read as if it came through TLS (STARTTLS command injection)."""
        self.stage = "after the STARTTLS go-ahead"
        pending = bytes(self.buffer)
        if not pending:
            try:
                pending = self.sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:  # a reset right after the go-ahead
                raise self.fail(f"connection error: {e.strerror or e}") from None
        if pending:
            raise self.fail(
                f"the server sent {pending[:40]!r} in plaintext before the TLS handshake; "
                "refusing (possible STARTTLS injection)"
            )


Negotiate = Callable[["_Plaintext", str], None]


def _show(data: bytes, limit: int = 120) -> str:
    """Text as text (``limit`` characters), anything else as byte escapes (a third as many):
    quoted, printable, on one line."""
    quote: Callable[[str], str] = repr
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, quote, limit = data.decode("latin-1"), ascii, limit // 3
    return quote(text[:limit] + ("..." if len(text) > limit else ""))


def _reply(talk: _Plaintext) -> tuple[int, list[bytes]]:
    """An SMTP/LMTP/FTP style reply: ``250-...`` lines, then ``250 ...``."""
    lines = []
    while True:
        line = talk.line()
        lines.append(line)
        if len(line) < 3 or not line[:3].isdigit():
            raise talk.fail(f"expected a numeric reply, got {_show(line)}")
        if len(line) == 3 or line[3:4] == b" ":
            return int(line[:3]), lines
        if line[3:4] != b"-":
            raise talk.fail(f"expected a numeric reply, got {_show(line)}")


def _expect_code(talk: _Plaintext, *codes: int) -> list[bytes]:
    code, lines = _reply(talk)
    if code not in codes:
        want = " or ".join(str(c) for c in codes)
        raise talk.fail(f"expected {want}, got {_show(lines[-1])}")
    return lines


def _smtp(hello: bytes) -> Negotiate:
    def negotiate(talk: _Plaintext, name: str) -> None:
        _expect_code(talk, 220)
        talk.stage = hello.decode()
        talk.send(hello + b" " + _EHLO_NAME + b"\r\n")
        lines = _expect_code(talk, 250)
        if not any(line[4:].strip().upper().startswith(b"STARTTLS") for line in lines[1:]):
            raise talk.fail("the server does not offer STARTTLS")
        talk.stage = "STARTTLS"
        talk.send(b"STARTTLS\r\n")
        _expect_code(talk, 220)

    return negotiate


def _imap(talk: _Plaintext, name: str) -> None:
    greeting = talk.line()
    if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
        raise talk.fail(f"expected '* OK', got {_show(greeting)}")
    talk.stage = "STARTTLS"
    talk.send(b"F1 STARTTLS\r\n")
    while True:
        line = talk.line()
        if line.startswith(b"* "):
            continue
        if line.upper().startswith(b"F1 OK"):
            return
        raise talk.fail(f"the server refused STARTTLS: {_show(line)}")


def _greeting_then(
    greeting: tuple[bytes, ...], want: str, command: bytes, go_ahead: bytes
) -> Negotiate:
    """A one-line greeting starting with one of ``greeting`` (``want`` in messages), then
    ``command``, answered by a line starting with ``go_ahead`` (POP3, NNTP)."""

    def negotiate(talk: _Plaintext, name: str) -> None:
        line = talk.line()
        if not line.startswith(greeting):
            raise talk.fail(f"expected {want}, got {_show(line)}")
        talk.stage = command.decode()
        talk.send(command + b"\r\n")
        answer = talk.line()
        if not answer.startswith(go_ahead):
            raise talk.fail(f"the server refused {talk.stage}: {_show(answer)}")

    return negotiate


def _ftp(talk: _Plaintext, name: str) -> None:
    _expect_code(talk, 220)
    talk.stage = "AUTH TLS"
    talk.send(b"AUTH TLS\r\n")
    _expect_code(talk, 234)


def _sieve(talk: _Plaintext, name: str) -> None:
    offered = False
    while True:
        line = talk.line()
        upper = line.upper()
        if upper.startswith(b"OK"):
            break
        if upper.startswith((b"NO", b"BYE")):
            raise talk.fail(f"the server refused the connection: {_show(line)}")
        if not upper.startswith(b'"'):
            raise talk.fail(f"expected a capability line, got {_show(line)}")
        offered = offered or upper.startswith(b'"STARTTLS"')
    if not offered:
        raise talk.fail("the server does not offer STARTTLS")
    talk.stage = "STARTTLS"
    talk.send(b"STARTTLS\r\n")
    answer = talk.line()
    if not answer.upper().startswith(b"OK"):
        raise talk.fail(f"the server refused STARTTLS: {_show(answer)}")


def _xmpp(namespace: bytes) -> Negotiate:
    def negotiate(talk: _Plaintext, name: str) -> None:
        talk.send(
            b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
            b" xmlns='" + namespace + b"' to='" + name.encode("idna") + b"' version='1.0'>"
        )
        talk.stage = "stream features"
        if talk.begins() != b"<":
            raise talk.fail(f"expected an XMPP stream, got {talk.shown()}")
        features, marker = talk.until(b"</stream:features>", b"</stream:stream>", b"<stream:error")
        if marker != b"</stream:features>":
            raise talk.fail(f"the server ended the stream: {_show(features[-200:])}")
        if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
            raise talk.fail("the server does not offer STARTTLS")
        talk.stage = "STARTTLS"
        talk.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        _, marker = talk.until(b"<proceed", b"<failure")
        if marker == b"<failure":
            raise talk.fail("the server refused STARTTLS")
        rest, _ = talk.until(b">")
        if not rest.endswith(b"/>"):
            talk.until(b"</proceed>")

    return negotiate


def _postgres(talk: _Plaintext, name: str) -> None:
    talk.stage = "SSLRequest"
    talk.send(struct.pack("!II", 8, 80877103))
    answer = talk.exactly(1)  # one byte only: anything after it must come through TLS
    if answer == b"N":
        raise talk.fail("the server refuses TLS (ssl = off?)")
    if answer != b"S":
        raise talk.fail(f"expected 'S', got {talk.shown()}")


# ExtendedRequest for StartTLS (RFC 4511 4.14.1), message ID 1.
_LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_LDAP_REQUEST = (
    b"\x30" + bytes([len(_LDAP_STARTTLS_OID) + 7]) + b"\x02\x01\x01"
    b"\x77" + bytes([len(_LDAP_STARTTLS_OID) + 2]) + b"\x80" + bytes([len(_LDAP_STARTTLS_OID)])
) + _LDAP_STARTTLS_OID


def _ber(data: bytes, at: int) -> tuple[int, bytes, int]:
    """(tag, value, next offset) of the BER element at ``at``."""
    if at + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or at + size > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, data[at : at + length], at + length


def _ldap(talk: _Plaintext, name: str) -> None:
    talk.stage = "StartTLS request"
    talk.send(_LDAP_REQUEST)
    head = talk.exactly(2)
    if head[0] != 0x30:
        raise talk.fail(f"expected an LDAP message, got {talk.shown()}")
    size = head[1]
    extra = b""
    if size & 0x80:
        extra = talk.exactly(size & 0x7F) if 0 < size & 0x7F <= 4 else b""
        if not extra:
            raise talk.fail("malformed LDAP message length")
        size = int.from_bytes(extra, "big")
    if size > MAX_PLAINTEXT_BYTES:
        raise talk.fail(f"LDAP answer of {size} bytes is too large")
    message = head + extra + talk.exactly(size)
    try:
        _, body, _ = _ber(message, 0)
        _, _, at = _ber(body, 0)  # messageID
        tag, response, _ = _ber(body, at)
        if tag != 0x78:
            raise talk.fail(f"expected an ExtendedResponse, got tag {tag:#x}")
        code_tag, code, at = _ber(response, 0)
        _, _, at = _ber(response, at)  # matchedDN
        _, diagnostic, _ = _ber(response, at)
    except ValueError as e:
        raise talk.fail(f"malformed LDAP answer ({e})") from None
    if code_tag != 0x0A or int.from_bytes(code, "big") != 0:
        detail = diagnostic.decode("utf-8", "replace") or "no message"
        raise talk.fail(
            f"the server refused StartTLS (resultCode {int.from_bytes(code, 'big')}: {detail})"
        )


_MYSQL_CLIENT_SSL = 0x0800
_MYSQL_CLIENT_PROTOCOL_41 = 0x0200
_MYSQL_CLIENT_SECURE_CONNECTION = 0x8000
_MYSQL_CLIENT_LONG_PASSWORD = 0x0001


def _mysql(talk: _Plaintext, name: str) -> None:
    header = talk.exactly(4)
    size = int.from_bytes(header[:3], "little")
    if size > MAX_PLAINTEXT_BYTES:
        raise talk.fail(
            f"expected a MySQL handshake, got {talk.shown()} (a packet of {size} bytes, too large)"
        )
    payload = talk.exactly(size)
    if payload[:1] == b"\xff":
        message = payload[9:] if payload[3:4] == b"#" else payload[3:]
        raise talk.fail(f"the server refused the connection: {_show(message)}")
    if payload[:1] != b"\x0a":
        raise talk.fail(f"expected a protocol 10 handshake, got {_show(payload[:20])}")
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


_NEGOTIATE: dict[Dialect, Negotiate] = {
    Dialect.SMTP: _smtp(b"EHLO"),
    Dialect.LMTP: _smtp(b"LHLO"),
    Dialect.IMAP: _imap,
    Dialect.POP3: _greeting_then((b"+OK",), "'+OK'", b"STLS", b"+OK"),
    Dialect.FTP: _ftp,
    Dialect.NNTP: _greeting_then((b"200", b"201"), "200 or 201", b"STARTTLS", b"382"),
    Dialect.SIEVE: _sieve,
    Dialect.XMPP: _xmpp(b"jabber:client"),
    Dialect.XMPP_SERVER: _xmpp(b"jabber:server"),
    Dialect.POSTGRES: _postgres,
    Dialect.LDAP: _ldap,
    Dialect.MYSQL: _mysql,
}
