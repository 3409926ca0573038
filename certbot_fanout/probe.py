"""Fetch the certificate an endpoint serves, like a client would, within a hard deadline."""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import time

from certbot_fanout.errors import ProbeError


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


def fetch_leaf(host: str, port: int, server_name: str | None, timeout: float) -> bytes:
    """Connect to ``host:port``, complete a TLS handshake with SNI ``server_name``, and return
    the DER of the leaf certificate the server presented.

    The whole exchange (resolution aside) ends within ``timeout`` seconds, however slowly the
    peer drips its bytes.

    Raises:
        ProbeError: connection refused or timed out, or the handshake failed or was too slow.
    """
    where = f"{host}:{port}"
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
        try:
            tls = _client_context().wrap_socket(
                sock, server_hostname=server_name or None, do_handshake_on_connect=False
            )
        except (ssl.SSLError, ValueError) as e:
            raise ProbeError(f"{where}: cannot start TLS: {e}") from None
        with tls:
            _handshake(tls, deadline, where, timeout)
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ProbeError(f"{where}: the server presented no certificate")
    return der


def _handshake(tls: ssl.SSLSocket, deadline: float, where: str, timeout: float) -> None:
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            wait_read = True
        except ssl.SSLWantWriteError:
            wait_read = False
        except ssl.SSLError as e:
            reason = e.reason or str(e)
            raise ProbeError(f"{where}: TLS handshake failed: {reason}") from None
        except ConnectionResetError:
            raise ProbeError(f"{where}: connection reset during the TLS handshake") from None
        except OSError as e:
            raise ProbeError(f"{where}: TLS handshake failed: {e.strerror or e}") from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeError(f"{where}: TLS handshake not finished within {timeout:g} s")
        poller = select.poll()
        poller.register(tls.fileno(), select.POLLIN if wait_read else select.POLLOUT)
        if not poller.poll(remaining * 1000):
            raise ProbeError(f"{where}: TLS handshake not finished within {timeout:g} s")
