"""Loopback peers for probe and deploy tests: a real TLS server and some hostile ones."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Self


class _Loopback:
    """A server on a free loopback port: one thread accepts, one thread per connection runs
    ``_handle``; close() stops it."""

    def __init__(self, bind: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.listener = socket.create_server((bind, port), family=family)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)

    def _wake(self) -> None:
        """End the accept loop now: shutdown() wakes an accept() that is waiting (on Linux, a
        close() alone would leave it to its 0.1 s timeout)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Peer(_Loopback):
    """A loopback server on a free port, one thread, stopped by close().

    ``behaviour``: ``tls`` (serve ``cert``/``key``; ``reload()`` re-reads them), ``silent``
    (accept, say nothing), ``garbage`` (answer in plaintext), ``drip`` (one byte of a TLS
    record every 0.2 s), ``close`` (accept and hang up), ``alert`` (answer the
    ClientHello with a handshake-failure alert).

    ``versions`` (lowest, highest) limits the TLS versions it speaks, at OpenSSL security level
    0 so that TLS 1.0 and 1.1 are possible; ``protocols`` lists what each handshake negotiated.
    """

    def __init__(
        self,
        behaviour: str = "tls",
        cert: Path | None = None,
        key: Path | None = None,
        bind: str = "127.0.0.1",
        versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
        port: int = 0,
    ) -> None:
        self.behaviour = behaviour
        self.cert, self.key = cert, key
        self.versions = versions
        self.server_names: list[str | None] = []
        self.protocols: list[str | None] = []
        self.ctx = self._context() if behaviour in ("tls", "alert") else None
        super().__init__(bind, port)

    def _context(self) -> ssl.SSLContext:
        assert self.cert and self.key
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        if self.versions is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1
                ctx.minimum_version, ctx.maximum_version = self.versions
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        alert = self.behaviour == "alert"

        def record(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, c: object) -> int | None:
            self.server_names.append(name)
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE if alert else None

        ctx.sni_callback = record
        return ctx

    def reload(self) -> None:
        self.ctx = self._context()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            if self.behaviour in ("tls", "alert"):
                assert self.ctx is not None
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.protocols.append(tls.version())
                    tls.sendall(b"ok\n")
            elif self.behaviour == "silent":
                self._stop.wait(10)
            elif self.behaviour == "garbage":
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self._stop.wait(10)
            elif self.behaviour == "drip":
                conn.recv(4096)
                for byte in b"\x16\x03\x03\x10\x00" + b"\x00" * 100:
                    if self._stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(0.2)


Step = tuple[str, bytes | float]


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


class ScriptedPeer(_Loopback):
    """A loopback server that plays a plaintext script, then (on a ``tls`` step) serves
    ``cert``/``key`` over TLS on the same connection. Steps: ``("send", bytes)``,
    ``("line", b"")`` (read one line), ``("read", n)``, ``("recv", seconds)`` (whatever arrives
    within that time, perhaps nothing), ``("drip", bytes)`` (one byte at once, then one per
    ``drip_interval`` seconds, 0.2 unless given), ``("flood", bytes)`` (those bytes again and
    again, until the client hangs up), ``("sleep", seconds)``, ``("close", b"")`` (hang up),
    ``("reset", b"")`` (hang up with a TCP RST), ``("tls", b"")``. Every step ends early when
    the peer is closed."""

    def __init__(
        self,
        steps: list[Step],
        cert: Path | None = None,
        key: Path | None = None,
        drip_interval: float = 0.2,
    ):
        self.steps = steps
        self.drip_interval = drip_interval
        self.ctx: ssl.SSLContext | None = None
        if cert and key:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
        self.received: list[bytes] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            # Unbuffered: a read must not take bytes past what the step asks for, or a client
            # that starts TLS without waiting (MySQL) would lose its ClientHello to the buffer.
            reader = conn.makefile("rb", buffering=0)
            for action, arg in self.steps:
                if action == "send":
                    assert isinstance(arg, bytes)
                    conn.sendall(arg)
                elif action == "line":
                    self.received.append(reader.readline(4096))
                elif action == "read":
                    assert isinstance(arg, int)
                    self.received.append(_read_exactly(conn, arg))
                elif action == "recv":
                    assert isinstance(arg, float)
                    if select.select([conn], [], [], arg)[0]:
                        self.received.append(conn.recv(65536))
                elif action == "drip":
                    assert isinstance(arg, bytes)
                    for i, byte in enumerate(arg):
                        if i and self._stop.wait(self.drip_interval):
                            return
                        conn.sendall(bytes([byte]))
                elif action == "flood":
                    assert isinstance(arg, bytes)
                    chunk = arg * max(1, 16384 // len(arg))
                    while not self._stop.is_set():
                        conn.sendall(chunk)
                elif action == "close":
                    return
                elif action == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif action == "sleep":
                    assert isinstance(arg, float)
                    self._stop.wait(arg)
                elif action == "tls":
                    assert self.ctx is not None
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok\n")
                    return


def close_all(servers: Iterable[_Loopback]) -> None:
    """Close many servers at once: stop them all, then wait for each."""
    servers = list(servers)
    for server in servers:
        server._stop.set()
        server._wake()
    for server in servers:
        server._thread.join(5)
