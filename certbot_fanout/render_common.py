"""What the renderers of more than one command share: plural words, and the JSON pieces
(a certificate, a placed file, a probed endpoint) that deploy's and status's documents both
hold. Pure: no file system, no clock, no sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certbot_fanout.deploy import EndpointResult, FileResult
    from certbot_fanout.lineage import CertInfo

# How a moment is written in every JSON document.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def plural(n: int, word: str) -> str:
    """``1 consumer``, ``2 consumers``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cert_document(info: CertInfo | None) -> dict[str, Any] | None:
    """A certificate as the JSON documents give it (``null`` for none)."""
    if info is None:
        return None
    return {
        "subject": info.subject,
        "serial": info.serial,
        "not_after": info.not_after.strftime(ISO_FORMAT),
        "sha256": info.fingerprint,
        "names": list(info.names),
    }


def file_document(f: FileResult) -> dict[str, Any]:
    """A consumer's file: whether it was (or would be) placed, why, and any warning."""
    return {"path": f.path, "changed": f.changed, "reasons": list(f.reasons), "warning": f.warning}


def endpoint_document(e: EndpointResult) -> dict[str, Any]:
    """A probed endpoint: what it served, how long proving it took, or why it failed."""
    return {
        "host": e.endpoint.host,
        "port": e.endpoint.port,
        "server_name": e.server_name,
        "ok": e.ok,
        "seconds": round(e.seconds, 3),
        "attempts": e.attempts,
        "served": cert_document(e.served),
        "error": e.error,
        "legacy_protocol": e.legacy_protocol,
    }
