"""Where Matrix federation peers connect for a server name, and for which certificate name.

``resolve`` follows the Matrix server-server specification's "Resolving server names"
(https://spec.matrix.org/latest/server-server-api/#resolving-server-names), with the bounds
Synapse adds (a 50 KiB well-known, a cache lifetime clamped to 48 hours):

1. an IP literal, with its port or 8448; the certificate must be valid for the IP address;
2. a name with an explicit port: that name and port, certificate for the name;
3. ``https://NAME/.well-known/matrix/server`` (redirects followed): only a 200 answer whose
   JSON object holds a valid ``m.server`` delegates; ``m.server`` (``DELEGATED[:PORT]``) is
   then an IP literal (its port or 8448), a name with a port, or a name looked up as in 4-6,
   and the certificate must be valid for the delegated name, never for an SRV target;
4. SRV ``_matrix-fed._tcp.NAME``; 5. the deprecated SRV ``_matrix._tcp.NAME``;
6. NAME port 8448.

Every network read is bounded in size and time: one deadline covers the whole resolution, and
the well-known may use half of it, so DNS still has time after a slow well-known. SRV lookups
use dnspython, imported only when one is made, so importing this module stays cheap. The
``Lookup`` seam (``addresses`` and ``srv``) is how tests point the resolver at their own
servers; ``DnsLookup`` is the real one.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import functools
import http.client
import io
import ipaddress
import json
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar, cast

from certbot_fanout import __version__
from certbot_fanout.errors import ProbeError
from certbot_fanout.model import address_label
from certbot_fanout.starttls.talk import show, wait

DEFAULT_PORT = 8448  # the port IANA registered for matrix-fed
WELL_KNOWN_PORT = 443
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_SIZE = 50 * 1024  # Synapse reads no more of a well-known (WELL_KNOWN_MAX_SIZE)
HEADER_ALLOWANCE = 16 * 1024  # for the status line and headers, on top of the body
MAX_REDIRECTS = 5  # Synapse (Twisted's RedirectAgent) follows up to 20; real setups use one
CACHE_CLAMP = 48 * 3600  # Synapse caches a well-known at most this long (the spec's advice)
WELL_KNOWN_SHARE = 0.5  # of the resolution's time, at most, for the well-known
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DNS_NAME = re.compile(r"[A-Za-z0-9.-]{1,255}")
_T = TypeVar("_T")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)


class FederationError(ProbeError):
    """A Matrix server name is malformed, or where its peers connect cannot be determined
    (a DNS lookup failed or timed out, SRV says there is no service, dnspython is missing)."""


@dataclass(frozen=True)
class Target:
    """One place federation peers connect to.

    Attributes:
        host: a DNS name to resolve (A and AAAA), or an IP literal (no brackets).
        port: the TCP port.
        cert_name: the name (or IP literal) the certificate must be valid for, and the SNI
            to send (a peer's ``Host`` header is this name, with the port when the server
            name or ``m.server`` gave one).
    """

    host: str
    port: int
    cert_name: str

    @property
    def label(self) -> str:
        return address_label(self.host, self.port)


@dataclass(frozen=True)
class Resolution:
    """Where a server name's federation peers connect, and how that was found.

    Attributes:
        server_name: the Matrix server name resolved, as given.
        targets: every place peers may connect to, in the order they try them (SRV: by
            priority, then by weight, heaviest first); all of them must serve the certificate,
            since a peer uses a lower-priority target as soon as a higher one fails.
        path: the steps taken, in words, e.g. ``no well-known (HTTP 404); no SRV:
            matrix.example.org:8448``.
        warnings: what works today but may not tomorrow (the deprecated SRV in use, a
            well-known cache lifetime over 48 h, a redirect to plain HTTP).
        well_known: the HTTPS endpoints the well-known was fetched from (each hop of a
            redirect), which serve a certificate too; empty if no well-known was asked for or
            none accepted a connection.
    """

    server_name: str
    targets: tuple[Target, ...]
    path: str
    warnings: tuple[str, ...] = ()
    well_known: tuple[Target, ...] = ()


class SrvRecord(NamedTuple):
    priority: int
    weight: int
    target: str  # without the final dot; "." is "no service here"
    port: int


class Lookup(Protocol):
    """The DNS the resolver uses: addresses for a name, and SRV records."""

    def addresses(self, host: str, port: int) -> list[str]:
        """The IP literals of ``host`` (IPv6 and IPv4), without duplicates.

        Raises:
            FederationError: the name does not resolve.
        """
        ...

    def srv(self, name: str, timeout: float) -> list[SrvRecord]:
        """The SRV records at ``name``; [] when the name or the record does not exist.

        Raises:
            FederationError: no answer within ``timeout``, or a DNS failure (SERVFAIL,
                REFUSED): that is not "no SRV", and guessing would check the wrong place.
        """
        ...


class DnsLookup:
    """The system's resolver for addresses (getaddrinfo, both families, no AI_ADDRCONFIG, so
    an address of a family this host cannot reach is still listed) and dnspython for SRV,
    asking the servers of /etc/resolv.conf, or ``nameserver`` on ``port`` when given."""

    def __init__(self, nameserver: str | None = None, port: int = 53) -> None:
        self.nameserver = nameserver
        self.port = port

    def addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise FederationError(f"{host} does not resolve: {e.strerror}") from None
        except UnicodeError as e:
            raise FederationError(f"{host} cannot be looked up: {e}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def srv(self, name: str, timeout: float) -> list[SrvRecord]:
        try:
            import dns.exception
            import dns.resolver
        except ImportError:
            raise FederationError(
                f"cannot look up SRV {name}: dnspython is missing: install python3-dnspython"
                " (or pip install dnspython)"
            ) from None
        try:
            resolver = dns.resolver.Resolver(configure=self.nameserver is None)
        except dns.exception.DNSException as e:
            raise FederationError(f"cannot look up SRV {name}: no resolver: {e}") from None
        if self.nameserver is not None:
            resolver.nameservers = [self.nameserver]
            resolver.port = self.port
        try:
            answer = resolver.resolve(name, "SRV", lifetime=max(timeout, 0.001), search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise FederationError(f"SRV {name}: no DNS answer within {timeout:.3g} s") from None
        except dns.exception.DNSException as e:
            raise FederationError(f"SRV {name}: the DNS lookup failed: {e}") from None
        return [
            SrvRecord(
                int(r.priority), int(r.weight), r.target.to_text(omit_final_dot=True), int(r.port)
            )
            for r in answer
        ]


# --------------------------------------------------------------------------- server names


@dataclass(frozen=True)
class ServerName:
    """A parsed ``hostname[:port]``: ``host`` without brackets, ``port`` None when absent."""

    host: str
    port: int | None
    is_ip: bool

    def target(self, default_port: int = DEFAULT_PORT) -> Target:
        return Target(self.host, self.port or default_port, self.host)


def parse_server_name(text: str) -> ServerName:
    """Parse a server name by the grammar of the specification's appendix.

    Raises:
        ValueError: saying what is wrong.
    """
    host, port = _split_port(text)
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("an IPv6 literal needs its closing ']'")
        try:
            literal = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        if literal.scope_id is not None:
            raise ValueError("an IPv6 literal cannot have a zone")
        return ServerName(host[1:-1], port, True)
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(host)
        return ServerName(host, port, True)
    _check_dns_name(host)
    return ServerName(host, port, False)


def _split_port(text: str) -> tuple[str, int | None]:
    if not text:
        raise ValueError("it is empty")
    bracket = text.rfind("]")
    colon = text.rfind(":")
    if colon <= bracket:
        return text, None
    host, digits = text[:colon], text[colon + 1 :]
    if ":" in host and not host.startswith("["):
        raise ValueError("an IPv6 literal must be in brackets")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 5):
        raise ValueError(f"the port {digits!r} is not 1 to 5 digits")
    port = int(digits)
    if not 0 < port < 65536:
        raise ValueError(f"the port {port} is not between 1 and 65535")
    return host, port


def _check_dns_name(host: str) -> None:
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(
            "a DNS name has 1 to 255 letters, digits, '-' and '.'"
            if host
            else "the host name is empty"
        )
    labels = host.split(".")
    if any(not label or len(label) > 63 for label in labels):
        raise ValueError("each label of a DNS name has 1 to 63 characters")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{host} is neither an IPv4 address nor a DNS name")


# --------------------------------------------------------------------------- resolving


def resolve(
    server_name: str,
    *,
    timeout: float,
    ca_file: str | None = None,
    lookup: Lookup | None = None,
) -> Resolution:
    """Resolve a Matrix server name the way federation peers do.

    Args:
        server_name: ``hostname[:port]``, as in a Matrix user ID after the ``:``.
        timeout: seconds for the whole resolution (the well-known may use half).
        ca_file: trust only this PEM bundle for the well-known's HTTPS, not the system's.
        lookup: the DNS to use; ``DnsLookup()`` by default.

    Returns:
        The targets with the certificate name each must serve, the path, the warnings and
        the well-known's own HTTPS endpoints.

    Raises:
        FederationError: a malformed server name; a DNS failure or timeout (not the same as
            "no record"); an SRV record saying there is no service; an unreadable ``ca_file``.
    """
    try:
        name = parse_server_name(server_name)
    except ValueError as e:
        raise FederationError(f"{server_name!r} is not a Matrix server name: {e}") from None
    run = _Run(lookup or DnsLookup(), time.monotonic() + timeout, timeout)
    if name.is_ip:
        target = name.target()
        run.step(f"IP literal: {target.label}")
        targets: tuple[Target, ...] = (target,)
    elif name.port is not None:
        target = name.target()
        run.step(f"explicit port: {target.label}")
        targets = (target,)
    else:
        targets = _via_well_known(run, name.host, ca_file, timeout)
    return Resolution(
        server_name=server_name,
        targets=targets,
        path="; ".join(run.steps),
        warnings=tuple(run.warnings),
        well_known=tuple(run.well_known),
    )


@dataclass
class _Run:
    """One resolution's seam, deadline and what it has found so far."""

    lookup: Lookup
    deadline: float
    timeout: float
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    well_known: list[Target] = field(default_factory=list)

    def step(self, words: str) -> None:
        self.steps.append(words)

    def srv(self, name: str) -> list[SrvRecord]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise FederationError(
                f"SRV {name}: not looked up, the resolution's {self.timeout:g} s are used up"
            )
        return self.lookup.srv(name, remaining)


def _via_well_known(
    run: _Run, host: str, ca_file: str | None, timeout: float
) -> tuple[Target, ...]:
    deadline = min(run.deadline, time.monotonic() + timeout * WELL_KNOWN_SHARE)
    fetch = _WellKnownFetch(run, _tls_context(ca_file), deadline, timeout * WELL_KNOWN_SHARE)
    try:
        delegated, raw, via = fetch.delegation(host)
    except _NoWellKnown as why:
        run.step(f"no well-known ({why})")
        return _by_dns(run, host)
    run.step(f"well-known{via}: m.server {raw}")
    if delegated.is_ip:
        target = delegated.target()
        run.step(f"IP literal: {target.label}")
        return (target,)
    if delegated.port is not None:
        target = delegated.target()
        run.step(f"explicit port: {target.label}")
        return (target,)
    return _by_dns(run, delegated.host)


def _by_dns(run: _Run, host: str) -> tuple[Target, ...]:
    """Steps 4 to 6 (3.3 to 3.5 for a delegated name): SRV, deprecated SRV, port 8448; the
    certificate must be valid for ``host`` whatever SRV says."""
    current = f"_matrix-fed._tcp.{host}"
    records = run.srv(current)
    if records:
        targets = _srv_targets(current, records, host)
        run.step(f"SRV {current} -> {_labels(targets)}")
        return targets
    legacy = f"_matrix._tcp.{host}"
    records = run.srv(legacy)
    if records:
        targets = _srv_targets(legacy, records, host)
        run.step(f"no SRV {current}; deprecated SRV {legacy} -> {_labels(targets)}")
        run.warnings.append(
            f"peers find {host} through the deprecated SRV record {legacy}, which the Matrix"
            f" specification may drop: publish {current} (or a well-known with a port)"
        )
        return targets
    target = Target(host, DEFAULT_PORT, host)
    run.step(f"no SRV: {target.label}")
    return (target,)


def _srv_targets(name: str, records: list[SrvRecord], cert_name: str) -> tuple[Target, ...]:
    usable = [r for r in records if r.target not in (".", "")]
    if not usable:
        raise FederationError(
            f"SRV {name} says there is no federation service here (target '.'),"
            " so peers cannot connect at all"
        )
    ordered = sorted(usable, key=lambda r: (r.priority, -r.weight, r.target, r.port))
    unique = dict.fromkeys((r.target, r.port) for r in ordered)
    return tuple(Target(target, port, cert_name) for target, port in unique)


def _labels(targets: tuple[Target, ...]) -> str:
    return ", ".join(t.label for t in targets)


# --------------------------------------------------------------------------- the well-known


class _NoWellKnown(Exception):
    """There is no usable well-known; the message says why (spec: "skip to step 4")."""


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        detail = getattr(e, "strerror", None) or e
        raise FederationError(f"cannot read the CA file {ca_file}: {detail}") from None


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str  # no brackets
    port: int
    target: str  # path and query

    @property
    def text(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{self.authority(default)}{self.target}"

    def authority(self, default: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


class _WellKnownFetch:
    """GET the well-known, following redirects, within ``deadline``."""

    def __init__(self, run: _Run, ctx: ssl.SSLContext, deadline: float, budget: float) -> None:
        self.run = run
        self.ctx = ctx
        self.deadline = deadline
        self.budget = budget

    def delegation(self, host: str) -> tuple[ServerName, str, str]:
        """The delegated server name, ``m.server`` as written, and words for the redirects.

        Raises:
            _NoWellKnown: saying why there is none.
        """
        url = _Url("https", host, WELL_KNOWN_PORT, WELL_KNOWN_PATH)
        seen = {url.text}
        answer = self.get(url)
        while answer.status in _REDIRECTS:
            url = self.follow(url, answer)
            if url.text in seen:
                raise _NoWellKnown(f"redirect loop: {url.text} again")
            if len(seen) > MAX_REDIRECTS:
                raise _NoWellKnown(f"more than {MAX_REDIRECTS} redirects")
            seen.add(url.text)
            answer = self.get(url)
        via = f" (redirected to {url.text})" if len(seen) > 1 else ""
        raw = _m_server(answer)
        try:
            delegated = parse_server_name(raw)
        except ValueError as e:
            raise _NoWellKnown(f"m.server {_quote(raw)} is not a server name: {e}") from None
        self.run.warnings.extend(_cache_warnings(answer.headers))
        return delegated, raw, via

    def follow(self, current: _Url, answer: _Answer) -> _Url:
        location = answer.headers.get("Location")
        if not location:
            raise _NoWellKnown(f"HTTP {answer.status} without a Location")
        absolute = urllib.parse.urljoin(current.text, location.strip())
        try:
            parts = urllib.parse.urlsplit(absolute)
            port = parts.port
        except ValueError:
            raise _NoWellKnown(f"redirect to a malformed URL {_quote(location)}") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise _NoWellKnown(f"redirect to {_quote(location)}, not an HTTP(S) URL")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        url = _Url(
            parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target
        )
        if url.scheme == "http":
            self.run.warnings.append(
                f"the well-known redirects to plain HTTP ({url.text}): peers follow it without"
                " TLS, so anyone on the path can change the delegation"
            )
        return url

    def get(self, url: _Url) -> _Answer:
        sock = self.connect(url)
        with sock:
            sock.setblocking(False)
            if url.scheme == "https":
                tls = self.handshake(sock, url)
                with tls:
                    return self.exchange(tls, url)
            return self.exchange(sock, url)

    def connect(self, url: _Url) -> socket.socket:
        if _is_ip(url.host):
            addresses = [url.host]
        else:
            try:
                addresses = self.run.lookup.addresses(url.host, url.port)
            except FederationError as e:
                raise _NoWellKnown(str(e)) from None
        failures = []
        for address in addresses:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sock = socket.create_connection((address, url.port), timeout=remaining)
            except OSError as e:
                failures.append(f"{address_label(address, url.port)}: {e.strerror or e}")
                continue
            if url.scheme == "https":
                hop = Target(url.host, url.port, url.host)
                if hop not in self.run.well_known:
                    self.run.well_known.append(hop)
            return sock
        if not addresses:
            raise _NoWellKnown(f"{url.host} has no address")
        if not failures:
            raise _NoWellKnown(f"no connection to {url.text} within {self.budget:g} s")
        raise _NoWellKnown(f"cannot connect to {url.text}: {'; '.join(failures)}")

    def handshake(self, sock: socket.socket, url: _Url) -> ssl.SSLSocket:
        try:
            tls = self.ctx.wrap_socket(
                sock, server_hostname=url.host, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            raise _NoWellKnown(f"TLS with {url.text} failed: {e}") from None
        try:
            self.pump(tls, tls.do_handshake, f"TLS handshake with {url.text}")
        except BaseException:
            tls.close()
            raise
        return tls

    def pump(self, sock: socket.socket, call: Callable[[], _T], doing: str) -> _T:
        """Call ``call()`` on a non-blocking socket until it stops wanting I/O or the deadline
        passes; translate socket and TLS errors into _NoWellKnown."""
        while True:
            try:
                return call()
            except (ssl.SSLWantReadError, BlockingIOError):
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except ssl.SSLCertVerificationError as e:
                detail = e.verify_message or e.reason
                raise _NoWellKnown(f"{doing} failed: certificate not accepted: {detail}") from None
            except ssl.SSLError as e:
                raise _NoWellKnown(f"{doing} failed: {e.reason or e}") from None
            except OSError as e:
                raise _NoWellKnown(f"{doing} failed: {e.strerror or e}") from None
            if not wait(sock.fileno(), events, self.deadline):
                raise _NoWellKnown(f"{doing}: not done within {self.budget:g} s")

    def exchange(self, sock: socket.socket, url: _Url) -> _Answer:
        request = (
            f"GET {url.target} HTTP/1.1\r\n"
            f"Host: {url.authority(443 if url.scheme == 'https' else 80)}\r\n"
            f"User-Agent: certbot-fanout/{__version__}\r\n"
            "Accept: application/json\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii", "replace")
        pending = memoryview(request)
        while pending:
            sent = self.pump(sock, functools.partial(sock.send, pending), f"sending to {url.text}")
            pending = pending[sent:]
        return _parse_answer(self.receive(sock, url), url)

    def receive(self, sock: socket.socket, url: _Url) -> bytes:
        limit = WELL_KNOWN_MAX_SIZE + HEADER_ALLOWANCE
        data = bytearray()
        while not _complete(data):
            chunk = self.pump(sock, functools.partial(sock.recv, 16384), f"reading {url.text}")
            if not chunk:
                break
            data += chunk
            if len(data) > limit:
                raise _NoWellKnown(_too_large())
        return bytes(data)


def _complete(data: bytearray) -> bool:
    """True once the headers and a Content-Length's worth of body are in (else: read to EOF,
    since the request said ``Connection: close``)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    found = _CONTENT_LENGTH.search(data, 0, end + 2)
    if found is None:
        return False
    length = int(found.group(1))
    if length > WELL_KNOWN_MAX_SIZE:
        raise _NoWellKnown(_too_large())
    return len(data) - end - 4 >= length


class _Replay:
    """What http.client needs of a socket, over bytes already read within the deadline."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parse_answer(data: bytes, url: _Url) -> _Answer:
    if not data:
        raise _NoWellKnown(f"{url.text} closed the connection without an answer")
    response = http.client.HTTPResponse(cast(socket.socket, _Replay(data)), method="GET")
    try:
        response.begin()
        body = response.read()
    except http.client.IncompleteRead as e:
        raise _NoWellKnown(
            f"the answer from {url.text} ended early ({len(e.partial)} bytes)"
        ) from None
    except (http.client.HTTPException, ValueError) as e:
        raise _NoWellKnown(f"{url.text} did not answer in HTTP ({type(e).__name__}: {e})") from None
    if len(body) > WELL_KNOWN_MAX_SIZE:
        raise _NoWellKnown(_too_large())
    return _Answer(response.status, response.reason, response.headers, body)


def _too_large() -> str:
    return f"the answer is larger than {WELL_KNOWN_MAX_SIZE // 1024} KiB, which Synapse refuses"


def _m_server(answer: _Answer) -> str:
    """``m.server`` from a 200 answer of JSON: only that delegates."""
    if answer.status != 200:
        raise _NoWellKnown(f"HTTP {answer.status}" + (f" {answer.reason}" if answer.reason else ""))
    try:
        document = json.loads(answer.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _NoWellKnown("the body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise _NoWellKnown(f"the body is not JSON ({e})") from None
    if not isinstance(document, dict):
        raise _NoWellKnown("the JSON is not an object")
    if "m.server" not in document:
        raise _NoWellKnown("the JSON has no m.server")
    value = document["m.server"]
    if not isinstance(value, str):
        raise _NoWellKnown(f"m.server is a JSON {type(value).__name__}, not a string")
    return value


def _cache_warnings(headers: http.client.HTTPMessage) -> list[str]:
    """A warning when the well-known asks to be cached longer than Synapse keeps it."""
    lifetime, source = _cache_lifetime(headers)
    if lifetime is None or lifetime <= CACHE_CLAMP:
        return []
    return [
        f"the well-known may be cached for {lifetime / 3600:.3g} h ({source}), more than the"
        f" {CACHE_CLAMP // 3600} h Synapse keeps it: after the delegation changes, peers may"
        f" go on using the old one for {CACHE_CLAMP // 3600} h or, if they honour the header,"
        " longer"
    ]


def _cache_lifetime(headers: http.client.HTTPMessage) -> tuple[float | None, str]:
    """Seconds the answer may be cached, as Synapse reads it (no-store, then max-age, then
    Expires), and the header that says so; None when no header says."""
    directives: dict[str, str | None] = {}
    for header in headers.get_all("Cache-Control") or ():
        for directive in str(header).split(","):
            key, _, value = directive.partition("=")
            directives[key.strip().lower()] = value.strip().strip('"') if value else None
    if "no-store" in directives:
        return 0, "Cache-Control no-store"
    max_age = directives.get("max-age")
    if max_age and max_age.isdigit():
        return int(max_age), f"Cache-Control max-age={max_age}"
    expires = headers.get_all("Expires")
    if not expires:
        return None, ""
    try:
        when = email.utils.parsedate_to_datetime(str(expires[-1]))
    except (TypeError, ValueError):
        return 0, "Expires"
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - time.time(), f"Expires {expires[-1]}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quote(text: str) -> str:
    return show(text.encode("utf-8", "surrogateescape"))
