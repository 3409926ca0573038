"""What the renderers of more than one command share: plural words, and the JSON pieces
(a certificate, a placed file, a probed endpoint) that deploy's and status's documents both
hold. Pure: no file system, no clock, no sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from certbot_fanout.escape import printable

if TYPE_CHECKING:
    from certbot_fanout.deploy import FileResult
    from certbot_fanout.lineage import CertInfo
    from certbot_fanout.model import Consumer
    from certbot_fanout.verify import AddressResult, EndpointResult

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
        "key_type": info.key_type.value if info.key_type else None,
    }


def consumer_label(consumer: Consumer) -> str:
    """The consumer's name, and the host it lives on when that is not this one."""
    host = consumer.host
    return printable(consumer.name) + (f" @{printable(host)}" if host else "")


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
        "family": e.endpoint.family.value if e.endpoint.family else None,
        "federation": e.endpoint.federation,
        "via": "host" if e.endpoint.via_host else "here",
        "key_type": e.key_type.value if e.key_type else None,
        "resolution": e.resolution,
        "warnings": list(e.warnings),
        "addresses": [address_document(a) for a in e.addresses],
    }


def address_document(a: AddressResult) -> dict[str, Any]:
    """One address of an endpoint: what it served (and the leaf's key type), or why not."""
    key_type = a.served.key_type if a.served else None
    return {
        "host": a.host,
        "address": a.address,
        "port": a.port,
        "server_name": a.server_name,
        "ok": a.ok,
        "served": cert_document(a.served),
        "error": a.error,
        "legacy_protocol": a.legacy_protocol,
        "key_type": key_type.value if key_type else None,
    }
