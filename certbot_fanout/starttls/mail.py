"""STARTTLS for the line-based mail and news protocols: SMTP, LMTP, IMAP, POP3, FTP, NNTP and
ManageSieve.

Each negotiator is named after its dialect and reads the greeting, asks for TLS the way the
protocol does, and returns on the server's go-ahead (raising ``Plaintext.fail`` otherwise).
"""

from __future__ import annotations

from certbot_fanout.starttls.talk import Negotiate, Plaintext, show

_EHLO_NAME = b"localhost"


def _reply(talk: Plaintext) -> tuple[int, list[bytes]]:
    """An SMTP/LMTP/FTP style reply: ``250-...`` lines, then ``250 ...``."""
    lines = []
    while True:
        line = talk.line()
        lines.append(line)
        if len(line) < 3 or not line[:3].isdigit():
            raise talk.fail(f"expected a numeric reply, got {show(line)}")
        if len(line) == 3 or line[3:4] == b" ":
            return int(line[:3]), lines
        if line[3:4] != b"-":
            raise talk.fail(f"expected a numeric reply, got {show(line)}")


def _expect_code(talk: Plaintext, *codes: int) -> list[bytes]:
    code, lines = _reply(talk)
    if code not in codes:
        want = " or ".join(str(c) for c in codes)
        raise talk.fail(f"expected {want}, got {show(lines[-1])}")
    return lines


def _hello_then_starttls(hello: bytes) -> Negotiate:
    """A 220 greeting, ``hello`` (EHLO, LHLO) listing STARTTLS, then STARTTLS (SMTP, LMTP)."""

    def negotiate(talk: Plaintext, name: str) -> None:
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


def _greeting_then(
    greeting: tuple[bytes, ...], want: str, command: bytes, go_ahead: bytes
) -> Negotiate:
    """A one-line greeting starting with one of ``greeting`` (``want`` in messages), then
    ``command``, answered by a line starting with ``go_ahead`` (POP3, NNTP)."""

    def negotiate(talk: Plaintext, name: str) -> None:
        line = talk.line()
        if not line.startswith(greeting):
            raise talk.fail(f"expected {want}, got {show(line)}")
        talk.stage = command.decode()
        talk.send(command + b"\r\n")
        answer = talk.line()
        if not answer.startswith(go_ahead):
            raise talk.fail(f"the server refused {talk.stage}: {show(answer)}")

    return negotiate


smtp = _hello_then_starttls(b"EHLO")
lmtp = _hello_then_starttls(b"LHLO")
pop3 = _greeting_then((b"+OK",), "'+OK'", b"STLS", b"+OK")
nntp = _greeting_then((b"200", b"201"), "200 or 201", b"STARTTLS", b"382")


def imap(talk: Plaintext, name: str) -> None:
    greeting = talk.line()
    if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
        raise talk.fail(f"expected '* OK', got {show(greeting)}")
    talk.stage = "STARTTLS"
    talk.send(b"F1 STARTTLS\r\n")
    while True:
        line = talk.line()
        if line.startswith(b"* "):
            continue
        if line.upper().startswith(b"F1 OK"):
            return
        raise talk.fail(f"the server refused STARTTLS: {show(line)}")


def ftp(talk: Plaintext, name: str) -> None:
    _expect_code(talk, 220)
    talk.stage = "AUTH TLS"
    talk.send(b"AUTH TLS\r\n")
    _expect_code(talk, 234)


def sieve(talk: Plaintext, name: str) -> None:
    offered = False
    while True:
        line = talk.line()
        upper = line.upper()
        if upper.startswith(b"OK"):
            break
        if upper.startswith((b"NO", b"BYE")):
            raise talk.fail(f"the server refused the connection: {show(line)}")
        if not upper.startswith(b'"'):
            raise talk.fail(f"expected a capability line, got {show(line)}")
        offered = offered or upper.startswith(b'"STARTTLS"')
    if not offered:
        raise talk.fail("the server does not offer STARTTLS")
    talk.stage = "STARTTLS"
    talk.send(b"STARTTLS\r\n")
    answer = talk.line()
    if not answer.upper().startswith(b"OK"):
        raise talk.fail(f"the server refused STARTTLS: {show(answer)}")
