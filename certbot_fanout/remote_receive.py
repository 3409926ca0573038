"""The controller's end of a least-privilege host (``mode: receive``; the target's end is
:mod:`certbot_fanout.receive`).

The ssh connection is opened as for any host (pinned key, BatchMode, no forwarding), but the
target runs ``certbot-fanout receive`` (its key is usually forced to it in
``authorized_keys``), not the agent: nothing is sent to run there. The target's hello names the
lineages its own map uses; a lineage is handed over (its four PEM parts, inside the channel)
only when it is one of them, once per run however many of this map's consumers name it. The
target deploys it with its own map and answers with the deploy's JSON; this side then probes
the consumer's endpoints from here, as clients reach them.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

from certbot_fanout import wire
from certbot_fanout.errors import FanoutError
from certbot_fanout.escape import printable
from certbot_fanout.lineage import Lineage
from certbot_fanout.model import Host, Part
from certbot_fanout.remote import HostError, RemoteFailure, Session

RECEIVE_COMMAND = "certbot-fanout receive"
# The target's whole deploy of a lineage: its tests, reloads and verification, by its map.
DEPLOY_TIMEOUT = 900.0


class ReceiveSession(Session):
    """One receive-mode host's connection, for one run."""

    resolves_accounts = False

    def __init__(self, host: Host, control_path: str) -> None:
        super().__init__(host, control_path)
        self.certificates: frozenset[str] = frozenset()
        self._deploys: dict[str, dict[str, Any] | FanoutError] = {}
        self._deploy_lock = threading.Lock()

    def command(self) -> str:
        # What sshd runs when the key is not forced to it (a forced command replaces it).
        return RECEIVE_COMMAND

    def payload(self) -> bytes:
        return b""  # nothing is sent to run: the target has its own certbot-fanout

    def greeted(self, message: dict[str, Any]) -> None:
        if message.get("hello") != wire.PROTOCOL or message.get("mode") != "receive":
            error = message.get("error") or f"hello {str(message)[:200]}"
            raise HostError(
                f"{self.where}: is in receive mode, but what answered is not `certbot-fanout "
                f"receive` speaking protocol {wire.PROTOCOL}: {printable(str(error))} (install "
                "certbot-fanout there, and force the key to it in authorized_keys)"
            )
        names = message.get("certificates")
        if not isinstance(names, list):
            raise HostError(f"{self.where}: its hello named no certificates")
        self.certificates = frozenset(str(n) for n in names)

    def deploy_once(self, lineage: Lineage, force: bool, dry_run: bool) -> dict[str, Any]:
        """The target's deploy of ``lineage`` (its JSON document): asked once per run.

        Raises:
            HostError: the connection broke, or the target refused or failed the request.
        """
        with self._deploy_lock:
            found = self._deploys.get(lineage.name)
            if found is None:
                try:
                    found = self._deploy(lineage, force, dry_run)
                except FanoutError as e:
                    found = e
                self._deploys[lineage.name] = found
        if isinstance(found, FanoutError):
            raise found
        return found

    def _deploy(self, lineage: Lineage, force: bool, dry_run: bool) -> dict[str, Any]:
        pems = {part.value: base64.b64encode(lineage.pems[part]).decode("ascii") for part in Part}
        args = {
            "certificate": lineage.name,
            "pems": pems,
            "force": force,
            "dry_run": dry_run,
        }
        try:
            document = self.call("deploy", args, DEPLOY_TIMEOUT)
        except RemoteFailure as e:
            raise HostError(
                f"{self.where} refused {lineage.name}: {printable(e.message)}"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("consumers"), list):
            raise HostError(f"{self.where}: its answer is not a deploy document")
        return document


def session_for(host: Host, control_path: str) -> Session:
    """The session a run opens to ``host``: receive's for a ``mode: receive`` host, else the
    agent's."""
    if host.mode == "receive":
        return ReceiveSession(host, control_path)
    return Session(host, control_path)
