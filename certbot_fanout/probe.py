"""Fetch what an endpoint serves, like a client would, within a hard deadline: the TLS side.

``fetch_served`` connects, lets ``certbot_fanout.starttls`` speak the service's own protocol
first when the endpoint has a dialect (SMTP, LMTP, IMAP, POP3, FTP, NNTP, ManageSieve, XMPP,
PostgreSQL, LDAP, MySQL), then completes a TLS handshake and returns what the server presented
(``Served``). One deadline covers the whole exchange, so a silent, slow or garbage-speaking peer
costs at most the timeout. ``Fetch`` is the type of that callable: deploy's ``Effects`` holds
one (``fetch_served`` unless a test hands it a stand-in), and status probes through it.

The handshake asks for TLS 1.2 or later. Only when the server refuses that *because of the
protocol version* does the probe connect once more allowing TLS 1.0 and 1.1 (within the same
deadline), to read the certificate of a legacy endpoint; the result says so
(``Served.legacy_protocol``). Nothing else is relaxed: a server that fails the handshake for
any other reason is not asked again.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Dialect, address_label
from certbot_fanout.starttls import negotiate
from certbot_fanout.starttls.talk import wait


@dataclass(frozen=True)
class Served:
    """What a server presented: its leaf, and every certificate it sent (DER, leaf first;
    empty when this Python cannot tell)."""

    leaf: bytes
    chain: tuple[bytes, ...]
    protocol: str = ""  # the TLS version negotiated, as ssl names it ("TLSv1.3"); "" if unknown
    key_type_offered: bool = True
    trust_error: str | None = None

    @property
    def legacy_protocol(self) -> str | None:
        """The version, when the certificate could only be read over TLS 1.0 or 1.1."""
        return self.protocol if self.protocol in LEGACY_PROTOCOLS else None


# What the legacy retry can negotiate, as ``SSLSocket.version()`` names it.
LEGACY_PROTOCOLS = frozenset({"TLSv1", "TLSv1.1"})


# What deploy and status call (through deploy's Effects) to learn what an endpoint serves:
# fetch_served, or a test's stand-in. Arguments: host, port, server name (SNI), timeout in
# seconds, STARTTLS dialect.
Fetch = Callable[..., Served]


@dataclass(frozen=True)
class Trust:
    name: str
    ca_file: str | None = None


@functools.cache
def _client_context() -> ssl.SSLContext:
    # Trust is not the question here: we read the leaf and compare it byte for byte with the
    # lineage's. check_hostname must be switched off before verify_mode can be CERT_NONE.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Set, not left to the build: Debian's Python allows TLS 1.0 by default, python.org's does
    # not. Older versions are the fallback's, and are reported as such.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with contextlib.suppress(ssl.SSLError):
        # A service with a weak key or a SHA-1 signature still deserves an answer about what
        # it serves.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@functools.cache
def _legacy_context() -> ssl.SSLContext | None:
    """A context for TLS 1.0 and 1.1 only, or None when this Python or OpenSSL has none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TLSv1 names are deprecated
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        # Their handshakes sign with MD5-SHA1 or SHA-1, which OpenSSL 3 allows only at level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        return None
    return ctx


class _ProtocolRefused(ProbeError):
    """The server refused the TLS versions offered (and nothing else went wrong)."""


def fetch_served(
    host: str,
    port: int,
    server_name: str | None,
    timeout: float,
    starttls: Dialect | None = None,
    *,
    key_type: object = None,
    trust: Trust | None = None,
) -> Served:
    """Connect to ``host:port``, negotiate STARTTLS if asked, complete a TLS handshake with SNI
    ``server_name``, and return what the server presented.

    Raises:
        ProbeError: naming the endpoint and the stage that failed (connect, greeting, the
            STARTTLS exchange, the TLS handshake), all within ``timeout`` seconds.
    """
    where = address_label(host, port) + (f" ({starttls.value})" if starttls else "")
    deadline = time.monotonic() + timeout
    attempt = _Attempt(host, port, server_name, starttls, where, deadline, timeout)
    try:
        return attempt.fetch(_client_context())
    except _ProtocolRefused as refused:
        legacy = _legacy_context()
        if legacy is None:
            raise ProbeError(str(refused)) from None
        try:
            return attempt.fetch(legacy)
        except ProbeError as again:
            raise ProbeError(f"{refused}; with TLS 1.0 and 1.1 allowed too: {again}") from None


@dataclass(frozen=True)
class _Attempt:
    """One endpoint to fetch from, and the deadline every attempt at it shares."""

    host: str
    port: int
    server_name: str | None
    starttls: Dialect | None
    where: str
    deadline: float
    timeout: float

    def fetch(self, ctx: ssl.SSLContext) -> Served:
        where, timeout = self.where, self.timeout
        connect_within = max(self.deadline - time.monotonic(), 0.001)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=connect_within)
        except socket.gaierror as e:
            raise ProbeError(f"{where}: cannot resolve {self.host}: {e.strerror}") from None
        except ConnectionRefusedError:
            raise ProbeError(f"{where}: connection refused (is the service running?)") from None
        except TimeoutError:
            raise ProbeError(f"{where}: no TCP connection within {timeout:g} s") from None
        except OSError as e:
            raise ProbeError(f"{where}: cannot connect: {e.strerror or e}") from None
        with sock:
            sock.setblocking(False)
            if self.starttls is not None:
                name = self.server_name or self.host
                negotiate(
                    sock, self.starttls, name, deadline=self.deadline, where=where, timeout=timeout
                )
            tls = _wrap(ctx, sock, self.server_name, where)
            with tls:
                _handshake(tls, self.deadline, where, timeout)
                leaf = tls.getpeercert(binary_form=True)
                chain = _peer_chain(tls)
                protocol = tls.version() or ""
        if not leaf:
            raise ProbeError(f"{where}: the server presented no certificate")
        return Served(leaf=leaf, chain=chain, protocol=protocol)


def _wrap(
    ctx: ssl.SSLContext, sock: socket.socket, server_name: str | None, where: str
) -> ssl.SSLSocket:
    try:
        return ctx.wrap_socket(
            sock, server_hostname=server_name or None, do_handshake_on_connect=False
        )
    except ConnectionResetError:  # wrap_socket reads from a socket it finds unconnected
        raise ProbeError(
            f"{where}: TLS handshake failed: the server reset the connection"
        ) from None
    except (OSError, ValueError) as e:
        detail = getattr(e, "strerror", None) or e
        raise ProbeError(f"{where}: TLS handshake failed: cannot start TLS: {detail}") from None


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
            error = _ProtocolRefused if reason in _PROTOCOL_REFUSED else ProbeError
            raise error(f"{where}: TLS handshake failed: {reason}{hint}") from None
        except ConnectionResetError:
            raise ProbeError(
                f"{where}: TLS handshake failed: the server reset the connection"
            ) from None
        except OSError as e:
            raise ProbeError(f"{where}: TLS handshake failed: {e.strerror or e}") from None
        if not wait(tls.fileno(), events, deadline):
            raise ProbeError(f"{where}: TLS handshake not finished within {timeout:g} s")


_NOT_TLS = " (the server did not answer in TLS: a plaintext port, or one that needs STARTTLS?)"
_HANDSHAKE_HINTS = {
    "WRONG_VERSION_NUMBER": _NOT_TLS,
    "RECORD_LAYER_FAILURE": _NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": _NOT_TLS,
    "HTTP_REQUEST": _NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": " (the server closed the connection)",
}
# What OpenSSL says when the only thing wrong is the protocol version: the server's alert, or
# its ServerHello for a version the client did not offer.
_PROTOCOL_REFUSED = frozenset(
    {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION", "VERSION_TOO_LOW"}
)
