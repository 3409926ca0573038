"""``certbot-fanout receive``: the target's end of a least-privilege host (``mode: receive``).

A target with certbot-fanout installed can restrict the controller's key, in
``authorized_keys``, to::

    command="certbot-fanout receive",restrict ssh-ed25519 AAAA... certbot-fanout@controller

Whatever the controller asks ssh to run, sshd runs only this, with no forwarding, no agent,
no pty. It reads the *target's own* map (``--config``, as every command does, checked the same
way: root's, not writable by anyone else) and speaks :mod:`certbot_fanout.wire` on
stdin/stdout:

- it says first ``{"hello": PROTOCOL, "mode": "receive", "certificates": [...]}``: the lineages
  its map uses, so the controller hands over those and no others;
- each request ``{"id": N, "op": "deploy", "args": {"certificate": NAME, "pems": {PART:
  BASE64}, "force": BOOL, "dry_run": BOOL}}`` is a lineage's four PEM parts, checked as a
  lineage read from disk is (the key matches the certificate, fullchain is cert then chain),
  and deployed to the map's consumers of it, under the target's lock and into its state file;
- the answer is the deploy's JSON document (what ``deploy --json`` prints).

So the controller can only hand over lineages this map uses; the paths, owners, modes, tests,
reloads and verification are this map's. The lineage stays in memory: it is written only where
the map places it.
"""

from __future__ import annotations

import base64
import binascii
import sys
from dataclasses import dataclass
from typing import IO, Any

from certbot_fanout import __version__, wire
from certbot_fanout.deploy import DeployOptions, deploy_locked
from certbot_fanout.errors import FanoutError
from certbot_fanout.lineage import lineage_dir, lineage_from_pems
from certbot_fanout.model import Config, Part
from certbot_fanout.render_deploy import render_deploy_document


@dataclass(frozen=True)
class ReceiveOptions:
    config_dir: str  # where this host's lineages would be (for link: and certbot's own dirs)
    lock_path: str | None
    state_path: str | None


def serve(config: Config, options: ReceiveOptions, inp: IO[bytes], out: IO[bytes]) -> int:
    """Answer the controller until it closes the channel. 0 at a clean end; 1 when the other
    end broke the exchange. ``out`` carries frames only (the command sends anything printed
    to stderr)."""
    wire.write_frame(
        out,
        {
            "hello": wire.PROTOCOL,
            "mode": "receive",
            "version": __version__,
            "certificates": list(config.certificates),
        },
    )
    while True:
        try:
            message = wire.read_frame(inp)
        except wire.WireError as e:
            print(f"certbot-fanout receive: {e}", file=sys.stderr)
            return 1
        if message is None:
            return 0
        ident = message.get("id")
        try:
            result = _answer(config, options, message)
        except FanoutError as e:
            wire.write_frame(out, _error(ident, "refused", str(e)))
            continue
        wire.write_frame(out, {"id": ident, "ok": True, "result": result})


def _error(ident: object, kind: str, text: str) -> dict[str, Any]:
    return {"id": ident, "ok": False, "error": {"type": kind, "message": text}}


def _answer(config: Config, options: ReceiveOptions, message: dict[str, Any]) -> Any:
    if message.get("op") != "deploy":
        raise FanoutError(f"receive does only 'deploy', not {str(message.get('op'))[:40]!r}")
    args = message.get("args")
    if not isinstance(args, dict):
        raise FanoutError("a deploy request without its arguments")
    name = args.get("certificate")
    if not isinstance(name, str) or name not in config.certificates:
        raise FanoutError(
            f"this host's map ({config.source}) has no consumer of {str(name)[:80]!r}; "
            "nothing was placed"
        )
    linked = [c.name for c in config.consumers_for(name) if any(f.link for f in c.files)]
    if linked:
        raise FanoutError(
            f"{', '.join(linked)} in this host's map link into live/{name}, but a lineage "
            "handed over is not written to this host's live/ (it is kept in memory): place "
            "copies instead (drop 'link'); nothing was placed"
        )
    pems = _pems(args.get("pems"))
    lineage = lineage_from_pems(name, lineage_dir(options.config_dir, name), pems)
    deploy_options = DeployOptions(
        force=args.get("force") is True, dry_run=args.get("dry_run") is True
    )
    result = deploy_locked(
        config, lineage, deploy_options, lock_path=options.lock_path, state_path=options.state_path
    )
    notifies = any(c.consumer.notify for c in result.consumers)
    if not deploy_options.dry_run and notifies and options.state_path:
        from certbot_fanout.notify import notify_deploy, summary_lines

        # As a local deploy does: this map's notifiers hear of this host's consumers.
        for line in summary_lines(notify_deploy(result, options.state_path)):
            print(f"certbot-fanout receive: notify: {line}", file=sys.stderr)
    return render_deploy_document(result)


def _pems(value: object) -> dict[Part, bytes]:
    if not isinstance(value, dict) or set(value) != {p.value for p in Part}:
        raise FanoutError(
            "a deploy request must carry exactly the parts " + ", ".join(p.value for p in Part)
        )
    try:
        return {Part(k): base64.b64decode(v, validate=True) for k, v in value.items()}
    except (binascii.Error, TypeError, ValueError):
        raise FanoutError("a part of the lineage is not base64") from None
