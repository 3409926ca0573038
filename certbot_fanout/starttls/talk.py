"""The plaintext half of a STARTTLS exchange: a bounded reader and writer with one deadline.

``Plaintext`` is what every dialect talks through: each read takes at most ``RECV_BYTES``, the
whole exchange at most ``MAX_PLAINTEXT_BYTES`` and one deadline, and every failure names the
endpoint and the stage. ``wait`` (poll until a deadline) also paces the TLS handshake that
follows; ``show`` quotes what a peer sent for a message.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

from certbot_fanout.errors import ProbeError

MAX_PLAINTEXT_BYTES = 64 * 1024
RECV_BYTES = 4096  # one plaintext read


def wait(fd: int, events: int, deadline: float) -> bool:
    """Poll ``fd`` for ``events`` until the monotonic ``deadline``; False when it passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(remaining * 1000))


def show(data: bytes, limit: int = 120) -> str:
    """What the peer sent, quoted and cut to ``limit`` characters (a third as many when it is
    not UTF-8), otherwise as it came: bytes that are not UTF-8 stay surrogate escapes, and the
    text reports escape it where they show it (``certbot_fanout.escape``), so it is escaped
    once, not twice."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, limit = data.decode("utf-8", "surrogateescape"), limit // 3
    return "'" + text[:limit] + ("..." if len(text) > limit else "") + "'"


class Plaintext:
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
        if not wait(self.sock.fileno(), select.POLLIN, self.deadline):
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
        return show(self.taken_head + bytes(self.buffer[:80]), 60)

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
            if not wait(self.sock.fileno(), select.POLLOUT, self.deadline):
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


# A dialect's client side: talks through the Plaintext until the server's go-ahead for TLS.
# Arguments: the exchange, the name the client asks for (XMPP's to=).
Negotiate = Callable[[Plaintext, str], None]
