"""The exchange between a run and the agent it starts on another host, over one ssh channel.

Both ends speak it: the controller (:mod:`certbot_fanout.remote`) and the agent
(:mod:`certbot_fanout.agent`, which runs on the target under its ``python3``). So this module
is standard library only and runs on Python 3.9.

A message is a frame: four bytes of length (big-endian), then that many bytes of a JSON object
in UTF-8, at most :data:`MAX_FRAME` bytes. The agent speaks first, with its hello
(``{"hello": PROTOCOL, ...}``); then each request is ``{"id": N, "op": NAME, "args": {...}}``
and each answer ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false,
"error": {"type": KIND, "message": TEXT}}``. Bytes travel as base64 text. Key material is only
ever inside these frames, in the channel's data stream: never in an argument, the environment,
a log or a file outside the destination's directory.

The values of :mod:`certbot_fanout.files` (a desired file, a snapshot, a difference) cross as
plain objects (:func:`desired_to_wire` and the others below).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import IO, Any

from certbot_fanout import files

PROTOCOL = 1
# A frame holds at most a few keystores and certificates (a snapshot's data is bounded by
# files' own read limit, 1 MiB): anything larger is a broken or hostile peer.
MAX_FRAME = 8 * 1024 * 1024
_HEADER = struct.Struct(">I")


class WireError(Exception):
    """The other end broke the exchange: end of stream, a frame too large, not JSON."""


def write_frame(out: IO[bytes], message: dict[str, Any]) -> None:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise WireError(f"a message of {len(body)} bytes is larger than {MAX_FRAME}")
    out.write(_HEADER.pack(len(body)) + body)
    out.flush()


def read_frame(inp: IO[bytes]) -> dict[str, Any] | None:
    """The next message; None at a clean end of stream (between frames)."""
    header = _read_exactly(inp, _HEADER.size, at_start=True)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise WireError(f"the other end announced a message of {size} bytes (at most {MAX_FRAME})")
    body = _read_exactly(inp, size, at_start=False)
    assert body is not None
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"the other end sent a message that is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise WireError("the other end sent a message that is not a JSON object")
    return message


def _read_exactly(inp: IO[bytes], size: int, *, at_start: bool) -> bytes | None:
    chunks = []
    left = size
    while left:
        chunk = inp.read(left)
        if not chunk:
            if at_start and left == size:
                return None
            raise WireError("the connection ended in the middle of a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def to_b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def from_b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise WireError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def desired_to_wire(desired: files.Desired) -> dict[str, Any]:
    """A desired file, without its ``same_content`` (that test stays with the controller)."""
    return {
        "path": desired.path,
        "uid": desired.uid,
        "gid": desired.gid,
        "mode": desired.mode,
        "data": to_b64(desired.data),
        "target": desired.target,
        "keep_out": list(desired.keep_out),
    }


def desired_from_wire(value: dict[str, Any]) -> files.Desired:
    data = value.get("data")
    return files.Desired(
        path=str(value["path"]),
        uid=int(value["uid"]),
        gid=int(value["gid"]),
        mode=int(value["mode"]),
        data=None if data is None else from_b64(data),
        target=None if value.get("target") is None else str(value["target"]),
        keep_out=tuple(str(p) for p in value.get("keep_out", ())),
    )


def snapshot_to_wire(snap: files.Snapshot) -> dict[str, Any]:
    return {
        "path": snap.path,
        "kind": snap.kind.value,
        "data": to_b64(snap.data),
        "target": snap.target,
        "uid": snap.uid,
        "gid": snap.gid,
        "mode": snap.mode,
        "atime_ns": snap.atime_ns,
        "mtime_ns": snap.mtime_ns,
        "acl": list(snap.acl),
    }


def snapshot_from_wire(value: dict[str, Any]) -> files.Snapshot:
    return files.Snapshot(
        path=str(value["path"]),
        kind=files.Kind(value["kind"]),
        data=from_b64(value.get("data") or ""),
        target=str(value.get("target") or ""),
        uid=int(value["uid"]),
        gid=int(value["gid"]),
        mode=int(value["mode"]),
        atime_ns=int(value["atime_ns"]),
        mtime_ns=int(value["mtime_ns"]),
        acl=tuple(str(a) for a in value.get("acl", ())),
    )
