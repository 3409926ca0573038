"""A tiny TLS service for the demo: serves a certificate file and re-reads it on SIGHUP.

``python -m certbot_fanout._demo_server --cert C --key K --port-file F`` listens on a free
loopback port, writes the port number to F, and answers every TLS client with one line (the demo
runs it isolated, through ``demo.python_module_argv``).
``--check`` only checks that the pair loads (the demo's stand-in for ``nginx -t``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import sys
from types import FrameType


def _context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="certbot-fanout-demo-server")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port-file")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    try:
        ctx = _context(args.cert, args.key)
    except (OSError, ssl.SSLError) as e:
        print(f"cannot load {args.cert} / {args.key}: {e}", file=sys.stderr)
        return 1
    if args.check:
        print("certificate and key load; configuration ok")
        return 0

    def reload(signum: int, frame: FrameType | None) -> None:
        nonlocal ctx
        try:
            ctx = _context(args.cert, args.key)
        except (OSError, ssl.SSLError) as e:  # like a real daemon: keep serving the old one
            print(f"reload failed, keeping the old certificate: {e}", file=sys.stderr)

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        if args.port_file:
            tmp = args.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(listener.getsockname()[1]))
            os.replace(tmp, args.port_file)
        while True:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello from the demo service\n")


if __name__ == "__main__":
    sys.exit(main())
