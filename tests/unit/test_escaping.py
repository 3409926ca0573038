"""Text from outside the map never reaches a terminal raw (issue 13, item 8).

``escape.printable`` is tested on its own (a table, and a property: nothing unprintable comes
out, and what comes out reads back as what went in), then end to end: real loopback peers
(a TLS one whose certificate's subject and names forge an ``OK:`` line, a STARTTLS one whose
greeting clears the screen), a reload command that prints the same, a destination that is a
symlink whose target has a newline and a byte that is not UTF-8, and files with such names for
discover. Each text report is read as bytes from a real ``certbot-fanout`` process and counted
before it is judged: raw control characters, forged lines, tracebacks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from certbot_fanout.config import parse_config
from certbot_fanout.discover import ServiceConfig, discover
from certbot_fanout.escape import printable
from certbot_fanout.render_discover import render_discover_text
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer, ScriptedPeer
from tests.support.tally import record

AREA = "outside text"
NAME = "esc.test"
FORGED = "OK: all consumers current"
# What a hostile peer, program or file name says: clear the screen, retitle the terminal, go
# back to the start of the line and forge a verdict, then reverse the rest of the line.
HOSTILE = f"\x1b[2J\x1b]0;x\x07\r\n{FORGED}\u202e\u2028\x9b1m"
HOSTILE_BYTES = b"\x1b[2J\r\n" + FORGED.encode() + b"\xff\xfe\x1b]0;owned\x07"


# -- the escaper -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "shown"),
    [
        ("plain text, unchanged", "plain text, unchanged"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),  # printable non-ASCII stays
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),
        ("\x85\x9b", "\\u0085\\u009b"),  # C1 controls, as code points
        ("\udcff\udc80", "\\xff\\x80"),  # bytes that are not UTF-8, as os.fsdecode gives them
        ("\u202e\u2066\u2069\u200f", "\\u202e\\u2066\\u2069\\u200f"),  # bidi controls
        ("\u2028\u2029\ufeff\u00a0", "\\u2028\\u2029\\ufeff\\u00a0"),
        ("\U000e0041", "\\U000e0041"),  # a tag character
        ("\ud800", "\\ud800"),  # a lone surrogate that is no byte
        ("CN=Example\\, Inc.", "CN=Example\\, Inc."),  # an RFC 4514 escape reads as it is
        ("a\\nb", "a\\\\nb"),  # a backslash that looks like an escape is doubled
        ("\\x1b", "\\\\x1b"),
        ("\\\\", "\\\\\\\\"),
        ("ends with \\", "ends with \\\\"),
        ("\\\n", "\\\\\\n"),  # a backslash before an escaped character
    ],
)
def test_printable_escapes_what_a_terminal_acts_on(given_text: str, shown: str) -> None:
    assert printable(given_text) == shown


def test_bytes_and_fsdecoded_names_read_the_same() -> None:
    raw = b"dir/\xffname\n"
    assert printable(raw) == printable(os.fsdecode(raw)) == "dir/\\xffname\\n"


def unescape(shown: str) -> str:
    """The inverse of ``printable``: proves that two texts never look the same."""
    out, i = [], 0
    short = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
    while i < len(shown):
        ch = shown[i]
        follows = shown[i + 1] if i + 1 < len(shown) else ""
        if ch != "\\" or not follows or follows not in "nrt\\xuU":
            out.append(ch)
            i += 1
        elif follows in short:
            out.append(short[follows])
            i += 2
        else:
            digits = {"x": 2, "u": 4, "U": 8}[follows]
            code = int(shown[i + 2 : i + 2 + digits], 16)
            out.append(chr(0xDC00 + code if follows == "x" and code >= 0x80 else code))
            i += 2 + digits
    return "".join(out)


TEXTS = st.text(
    st.one_of(
        st.characters(codec=None),  # every code point, lone surrogates too
        st.sampled_from("\\nrtxuU\x1b\r\n\u202e\udcff"),
    )
)


@given(TEXTS)
def test_nothing_unprintable_comes_out_and_what_does_reads_back(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable(), shown
    shown.encode("utf-8")  # no lone surrogate: every report can be written
    assert unescape(shown) == text


@given(TEXTS, TEXTS)
def test_distinct_texts_stay_distinct(a: str, b: str) -> None:
    assert (printable(a) == printable(b)) == (a == b)


# -- end to end --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """What one report put on a terminal, counted."""

    raw_control_chars: int  # characters a terminal acts on, other than the report's own LF
    forged_lines: int  # lines (as a terminal shows them) that begin with the forged verdict
    tracebacks: int


def seen(stdout: bytes, stderr: bytes = b"") -> Seen:
    both = (stdout + stderr).decode("utf-8", "surrogateescape")
    lines = re.split(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", both)
    return Seen(
        raw_control_chars=sum(1 for ch in both if ch != "\n" and not ch.isprintable()),
        forged_lines=sum(1 for line in lines if line.lstrip().startswith(FORGED)),
        tracebacks=both.count("Traceback (most recent call last)"),
    )


def hostile_certificate(directory: Path, common_name: str, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate whose subject and names are whatever a peer likes."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "hostile.pem", directory / "hostile.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def certbot_fanout(
    *argv: str, stdout: int | None = subprocess.PIPE, encoding: str = "utf-8:strict"
) -> subprocess.CompletedProcess[bytes]:
    """A real ``certbot-fanout`` process, its output as bytes. Its stdout is strict UTF-8 (as
    on a terminal or a monitoring agent with a UTF-8 locale) unless ``encoding`` says else."""
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    env.pop("PYTHONUTF8", None)
    return subprocess.run(
        [sys.executable, "-m", "certbot_fanout", *argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
        check=False,
    )


@dataclasses.dataclass(frozen=True)
class Scene:
    config: Path
    config_dir: Path
    state: Path
    link: Path

    def argv(self, command: str, *more: str) -> list[str]:
        return [
            command,
            "--config",
            str(self.config),
            "--config-dir",
            str(self.config_dir),
            "--state-file",
            str(self.state),
            *more,
        ]


@pytest.fixture
def scene(lineages: LineageFactory, tmp_path: Path) -> Iterator[Scene]:
    """A map whose every consumer meets text from outside: a TLS peer serving a forged
    certificate, a STARTTLS peer greeting with escape sequences, a reload that prints them, and
    a destination that is a symlink to a name with a newline and a byte that is not UTF-8."""
    lineages.issue(NAME)
    cert, key = hostile_certificate(
        tmp_path, f"peer{HOSTILE} caf\u00e9", [f"san\x1b[2J\r\n{FORGED}.example"]
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    link = dest / "cert.pem"
    os.symlink(b"/nowhere/" + HOSTILE_BYTES, os.fsencode(link))
    reload = [
        sys.executable,
        "-I",
        "-c",
        "import sys; sys.stdout.write(chr(27) + '[2J' + chr(13) + '\\n" + FORGED + "\\n'); "
        "sys.exit(3)",
    ]
    # One line, as SMTP reads it: a bare CR takes a terminal back to the start of it.
    greeting = b"554 \x1b[2J\x1b]0;x\x07\r" + FORGED.encode() + b"\xff\r\n"
    with (
        Peer("tls", cert, key) as tls_peer,
        ScriptedPeer([("send", greeting), ("recv", 2.0)]) as starttls_peer,
    ):
        entries = {
            "peer": {
                "certificate": NAME,
                "verify_timeout": 1,
                "verify": [{"host": "127.0.0.1", "port": tls_peer.port}],
            },
            "mailer": {
                "certificate": NAME,
                "verify_timeout": 1,
                "verify": [{"host": "127.0.0.1", "port": starttls_peer.port, "starttls": "smtp"}],
            },
            "reloader": {"certificate": NAME, "reload": reload},
            "linked": {"certificate": NAME, "files": [{"path": str(link), "content": "cert"}]},
        }
        config = tmp_path / "consumers.yaml"
        config.write_text(json.dumps({"version": 1, "consumers": entries}))
        yield Scene(config, lineages.config_dir, tmp_path / "state.json", link)


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_no_report_puts_outside_text_on_a_terminal_raw(scene: Scene) -> None:
    runs = {
        "status": certbot_fanout(*scene.argv("status")),
        "check": certbot_fanout(*scene.argv("check")),
        "deploy --dry-run": certbot_fanout(*scene.argv("deploy", "--cert-name", NAME, "--dry-run")),
        "deploy": certbot_fanout(*scene.argv("deploy", "--cert-name", NAME)),
    }
    counts = {what: seen(run.stdout, run.stderr) for what, run in runs.items()}
    record(
        AREA,
        cases=len(runs),
        raw_control_chars=sum(c.raw_control_chars for c in counts.values()),
        forged_lines=sum(c.forged_lines for c in counts.values()),
        tracebacks=sum(c.tracebacks for c in counts.values()),
    )
    for what, run in runs.items():
        report = f"{what}:\n{run.stdout!r}\n{run.stderr!r}"
        assert counts[what] == Seen(0, 0, 0), report
        # check finds nothing to say about this map, which is fine: it must only not crash.
        expected = {"status": 2, "check": 0, "deploy --dry-run": 0}.get(what, 1)
        assert run.returncode == expected, report
    text = {what: run.stdout.decode() for what, run in runs.items()}
    # What was escaped is still there to read, once.
    # (the subject is an RFC 4514 string: its "\\;" is the DN's own escape, kept as it is)
    assert "peer\\x1b[2J\\x1b]0\\;x\\x07\\r\\nOK: all consumers" in text["deploy"]
    assert "\\u202e\\u2028\\u009b1m caf\u00e9" in text["deploy"]
    # STARTTLS text, escaped once
    assert "got '554 \\x1b[2J\\x1b]0;x\\x07\\rOK: all consumers current" in text["status"]
    assert "output: \\x1b[2J | OK: all consumers" in text["deploy"]  # the reload's output
    assert "/nowhere/\\x1b[2J\\r\\nOK: all consumers current\\xff\\xfe" in (text["status"])
    assert "\\xff\\xfe" in text["deploy --dry-run"]


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_the_json_reports_stay_json_and_keep_the_text_as_it_came(scene: Scene) -> None:
    scene.link.unlink()
    os.symlink(b"/nowhere/\xff\n", os.fsencode(scene.link))
    status = certbot_fanout(*scene.argv("status", "--json"))
    deploy = certbot_fanout(*scene.argv("deploy", "--cert-name", NAME, "--dry-run", "--json"))
    counts = [seen(status.stdout, status.stderr), seen(deploy.stdout, deploy.stderr)]
    record(
        AREA,
        cases=2,
        raw_control_chars=sum(c.raw_control_chars for c in counts),
        tracebacks=sum(c.tracebacks for c in counts),
    )
    assert counts == [Seen(0, 0, 0)] * 2, (status, deploy)
    document = json.loads(status.stdout.decode("ascii"))  # ASCII: every escape is JSON's own
    problems = {c["name"]: c["problems"] for c in document["consumers"]}
    assert any("/nowhere/\udcff\n" in p for p in problems["linked"]), problems
    assert any(f"\r\n{FORGED}\u202e" in p for p in problems["peer"]), problems
    assert json.loads(deploy.stdout.decode("ascii"))["consumers"]


# -- discover ------------------------------------------------------------------------------------


def test_discover_lists_found_names_escaped(lineages: LineageFactory, tmp_path: Path) -> None:
    live, _ = lineages.issue(NAME)
    old = tmp_path / "old.pem"
    shutil.copyfile(live / "fullchain.pem", old)
    lineages.renew(NAME)
    scanned = tmp_path / "scan"
    scanned.mkdir()
    names = [b"copy\n" + FORGED.encode() + b".pem", b"\xff\xfe\x1b[2J.pem", b"\xe2\x80\xaecrt.pem"]
    for name in names:
        shutil.copyfile(old, os.path.join(os.fsencode(scanned), name))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = os.path.join(os.fsencode(conf_dir), b"site\r\n" + FORGED.encode() + b"\xff.conf")
    with open(conf, "wb") as f:
        f.write(b"cert " + os.fsencode(old) + b"\n")
    services = {"hostile": ServiceConfig((f"{conf_dir}/*.conf",), re.compile(r"^cert (\S+)", re.M))}
    config = parse_config(f"version: 1\nconsumers:\n  x:\n    certificate: {NAME}\n", "map")
    report = discover(
        config,
        str(lineages.config_dir),
        [NAME],
        roots=[str(scanned)],
        proc_net=str(tmp_path / "no-proc"),
        service_configs=services,
    )
    # The listing, with every find mapped: the entries to paste are another renderer's.
    listed = dataclasses.replace(
        report, finds=tuple(dataclasses.replace(f, mapped_by="x") for f in report.finds)
    )
    text = render_discover_text(listed)
    counts = seen(text.encode("utf-8", "surrogateescape"))
    record(
        AREA,
        cases=len(report.finds),
        raw_control_chars=counts.raw_control_chars,
        tracebacks=counts.tracebacks,
    )
    assert len(report.finds) == len(names) + 1, text
    assert counts == Seen(0, 0, 0), text
    text.encode("utf-8")  # no lone surrogate: the listing can be written to any UTF-8 stream
    assert "copy\\nOK: all consumers current.pem" in text
    assert "\\xff\\xfe\\x1b[2J.pem" in text
    assert "\\u202ecrt.pem" in text
    assert "site\\r\\nOK: all consumers current\\xff.conf:1" in text


# -- status: an internal error is UNKNOWN ------------------------------------------------------


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_a_status_that_cannot_write_its_report_is_unknown(scene: Scene) -> None:
    """Real ways status breaks after it has checked everything: a report it cannot encode (an
    ASCII-only stdout meets the é a peer put in its subject), a full disk, a reader that went
    away. Each is UNKNOWN (3), never the WARNING (1) the systemd unit counts as success."""
    ascii_out = certbot_fanout(*scene.argv("status"), encoding="ascii:strict")
    with open("/dev/full", "wb") as full:
        full_disk = certbot_fanout(*scene.argv("status"), stdout=full.fileno())
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        gone = certbot_fanout(*scene.argv("status"), stdout=write_end)
    finally:
        os.close(write_end)
    runs = (ascii_out, full_disk, gone)
    counts = [seen(ascii_out.stdout, ascii_out.stderr), *(seen(b"", r.stderr) for r in runs[1:])]
    record(
        AREA,
        cases=len(runs),
        not_unknown=sum(r.returncode != 3 for r in runs),
        tracebacks=sum(c.tracebacks for c in counts),
    )
    assert [r.returncode for r in runs] == [3, 3, 3], runs
    lines = ascii_out.stdout.decode("ascii").splitlines()
    assert len(lines) == 1 and lines[0].startswith("UNKNOWN: internal error: "), ascii_out
    assert "UnicodeEncodeError" in lines[0], ascii_out
    assert counts == [Seen(0, 0, 0)] * len(runs), runs
    # --debug shows the traceback, and the verdict stays UNKNOWN.
    debug = certbot_fanout(*scene.argv("status", "--debug"), encoding="ascii:strict")
    assert debug.returncode == 3, debug
    assert b"Traceback (most recent call last)" in debug.stderr, debug


# -- certbot's log -------------------------------------------------------------------------------


def test_the_plugin_logs_and_raises_outside_text_escaped(
    lineages: LineageFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from certbot import errors

    from certbot_fanout.plugin import Installer

    live, _ = lineages.issue(NAME)
    shout = f"import sys; sys.stdout.write({HOSTILE!r}); sys.exit(3)"
    (tmp_path / "svc").mkdir()
    entry = {
        "certificate": NAME,
        "files": [{"path": str(tmp_path / "svc" / "cert.pem"), "content": "cert"}],
        "test": [sys.executable, "-I", "-c", shout],
        "reload": [sys.executable, "-I", "-c", shout],
    }
    config = tmp_path / "consumers.yaml"
    config.write_text(json.dumps({"version": 1, "consumers": {"svc": entry}}))
    installer = Installer(SimpleNamespace(fanout_config=str(config)), "fanout")
    messages = []
    with pytest.raises(errors.MisconfigurationError) as tested:
        installer.config_test()
    messages.append(str(tested.value))
    with caplog.at_level("INFO", logger="certbot_fanout"), pytest.raises(errors.PluginError) as e:
        installer.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]
    messages.append(str(e.value))
    messages.extend(r.getMessage() for r in caplog.records)
    counts = seen("\n".join(messages).encode("utf-8", "surrogateescape"))
    record(
        AREA,
        cases=len(messages),
        raw_control_chars=counts.raw_control_chars,
        tracebacks=counts.tracebacks,
    )
    assert counts == Seen(0, 0, 0), messages
    assert "output: \\x1b[2J\\x1b]0;x\\x07 | OK: all consumers current" in messages[0], messages
    assert any("OK: all consumers current" in m for m in messages[2:]), messages
