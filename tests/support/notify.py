"""Real notifiers' other ends, for the notify tests: a command that keeps what it is sent, and
an HTTPS webhook receiver on a loopback port.

- ``CommandSink``: a shell script (a real program, found and trusted as a reload is) that saves
  its stdin as one file per call; ``behaviour`` ``ok``, ``fail`` (exit 3 after saving nothing)
  or ``hang`` (sleeps far past any timeout), switchable between runs.
- ``WebhookReceiver``: ``http.server`` behind ``ssl`` with a certificate from a throwaway CA for
  ``localhost`` (its root in ``ca_file``); keeps each POST's headers and body; answers
  ``status`` (204 by default) or, with ``hang``, nothing at all.
- ``stale_peer``: a lineage renewed once and a loopback TLS peer still serving its first
  certificate (``catch_up`` moves it on), with ``notify_map`` (a map of three consumers: one
  verified at that peer, one whose failing reload prints the private key, one told nothing),
  the command lines that deploy and check it, and readers of what the notifiers got.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from certbot_fanout._pki import ThrowawayCA

from .lineages import LineageFactory
from .peers import Peer

NAME = "notify.test"

_SCRIPT = """\
#!/bin/sh
# A notify command for the tests: keeps what it reads, or fails, or hangs.
mode=$(cat "{mode}")
case "$mode" in
  fail) echo "sink refuses: {marker}" >&2; exit 3 ;;
  hang) exec sleep 300 ;;
esac
n=$(ls "{out}" | wc -l)
cat > "{out}/message-$(printf %04d "$n").json"
"""


class CommandSink:
    """A notify command whose every message lands in ``out/`` (see the module doc)."""

    def __init__(self, workdir: Path, name: str = "sink") -> None:
        self.dir = workdir / name
        self.out = self.dir / "out"
        self.out.mkdir(parents=True)
        self.mode_file = self.dir / "mode"
        self.behaviour = "ok"
        self.script = self.dir / "notify.sh"
        self.script.write_text(
            _SCRIPT.format(mode=self.mode_file, out=self.out, marker=f"{name} said no")
        )
        self.script.chmod(0o755)

    @property
    def behaviour(self) -> str:
        return self.mode_file.read_text()

    @behaviour.setter
    def behaviour(self, value: str) -> None:
        self.mode_file.write_text(value)

    @property
    def argv(self) -> list[str]:
        return [str(self.script)]

    def messages(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.out.iterdir()):
            document = json.loads(path.read_text())
            assert isinstance(document, dict)
            found.append(document)
        return found

    def raw(self) -> list[str]:
        return [p.read_text() for p in sorted(self.out.iterdir())]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        receiver = self.server.receiver
        if receiver.hang:
            receiver.release.wait(60)
            return
        receiver.requests.append((self.path, dict(self.headers.items()), body))
        self.send_response(receiver.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: WebhookReceiver


class WebhookReceiver:
    """An HTTPS server on 127.0.0.1 (see the module doc); close() stops it."""

    def __init__(self, workdir: Path, ca: ThrowawayCA | None = None) -> None:
        ca = ca or ThrowawayCA("webhook receiver")
        issued = ca.issue(["localhost"])
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = workdir / "webhook-ca.pem"
        self.ca_file.write_bytes(ca.root_pem)
        cert, key = workdir / "webhook-cert.pem", workdir / "webhook-key.pem"
        cert.write_bytes(issued.fullchain_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.status = 204
        self.hang = False
        self.release = threading.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"https://localhost:{self.port}{path}"

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- runs to notify of


@contextlib.contextmanager
def stale_peer(lineages: LineageFactory, workdir: Path) -> Iterator[tuple[Path, Peer]]:
    """Lineage NAME renewed once, and a loopback TLS peer still serving its first certificate
    (from copies in WORKDIR/peer, so that ``catch_up`` can move it on)."""
    live, _ = lineages.issue(NAME)
    served = workdir / "peer"
    served.mkdir()
    for part in ("fullchain", "privkey"):
        shutil.copyfile(live / f"{part}.pem", served / f"{part}.pem")
    peer = Peer("tls", served / "fullchain.pem", served / "privkey.pem")
    lineages.renew(NAME)
    try:
        yield live, peer
    finally:
        peer.close()


def catch_up(live: Path, peer: Peer) -> None:
    """The peer now serves the lineage's current certificate."""
    assert peer.cert is not None and peer.key is not None
    shutil.copyfile(live / "fullchain.pem", peer.cert)
    shutil.copyfile(live / "privkey.pem", peer.key)
    peer.reload()


def notify_map(workdir: Path, peer: Peer, live: Path, notify_yaml: str, leaky: bool = True) -> Path:
    """WORKDIR/consumers.yaml: ``notify_yaml`` (lines indented by 4) as the defaults' block;
    ``web`` verified at ``peer`` (with notes), ``leaky`` whose reload prints the private key
    and fails (with ``leaky=False``: succeeds, printing nothing), and ``quiet`` (fails too,
    but ``notify: {}``)."""
    reload = f"cat {live}/privkey.pem; exit 1" if leaky else "true"
    path = workdir / "consumers.yaml"
    path.write_text(
        f"""\
version: 1
defaults:
  notify:
{notify_yaml}
consumers:
  web:
    certificate: {NAME}
    verify: [{{host: 127.0.0.1, port: {peer.port}, server_name: {NAME}}}]
    verify_timeout: 1
    notes: |
      The web front; call Alice before touching it.
  leaky:
    certificate: {NAME}
    reload: [sh, -c, '{reload}']
  quiet:
    certificate: {NAME}
    reload: [sh, -c, 'exit {1 if leaky else 0}']
    notify: {{}}
"""
    )
    return path


def deploy_args(workdir: Path, config: Path, live: Path, state: str) -> list[str]:
    """``deploy --json`` of ``live`` with this map, lock and state file."""
    return [
        "deploy",
        "--config",
        str(config),
        "--lineage",
        str(live),
        "--lock-file",
        str(workdir / "lock"),
        "--state-file",
        state,
        "--json",
    ]


def status_args(workdir: Path, config: Path, live: Path, state: str, *more: str) -> list[str]:
    """``status`` of this map (lineages from ``live``'s config dir), plus ``more``."""
    return [
        "status",
        "--config",
        str(config),
        "--config-dir",
        str(live.parent.parent),
        "--state-file",
        state,
        "--lock-file",
        str(workdir / "lock"),
        *more,
    ]


def states(message: dict[str, Any]) -> list[tuple[str, str]]:
    """(consumer, failing or recovered) for each change a notification document lists."""
    return [(c["name"], c["state"]) for c in message["changes"]]


def key_lines(live: Path) -> list[str]:
    """The lineage key's base64 lines, and the base64 of its whole DER, as a message could
    hold them."""
    pem = (live / "privkey.pem").read_text()
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return [*body, base64.b64encode(base64.b64decode("".join(body))).decode()]


def without_times(document: Any) -> Any:
    """A JSON document without its timings (``seconds``, ``attempts``)."""
    if isinstance(document, dict):
        return {
            k: without_times(v) for k, v in document.items() if k not in ("seconds", "attempts")
        }
    if isinstance(document, list):
        return [without_times(v) for v in document]
    return document
