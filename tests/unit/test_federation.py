"""Resolving a Matrix server name as federation peers do (certbot_fanout.federation).

The well-known is served by a real HTTPS server (http.server over ssl, a throwaway CA) on port
443 of a loopback address of its own; SRV records come from a real dnsmasq on a free port
(those tests are marked ``integration``). Test names live under ``x.test``; their addresses
come from a table (``TableLookup``), so no resolver or hosts file of the machine is read.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certbot_fanout._pki import ThrowawayCA
from certbot_fanout.errors import ProbeError
from certbot_fanout.federation import (
    CACHE_CLAMP,
    WELL_KNOWN_MAX_SIZE,
    DnsLookup,
    FederationError,
    Resolution,
    SrvRecord,
    Target,
    resolve,
)
from tests.support.proc import find_binary, spawn, stop_child, wait_until

TIMEOUT = 4.0
WK = "wk.x.test"  # a server name whose well-known the test server answers
WK2 = "wk2.x.test"  # the same server under a second name (redirects)
SRV_NAME = "srv.x.test"  # a third name of its certificate, which has SRV records


# --------------------------------------------------------------------------- the seam


class TableLookup(DnsLookup):
    """Addresses from a table; SRV from ``srv_table`` (None: any SRV lookup fails the test),
    or, for an instance made with a nameserver, from that real DNS server."""

    def __init__(
        self,
        addresses: dict[str, list[str]],
        srv_table: dict[str, list[SrvRecord]] | None = None,
        nameserver: str | None = None,
        port: int = 53,
    ) -> None:
        super().__init__(nameserver, port)
        self.table = addresses
        self.srv_table = srv_table
        self.asked: list[str] = []

    def addresses(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise FederationError(f"{host} does not resolve: not in the test's table")
        return self.table[host]

    def srv(self, name: str, timeout: float) -> list[SrvRecord]:
        self.asked.append(name)
        if self.nameserver is not None:
            return super().srv(name, timeout)
        assert self.srv_table is not None, f"SRV {name} looked up where no SRV step belongs"
        return self.srv_table.get(name, [])


class NoNetwork(TableLookup):
    def __init__(self) -> None:
        super().__init__({})

    def addresses(self, host: str, port: int) -> list[str]:
        raise AssertionError(f"looked up {host}")


# --------------------------------------------------------------------------- the well-known


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drip: float = 0.0  # seconds between the body's bytes
    length: int | None = None  # Content-Length sent; None: the body's, -1: none

    @classmethod
    def json(cls, document: object, *headers: tuple[str, str]) -> Reply:
        return cls(body=json.dumps(document).encode(), headers=headers)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, headers=(("Location", location),))


@dataclass
class Routes:
    """What the server answers, by Host header (without the port) and path."""

    table: dict[tuple[str, str], Reply] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def set(self, host: str, reply: Reply, path: str = "/.well-known/matrix/server") -> None:
        self.table[(host, path)] = reply


def _handler(routes: Routes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            routes.requests.append((host, self.path))
            reply = routes.table.get((host, self.path), Reply(404, b"not here"))
            self.send_response(reply.status)
            for key, value in reply.headers:
                self.send_header(key, value)
            length = len(reply.body) if reply.length is None else reply.length
            if length >= 0:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            if not reply.drip:
                self.wfile.write(reply.body)
                return
            for i in range(len(reply.body)):
                self.wfile.write(reply.body[i : i + 1])
                self.wfile.flush()
                time.sleep(reply.drip)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class WebServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def web_server(
    address: str, port: int, routes: Routes, context: ssl.SSLContext | None
) -> Iterator[WebServer]:
    server = WebServer((address, port), _handler(routes), bind_and_activate=False)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.server_bind()
    server.server_activate()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def own_loopback_address() -> str:
    """A loopback address nobody else is likely to use, so the test may take its port 443."""
    rng = random.SystemRandom()
    return f"127.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}.{rng.randrange(2, 250)}"


@dataclass
class Site:
    """The HTTPS server on ADDRESS:443 answering for WK and WK2, and what it trusts."""

    address: str
    routes: Routes
    ca_file: str
    other_ca_file: str
    plain_port: int

    def lookup(self, srv_table: dict[str, list[SrvRecord]] | None = None) -> TableLookup:
        return TableLookup({WK: [self.address], WK2: [self.address]}, srv_table)


@pytest.fixture(scope="module")
def site_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("federation")
    ca, other = ThrowawayCA("federation test"), ThrowawayCA("someone else")
    issued = ca.issue([WK, WK2, SRV_NAME])
    (directory / "fullchain.pem").write_bytes(issued.fullchain_pem)
    (directory / "privkey.pem").write_bytes(issued.key_pem)
    (directory / "ca.pem").write_bytes(ca.root_pem)
    (directory / "other-ca.pem").write_bytes(other.root_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "fullchain.pem", directory / "privkey.pem")
    routes = Routes()
    for _ in range(5):
        address = own_loopback_address()
        try:
            with (
                web_server(address, 443, routes, context),
                web_server(address, 0, routes, None) as plain,
            ):
                yield Site(
                    address,
                    routes,
                    str(directory / "ca.pem"),
                    str(directory / "other-ca.pem"),
                    plain.server_address[1],
                )
                return
        except PermissionError:
            pytest.skip("binding port 443 needs root")
        except OSError:
            continue
    raise RuntimeError("no free loopback address for port 443")


@pytest.fixture
def site(site_server: Site) -> Site:
    site_server.routes.table.clear()
    site_server.routes.requests.clear()
    return site_server


def resolve_wk(
    site: Site, lookup: TableLookup | None = None, timeout: float = TIMEOUT
) -> Resolution:
    """Resolve WK trusting the site's CA; by default SRV finds nothing."""
    return resolve(WK, timeout=timeout, ca_file=site.ca_file, lookup=lookup or site.lookup({}))


# --------------------------------------------------------------------------- literals, ports


@pytest.mark.parametrize(
    ("name", "target", "path"),
    [
        ("198.18.0.5", Target("198.18.0.5", 8448, "198.18.0.5"), "IP literal: 198.18.0.5:8448"),
        (
            "198.18.0.5:8449",
            Target("198.18.0.5", 8449, "198.18.0.5"),
            "IP literal: 198.18.0.5:8449",
        ),
        (
            "[2001:db8::1]",
            Target("2001:db8::1", 8448, "2001:db8::1"),
            "IP literal: [2001:db8::1]:8448",
        ),
        ("[::1]:443", Target("::1", 443, "::1"), "IP literal: [::1]:443"),
        ("hs.x.test:8449", Target("hs.x.test", 8449, "hs.x.test"), "explicit port: hs.x.test:8449"),
    ],
)
def test_an_ip_literal_or_an_explicit_port_is_used_as_it_stands(
    name: str, target: Target, path: str
) -> None:
    found = resolve(name, timeout=TIMEOUT, lookup=NoNetwork())
    assert found == Resolution(name, (target,), path)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "it is empty"),
        ("a b.test", "letters, digits"),
        ("::1", "must be in brackets"),
        ("[::1", "closing ']'"),
        ("[zz::1]", "is not an IPv6 address"),
        ("[fe80::1%eth0]", "cannot have a zone"),
        ("x.test:0", "between 1 and 65535"),
        ("x.test:123456", "1 to 5 digits"),
        ("x.test:", "1 to 5 digits"),
        ("x.test:http", "1 to 5 digits"),
        ("a..test", "1 to 63 characters"),
        ("1.2.3", "neither an IPv4 address nor a DNS name"),
        ("256.1.1.1", "neither an IPv4 address nor a DNS name"),
        ("x" * 64 + ".test", "1 to 63 characters"),
    ],
)
def test_a_malformed_server_name_is_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(FederationError, match="is not a Matrix server name") as caught:
        resolve(name, timeout=TIMEOUT, lookup=NoNetwork())
    assert why in str(caught.value)
    assert isinstance(caught.value, ProbeError)


# --------------------------------------------------------------------------- delegation


def test_a_well_known_with_a_port_delegates_to_that_name_and_port(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    for proxy in ("https_proxy", "HTTPS_PROXY", "all_proxy"):  # peers connect directly
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}))
    found = resolve_wk(site, site.lookup(None))  # no SRV step: srv() would fail the test
    assert found.targets == (Target("hs.x.test", 8449, "hs.x.test"),)
    assert found.path == "well-known: m.server hs.x.test:8449; explicit port: hs.x.test:8449"
    assert found.well_known == (Target(WK, 443, WK),)
    assert found.warnings == ()


def test_a_well_known_naming_an_ip_literal_wants_a_certificate_for_the_ip(site: Site) -> None:
    site.routes.set(WK, Reply.json({"m.server": "[2001:db8::7]"}))
    found = resolve_wk(site, site.lookup(None))
    assert found.targets == (Target("2001:db8::7", 8448, "2001:db8::7"),)
    assert found.path == "well-known: m.server [2001:db8::7]; IP literal: [2001:db8::7]:8448"


def test_redirects_are_followed_and_every_hop_is_a_consumer_of_the_certificate(
    site: Site,
) -> None:
    site.routes.set(WK, Reply.redirect(f"https://{WK2}/delegation", 301))
    site.routes.set(WK2, Reply.redirect("/final", 307), path="/delegation")
    site.routes.set(WK2, Reply.json({"m.server": "hs.x.test:443"}), path="/final")
    found = resolve_wk(site, site.lookup(None))
    assert found.targets == (Target("hs.x.test", 443, "hs.x.test"),)
    assert found.path.startswith(f"well-known (redirected to https://{WK2}/final): m.server")
    assert found.well_known == (Target(WK, 443, WK), Target(WK2, 443, WK2))


def test_a_redirect_to_plain_http_is_followed_with_a_warning(site: Site) -> None:
    site.routes.set(WK, Reply.redirect(f"http://{WK}:{site.plain_port}/plain"))
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}), path="/plain")
    found = resolve_wk(site, site.lookup(None))
    assert found.targets == (Target("hs.x.test", 8449, "hs.x.test"),)
    assert found.well_known == (Target(WK, 443, WK),), "a plain-HTTP hop has no certificate"
    assert len(found.warnings) == 1
    assert "redirects to plain HTTP" in found.warnings[0]


@pytest.mark.parametrize(
    ("headers", "hours"),
    [
        ((("Cache-Control", "public, max-age=604800"),), "168"),
        ((("Cache-Control", "max-age=172801"),), "48"),
        ((("Expires", email.utils.formatdate(time.time() + 30 * 86400, usegmt=True)),), "72"),
    ],
    ids=["max-age-week", "max-age-just-over", "expires-month"],
)
def test_a_cache_lifetime_over_48_hours_is_a_warning(
    site: Site, headers: tuple[tuple[str, str], ...], hours: str
) -> None:
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}, *headers))
    found = resolve_wk(site, site.lookup(None))
    assert found.targets == (Target("hs.x.test", 8449, "hs.x.test"),)
    assert len(found.warnings) == 1, found.warnings
    assert "more than the 48 h Synapse keeps it" in found.warnings[0]
    assert found.warnings[0].startswith("the well-known may be cached for")
    if hours != "72":
        assert f"for {hours}" in found.warnings[0]


@pytest.mark.parametrize(
    "headers",
    [
        (("Cache-Control", f"max-age={CACHE_CLAMP}"),),
        (("Cache-Control", "max-age=86400"), ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")),
        (("Cache-Control", "no-store, max-age=9999999"),),
        (("Expires", "0"),),
        (),
    ],
    ids=["exactly-48h", "max-age-before-expires", "no-store", "invalid-expires", "none"],
)
def test_a_cache_lifetime_of_48_hours_or_less_is_no_warning(
    site: Site, headers: tuple[tuple[str, str], ...]
) -> None:
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}, *headers))
    assert resolve_wk(site, site.lookup(None)).warnings == ()


# --------------------------------------------------------------------------- no well-known


def _no_well_known(found: Resolution, why: str) -> None:
    assert found.targets == (Target(WK, 8448, WK),)
    assert found.path.startswith("no well-known (")
    assert why in found.path.split("; ")[0], found.path
    assert found.path.endswith(f"; no SRV: {WK}:8448")


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(404, b"nope"), "(HTTP 404 Not Found)"),
        (Reply(500, b"oops"), "(HTTP 500 Internal Server Error)"),
        (Reply(200, b"{not json"), "the body is not JSON"),
        (Reply(200, b"\xff\xfe"), "the body is not UTF-8"),
        (Reply.json(["m.server", "hs.x.test"]), "the JSON is not an object"),
        (Reply.json({"m.homeserver": "hs.x.test"}), "the JSON has no m.server"),
        (Reply.json({"m.server": 8448}), "m.server is a JSON int, not a string"),
        (Reply.json({"m.server": "hs x.test"}), "m.server 'hs x.test' is not a server name"),
        (Reply.json({"m.server": ""}), "m.server '' is not a server name: it is empty"),
        (Reply(200, b"[" * 40_000), "the body is not JSON"),
        (Reply.redirect(f"https://{WK2}/.well-known/matrix/server"), "redirect loop"),
        (Reply(302, b""), "HTTP 302 without a Location"),
        (Reply.redirect("ftp://wk.x.test/x"), "not an HTTP(S) URL"),
        (Reply.redirect("https://wk.x.test:99999/x"), "malformed URL"),
        (Reply(200, b'{"m.server": "x"}', length=100), "ended early"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_anything_but_a_200_with_a_valid_m_server_is_no_well_known(
    site: Site, reply: Reply, why: str
) -> None:
    site.routes.set(WK, reply)
    site.routes.set(WK2, Reply.redirect(f"https://{WK}/.well-known/matrix/server"))
    _no_well_known(resolve_wk(site), why)


def test_a_chain_of_redirects_is_followed_only_so_far(site: Site) -> None:
    for hop in range(7):
        site.routes.set(WK, Reply.redirect(f"/hop{hop + 1}"), path=f"/hop{hop}")
    site.routes.set(WK, Reply.redirect("/hop0"))
    _no_well_known(resolve_wk(site), "more than 5 redirects")


@pytest.mark.parametrize(
    ("reply", "case"),
    [
        (Reply(200, b" " * (WELL_KNOWN_MAX_SIZE + 1)), "announced"),
        (Reply(200, b" " * 4 * WELL_KNOWN_MAX_SIZE, length=-1), "unannounced"),
        (Reply(200, b" " * (WELL_KNOWN_MAX_SIZE + 10), length=-1), "just over"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_well_known_over_50_kib_is_no_well_known(site: Site, reply: Reply, case: str) -> None:
    site.routes.set(WK, reply)
    _no_well_known(resolve_wk(site), "larger than 50 KiB")


def test_a_well_known_of_exactly_50_kib_is_read(site: Site) -> None:
    body = json.dumps({"m.server": "hs.x.test:8449"}).encode()
    site.routes.set(WK, Reply(200, body + b" " * (WELL_KNOWN_MAX_SIZE - len(body)), length=-1))
    assert resolve_wk(site).targets == (Target("hs.x.test", 8449, "hs.x.test"),)


def test_a_slow_well_known_gets_half_the_time_and_the_rest_goes_to_dns(site: Site) -> None:
    site.routes.set(WK, Reply(200, json.dumps({"m.server": "hs.x.test:8449"}).encode(), drip=0.1))
    started = time.monotonic()
    found = resolve_wk(site, timeout=1.0)
    took = time.monotonic() - started
    _no_well_known(found, "not done within 0.5 s")
    assert 0.45 < took < 0.9


def test_a_well_known_no_one_answers_is_no_well_known_and_no_consumer(site: Site) -> None:
    lookup = TableLookup({WK: [own_loopback_address()]}, {})
    found = resolve_wk(site, lookup)
    _no_well_known(found, "cannot connect to https://wk.x.test/.well-known/matrix/server")
    assert "Connection refused" in found.path
    assert found.well_known == ()


def test_the_first_address_that_answers_is_used(site: Site) -> None:
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}))
    lookup = TableLookup({WK: [own_loopback_address(), site.address]}, None)
    assert resolve_wk(site, lookup).targets == (Target("hs.x.test", 8449, "hs.x.test"),)


def test_a_name_without_an_address_is_no_well_known(site: Site) -> None:
    found = resolve_wk(site, TableLookup({}, {}))
    _no_well_known(found, "wk.x.test does not resolve")


def test_the_well_known_is_trusted_only_as_the_ca_file_or_the_system_says(site: Site) -> None:
    site.routes.set(WK, Reply.json({"m.server": "hs.x.test:8449"}))
    for ca_file in (site.other_ca_file, None):
        found = resolve(WK, timeout=TIMEOUT, ca_file=ca_file, lookup=site.lookup({}))
        _no_well_known(found, "failed: certificate not accepted: unable to get local issuer")
        assert found.well_known == (Target(WK, 443, WK),), "it answered: a consumer to probe"
        assert site.routes.requests == [], "nothing is asked of a server not trusted"


def test_the_well_known_certificate_must_name_the_server(site: Site) -> None:
    lookup = TableLookup({"other.x.test": [site.address]}, {})
    found = resolve("other.x.test", timeout=TIMEOUT, ca_file=site.ca_file, lookup=lookup)
    assert found.path.startswith("no well-known (TLS handshake with https://other.x.test/")
    assert "Hostname mismatch" in found.path


def test_an_unreadable_ca_file_is_an_error(site: Site, tmp_path: Path) -> None:
    with pytest.raises(FederationError, match=r"cannot read the CA file .*missing\.pem"):
        resolve(WK, timeout=TIMEOUT, ca_file=str(tmp_path / "missing.pem"), lookup=site.lookup())


def test_without_dnspython_an_srv_lookup_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dns", None)
    monkeypatch.setitem(sys.modules, "dns.resolver", None)
    with pytest.raises(FederationError, match=r"install python3-dnspython \(or pip install"):
        DnsLookup("127.0.0.1", 9).srv("_matrix-fed._tcp.x.test", 1.0)


def test_importing_the_module_does_not_import_dnspython() -> None:
    code = (
        "import sys, certbot_fanout.federation;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dns'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_default_addresses_list_both_families_once() -> None:
    assert DnsLookup().addresses("127.0.0.1", 443) == ["127.0.0.1"]
    assert DnsLookup().addresses("::1", 443) == ["::1"]
    with pytest.raises(FederationError, match="does not resolve"):
        DnsLookup().addresses("no-such-name.invalid", 443)


# --------------------------------------------------------------------------- SRV (dnsmasq)

SRV_RECORDS = [
    # no well-known: SRV on the server name itself
    "_matrix-fed._tcp.srv.x.test,hs-b.x.test,8449,10,0",
    "_matrix-fed._tcp.srv.x.test,hs-a.x.test,8448,5,0",
    "_matrix-fed._tcp.srv.x.test,hs-c.x.test,8450,5,60",
    "_matrix._tcp.old.x.test,legacy.x.test,8451,10,0",
    "_matrix-fed._tcp.both.x.test,new.x.test,8452,10,0",
    "_matrix._tcp.both.x.test,legacy.x.test,8451,10,0",
    # after delegation: SRV on the delegated name
    "_matrix-fed._tcp.hs.x.test,fed.x.test,8453,10,0",
    "_matrix._tcp.hsold.x.test,legacy.x.test,8454,10,0",
    # "no service here"
    "_matrix-fed._tcp.off.x.test",
]


@dataclass
class Dnsmasq:
    port: int
    proc: subprocess.Popen[bytes]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    binary = find_binary("dnsmasq", "/usr/sbin/dnsmasq")
    if not Path(binary).exists():
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    port = _free_udp_port()
    argv = [
        binary,
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={port}",
        "--pid-file=",
        "--user=root",
        "--local=/x.test/",
        *(f"--srv-host={record}" for record in SRV_RECORDS),
    ]
    proc = spawn(argv, log)
    probe = DnsLookup("127.0.0.1", port)

    def answers() -> bool:
        with contextlib.suppress(FederationError):
            return bool(probe.srv("_matrix-fed._tcp.srv.x.test", 0.2))
        return False

    try:
        wait_until("dnsmasq", answers, lambda: proc.poll() is None, log.read_text, 10.0)
        yield Dnsmasq(port, proc)
    finally:
        stop_child(proc)


def dns_lookup(dnsmasq: Dnsmasq, site: Site | None = None) -> TableLookup:
    table = {WK: [site.address], WK2: [site.address]} if site else {}
    return TableLookup(table, nameserver="127.0.0.1", port=dnsmasq.port)


def resolve_no_well_known(dnsmasq: Dnsmasq, name: str) -> Resolution:
    """``name`` has no address, so no well-known: the SRV steps on ``name`` itself."""
    return resolve(name, timeout=TIMEOUT, lookup=dns_lookup(dnsmasq))


@pytest.mark.integration
def test_no_well_known_then_srv_gives_every_target_in_order(dnsmasq: Dnsmasq) -> None:
    found = resolve_no_well_known(dnsmasq, "srv.x.test")
    assert found.targets == (
        Target("hs-c.x.test", 8450, "srv.x.test"),
        Target("hs-a.x.test", 8448, "srv.x.test"),
        Target("hs-b.x.test", 8449, "srv.x.test"),
    ), "priority first, then the heavier; the certificate is the server name's, not SRV's"
    assert found.path == (
        "no well-known (srv.x.test does not resolve: not in the test's table); "
        "SRV _matrix-fed._tcp.srv.x.test -> hs-c.x.test:8450, hs-a.x.test:8448, hs-b.x.test:8449"
    )
    assert found.warnings == ()


@pytest.mark.integration
def test_no_well_known_then_the_deprecated_srv_with_a_warning(dnsmasq: Dnsmasq) -> None:
    found = resolve_no_well_known(dnsmasq, "old.x.test")
    assert found.targets == (Target("legacy.x.test", 8451, "old.x.test"),)
    assert found.path.endswith(
        "; no SRV _matrix-fed._tcp.old.x.test; deprecated SRV _matrix._tcp.old.x.test"
        " -> legacy.x.test:8451"
    )
    assert len(found.warnings) == 1
    assert "deprecated SRV record _matrix._tcp.old.x.test" in found.warnings[0]
    assert "publish _matrix-fed._tcp.old.x.test" in found.warnings[0]


@pytest.mark.integration
def test_the_current_srv_wins_over_the_deprecated_one(dnsmasq: Dnsmasq) -> None:
    found = resolve_no_well_known(dnsmasq, "both.x.test")
    assert found.targets == (Target("new.x.test", 8452, "both.x.test"),)
    assert found.warnings == ()


@pytest.mark.integration
def test_no_well_known_and_no_srv_is_the_name_on_8448(dnsmasq: Dnsmasq) -> None:
    found = resolve_no_well_known(dnsmasq, "plain.x.test")
    assert found.targets == (Target("plain.x.test", 8448, "plain.x.test"),)
    assert found.path.endswith("; no SRV: plain.x.test:8448")


@pytest.mark.integration
def test_a_404_well_known_then_srv(dnsmasq: Dnsmasq, site: Site) -> None:
    lookup = dns_lookup(dnsmasq, site)
    lookup.table[SRV_NAME] = [site.address]
    site.routes.set(SRV_NAME, Reply(404))
    found = resolve(SRV_NAME, timeout=TIMEOUT, ca_file=site.ca_file, lookup=lookup)
    assert found.path.startswith(
        "no well-known (HTTP 404 Not Found); SRV _matrix-fed._tcp.srv.x.test -> hs-c.x.test:8450"
    )
    assert [t.cert_name for t in found.targets] == [SRV_NAME] * 3
    assert found.well_known == (Target(SRV_NAME, 443, SRV_NAME),)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("delegated", "targets", "step", "warned"),
    [
        (
            "hs.x.test",
            (Target("fed.x.test", 8453, "hs.x.test"),),
            "SRV _matrix-fed._tcp.hs.x.test -> fed.x.test:8453",
            False,
        ),
        (
            "hsold.x.test",
            (Target("legacy.x.test", 8454, "hsold.x.test"),),
            "no SRV _matrix-fed._tcp.hsold.x.test;"
            " deprecated SRV _matrix._tcp.hsold.x.test -> legacy.x.test:8454",
            True,
        ),
        (
            "hsplain.x.test",
            (Target("hsplain.x.test", 8448, "hsplain.x.test"),),
            "no SRV: hsplain.x.test:8448",
            False,
        ),
    ],
    ids=["srv", "deprecated-srv", "8448"],
)
def test_a_delegated_name_is_looked_up_in_dns_with_its_own_certificate_name(
    dnsmasq: Dnsmasq,
    site: Site,
    delegated: str,
    targets: tuple[Target, ...],
    step: str,
    warned: bool,
) -> None:
    site.routes.set(WK, Reply.json({"m.server": delegated}))
    found = resolve(WK, timeout=TIMEOUT, ca_file=site.ca_file, lookup=dns_lookup(dnsmasq, site))
    assert found.targets == targets
    assert found.path == f"well-known: m.server {delegated}; {step}"
    assert found.well_known == (Target(WK, 443, WK),)
    assert bool(found.warnings) == warned


@pytest.mark.integration
def test_an_srv_record_saying_no_service_is_an_error(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(FederationError, match=r"SRV _matrix-fed._tcp.off.x.test says there is no"):
        resolve_no_well_known(dnsmasq, "off.x.test")


@pytest.mark.integration
def test_a_dns_failure_is_an_error_not_no_srv(dnsmasq: Dnsmasq) -> None:
    # dnsmasq refuses names outside x.test: it has no upstream to ask
    with pytest.raises(
        FederationError,
        match=r"SRV _matrix-fed._tcp.elsewhere.example: the DNS lookup failed: .*REFUSED",
    ):
        resolve_no_well_known(dnsmasq, "elsewhere.example")


def test_a_dns_server_that_does_not_answer_is_a_timeout_within_the_deadline() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        lookup = TableLookup({}, nameserver="127.0.0.1", port=silent.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(
            FederationError, match=r"SRV _matrix-fed._tcp.srv.x.test: no DNS answer within"
        ):
            resolve("srv.x.test", timeout=0.4, lookup=lookup)
        assert time.monotonic() - started < 0.8
