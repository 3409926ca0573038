"""A throwaway CA and certbot-shaped lineages, for the demo and the tests.

Not for production: keys live in memory and certificates are issued without any check.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Issued:
    """A leaf certificate with its chain and key, as PEM bytes."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class ThrowawayCA:
    """A root and one intermediate, which signs leaves (the shape Let's Encrypt uses)."""

    def __init__(self, label: str = "certbot-fanout throwaway") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._root_key = _key()
        self.root = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{label} root"))
            .issuer_name(_name(f"{label} root"))
            .public_key(self._root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._root_key, hashes.SHA256())
        )
        self._key = _key()
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{label} intermediate"))
            .issuer_name(self.root.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._root_key, hashes.SHA256())
        )

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(_PEM)

    def issue(
        self,
        names: Sequence[str],
        days: float = 90,
        not_before: datetime.datetime | None = None,
    ) -> Issued:
        """Issue a leaf for ``names`` (the first is also the common name)."""
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            cert_pem=cert.public_bytes(_PEM),
            chain_pem=self.intermediate.public_bytes(_PEM),
            key_pem=_key_pem(key),
        )


def write_lineage(config_dir: str, name: str, issued: Issued) -> str:
    """Add ``issued`` as the next version of lineage ``name`` under ``config_dir``, the way
    certbot lays it out: files in ``archive/NAME/`` (``cert1.pem``, ...), relative symlinks in
    ``live/NAME/``, both top directories 0700. Returns the ``live/NAME`` path."""
    archive = os.path.join(config_dir, "archive", name)
    live = os.path.join(config_dir, "live", name)
    for top in ("archive", "live"):
        os.makedirs(os.path.join(config_dir, top), mode=0o700, exist_ok=True)
    os.makedirs(archive, mode=0o755, exist_ok=True)
    os.makedirs(live, mode=0o755, exist_ok=True)
    version = 1
    while os.path.exists(os.path.join(archive, f"cert{version}.pem")):
        version += 1
    contents = {
        "cert": issued.cert_pem,
        "chain": issued.chain_pem,
        "fullchain": issued.fullchain_pem,
        "privkey": issued.key_pem,
    }
    for kind, data in contents.items():
        target = os.path.join(archive, f"{kind}{version}.pem")
        fd = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if kind == "privkey" else 0o644
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        link = os.path.join(live, f"{kind}.pem")
        tmp = link + ".new"
        os.symlink(os.path.join("..", "..", "archive", name, f"{kind}{version}.pem"), tmp)
        os.replace(tmp, link)
    return live
