"""A Certbot lineage (``live/NAME``): its files, checked for consistency, and what they hold."""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import stat
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
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
    return lineage_from_pems(name, live_dir, pems)


def lineage_from_pems(name: str, live_dir: str, pems: dict[Part, bytes]) -> Lineage:
    """The lineage ``name`` (whose files would be in ``live_dir``) from its PEM parts, checked
    as :func:`read_lineage` checks the files (``receive`` gets them over ssh, not from disk).

    Raises:
        LineageError: a part is missing, too large or empty, or the parts do not agree.
    """
    for part, filename in _PEM_FILES.items():
        data = pems.get(part)
        if data is None or not data.strip():
            raise LineageError(f"{live_dir}/{filename}: missing or empty")
        if len(data) > MAX_PEM_BYTES:
            raise LineageError(f"{live_dir}/{filename}: larger than {MAX_PEM_BYTES} bytes")
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


# -- the served chain, judged as a client judges it --------------------------------------------
#
# OpenSSL, Go and browsers do not read the certificates a server sends as a list: they build a
# path from the leaf through whatever was sent, in any order, each issuer found by its name and
# checked by its signature, up to a root of their own trust store (a root the server sends is
# ignored). A missing intermediate fails every client that does not fetch it itself (browsers
# may, through AIA; OpenSSL, Go, mail and chat servers do not). So the chain is judged here the
# same way, against the path chain.pem gives, and its order and extras only warn.

# cryptography >= 40 checks a signature against an issuer; Debian 12 ships 38, where names and
# key identifiers are all there is to go by (as OpenSSL's own issuer check goes by them).
_SIGNATURE_CHECK = hasattr(x509.Certificate, "verify_directly_issued_by")

_LEAF_ALONE = (
    "serves cert.pem without the chain: no intermediate certificate was sent "
    "(point the service at fullchain.pem)"
)


@dataclass(frozen=True)
class ChainVerdict:
    """What a client makes of the chain an endpoint sent.

    ``problem``: the endpoint fails (clients reject the chain, or it is not the lineage's).
    ``warning``: it passes, but something in it is worth fixing. Both None: all is well.
    """

    problem: str | None = None
    warning: str | None = None


def chain_verdict(
    sent: tuple[bytes, ...], lineage: Lineage, now: datetime.datetime
) -> ChainVerdict:
    """Judge the chain a server sent (DER, leaf first) against the lineage's chain.pem, as
    clients judge it at ``now`` (timezone-aware): every intermediate of chain.pem's path from
    the leaf must be sent and valid, in any order; a root and unrelated extras are harmless.
    An empty ``sent`` (this Python cannot tell what was sent) passes.

    The verdicts and why are in docs/monitoring.md ("How the served chain is judged").
    """
    if not sent:
        return ChainVerdict()
    leaf = _parse(sent[0])
    if leaf is None:
        return ChainVerdict(problem="sends a leaf that cannot be parsed as a certificate")
    judge = _ChainJudge(leaf, _needed(leaf, lineage.chain_der), _Offered.of(sent[1:]), now)
    try:
        problem = judge.gap() or judge.out_of_validity()
        return ChainVerdict(problem=problem) if problem else ChainVerdict(warning=judge.warning())
    except ValueError as e:  # a name or an extension that parsed lazily, and badly
        return ChainVerdict(problem=f"sends a certificate that cannot be read ({e})")


def chain_problem(sent: tuple[bytes, ...], lineage: Lineage) -> str | None:
    """What is wrong with the chain a server sent, judged now (``chain_verdict``'s problem)."""
    return chain_verdict(sent, lineage, datetime.datetime.now(datetime.UTC)).problem


def _parse(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` issued ``cert``: by name, and by signature (or key identifiers)."""
    return cert.issuer == issuer.subject and _signed_by(cert, issuer, _SIGNATURE_CHECK)


# A verdict asks the same few questions many times (is this a root? did it issue that?), and
# every deploy and status asks them again of the same certificates (equal and hashed by their
# DER): a signature check costs 50-100 us, an answer from here well under 1 us.
@functools.lru_cache(maxsize=1024)
def _signed_by(cert: x509.Certificate, issuer: x509.Certificate, by_signature: bool) -> bool:
    if not by_signature:
        return _key_ids_agree(cert, issuer)
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _key_ids_agree(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """The authority key identifier of ``cert`` is the issuer's subject key identifier, or
    one of them is missing (then the names, already compared, decide)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return True
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def _self_signed(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


def _path(leaf: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
    """The issuers a client chains the leaf through, from ``pool``, up to (not including) a
    self-signed root."""
    path: list[x509.Certificate] = []
    child = leaf
    while True:
        issuer = next(
            (c for c in pool if c != leaf and c not in path and _issued_by(child, c)), None
        )
        if issuer is None or _self_signed(issuer):
            return path
        path.append(issuer)
        child = issuer


def _needed(leaf: x509.Certificate, chain_der: tuple[bytes, ...]) -> tuple[x509.Certificate, ...]:
    """The intermediates a client needs, in path order: chain.pem's path from the leaf, then
    what else chain.pem holds but its root (certbot's chain.pem holds nothing else)."""
    chain = [c for c in map(_parse, chain_der) if c is not None]
    path = _path(leaf, chain)
    return (*path, *(c for c in chain if c not in path and not _self_signed(c)))


def _named(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    der = cert.public_bytes(serialization.Encoding.DER)
    return f"{subject} (SHA-256 {fingerprint(der)[:16]}...)"


def _validity_problem(cert: x509.Certificate, now: datetime.datetime) -> tuple[str, str] | None:
    """What is wrong with ``cert`` at ``now`` (``expired ...``, ``is not valid before ...``)
    and what chain.pem holding it means; None while it is valid."""
    try:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        start = cert.not_valid_before.replace(tzinfo=datetime.UTC)
        end = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    if now > end:
        return (
            f"expired {_days(now - end)} ago ({end:%Y-%m-%d %H:%M:%S} UTC)",
            "renew the certificate to get a current chain",
        )
    if now < start:
        return (
            f"is not valid before {start:%Y-%m-%d %H:%M:%S} UTC (in {_days(start - now)})",
            "clients reject the chain until then",
        )
    return None


def _days(span: datetime.timedelta) -> str:
    return f"{span.total_seconds() / 86400:.1f} days"


@dataclass(frozen=True)
class _Offered:
    """The certificates a server sent after its leaf: once each, in the order sent."""

    certs: tuple[x509.Certificate, ...]
    unparseable: int

    @classmethod
    def of(cls, ders: tuple[bytes, ...]) -> _Offered:
        parsed = [_parse(der) for der in ders]
        certs = [c for c in parsed if c is not None]
        unique = tuple(c for i, c in enumerate(certs) if c not in certs[:i])
        return cls(unique, parsed.count(None))


@dataclass(frozen=True)
class _ChainJudge:
    """The path a client needs (``needed``, from chain.pem) against what the server sent."""

    leaf: x509.Certificate
    needed: tuple[x509.Certificate, ...]
    offered: _Offered
    now: datetime.datetime

    def gap(self) -> str | None:
        """The first intermediate of the path that was not sent, said as what is wrong."""
        child = self.leaf
        for want in self.needed:
            if want not in self.offered.certs:
                return self._gap_at(child, want)
            child = want
        return None

    def _gap_at(self, child: x509.Certificate, want: x509.Certificate) -> str:
        intermediates = [c for c in self.offered.certs if c != self.leaf and not _self_signed(c)]
        if not intermediates:
            return _LEAF_ALONE
        stand_in = self._stand_in(child)
        if stand_in is not None:
            return self._different(stand_in, want, child)
        present = [c for c in self.needed if c in self.offered.certs]
        if present:
            return (
                f"sends {len(present)} of the {len(self.needed)} intermediates of chain.pem; "
                f"missing {_named(want)}, the issuer of {self._label(child)}"
            )
        return self._different(intermediates[0], want, child)

    def _stand_in(self, child: x509.Certificate) -> x509.Certificate | None:
        """What was sent in place of the issuer of ``child``: a certificate by that name that
        is not chain.pem's (one that issued ``child`` first)."""
        named = [
            c for c in self.offered.certs if c not in self.needed and c.subject == child.issuer
        ]
        issuing = [c for c in named if _issued_by(child, c)]
        return next(iter(issuing or named), None)

    def _different(
        self, got: x509.Certificate, want: x509.Certificate, child: x509.Certificate
    ) -> str:
        if _issued_by(child, got):
            how = (
                f"it did issue {self._label(child)} (the same name and key) but is another "
                "certificate, re-issued or cross-signed, so the path is not the lineage's"
            )
        else:
            how = f"it did not issue {self._label(child)}: an old or different chain"
        validity = _validity_problem(got, self.now)
        also = f"; it {validity[0]}" if validity else ""
        return f"sends intermediate {_named(got)} where chain.pem has {_named(want)}: {how}{also}"

    def out_of_validity(self) -> str | None:
        """The first intermediate of the path (all sent, all chain.pem's) that is expired or
        not valid yet: clients reject the chain whatever its order."""
        for cert in self.needed:
            validity = _validity_problem(cert, self.now)
            if validity:
                what, advice = validity
                return (
                    f"sends intermediate {_named(cert)}, which {what}; "
                    f"it is chain.pem's own: {advice}"
                )
        return None

    def warning(self) -> str | None:
        notes = [note for note in (self._order_note(), self._extras_note()) if note]
        return "; ".join(notes) or None

    def _root(self) -> x509.Certificate | None:
        """The self-signed root the server sent on top of the path, if it did."""
        top = self.needed[-1] if self.needed else self.leaf
        return next((c for c in self.offered.certs if _self_signed(c) and _issued_by(top, c)), None)

    def _order_note(self) -> str | None:
        root = self._root()
        path = [*self.needed, *([root] if root is not None else [])]
        sent = [c for c in self.offered.certs if c in path]
        if sent == path:
            return None
        return (
            f"sends the right intermediates out of order ({_subjects(sent)}; the path from the "
            f"leaf is {_subjects(path)}): OpenSSL, Go and browsers reorder them, but TLS 1.2 "
            "wants each to certify the one before it, and a strict client may refuse"
        )

    def _extras_note(self) -> str | None:
        root = self._root()
        extras = [_named(c) for c in self.offered.certs if c not in self.needed and c != root]
        extras += ["an unparseable certificate"] * self.offered.unparseable
        if not extras:
            return None
        return (
            f"also sends {_count(len(extras), 'certificate')} that no path from the leaf uses: "
            f"{', '.join(extras)} (clients ignore them; each handshake carries them)"
        )

    def _label(self, child: x509.Certificate) -> str:
        return "the leaf" if child == self.leaf else child.subject.rfc4514_string()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _subjects(certs: list[x509.Certificate]) -> str:
    return ", ".join(c.subject.rfc4514_string() for c in certs)
