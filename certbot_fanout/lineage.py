"""A Certbot lineage (``live/NAME``): its files, checked for consistency, and what they hold."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID

from certbot_fanout.errors import LineageError
from certbot_fanout.model import KeyType, Part

MAX_PEM_BYTES = 1 << 20

_PEM_FILES = {
    Part.CERT: "cert.pem",
    Part.CHAIN: "chain.pem",
    Part.FULLCHAIN: "fullchain.pem",
    Part.PRIVKEY: "privkey.pem",
}
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

# A certificate found on a host or served by a peer can be odd (a zero or negative serial, a
# non-canonical encoding), and cryptography warns about it on every parse and every read of the
# serial. certbot-fanout only summarises and compares certificates, so those warnings, raised
# where this module and discover parse them, never reach the admin's stderr. A filter by module
# rather than catch_warnings(): status and deploy parse in worker threads, where
# catch_warnings() (which swaps the process-wide filter list) is not safe.
warnings.filterwarnings(
    "ignore",
    category=CryptographyDeprecationWarning,
    module=r"certbot_fanout\.(lineage|discover)\Z",
)


@dataclass(frozen=True)
class CertInfo:
    """What a sysadmin needs to tell two certificates apart."""

    subject: str
    serial: str
    not_after: datetime.datetime
    fingerprint: str
    names: tuple[str, ...] = ()
    key_type: KeyType | None = None  # None: neither RSA nor ECDSA (or unparseable)

    def describe(self) -> str:
        return (
            f"subject {self.subject}, serial {self.serial}, "
            f"not after {self.not_after:%Y-%m-%d %H:%M:%S} UTC, SHA-256 {self.fingerprint}"
        )


@dataclass(frozen=True)
class Lineage:
    """The current files of one lineage, read once through ``live/NAME``."""

    name: str
    live_dir: str
    pems: dict[Part, bytes]
    cert: CertInfo
    chain_der: tuple[bytes, ...] = ()

    def content(self, parts: tuple[Part, ...]) -> bytes:
        """The bytes of a placed file: the parts in order, each ending with a newline."""
        chunks = []
        for part in parts:
            data = self.pems[part]
            chunks.append(data if data.endswith(b"\n") else data + b"\n")
        return b"".join(chunks)

    def live_path(self, part: Part) -> str:
        return os.path.join(self.live_dir, _PEM_FILES[part])

    @property
    def default_server_name(self) -> str | None:
        return self.cert.names[0] if self.cert.names else None


def lineage_dir(config_dir: str, cert_name: str) -> str:
    return os.path.join(config_dir, "live", cert_name)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def serial_hex(serial: int) -> str:
    """A serial number as ``openssl x509 -serial`` prints it: uppercase hex in whole bytes
    (``05``, ``0ABC``), with a minus sign for the negative ones some old certificates have."""
    digits = format(abs(serial), "X")
    return ("-" if serial < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Summarise a certificate; the first name is the common name if it is also a SAN."""
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        sans = list(san.value.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        sans = []
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = [cns[0]] if cns and cns[0] in sans else []
    names += [n for n in sans if n not in names]
    try:
        not_after = cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42 (Debian 12 ships 38)
        not_after = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    return CertInfo(
        subject=cert.subject.rfc4514_string() or "(empty subject)",
        serial=serial_hex(cert.serial_number),
        not_after=not_after,
        fingerprint=fingerprint(der),
        names=tuple(names),
        key_type=key_type_of(cert),
    )


def key_type_of(cert: x509.Certificate) -> KeyType | None:
    """RSA or ECDSA, by the certificate's public key; None for any other kind."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return KeyType.RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        return KeyType.ECDSA
    return None


def cert_info_from_der(der: bytes) -> CertInfo:
    try:
        return cert_info(x509.load_der_x509_certificate(der))
    except ValueError:
        return CertInfo("(unparseable certificate)", "?", datetime.datetime.min, fingerprint(der))


def split_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order."""
    certs = []
    for block in data.split(_PEM_BEGIN)[1:]:
        certs.append(x509.load_pem_x509_certificate(_PEM_BEGIN + block))
    return certs


def _read_pem_file(path: str) -> bytes:
    """At most MAX_PEM_BYTES + 1 bytes of a regular file; a FIFO or device planted in the
    lineage is refused, never waited on (certbot holds its lock while its hooks run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise LineageError(f"{path}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LineageError(f"{path}: not a regular file")
        try:
            return f.read(MAX_PEM_BYTES + 1)
        except OSError as e:
            raise LineageError(f"{path}: cannot read: {e.strerror}") from None


def read_lineage(live_dir: str) -> Lineage:
    """Read and check ``live/NAME``.

    Raises:
        LineageError: a file is missing or unreadable, the key does not match the certificate,
            or fullchain is not cert followed by chain.
    """
    live_dir = os.path.normpath(live_dir)
    name = os.path.basename(live_dir)
    if not os.path.isdir(live_dir):
        raise LineageError(f"{live_dir}: no such lineage directory")
    pems: dict[Part, bytes] = {}
    for part, filename in _PEM_FILES.items():
        path = os.path.join(live_dir, filename)
        data = _read_pem_file(path)
        if len(data) > MAX_PEM_BYTES:
            raise LineageError(f"{path}: larger than {MAX_PEM_BYTES} bytes, not a PEM file")
        if not data.strip():
            raise LineageError(f"{path}: empty file")
        pems[part] = data

    try:
        cert = x509.load_pem_x509_certificate(pems[Part.CERT])
    except ValueError as e:
        raise LineageError(f"{live_dir}/cert.pem: not a PEM certificate ({e})") from None
    try:
        chain = split_pem_certs(pems[Part.CHAIN])
        fullchain = split_pem_certs(pems[Part.FULLCHAIN])
    except ValueError as e:
        raise LineageError(f"{live_dir}: chain.pem or fullchain.pem is not PEM ({e})") from None
    if not chain:
        raise LineageError(f"{live_dir}/chain.pem: no PEM certificate in it")
    try:
        key = serialization.load_pem_private_key(pems[Part.PRIVKEY], password=None)
    except (ValueError, TypeError) as e:
        raise LineageError(
            f"{live_dir}/privkey.pem: not an unencrypted PEM private key ({e})"
        ) from None

    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise LineageError(
            f"{live_dir}: privkey.pem does not match cert.pem; refusing to deploy a pair that "
            "no service can load (was the lineage edited by hand?)"
        )
    if not fullchain or fullchain[0].public_bytes(der) != cert.public_bytes(der):
        raise LineageError(f"{live_dir}: fullchain.pem does not start with cert.pem")
    if [c.public_bytes(der) for c in fullchain[1:]] != [c.public_bytes(der) for c in chain]:
        raise LineageError(f"{live_dir}: fullchain.pem is not cert.pem followed by chain.pem")
    return Lineage(
        name=name,
        live_dir=live_dir,
        pems=pems,
        cert=cert_info(cert),
        chain_der=tuple(c.public_bytes(der) for c in chain),
    )


def chain_problem(sent: tuple[bytes, ...], lineage: Lineage) -> str | None:
    """What is wrong with the chain a server sent (DER, leaf first), compared with the
    lineage's chain.pem; None when it sends that chain (a trailing extra, such as a root, is
    harmless) or when the chain it sent is unknown (empty)."""
    if not sent:
        return None
    intermediates = list(sent[1:])
    expected = list(lineage.chain_der)
    if intermediates[: len(expected)] == expected:
        return None
    if not intermediates:
        return (
            "serves cert.pem without the chain: no intermediate certificate was sent "
            "(point the service at fullchain.pem)"
        )
    for i, want in enumerate(expected):
        got = intermediates[i] if i < len(intermediates) else None
        if got == want:
            continue
        wanted = cert_info_from_der(want)
        if got is None:
            return (
                f"sends {len(intermediates)} of the {len(expected)} certificates of chain.pem; "
                f"missing {wanted.subject}"
            )
        sent_info = cert_info_from_der(got)
        return (
            f"sends intermediate {sent_info.subject} (SHA-256 {sent_info.fingerprint[:16]}...) "
            f"where chain.pem has {wanted.subject} (SHA-256 {wanted.fingerprint[:16]}...): "
            "an old or different chain"
        )
    return None  # pragma: no cover - the prefix comparison above returns first
