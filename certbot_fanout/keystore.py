"""Placed files that are not PEM: the certificate alone as DER, and a PKCS#12 keystore.

A PKCS#12 file (``content: pkcs12``) holds the lineage's key, its certificate (named by the
alias) and its chain, in the order of ``chain.pem``, encrypted with a password read from a
file only root can read (:func:`certbot_fanout.password.read_password`). The password is
only ever in this process's memory: never in argv, the environment, a log or a message.

Two encryptions: the modern one (the default) is PBES2, with PBKDF2-HMAC-SHA256 and
AES-256-CBC, for the key and the certificates, and an HMAC-SHA256 MAC; the legacy one
(``pkcs12_legacy: true``) is PBE-SHA1-3DES for both, with an HMAC-SHA1 MAC, for readers that
know nothing newer (Java before 8u301 and 11.0.12, Windows before Server 2019).

A keystore written twice holds different bytes (random salts and IVs), so whether the file
at a path is already what a deploy would write is decided by what it holds
(:class:`KeystoreMatch`, the :attr:`certbot_fanout.files.Desired.same_content` of a keystore):
it must decrypt with the password (its MAC checks), and hold the same key, certificate,
alias and chain (in order), with the same encryption. cryptography does not say how a file it
loads is encrypted, so :func:`encryption_of` reads the few DER structures on the way to the
algorithm identifiers itself (bounded: a fixed path through the structure, each length
checked against what holds it): the MAC's digest, and the algorithm of each encrypted
certificate bag and of each shrouded key bag, with PBES2's key derivation, PRF and cipher.
The iteration counts are read too, and a file that asks for more than
:data:`MAX_ITERATIONS` is never decrypted (a service user who can write the directory must
not be able to make every ``status`` spin for an hour); salts and counts are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certbot_fanout.errors import PlacementError
from certbot_fanout.lineage import Lineage, split_pem_certs
from certbot_fanout.model import Keystore, Part
from certbot_fanout.password import read_password

# The KDF rounds this module writes, and the most it decrypts (the MAC's, each bag's).
KDF_ROUNDS = 50_000
MAX_ITERATIONS = 1_000_000

_DER = serialization.Encoding.DER
_PBES = pkcs12.PBES

# The object identifiers on the way to a PKCS#12 file's algorithms (RFC 7292, RFC 8018).
_DATA = "1.2.840.113549.1.7.1"
_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
_SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_SHA1 = "1.2.840.113549.2.7"  # PBKDF2's PRF when none is named
_PKCS12_PBE = "1.2.840.113549.1.12.1."  # pbeWithSHAAnd... : (salt, iterations)

# DER tags.
_INTEGER, _OCTETS, _OID, _SEQUENCE, _EXPLICIT0 = 0x02, 0x04, 0x06, 0x30, 0xA0


def der_certificate(lineage: Lineage) -> bytes:
    """The lineage's certificate alone, DER-encoded (``content: der``)."""
    return x509.load_pem_x509_certificate(lineage.pems[Part.CERT]).public_bytes(_DER)


@dataclass(frozen=True)
class _Contents:
    """What a keystore holds, as comparable values."""

    key: bytes  # PKCS#8 DER
    cert: bytes
    alias: bytes | None
    chain: tuple[tuple[bytes, bytes | None], ...]  # each certificate's DER and friendly name


def _encryption(legacy: bool, password: bytes) -> serialization.KeySerializationEncryption:
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(KDF_ROUNDS)
    if legacy:
        # SHA-1 because the readers that need the legacy encryption know no other MAC.
        legacy_mac = hashes.SHA1()  # noqa: S303
        builder = builder.key_cert_algorithm(_PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
            legacy_mac
        )
    else:
        builder = builder.key_cert_algorithm(_PBES.PBESv2SHA256AndAES256CBC).hmac_hash(
            hashes.SHA256()
        )
    return builder.build(password)


@dataclass(frozen=True)
class Pkcs12File:
    """A keystore to place: its bytes, and the test of whether a file already holds it."""

    data: bytes
    same_content: KeystoreMatch


def build_pkcs12(lineage: Lineage, keystore: Keystore) -> Pkcs12File:
    """The PKCS#12 file of ``lineage`` that ``keystore`` describes, with its comparison.

    Raises:
        PlacementError: the password file is not fit (see
            :func:`certbot_fanout.password.read_password`), or the
            lineage's key cannot go into a PKCS#12 file.
    """
    password = read_password(keystore.password_file)
    alias = (keystore.alias or lineage.name).encode()
    key = serialization.load_pem_private_key(lineage.pems[Part.PRIVKEY], password=None)
    cert = x509.load_pem_x509_certificate(lineage.pems[Part.CERT])
    chain = split_pem_certs(lineage.pems[Part.CHAIN])
    try:
        data = pkcs12.serialize_key_and_certificates(
            alias,
            key,  # type: ignore[arg-type]  # a lineage holds RSA or EC keys
            cert,
            chain,
            _encryption(keystore.legacy, password),
        )
    except (TypeError, ValueError) as e:
        raise PlacementError(f"cannot build the PKCS#12 file: {e}") from None
    expected = _Contents(
        key=_key_der(key),
        cert=cert.public_bytes(_DER),
        alias=alias,
        chain=tuple((c.public_bytes(_DER), None) for c in chain),
    )
    algorithms = encryption_of(data)
    assert algorithms is not None, "a keystore this module wrote must be readable by it"
    return Pkcs12File(data, KeystoreMatch(expected, algorithms.algorithms, password))


def _key_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        _DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class KeystoreMatch:
    """Whether a file's bytes are a keystore holding ``expected``, encrypted as
    ``algorithms`` say, under the password (which no repr shows)."""

    expected: _Contents = field(repr=False)
    algorithms: tuple[str, ...]
    password: bytes = field(repr=False)

    def __call__(self, data: bytes) -> bool:
        found = encryption_of(data)
        if found is None or found.algorithms != self.algorithms:
            return False
        if max(found.iterations, default=0) > MAX_ITERATIONS:
            return False
        try:
            loaded = pkcs12.load_pkcs12(data, self.password)
            if loaded.key is None or loaded.cert is None:
                return False
            held = _Contents(
                key=_key_der(loaded.key),
                cert=loaded.cert.certificate.public_bytes(_DER),
                alias=loaded.cert.friendly_name,
                chain=tuple(
                    (c.certificate.public_bytes(_DER), c.friendly_name)
                    for c in loaded.additional_certs
                ),
            )
        except (ValueError, TypeError):  # wrong password, corrupt, an unsupported key
            return False
        return held == self.expected


@dataclass(frozen=True)
class Encryption:
    """How a PKCS#12 file is protected: its algorithms, in the order met (``mac:OID``, then
    ``certs:ALG`` for each encrypted part and ``key:ALG`` for each shrouded key), and every
    iteration count on the way."""

    algorithms: tuple[str, ...]
    iterations: tuple[int, ...]


class _Malformed(Exception):
    """Not the DER this reader expects."""


def encryption_of(data: bytes) -> Encryption | None:
    """How the PKCS#12 file ``data`` is encrypted; None when it is not DER PKCS#12 as this
    reader knows it (then it is not what a deploy would write)."""
    algorithms: list[str] = []
    iterations: list[int] = []
    try:
        pfx = _children(data, _one(data, 0, len(data), _SEQUENCE))
        if len(pfx) < 2:  # (version, authSafe[, macData])
            raise _Malformed
        content_type, auth_safe = _content_info(data, pfx[1])
        if content_type != _DATA:
            raise _Malformed  # a public-key-protected PFX: not one this module writes
        if len(pfx) > 2:
            algorithms.append("mac:" + _mac(data, pfx[2], iterations))
        infos = _children(data, _one(data, *auth_safe, _SEQUENCE))
        for info in infos:
            kind, body = _content_info(data, info)
            if kind == _ENCRYPTED_DATA:
                algorithms.append("certs:" + _encrypted_data(data, body, iterations))
            elif kind == _DATA:
                for bag in _children(data, _one(data, *body, _SEQUENCE)):
                    shrouded = _shrouded_key(data, bag, iterations)
                    if shrouded is not None:
                        algorithms.append("key:" + shrouded)
            else:
                raise _Malformed
    except _Malformed:
        return None
    return Encryption(tuple(algorithms), tuple(iterations))


_Span = tuple[int, int]  # the start and end of a value's contents in the buffer


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The tag, the start and the end of the contents of the value at ``pos`` (DER: definite
    lengths only), which must end by ``end``."""
    if pos + 2 > end:
        raise _Malformed
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _Malformed  # a high tag number: none on this path
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _Malformed  # indefinite (BER), or longer than any file read
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _Malformed
    return tag, pos, pos + length


def _one(buf: bytes, start: int, end: int, tag: int) -> _Span:
    """The contents of the single value with ``tag`` that fills ``buf[start:end]``."""
    found, body, stop = _tlv(buf, start, end)
    if found != tag or stop != end:
        raise _Malformed
    return body, stop


def _children(buf: bytes, span: _Span) -> list[tuple[int, int, int]]:
    """The values in a constructed value's contents, as (tag, start, end)."""
    out = []
    pos, end = span
    while pos < end:
        tag, body, stop = _tlv(buf, pos, end)
        out.append((tag, body, stop))
        pos = stop
    return out


def _expect(item: tuple[int, int, int], tag: int) -> _Span:
    if item[0] != tag:
        raise _Malformed
    return item[1], item[2]


def _oid(buf: bytes, item: tuple[int, int, int]) -> str:
    start, end = _expect(item, _OID)
    if start == end:
        raise _Malformed
    arcs: list[int] = []
    value = 0
    for byte in buf[start:end]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if buf[end - 1] & 0x80:
        raise _Malformed
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _integer(buf: bytes, item: tuple[int, int, int]) -> int:
    start, end = _expect(item, _INTEGER)
    if not 0 < end - start <= 8:
        raise _Malformed
    return int.from_bytes(buf[start:end], "big", signed=True)


def _content_info(buf: bytes, item: tuple[int, int, int]) -> tuple[str, _Span]:
    """A ContentInfo's type, and its content: for data, the OCTET STRING's contents; for
    encrypted data, the EncryptedData sequence's."""
    parts = _children(buf, _expect(item, _SEQUENCE))
    if len(parts) != 2:
        raise _Malformed
    kind = _oid(buf, parts[0])
    inner = _children(buf, _expect(parts[1], _EXPLICIT0))
    if len(inner) != 1:
        raise _Malformed
    return kind, _expect(inner[0], _OCTETS if kind == _DATA else _SEQUENCE)


def _algorithm(buf: bytes, item: tuple[int, int, int], iterations: list[int]) -> str:
    """An encryption AlgorithmIdentifier in words: its OID, and for PBES2 the key
    derivation, its PRF and the cipher; the iteration count goes to ``iterations``."""
    parts = _children(buf, _expect(item, _SEQUENCE))
    if not parts:
        raise _Malformed
    oid = _oid(buf, parts[0])
    if oid.startswith(_PKCS12_PBE):
        params = _children(buf, _expect(parts[1], _SEQUENCE)) if len(parts) > 1 else []
        if len(params) != 2:  # (salt, iterations)
            raise _Malformed
        iterations.append(_integer(buf, params[1]))
        return oid
    if oid != _PBES2 or len(parts) != 2:
        return oid
    kdf_and_cipher = _children(buf, _expect(parts[1], _SEQUENCE))
    if len(kdf_and_cipher) != 2:
        raise _Malformed
    kdf = _children(buf, _expect(kdf_and_cipher[0], _SEQUENCE))
    cipher = _children(buf, _expect(kdf_and_cipher[1], _SEQUENCE))
    if len(kdf) != 2 or not cipher or _oid(buf, kdf[0]) != _PBKDF2:
        raise _Malformed
    # PBKDF2-params: salt, iterationCount, keyLength OPTIONAL, prf DEFAULT hmacWithSHA1
    kdf_params = _children(buf, _expect(kdf[1], _SEQUENCE))
    if len(kdf_params) < 2:
        raise _Malformed
    iterations.append(_integer(buf, kdf_params[1]))
    prf = _HMAC_SHA1
    rest = [p for p in kdf_params[2:] if p[0] == _SEQUENCE]
    if rest:
        prf = _oid(buf, _children(buf, _expect(rest[0], _SEQUENCE))[0])
    return f"{oid}({_PBKDF2},{prf},{_oid(buf, cipher[0])})"


def _mac(buf: bytes, item: tuple[int, int, int], iterations: list[int]) -> str:
    """MacData: the digest's OID; its iteration count (default 1) to ``iterations``."""
    parts = _children(buf, _expect(item, _SEQUENCE))
    if len(parts) < 2:  # (mac, macSalt[, iterations])
        raise _Malformed
    digest_info = _children(buf, _expect(parts[0], _SEQUENCE))
    if not digest_info:
        raise _Malformed
    algorithm = _children(buf, _expect(digest_info[0], _SEQUENCE))
    if not algorithm:
        raise _Malformed
    iterations.append(_integer(buf, parts[2]) if len(parts) > 2 else 1)
    return _oid(buf, algorithm[0])


def _encrypted_data(buf: bytes, span: _Span, iterations: list[int]) -> str:
    """EncryptedData: version, EncryptedContentInfo (type, algorithm, [0] contents)."""
    parts = _children(buf, span)
    if len(parts) < 2:
        raise _Malformed
    info = _children(buf, _expect(parts[1], _SEQUENCE))
    if len(info) < 2:
        raise _Malformed
    return _algorithm(buf, info[1], iterations)


def _shrouded_key(buf: bytes, item: tuple[int, int, int], iterations: list[int]) -> str | None:
    """A SafeBag's key encryption, when it is a shrouded key bag; None for any other bag."""
    parts = _children(buf, _expect(item, _SEQUENCE))
    if len(parts) < 2 or _oid(buf, parts[0]) != _SHROUDED_KEY_BAG:
        return None
    value = _children(buf, _expect(parts[1], _EXPLICIT0))
    if len(value) != 1:
        raise _Malformed
    encrypted = _children(buf, _expect(value[0], _SEQUENCE))
    if not encrypted:
        raise _Malformed
    return _algorithm(buf, encrypted[0], iterations)
