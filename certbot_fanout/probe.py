"""Fetch what an endpoint serves, like a client would, within a hard deadline: the TLS side.

``fetch_served`` connects, lets ``certbot_fanout.starttls`` speak the service's own protocol
first when the endpoint has a dialect (SMTP, LMTP, IMAP, POP3, FTP, NNTP, ManageSieve, XMPP,
PostgreSQL, LDAP, MySQL), then completes a TLS handshake and returns what the server presented
(``Served``). One deadline covers the whole exchange, every attempt below included, so a
silent, slow or garbage-speaking peer costs at most the timeout. ``Fetch`` is the type of that
callable: deploy's ``Effects`` holds one (``fetch_served`` unless a test hands it a stand-in),
and status probes through it.

The handshake asks for TLS 1.2 or later. Only when the server refuses that *because of the
protocol version* does the probe connect once more allowing TLS 1.0 and 1.1 (within the same
deadline), to read the certificate of a legacy endpoint; the result says so
(``Served.legacy_protocol``). Apart from the key type (below), nothing else is relaxed: a
server that fails the handshake for any other reason is not asked again.

**A key type** (``key_type``): a server with an RSA and an ECDSA certificate for one name (the
usual Certbot pair; nginx, Apache, HAProxy, Postfix all hold both) presents the one the client's
offer fits, ECDSA when both do. So the probe offers only what that key type can satisfy. Over
TLS 1.2 and older the cipher suite names the authentication: the probe offers the same suites
as always, less those of the other key type. Over TLS 1.3 the suites say nothing about the
key; the ``signature_algorithms`` extension chooses the certificate (OpenSSL servers heed it
over TLS 1.2 too), and Python's ``ssl`` has no API for it. The probe sets it with OpenSSL's own
call, ``SSL_CTX_set1_sigalgs_list`` (a macro over ``SSL_CTX_ctrl``), through ``ctypes``: looked up
in the very library ``_ssl`` is linked with, applied to the ``SSL_CTX *`` that CPython keeps
right after the object header of every ``SSLContext`` (a layout unchanged since Python 2.7,
which uvloop and others rely on too). Before any write the pointer is proven: what C reads
through it (the 64-bit option mask, before and after Python changes it, and the verify mode)
must agree with Python, else the pointer is not used. This keeps TLS 1.3, what clients
negotiate, and costs nothing per handshake: the setting is made once per cached context (about
0.3 ms), and ``bench/probe_keytype.py`` (200 probes of a loopback nginx holding both) measures
ECDSA asked 0.89 ms against 0.85 unasked, RSA asked 1.05 ms, which is what RSA costs the
server: an RSA-only nginx takes 1.02 ms unasked, 1.03 asked. Where the call cannot be made
safely (not CPython, a statically linked ``_ssl``, any disagreement), a key-typed probe is
capped at TLS 1.2, where the suites still choose the certificate; only a TLS 1.3-only server
then goes unread (it is then asked with any key type, and says so).
If the server completes no handshake with that offer (it has no certificate of that type),
the probe asks once more with any key type allowed, within the same deadline, and returns
what it serves with ``Served.key_type_offered`` False.

**Trust** (``trust``): the probe normally reads what is served without judging it (the leaf is
compared byte for byte with the lineage's). With a ``Trust`` it first makes the handshake a
verifying client makes (``ssl.create_default_context``: the system's trust store, or only
``Trust.ca_file``; the leaf must be valid for ``Trust.name``), as a Matrix federation peer
does (the CA file is read once per process). If that fails, it reads the certificate without
verification (same deadline) and says why in ``Served.trust_error``: one handshake when all
is well, two when it is not. The SNI is ``server_name`` either way; when ``Trust.name`` is
another name, the name is checked after the handshake with OpenSSL's ``X509_check_host``, with
the flags Python's own check uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import select
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Dialect, KeyType, address_label
from certbot_fanout.starttls import negotiate
from certbot_fanout.starttls.talk import wait


@dataclass(frozen=True)
class Trust:
    """Verify what is served as a client that checks it would: the chain against the system's
    trust store (``ssl.create_default_context``), or against ``ca_file`` alone when set, and the
    leaf against ``name``, a DNS name or an IP literal."""

    name: str
    ca_file: str | None = None


@dataclass(frozen=True)
class Served:
    """What a server presented: its leaf, and every certificate it sent (DER, leaf first;
    empty when this Python cannot tell)."""

    leaf: bytes
    chain: tuple[bytes, ...]
    protocol: str = ""  # the TLS version negotiated, as ssl names it ("TLSv1.3"); "" if unknown
    # False when a key type was asked for and the server completed a handshake only once any
    # key type was allowed: it offers no certificate of that type (the leaf shows what it has).
    key_type_offered: bool = True
    # With a Trust: None when the chain and the name verified, else why not: ssl's verify
    # message ("unable to get local issuer certificate", "Hostname mismatch, certificate is not
    # valid for 'x'.") or why the verifying handshake failed. leaf and chain are then what a
    # handshake without verification read.
    trust_error: str | None = None

    @property
    def legacy_protocol(self) -> str | None:
        """The version, when the certificate could only be read over TLS 1.0 or 1.1."""
        return self.protocol if self.protocol in LEGACY_PROTOCOLS else None


# What the legacy retry can negotiate, as ``SSLSocket.version()`` names it.
LEGACY_PROTOCOLS = frozenset({"TLSv1", "TLSv1.1"})


# How fetch_served reaches an endpoint, when not with a TCP connection from here: (host, port,
# seconds left) to a connected socket, or ProbeError.
Connect = Callable[[str, int, float], socket.socket]


class Fetch(Protocol):
    """What deploy and status call (through deploy's Effects) to learn what an endpoint
    serves: ``fetch_served``, or a test's stand-in. Arguments: host, port, server name (SNI),
    timeout in seconds, STARTTLS dialect; the key type to ask for, the trust to verify."""

    def __call__(
        self,
        host: str,
        port: int,
        server_name: str | None,
        timeout: float,
        starttls: Dialect | None = None,
        /,
        *,
        key_type: KeyType | None = None,
        trust: Trust | None = None,
    ) -> Served: ...


# ---------------------------------------------------------------------------- the contexts

# A service with a weak key or a SHA-1 signature still deserves an answer about what it
# serves; TLS 1.0 and 1.1 sign with MD5-SHA1 or SHA-1, which OpenSSL 3 allows only at level 0.
_READING_CIPHERS = "DEFAULT:@SECLEVEL=0"

# ssl.get_ciphers()'s name for the authentication each key type can do.
_AUTH = {KeyType.RSA: "auth-rsa", KeyType.ECDSA: "auth-ecdsa"}

# Every signature algorithm a certificate of the type can make (TLS 1.3 and 1.2 names,
# strongest first); only these are offered in signature_algorithms.
_SIGALGS = {
    KeyType.RSA: ":".join(
        [
            *(f"rsa_pss_rsae_sha{n}" for n in (256, 384, 512)),
            *(f"rsa_pss_pss_sha{n}" for n in (256, 384, 512)),
            *(f"rsa_pkcs1_sha{n}" for n in (256, 384, 512)),
            "RSA+SHA224",
            "RSA+SHA1",
        ]
    ),
    KeyType.ECDSA: ":".join(
        [
            "ecdsa_secp256r1_sha256",
            "ecdsa_secp384r1_sha384",
            "ecdsa_secp521r1_sha512",
            "ECDSA+SHA224",
            "ECDSA+SHA1",
        ]
    ),
}


@functools.cache
def _reading_context(key_type: KeyType | None) -> ssl.SSLContext:
    """A context that reads what is served without judging it (the leaf is compared byte for
    byte with the lineage's): TLS 1.2 or later, offering only what ``key_type`` fits."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # check_hostname must be switched off before verify_mode can be CERT_NONE.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Set, not left to the build: Debian's Python allows TLS 1.0 by default, python.org's does
    # not. Older versions are the fallback's, and are reported as such.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers(_READING_CIPHERS)
    if key_type is not None:
        _restrict(ctx, key_type)
    return ctx


@functools.cache
def _legacy_context(key_type: KeyType | None) -> ssl.SSLContext | None:
    """The same for TLS 1.0 and 1.1 only, or None when this Python or OpenSSL has none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TLSv1 names are deprecated
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers(_READING_CIPHERS)
        if key_type is not None:
            _restrict(ctx, key_type, tls13=False)
    except (ValueError, ssl.SSLError):
        return None
    return ctx


@functools.lru_cache(maxsize=64)
def _trust_context(
    ca_file: str | None, key_type: KeyType | None, checks_name: bool
) -> ssl.SSLContext:
    """A verifying client's context (system trust, or ``ca_file`` alone); ``checks_name``
    False when the name is checked after the handshake (it is not the SNI). Raises OSError or
    ssl.SSLError for an unreadable CA file."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = checks_name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # python.org's default; Debian's allows 1.0
    if key_type is not None:
        _restrict(ctx, key_type)
    return ctx


def _restrict(ctx: ssl.SSLContext, key_type: KeyType, tls13: bool = True) -> None:
    """Offer only what a certificate of ``key_type`` can satisfy: the context's own cipher
    suites of that authentication, at its security level, and (for a context that may speak
    TLS 1.3) only that type's signature algorithms, or no TLS 1.3 where those cannot be set."""
    suites = [c["name"] for c in ctx.get_ciphers() if c["auth"] == _AUTH[key_type]]
    ctx.set_ciphers(":".join(suites) + f":@SECLEVEL={ctx.security_level}")
    if not tls13:
        return
    openssl = _openssl()
    if openssl is None or not openssl.set_sigalgs(ctx, _SIGALGS[key_type]):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2


# ------------------------------------------------------- the two calls ssl does not offer

_SSL_CTRL_SET_SIGALGS_LIST = 98  # ssl.h: SSL_CTX_set1_sigalgs_list(ctx, s) is this ctrl
_X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS = 0x4  # x509v3.h; Python's hostflags default
_X509_CHECK_FLAG_NEVER_CHECK_SUBJECT = 0x20  # what hostname_checks_common_name = False sets
# SSL_CTX_get_verify_mode's low bits for each verify_mode (SSL_VERIFY_PEER 1,
# SSL_VERIFY_FAIL_IF_NO_PEER_CERT 2), as _ssl sets them.
_VERIFY_BITS = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}


class _OpenSSL:
    """The libssl and libcrypto calls Python's ssl does not offer, from the library _ssl
    itself is linked with (a second copy of OpenSSL would not know _ssl's objects)."""

    def __init__(self, ct: Any, lib: Any) -> None:
        self._ct = ct
        pointer, text, size = ct.c_void_p, ct.c_char_p, ct.c_size_t
        options_type = ct.c_uint64 if ssl.OPENSSL_VERSION_INFO >= (3,) else ct.c_ulong
        self._ctrl = _declare(lib.SSL_CTX_ctrl, ct.c_long, pointer, ct.c_int, ct.c_long, text)
        self._get_options = _declare(lib.SSL_CTX_get_options, options_type, pointer)
        self._get_verify_mode = _declare(lib.SSL_CTX_get_verify_mode, ct.c_int, pointer)
        self._d2i_x509 = _declare(lib.d2i_X509, pointer, pointer, ct.POINTER(text), ct.c_long)
        self._x509_free = _declare(lib.X509_free, None, pointer)
        self._check_host = _declare(
            lib.X509_check_host, ct.c_int, pointer, text, size, ct.c_uint, pointer
        )
        self._check_ip = _declare(lib.X509_check_ip_asc, ct.c_int, pointer, text, ct.c_uint)

    def set_sigalgs(self, ctx: ssl.SSLContext, sigalgs: str) -> bool:
        """Offer only ``sigalgs`` in ``ctx``'s signature_algorithms: True when done."""
        pointer = self._ssl_ctx(ctx)
        if pointer is None:
            return False
        done = self._ctrl(pointer, _SSL_CTRL_SET_SIGALGS_LIST, 0, sigalgs.encode("ascii"))
        return bool(done == 1)

    def _ssl_ctx(self, ctx: ssl.SSLContext) -> int | None:
        """The ``SSL_CTX *`` under ``ctx``, or None unless reading through it agrees with
        Python: the object must be large enough to hold it, the pointer aligned, and the
        option mask (as it is and with one bit flipped) and the verify mode the same."""
        ct = self._ct
        offset = object.__basicsize__  # PySSLContext: PyObject_HEAD, then SSL_CTX *ctx
        if type(ctx).__basicsize__ < offset + ct.sizeof(ct.c_void_p):
            return None
        pointer: int | None = ct.c_void_p.from_address(id(ctx) + offset).value
        if not pointer or pointer % ct.alignment(ct.c_void_p):
            return None
        saved = ctx.options
        try:
            for options in (saved, saved ^ ssl.OP_NO_TICKET):
                ctx.options = options
                if self._get_options(pointer) != int(ctx.options):
                    return None
        finally:
            ctx.options = saved
        if self._get_verify_mode(pointer) & 3 != _VERIFY_BITS[ctx.verify_mode]:
            return None
        return pointer

    def name_problem(self, der: bytes, name: str, checks_common_name: bool) -> str | None:
        """None when the certificate ``der`` is valid for ``name`` (a DNS name or an IP
        literal), as OpenSSL checks it during a handshake; else ssl's message for it."""
        ct = self._ct
        cursor = ct.c_char_p(der)
        x509 = self._d2i_x509(None, ct.byref(cursor), len(der))
        ip = _is_ip_literal(name)
        if ip:
            problem = f"IP address mismatch, certificate is not valid for '{name}'."
        else:
            problem = f"Hostname mismatch, certificate is not valid for '{name}'."
        if not x509:
            return problem
        flags = _X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
        if not checks_common_name:
            flags |= _X509_CHECK_FLAG_NEVER_CHECK_SUBJECT
        try:
            if ip:
                matched = self._check_ip(x509, name.encode("ascii"), flags)
            else:
                encoded = name.encode("idna")  # what ssl does with a server_hostname
                matched = self._check_host(x509, encoded, len(encoded), flags, None)
        finally:
            self._x509_free(x509)
        return None if matched == 1 else problem


def _declare(function: Any, restype: Any, *argtypes: Any) -> Any:
    function.restype = restype
    function.argtypes = argtypes
    return function


@functools.cache
def _openssl() -> _OpenSSL | None:
    """The calls, or None where they cannot be reached safely: not CPython (no object layout
    to rely on), ``_ssl`` not a shared library, or a symbol missing."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes  # only a key-typed or differently named probe needs it

        return _OpenSSL(ctypes, ctypes.CDLL(ssl._ssl.__file__))  # type: ignore[attr-defined]
    except (ImportError, OSError, AttributeError):
        return None


def _is_ip_literal(name: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
        except (OSError, ValueError):
            continue
        return True
    return False


# --------------------------------------------------------------------------- the probe


class _HandshakeFailed(ProbeError):
    """The server refused the handshake (an alert, or it hung up), so a different offer might
    still succeed. ``reason`` is the message without the endpoint's name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _ProtocolRefused(_HandshakeFailed):
    """The server refused the TLS versions offered (and nothing else went wrong)."""


class _Untrusted(ProbeError):
    """The handshake failed at verification: ``reason`` is ssl's verify message."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_served(
    host: str,
    port: int,
    server_name: str | None,
    timeout: float,
    starttls: Dialect | None = None,
    *,
    key_type: KeyType | None = None,
    trust: Trust | None = None,
    connect: Connect | None = None,
) -> Served:
    """Connect to ``host:port``, negotiate STARTTLS if asked, complete a TLS handshake with SNI
    ``server_name``, and return what the server presented.

    Args:
        key_type: offer only what a certificate of this type satisfies, so a server with
            several presents that one; if it completes no handshake so, ask again with any key
            type (``Served.key_type_offered`` is then False).
        trust: verify the chain and the name first, as a client would; if that fails, read
            the certificate unverified and say why (``Served.trust_error``).
        connect: how to reach ``host:port`` (default: a TCP connection from here); given, it
            returns a connected socket or raises ProbeError (a tunnel, say).

    Raises:
        ProbeError: naming the endpoint and the stage that failed (connect, greeting, the
            STARTTLS exchange, the TLS handshake, an unreadable CA file), all within
            ``timeout`` seconds.
    """
    where = address_label(host, port) + (f" ({starttls.value})" if starttls else "")
    deadline = time.monotonic() + timeout
    attempt = _Attempt(host, port, server_name, starttls, where, deadline, timeout, connect)
    if key_type is None:
        return attempt.trusted(None, trust)
    try:
        return attempt.trusted(key_type, trust)
    except _HandshakeFailed as restricted:
        try:
            served = attempt.trusted(None, trust)
        except ProbeError as again:
            raise ProbeError(f"{restricted}; with any key type: {again}") from None
        return dataclasses.replace(served, key_type_offered=False)


def fetch_leaf(host: str, port: int, server_name: str | None, timeout: float) -> bytes:
    """The DER of the leaf certificate a direct-TLS endpoint presents."""
    return fetch_served(host, port, server_name, timeout).leaf


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
    connect: Connect | None = None

    def trusted(self, key_type: KeyType | None, trust: Trust | None) -> Served:
        """With ``trust``, one verifying handshake, then (if it fails) an unverified read;
        without, the unverified read alone."""
        if trust is None:
            return self.read(key_type)
        name_agrees = _names_agree(self.server_name, trust.name)
        openssl = None if name_agrees else _openssl()
        # With no way to check the name apart from the handshake, the SNI is the name.
        hostname = trust.name if name_agrees or openssl is None else self.server_name
        try:
            ctx = _trust_context(trust.ca_file, key_type, openssl is None)
        except (OSError, ssl.SSLError) as e:
            detail = getattr(e, "strerror", None) or getattr(e, "reason", None) or e
            where = self.where
            raise ProbeError(
                f"{where}: cannot read the CA file {trust.ca_file}: {detail}"
            ) from None
        try:
            served = self.fetch(ctx, hostname)
        except _Untrusted as untrusted:
            return dataclasses.replace(self.read(key_type), trust_error=untrusted.reason)
        except _ProtocolRefused as refused:  # TLS 1.0 or 1.1 only: no verifying client's
            served = self.read(key_type, refused)
            return dataclasses.replace(served, trust_error=refused.reason)
        except _HandshakeFailed as failed:
            return dataclasses.replace(self.read(key_type), trust_error=failed.reason)
        if openssl is not None:
            problem = openssl.name_problem(served.leaf, trust.name, ctx.hostname_checks_common_name)
            return dataclasses.replace(served, trust_error=problem)
        return served

    def read(self, key_type: KeyType | None, refused: _ProtocolRefused | None = None) -> Served:
        """What is served, unverified: TLS 1.2 or later, then (if the server refuses those
        versions, or ``refused`` says it did) TLS 1.0 and 1.1."""
        if refused is None:
            try:
                return self.fetch(_reading_context(key_type), self.server_name)
            except _ProtocolRefused as e:
                refused = e
        legacy = _legacy_context(key_type)
        if legacy is None:
            raise ProbeError(str(refused)) from None
        try:
            return self.fetch(legacy, self.server_name)
        except _HandshakeFailed as again:
            message = f"{refused}; with TLS 1.0 and 1.1 allowed too: {again}"
            raise _HandshakeFailed(message, again.reason) from None
        except ProbeError as again:
            raise ProbeError(f"{refused}; with TLS 1.0 and 1.1 allowed too: {again}") from None

    def fetch(self, ctx: ssl.SSLContext, hostname: str | None) -> Served:
        """One connection and handshake with ``ctx``, ``hostname`` as the SNI (and the name
        checked, when ``ctx`` checks one)."""
        where, timeout = self.where, self.timeout
        connect_within = max(self.deadline - time.monotonic(), 0.001)
        try:
            if self.connect is not None:
                sock = self.connect(self.host, self.port, connect_within)
            else:
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
            tls = _wrap(ctx, sock, hostname, where)
            with tls:
                _handshake(tls, self.deadline, where, timeout)
                leaf = tls.getpeercert(binary_form=True)
                chain = _peer_chain(tls)
                protocol = tls.version() or ""
        if not leaf:
            raise ProbeError(f"{where}: the server presented no certificate")
        return Served(leaf=leaf, chain=chain, protocol=protocol)


def _names_agree(server_name: str | None, name: str) -> bool:
    """Whether the handshake's own name check can check ``name``: it is the SNI, or an IP
    literal where no SNI is sent (ssl sends none for an address)."""
    if server_name is None:
        return _is_ip_literal(name)
    return server_name.lower() == name.lower()


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
            reason = f"TLS handshake failed: {e.reason or 'the server closed the connection'}"
            raise _HandshakeFailed(f"{where}: {reason}", reason) from None
        except ssl.SSLCertVerificationError as e:
            reason = e.verify_message or e.reason or str(e)
            raise _Untrusted(
                f"{where}: the certificate does not verify: {reason}", reason
            ) from None
        except ssl.SSLError as e:
            raise _handshake_error(e.reason or str(e), where) from None
        except ConnectionResetError:
            raise ProbeError(
                f"{where}: TLS handshake failed: the server reset the connection"
            ) from None
        except OSError as e:
            raise ProbeError(f"{where}: TLS handshake failed: {e.strerror or e}") from None
        if not wait(tls.fileno(), events, deadline):
            raise ProbeError(f"{where}: TLS handshake not finished within {timeout:g} s")


def _handshake_error(reason: str, where: str) -> ProbeError:
    """The error for OpenSSL's ``reason`` code: a refusal another offer might get past, or
    (the peer does not speak TLS) a plain failure."""
    text = f"TLS handshake failed: {reason}{_HANDSHAKE_HINTS.get(reason, '')}"
    if reason in _PROTOCOL_REFUSED:
        return _ProtocolRefused(f"{where}: {text}", text)
    if reason in _NOT_TLS_REASONS:
        return ProbeError(f"{where}: {text}")
    return _HandshakeFailed(f"{where}: {text}", text)


_NOT_TLS = " (the server did not answer in TLS: a plaintext port, or one that needs STARTTLS?)"
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)
_HANDSHAKE_HINTS = {
    **dict.fromkeys(_NOT_TLS_REASONS, _NOT_TLS),
    "UNEXPECTED_EOF_WHILE_READING": " (the server closed the connection)",
}
# What OpenSSL says when the only thing wrong is the protocol version: the server's alert, or
# its ServerHello for a version the client did not offer.
_PROTOCOL_REFUSED = frozenset(
    {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION", "VERSION_TOO_LOW"}
)
