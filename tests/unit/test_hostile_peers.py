"""Hostile peers, for direct TLS and every STARTTLS dialect: each fails its endpoint within the
timeout, with a sentence that names the endpoint, the dialect and the stage, and no traceback.

The matrix is {direct TLS, 12 dialects} x {silent, close at once, garbage, endless banner, one
byte a second, TLS alert, plain HTTP, refuse STARTTLS, inject plaintext after the go-ahead}.
Refusing STARTTLS and injecting after its go-ahead need a STARTTLS exchange, so direct TLS has
the first seven only. Each STARTTLS peer speaks its dialect correctly up to the point of
hostility (``DIALOGS`` holds every dialect's valid server side once), so a refusal or an
injection really happens at the STARTTLS stage, not at the greeting.

Every case runs once, in the module fixture ``outcomes``: the endless-banner floods one after
another under tracemalloc (memory is a process-wide figure), the rest at the same time in a
thread pool, so the module costs about one timeout rather than a hundred. The parametrized test
then records and checks each case under its own id. ``test_one_deploy_run_...`` puts every case
behind one consumer of a single ``certbot-fanout deploy --json`` run, next to healthy ones.
"""

from __future__ import annotations

import json
import math
import random
import re
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certbot_fanout import verify as verify_module
from certbot_fanout.errors import ProbeError
from certbot_fanout.escape import printable
from certbot_fanout.lineage import fingerprint, read_lineage
from certbot_fanout.model import Dialect
from certbot_fanout.probe import fetch_served
from certbot_fanout.starttls.talk import MAX_PLAINTEXT_BYTES, RECV_BYTES
from tests.support import cli
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer, ScriptedPeer, Step, close_all
from tests.support.tally import record

NAME = "hostile.test"
TIMEOUT = 1.5  # more than one drip interval, so the one-byte-a-second peer is cut off mid-stream
# The probe's deadline is checked by poll() to the millisecond; what it may overrun is thread
# scheduling in this process, which runs ~115 peers and ~115 probes at once on as few as two
# cores. A third of the timeout is plenty for that, and far less than what a regression costs:
# a per-read (not shared) deadline lets the one-byte-a-second peer run for 20 s or more.
MARGIN = 0.5
ALLOC_LIMIT_KIB = 2048  # Python allocations while a probe reads an endless banner
DRIP_INTERVAL = 1.0

ALERT = b"\x15\x03\x03\x00\x02\x02\x28"  # a fatal handshake_failure alert record
TLS_RECORD_START = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + b"\x00" * 32
GARBAGE = random.Random(20240611).randbytes(700) + b"\r\n"
GARBAGE += random.Random(4).randbytes(700) + b"\r\n"
HTTP_BODY = b"<html><body><h1>400 Bad Request</h1></body></html>\r\n"
HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + HTTP_BODY
)
INJECTED = b"250 injected: MAIL FROM:<attacker@evil.test>\r\n"


# -- each dialect's valid server side, written once -------------------------------------------


@dataclass(frozen=True)
class Dialog:
    """A dialect's server side up to TLS: ``before`` (greeting, capabilities, reading the
    client's request for TLS), then ``go_ahead``, then ``after`` (what the server still reads
    before the handshake). ``refusal`` is sent instead of the go-ahead. ``banner`` plus
    ``banner_unit`` repeated forever is the endless banner. The ``*_stage`` fields are the
    stage names the probe must report."""

    before: tuple[Step, ...]
    go_ahead: bytes
    refusal: bytes
    refusal_stage: str
    first_stage: str
    banner_unit: bytes
    banner_stage: str
    banner: tuple[Step, ...] = ()
    after: tuple[Step, ...] = ()


def _xmpp_features(namespace: bytes) -> bytes:
    return (
        b"<?xml version='1.0'?><stream:stream xmlns='" + namespace + b"' xmlns:stream="
        b"'http://etherx.jabber.org/streams' from='hostile.test' id='s1' version='1.0'>"
    )


def _xmpp(namespace: bytes) -> Dialog:
    header = _xmpp_features(namespace)
    return Dialog(
        before=(
            ("recv", 5.0),
            (
                "send",
                header + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                b"<required/></starttls></stream:features>",
            ),
            ("recv", 5.0),
        ),
        go_ahead=b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        refusal=b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>",
        refusal_stage="STARTTLS",
        first_stage="stream features",
        banner=(("recv", 5.0), ("send", header + b"<stream:features>")),
        banner_unit=b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>PLAIN</mechanism></mechanisms>\n",
        banner_stage="stream features",
    )


def _smtp(greeting: bytes) -> Dialog:
    return Dialog(
        before=(
            ("send", greeting),
            ("line", b""),
            ("send", b"250-mx.hostile.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"),
            ("send", b"250-8BITMIME\r\n250 STARTTLS\r\n"),
            ("line", b""),
        ),
        go_ahead=b"220 2.0.0 Ready to start TLS\r\n",
        refusal=b"454 4.7.0 TLS not available due to local problem\r\n",
        refusal_stage="STARTTLS",
        first_stage="greeting",
        banner_unit=b"220-mx.hostile.test ESMTP; still greeting you\r\n",
        banner_stage="greeting",
    )


def _ldap_response(code: int, diagnostic: bytes = b"") -> bytes:
    result = b"\x0a\x01" + bytes([code]) + b"\x04\x00" + b"\x04" + bytes([len(diagnostic)])
    body = b"\x02\x01\x01" + b"\x78" + bytes([len(result) + len(diagnostic)]) + result
    return b"\x30" + bytes([len(body) + len(diagnostic)]) + body + diagnostic


def _mysql_handshake(ssl: bool, seq: int = 0) -> bytes:
    capabilities = 0xFFFF if ssl else 0xFFFF & ~0x0800
    payload = (
        b"\x0a8.0.36\0"
        + struct.pack("<I", 7)
        + b"abcdefgh\0"
        + struct.pack("<HBHH", capabilities, 33, 2, 0x00FF)
        + b"\x15"
        + b"\0" * 10
        + b"ijklmnopqrst\0mysql_native_password\0"
    )
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


DIALOGS: dict[Dialect, Dialog] = {
    Dialect.SMTP: _smtp(b"220-mx.hostile.test ESMTP Postfix\r\n220 mx.hostile.test ready\r\n"),
    Dialect.LMTP: _smtp(b"220 lmtp.hostile.test LMTP Dovecot ready\r\n"),
    Dialect.IMAP: Dialog(
        before=(
            ("send", b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n"),
            ("line", b""),
        ),
        go_ahead=b"F1 OK Begin TLS negotiation now.\r\n",
        refusal=b"F1 NO [UNAVAILABLE] TLS is not available\r\n",
        refusal_stage="STARTTLS",
        first_stage="greeting",
        # untagged lines before the tagged answer, forever
        banner=(("send", b"* OK Dovecot ready.\r\n"), ("line", b"")),
        banner_unit=b"* OK [ALERT] still thinking about STARTTLS\r\n",
        banner_stage="STARTTLS",
    ),
    Dialect.POP3: Dialog(
        before=(("send", b"+OK Dovecot ready.\r\n"), ("line", b"")),
        go_ahead=b"+OK Begin TLS negotiation now.\r\n",
        refusal=b"-ERR TLS support not configured\r\n",
        refusal_stage="STLS",
        first_stage="greeting",
        banner=(("send", b"+OK Dovecot ready <"),),  # a greeting line that never ends
        banner_unit=b"1896.697170952@dbc.mtview.ca.us",
        banner_stage="greeting",
    ),
    Dialect.FTP: Dialog(
        before=(("send", b"220 (vsFTPd 3.0.3)\r\n"), ("line", b"")),
        go_ahead=b"234 Proceed with negotiation.\r\n",
        refusal=b"530 Please login with USER and PASS.\r\n",
        refusal_stage="AUTH TLS",
        first_stage="greeting",
        banner_unit=b"220-Welcome to the endless FTP banner\r\n",
        banner_stage="greeting",
    ),
    Dialect.NNTP: Dialog(
        before=(
            ("send", b"200 news.hostile.test InterNetNews NNRP server ready\r\n"),
            ("line", b""),
        ),
        go_ahead=b"382 Continue with TLS negotiation\r\n",
        refusal=b"580 Can not initiate TLS negotiation\r\n",
        refusal_stage="STARTTLS",
        first_stage="greeting",
        banner=(("send", b"200 news.hostile.test "),),
        banner_unit=b"ready ",
        banner_stage="greeting",
    ),
    Dialect.SIEVE: Dialog(
        before=(
            ("send", b'"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SIEVE" "fileinto reject"\r\n'),
            ("send", b'"STARTTLS"\r\n"VERSION" "1.0"\r\nOK "ready."\r\n'),
            ("line", b""),
        ),
        go_ahead=b'OK "Begin TLS negotiation now."\r\n',
        refusal=b'NO "TLS support is not configured"\r\n',
        refusal_stage="STARTTLS",
        first_stage="greeting",
        banner_unit=b'"SIEVE" "fileinto reject envelope encoded-character vacation"\r\n',
        banner_stage="greeting",
    ),
    Dialect.XMPP: _xmpp(b"jabber:client"),
    Dialect.XMPP_SERVER: _xmpp(b"jabber:server"),
    Dialect.POSTGRES: Dialog(
        before=(("read", 8),),
        go_ahead=b"S",
        refusal=b"N",
        refusal_stage="SSLRequest",
        first_stage="SSLRequest",
        banner=(("read", 8),),  # ErrorResponse packets, forever
        banner_unit=b"E\x00\x00\x00\x1aSFATAL\x00C28000\x00Mno\x00\x00",
        banner_stage="SSLRequest",
    ),
    Dialect.LDAP: Dialog(
        before=(("recv", 5.0),),
        go_ahead=_ldap_response(0),
        refusal=_ldap_response(52, b"TLS not configured"),
        refusal_stage="StartTLS request",
        first_stage="StartTLS request",
        # an LDAPMessage that claims 2 GiB, then bytes forever
        banner=(("recv", 5.0), ("send", b"\x30\x84\x7f\xff\xff\xff\x02\x01\x01")),
        banner_unit=b"\x04\x00",
        banner_stage="StartTLS request",
    ),
    Dialect.MYSQL: Dialog(
        before=(),
        go_ahead=_mysql_handshake(ssl=True),
        after=(("read", 36),),  # the client's SSLRequest
        refusal=_mysql_handshake(ssl=False),
        refusal_stage="greeting",
        first_stage="greeting",
        banner=(("send", b"\xff\xff\xff\x00\x0a8.0.36\0"),),  # a 16 MiB handshake, forever
        banner_unit=b"\0",
        banner_stage="greeting",
    ),
}


# -- the cases ------------------------------------------------------------------------------

HOLD: Step = ("sleep", 30.0)  # stay connected and quiet until the peer is closed

BEHAVIOURS = (
    "silent",
    "close-at-once",
    "garbage",
    "endless-banner",
    "one-byte-a-second",
    "tls-alert",
    "plain-http",
    "refuse-starttls",
    "inject-after-go-ahead",
)
STARTTLS_ONLY = ("refuse-starttls", "inject-after-go-ahead")
INJECTION_STAGE = "after the STARTTLS go-ahead"


@dataclass(frozen=True)
class Case:
    dialect: Dialect | None  # None: direct TLS
    behaviour: str
    steps: tuple[Step, ...]
    stage: str  # what the message must name
    why: str  # a regex the rest of the message must match
    repeat: int = 1  # connections to try (for races the peer cannot force)

    @property
    def id(self) -> str:
        return f"{self.dialect.value if self.dialect else 'tls'}-{self.behaviour}"

    @property
    def memory(self) -> bool:
        return self.behaviour == "endless-banner"


def _drip(dialog: Dialog) -> tuple[tuple[Step, ...], bytes | None]:
    """The valid dialog until its first server message, which then comes one byte a second
    (and a TLS record after it); and that message when it is the whole go-ahead and arrives
    within the timeout, so that the probe is cut off in the TLS handshake instead."""
    steps = [*dialog.before, ("send", dialog.go_ahead), *dialog.after]
    first = next(i for i, (action, _) in enumerate(steps) if action == "send")
    message = steps[first][1]
    assert isinstance(message, bytes)
    in_time = message == dialog.go_ahead and len(message) * DRIP_INTERVAL < TIMEOUT
    return (*steps[:first], ("drip", message + TLS_RECORD_START)), message if in_time else None


def _direct_case(behaviour: str) -> Case:
    scripts: dict[str, tuple[tuple[Step, ...], str]] = {
        "silent": ((HOLD,), rf"not finished within {TIMEOUT:g} s"),
        "close-at-once": ((("close", b""),), "failed|reset"),
        "garbage": ((("send", GARBAGE), HOLD), "failed"),
        "endless-banner": ((("flood", TLS_RECORD_START + b"\x00" * 90),), "failed"),
        "one-byte-a-second": (
            (("recv", 5.0), ("drip", TLS_RECORD_START + b"\x00" * 90)),
            rf"not finished within {TIMEOUT:g} s",
        ),
        "tls-alert": ((("send", ALERT), HOLD), "ALERT_HANDSHAKE_FAILURE"),
        "plain-http": (
            (("recv", 0.3), ("send", HTTP_RESPONSE), ("close", b"")),
            "did not answer in TLS",
        ),
    }
    steps, why = scripts[behaviour]
    return Case(None, behaviour, steps, "TLS handshake", why)


# The first byte comes at once and the next a second later, so the probe's deadline falls
# between the first and third byte whatever the scheduling delay of either side.
DRIPPED = ", only (1 byte|2 bytes) of one: '.+'"


def _starttls_case(dialect: Dialect, behaviour: str) -> Case:
    d = DIALOGS[dialect]
    valid = (*d.before, ("send", d.go_ahead), *d.after)
    within = rf"no answer within {TIMEOUT:g} s"
    if behaviour == "silent":
        return Case(dialect, behaviour, (HOLD,), d.first_stage, within)
    if behaviour == "close-at-once":
        return Case(dialect, behaviour, (("close", b""),), d.first_stage, "closed|connection error")
    if behaviour == "garbage":
        return Case(dialect, behaviour, (("send", GARBAGE), HOLD), d.first_stage, "expected")
    if behaviour == "endless-banner":
        steps = (*d.banner, ("flood", d.banner_unit))
        why = rf"more than {MAX_PLAINTEXT_BYTES} bytes without|too large|expected 'S'"
        return Case(dialect, behaviour, steps, d.banner_stage, why)
    if behaviour == "one-byte-a-second":
        steps, go_ahead = _drip(d)
        if go_ahead is not None:  # PostgreSQL: its only message is the one-byte go-ahead
            return Case(dialect, behaviour, steps, "TLS handshake", "not finished within")
        return Case(dialect, behaviour, steps, d.first_stage, within + DRIPPED)
    if behaviour == "tls-alert":
        steps = (*valid, ("read", 5), ("send", ALERT), HOLD)
        return Case(dialect, behaviour, steps, "TLS handshake", "ALERT_HANDSHAKE_FAILURE")
    if behaviour == "plain-http":
        steps = (("recv", 0.3), ("send", HTTP_RESPONSE), ("close", b""))
        return Case(dialect, behaviour, steps, d.first_stage, "HTTP/1.1 400 Bad Request")
    if behaviour == "refuse-starttls":
        steps = (*d.before, ("send", d.refusal), HOLD)
        return Case(dialect, behaviour, steps, d.refusal_stage, "refuse|does not offer|expected")
    if behaviour == "inject-after-go-ahead":
        steps = (*d.before, ("send", d.go_ahead + INJECTED), *d.after, ("tls", b""))
        return Case(dialect, behaviour, steps, INJECTION_STAGE, "possible STARTTLS injection")
    raise AssertionError(behaviour)


def _go_ahead_filling_one_read(dialog: Dialog) -> bytes:
    """An SMTP go-ahead of exactly one probe read (``220-`` lines, then ``220 ...``): plaintext
    injected right behind it is not in the probe's buffer, only in the socket."""
    last = dialog.go_ahead
    line = b"220-TLS go ahead, this line pads the reply\r\n"
    lines, rest = divmod(RECV_BYTES - len(last), len(line))
    return line * (lines - 1) + b"220-" + b"x" * (len(line) + rest - 6) + b"\r\n" + last


# Found by this module: a reset right after the go-ahead escaped as ConnectionResetError, from
# the injection guard's peek or from wrap_socket (it races both, hence the repeats); and a MySQL
# handshake with sequence id 255 crashed the probe with ValueError.
EXTRA_CASES = [
    Case(
        Dialect.POP3,
        "reset-after-go-ahead",
        (*DIALOGS[Dialect.POP3].before, ("send", DIALOGS[Dialect.POP3].go_ahead), ("reset", b"")),
        f"({INJECTION_STAGE}|TLS handshake)",
        "reset|failed",
        repeat=100,
    ),
    Case(
        Dialect.MYSQL,
        "sequence-id-255-then-alert",
        (("send", _mysql_handshake(ssl=True, seq=255)), ("read", 36), ("read", 5), ("send", ALERT)),
        "TLS handshake",
        "ALERT_HANDSHAKE_FAILURE",
    ),
]

_SMTP = DIALOGS[Dialect.SMTP]
EXTRA_CASES.append(
    # the injection guard's MSG_PEEK: injected bytes beyond the read that ended the go-ahead
    Case(
        Dialect.SMTP,
        "inject-beyond-the-read",
        (*_SMTP.before, ("send", _go_ahead_filling_one_read(_SMTP) + INJECTED), ("tls", b"")),
        INJECTION_STAGE,
        "possible STARTTLS injection",
    )
)

CASES = [
    *(_direct_case(b) for b in BEHAVIOURS if b not in STARTTLS_ONLY),
    *(_starttls_case(d, b) for d in Dialect for b in BEHAVIOURS),
    *EXTRA_CASES,
]


@pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])
def test_each_dialog_is_valid_up_to_tls(dialect: Dialect, live: Path) -> None:
    # The hostile cases replay these scripts up to their point of hostility: played to the
    # end, they must give the probe the certificate.
    d = DIALOGS[dialect]
    steps = [*d.before, ("send", d.go_ahead), *d.after, ("tls", b"")]
    with ScriptedPeer(steps, live / "fullchain.pem", live / "privkey.pem") as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, dialect)
    assert fingerprint(served.leaf) == read_lineage(str(live)).cert.fingerprint


# -- running them ---------------------------------------------------------------------------


@dataclass
class Outcome:
    port: int
    seconds: float = 0.0  # the slowest attempt
    errors: list[BaseException | None] = field(default_factory=list)  # None: no exception
    alloc_kib: float | None = None


def _attempt(case: Case, port: int) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        fetch_served("127.0.0.1", port, NAME, TIMEOUT, case.dialect)
    except Exception as e:  # anything but ProbeError is a finding: keep it to report
        return e, time.monotonic() - start
    return None, time.monotonic() - start


def _run(case: Case, port: int, outcome: Outcome) -> None:
    for _ in range(case.repeat):
        error, seconds = _attempt(case, port)
        outcome.errors.append(error)
        outcome.seconds = max(outcome.seconds, seconds)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from certbot_fanout._pki import ThrowawayCA

    factory = LineageFactory(ThrowawayCA("hostile peers"), tmp_path_factory.mktemp("letsencrypt"))
    return factory.issue(NAME)[0]


@pytest.fixture(scope="module")
def peers(live: Path) -> Iterator[dict[str, ScriptedPeer]]:
    started: dict[str, ScriptedPeer] = {}
    try:
        for case in CASES:
            started[case.id] = ScriptedPeer(
                list(case.steps),
                live / "fullchain.pem",
                live / "privkey.pem",
                drip_interval=DRIP_INTERVAL,
            )
        yield started
    finally:
        close_all(started.values())


@pytest.fixture(scope="module")
def outcomes(peers: dict[str, ScriptedPeer]) -> dict[str, Outcome]:
    results = {case.id: Outcome(peers[case.id].port) for case in CASES}
    for case in (c for c in CASES if c.memory):  # one at a time: tracemalloc is process-wide
        tracemalloc.start()
        try:
            _run(case, peers[case.id].port, results[case.id])
            results[case.id].alloc_kib = tracemalloc.get_traced_memory()[1] / 1024
        finally:
            tracemalloc.stop()
    rest = [c for c in CASES if not c.memory]
    with ThreadPoolExecutor(max_workers=len(rest)) as pool:
        for future in [pool.submit(_run, c, results[c.id].port, results[c.id]) for c in rest]:
            future.result()
    return results


def readable(message: str) -> bool:
    """As every text report shows it (what the peer sent is quoted raw in the message, and
    escaped once, by the report): one printable line of sensible length, nothing a terminal
    would mangle, no Python."""
    shown = printable(message)
    return (
        shown.isprintable()
        and 20 < len(shown) < 400
        and "\ufffd" not in shown
        and "Traceback" not in shown
        and " object at 0x" not in shown
        and "Errno" not in shown
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_peer_fails_its_endpoint_in_time_with_a_clear_message(
    case: Case, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[case.id]
    bad = [e for e in outcome.errors if not isinstance(e, ProbeError)]
    counts: dict[str, float] = {
        "cases": 1,
        "tracebacks": len(bad),
        "over_timeout": int(outcome.seconds > TIMEOUT + MARGIN),
        "max_seconds": outcome.seconds,
    }
    if outcome.alloc_kib is not None:
        counts["max_alloc_kib"] = outcome.alloc_kib
    record("hostile peers", **counts)

    assert not bad, f"{case.id}: not a ProbeError: {bad[0]!r}"
    assert outcome.seconds <= TIMEOUT + MARGIN, f"{case.id}: took {outcome.seconds:.2f} s"
    if outcome.alloc_kib is not None:
        assert outcome.alloc_kib < ALLOC_LIMIT_KIB, f"{case.id}: {outcome.alloc_kib:.0f} KiB"
    where = re.escape(f"127.0.0.1:{outcome.port}")
    if case.dialect is not None:
        where += re.escape(f" ({case.dialect.value})")
    for error in outcome.errors:
        message = str(error)
        assert readable(message), message
        assert re.match(rf"{where}: {case.stage}\b.*({case.why})", printable(message)), message


# -- one deploy run with every case as a consumer ----------------------------------------------

VERIFY_TIMEOUT = 1.5
# poll_endpoint gives its last attempt max(time left, 1.0) s, so an endpoint can end up to this
# long after its consumer's verify_timeout.
LAST_ATTEMPT_FLOOR = 1.0
RUN_MARGIN = 1.0  # thread scheduling (as MARGIN) plus reading the config and the lineage
STARTUP_ALLOWANCE = 2.0  # starting the interpreter and importing certbot_fanout, under load


def run_bound(consumers: int, jobs: int, verify_timeout: float, reload: bool = False) -> float:
    """The longest a deploy may take, from deploy.py: consumers run ``jobs`` at a time; one
    with a single endpoint and no files costs its verify_timeout plus the last attempt's floor,
    and with a reload command first a settle check (min(verify_timeout, SETTLE_SECONDS), plus
    its floor) and the reload (whose own timeout is not counted here)."""
    per_consumer = verify_timeout + LAST_ATTEMPT_FLOOR
    if reload:
        per_consumer += min(verify_timeout, verify_module.SETTLE_SECONDS) + LAST_ATTEMPT_FLOOR
    return math.ceil(consumers / jobs) * per_consumer


def _consumer(name: str, port: int, dialect: Dialect | None) -> str:
    starttls = f", starttls: {dialect.value}" if dialect else ""
    return (
        f"  {name}:\n    certificate: {NAME}\n"
        f"    verify: [{{host: 127.0.0.1, port: {port}{starttls}}}]\n"
    )


@pytest.fixture
def healthy(live: Path) -> Iterator[tuple[Peer, ScriptedPeer]]:
    smtp = (*DIALOGS[Dialect.SMTP].before, ("send", DIALOGS[Dialect.SMTP].go_ahead), ("tls", b""))
    with (
        Peer("tls", live / "fullchain.pem", live / "privkey.pem") as direct,
        ScriptedPeer(list(smtp), live / "fullchain.pem", live / "privkey.pem") as starttls,
    ):
        yield direct, starttls


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_one_deploy_run_fails_every_hostile_consumer_and_stays_within_its_bound(
    live: Path,
    peers: dict[str, ScriptedPeer],
    healthy: tuple[Peer, ScriptedPeer],
    write_config: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    direct, starttls = healthy
    hostile = {c.id: c for c in CASES}
    blocks = [_consumer(c.id, peers[c.id].port, c.dialect) for c in CASES]
    blocks += [_consumer("healthy-tls", direct.port, None)]
    blocks += [_consumer("healthy-smtp", starttls.port, Dialect.SMTP)]
    config = write_config(
        f"version: 1\ndefaults:\n  verify_timeout: {VERIFY_TIMEOUT}\nconsumers:\n" + "".join(blocks)
    )
    jobs = len(blocks)
    argv = [sys.executable, "-m", "certbot_fanout", "deploy", "--config", str(config)]
    argv += ["--lineage", str(live), "--json", "--jobs", str(jobs)]
    argv += ["--lock-file", str(tmp_path / "lock"), "--state-file", str(tmp_path / "state")]
    start = time.monotonic()
    proc = cli.run(argv, timeout=60)
    wall = time.monotonic() - start
    bound = run_bound(len(blocks), jobs, VERIFY_TIMEOUT) + RUN_MARGIN + STARTUP_ALLOWANCE
    record(
        "hostile peers (one deploy run)",
        cases=len(CASES),
        run_seconds=wall,
        bound_seconds=bound,
        tracebacks=(proc.stdout + proc.stderr).count("Traceback"),
    )

    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in result["consumers"]}
    expected = read_lineage(str(live)).cert.fingerprint
    for name in ("healthy-tls", "healthy-smtp"):
        assert by_name[name]["outcome"] == "ok", by_name[name]
        assert by_name[name]["endpoints"][0]["served"]["sha256"] == expected
    for name, case in hostile.items():
        c = by_name[name]
        assert c["outcome"] == "failed" and c["failed_stage"] == "verify", c
        where = re.escape(f"127.0.0.1:{peers[name].port}")
        if case.dialect is not None:
            where += re.escape(f" ({case.dialect.value})")
        assert re.match(rf"{where}: {case.stage}\b", c["error"]), c["error"]
        assert "internal error" not in c["error"]
    assert result["seconds"] <= run_bound(len(blocks), jobs, VERIFY_TIMEOUT) + RUN_MARGIN
    assert wall <= bound, f"the run took {wall:.1f} s; bound {bound:.1f} s"


def test_the_healthy_peers_serve_the_lineage(
    healthy: tuple[Peer, ScriptedPeer], live: Path
) -> None:
    # The run above relies on these two succeeding: prove the scripts are valid on their own.
    direct, starttls = healthy
    expected = read_lineage(str(live)).cert.fingerprint
    leaf = fetch_served("127.0.0.1", direct.port, NAME, 5).leaf
    assert fingerprint(leaf) == expected
    leaf = fetch_served("127.0.0.1", starttls.port, NAME, 5, Dialect.SMTP).leaf
    assert fingerprint(leaf) == expected
