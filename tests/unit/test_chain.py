"""The served chain judged as clients judge it: a path from the leaf, in any order, checked
against the lineage's chain.pem (``lineage.chain_verdict``).

The certificates are real (a root, two intermediates, a leaf, and the wrong ones a server may
send), every verdict is compared with what ``openssl verify`` makes of the same certificates,
and the order and the root are also sent through real TLS handshakes on loopback.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_fanout import lineage as lineage_module
from certbot_fanout._pki import Issued, write_lineage
from certbot_fanout.lineage import (
    ChainVerdict,
    Lineage,
    chain_problem,
    chain_verdict,
    fingerprint,
    read_lineage,
)
from certbot_fanout.probe import fetch_served
from tests.support.peers import Peer

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
NAME = "chain.test"

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class _Ca:
    cert: x509.Certificate
    key: Key


def _certificate(
    subject: str,
    key: Key,
    issuer: _Ca | None,
    *,
    ca: bool = True,
    valid: tuple[datetime.timedelta, datetime.timedelta] = (-30 * DAY, 365 * DAY),
    key_id_of: Key | None = None,
) -> x509.Certificate:
    """A certificate as a real CA makes it (key identifiers included); ``issuer`` None makes
    it self-signed; ``key_id_of`` forges the subject key identifier of another key."""
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + valid[0])
        .not_valid_after(NOW + valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key((key_id_of or key).public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """root (RSA) -> I1 -> I2 -> the leaf, and what a misconfigured server sends instead."""

    root: x509.Certificate
    i1: x509.Certificate
    i2: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    other_intermediate: x509.Certificate  # of another CA
    other_root: x509.Certificate
    old_i2: x509.Certificate  # I2's name, another key: last year's intermediate
    reissued_i2: x509.Certificate  # I2's name and key, another certificate
    forged_i2: x509.Certificate  # I2's name and key identifier, another key
    expired_i1: x509.Certificate  # I1's name and key, expired yesterday
    future_i1: x509.Certificate  # I1's name and key, valid from tomorrow


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    i1_key, i2_key, leaf_key, other_key, old_key = (_ec_key() for _ in range(5))
    root = _Ca(_certificate("chain test root", root_key, None), root_key)
    i1 = _Ca(_certificate("chain test I1", i1_key, root), i1_key)
    i2 = _Ca(_certificate("chain test I2", i2_key, i1), i2_key)
    other_root = _Ca(_certificate("other root", other_key, None), other_key)
    return Pki(
        root=root.cert,
        i1=i1.cert,
        i2=i2.cert,
        leaf=_certificate(NAME, leaf_key, i2, ca=False, valid=(-DAY, 90 * DAY)),
        leaf_key=leaf_key,
        other_intermediate=_certificate("other intermediate", _ec_key(), other_root),
        other_root=other_root.cert,
        old_i2=_certificate("chain test I2", old_key, i1),
        reissued_i2=_certificate("chain test I2", i2_key, i1, valid=(-2 * DAY, 400 * DAY)),
        forged_i2=_certificate("chain test I2", old_key, i1, key_id_of=i2_key),
        expired_i1=_certificate("chain test I1", i1_key, root, valid=(-400 * DAY, -DAY)),
        future_i1=_certificate("chain test I1", i1_key, root, valid=(DAY, 400 * DAY)),
    )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


def _lineage(pki: Pki, config_dir: Path, chain: tuple[x509.Certificate, ...]) -> Lineage:
    key = pki.leaf_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    issued = Issued(cert_pem=_pem(pki.leaf), chain_pem=_pem(*chain), key_pem=key)
    return read_lineage(write_lineage(str(config_dir), NAME, issued))


def _sent(pki: Pki, *after_leaf: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(DER) for c in (pki.leaf, *after_leaf))


def _fp(cert: x509.Certificate) -> str:
    return fingerprint(cert.public_bytes(DER))[:16]


@dataclass(frozen=True)
class Case:
    """A lineage's chain.pem, what the server sends after the leaf, and the verdict."""

    chain_pem: tuple[str, ...]
    sent: tuple[str, ...]
    verdict: str  # pass, warning or fail
    says: tuple[str, ...] = ()  # in the problem or warning; {i2} is I2's short SHA-256
    openssl_agrees: bool = True  # openssl verify passes exactly when the verdict does


CASES = {
    "the lineage's chain": Case(("i2", "i1"), ("i2", "i1"), "pass"),
    "the root appended": Case(("i2", "i1"), ("i2", "i1", "root"), "pass"),
    "out of order": Case(
        ("i2", "i1"),
        ("i1", "i2"),
        "warning",
        (
            "sends the right intermediates out of order (CN=chain test I1, CN=chain test I2; "
            "the path from the leaf is CN=chain test I2, CN=chain test I1)",
        ),
    ),
    "out of order, the root first": Case(
        ("i2", "i1"),
        ("root", "i2", "i1"),
        "warning",
        ("the path from the leaf is CN=chain test I2, CN=chain test I1, CN=chain test root)",),
    ),
    "unrelated extras": Case(
        ("i2", "i1"),
        ("i2", "i1", "other_intermediate", "other_root"),
        "warning",
        (
            "also sends 2 certificates that no path from the leaf uses: "
            "CN=other intermediate (SHA-256 {other_intermediate}...), "
            "CN=other root (SHA-256 {other_root}...)",
        ),
    ),
    "out of order and an extra": Case(
        ("i2", "i1"),
        ("old_i2", "i1", "i2"),
        "warning",
        ("out of order", "; also sends 1 certificate that no path from the leaf uses: "),
    ),
    "a leaf alone": Case(
        ("i2", "i1"),
        (),
        "fail",
        (
            "serves cert.pem without the chain: no intermediate certificate was sent "
            "(point the service at fullchain.pem)",
        ),
    ),
    "a leaf and its root": Case(
        ("i2", "i1"), ("root",), "fail", ("no intermediate certificate was sent",)
    ),
    "the leaf twice": Case(
        ("i2", "i1"), ("leaf",), "fail", ("no intermediate certificate was sent",)
    ),
    "another CA's intermediate": Case(
        ("i2", "i1"),
        ("other_intermediate",),
        "fail",
        (
            "sends intermediate CN=other intermediate (SHA-256 {other_intermediate}...) where "
            "chain.pem has CN=chain test I2 (SHA-256 {i2}...): it did not issue the leaf: an "
            "old or different chain",
        ),
    ),
    "last year's intermediate of the same name": Case(
        ("i2", "i1"),
        ("old_i2", "i1"),
        "fail",
        ("sends intermediate CN=chain test I2 (SHA-256 {old_i2}...)", "did not issue the leaf"),
    ),
    "a re-issued copy of the intermediate": Case(
        ("i2", "i1"),
        ("reissued_i2", "i1"),
        "fail",
        (
            "sends intermediate CN=chain test I2 (SHA-256 {reissued_i2}...) where chain.pem "
            "has CN=chain test I2 (SHA-256 {i2}...): it did issue the leaf (the same name and "
            "key) but is another certificate",
        ),
        openssl_agrees=False,  # a path, but not the lineage's: fails by design
    ),
    "the top intermediate missing": Case(
        ("i2", "i1"),
        ("i2",),
        "fail",
        (
            "sends 1 of the 2 intermediates of chain.pem; missing CN=chain test I1 "
            "(SHA-256 {i1}...), the issuer of CN=chain test I2",
        ),
    ),
    "the leaf's issuer missing": Case(
        ("i2", "i1"),
        ("i1", "root"),
        "fail",
        (
            "sends 1 of the 2 intermediates of chain.pem; missing CN=chain test I2 "
            "(SHA-256 {i2}...), the issuer of the leaf",
        ),
    ),
    "an expired intermediate in chain.pem, sent": Case(
        ("i2", "expired_i1"),
        ("i2", "expired_i1"),
        "fail",
        (
            "sends intermediate CN=chain test I1 (SHA-256 {expired_i1}...), which expired "
            "1.0 days ago (",
            " UTC); it is chain.pem's own: renew the certificate to get a current chain",
        ),
    ),
    "an expired copy sent in place of chain.pem's": Case(
        ("i2", "i1"),
        ("i2", "expired_i1"),
        "fail",
        ("where chain.pem has CN=chain test I1", "; it expired "),
    ),
    "an intermediate not valid yet": Case(
        ("i2", "future_i1"),
        ("future_i1", "i2"),
        "fail",
        (
            "sends intermediate CN=chain test I1 (SHA-256 {future_i1}...), which is not valid "
            "before ",
            " UTC (in 1.0 days); it is chain.pem's own: clients reject the chain until then",
        ),
    ),
}


@pytest.fixture(params=["signature", "key identifiers"])
def issuance(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Issuers found by signature (cryptography >= 40), and as on Debian 12's cryptography 38,
    by name and key identifiers."""
    if request.param == "signature" and not lineage_module._SIGNATURE_CHECK:
        pytest.skip("this cryptography cannot check a signature against an issuer")
    monkeypatch.setattr(lineage_module, "_SIGNATURE_CHECK", request.param == "signature")
    return str(request.param)


def _judge(pki: Pki, tmp_path: Path, case: Case) -> tuple[Lineage, tuple[bytes, ...]]:
    chain = tuple(getattr(pki, name) for name in case.chain_pem)
    sent = _sent(pki, *(getattr(pki, name) for name in case.sent))
    return _lineage(pki, tmp_path, chain), sent


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_verdict(pki: Pki, tmp_path: Path, issuance: str, case: Case) -> None:
    lineage, sent = _judge(pki, tmp_path, case)
    verdict = chain_verdict(sent, lineage, NOW)
    said = verdict.problem if case.verdict == "fail" else verdict.warning
    assert (verdict.problem is not None, verdict.warning is not None) == {
        "pass": (False, False),
        "warning": (False, True),
        "fail": (True, False),
    }[case.verdict], verdict
    fingerprints = {
        name: _fp(cert) for name, cert in vars(pki).items() if isinstance(cert, x509.Certificate)
    }
    for words in case.says:
        assert words.format(**fingerprints) in (said or ""), said
    assert chain_problem(sent, lineage) == verdict.problem


@pytest.fixture(scope="module")
def openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("no openssl program on PATH")
    return found


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_openssl_verify_judges_alike(pki: Pki, tmp_path: Path, openssl: str, case: Case) -> None:
    """The same certificates through ``openssl verify -untrusted`` (a set, as a TLS client
    uses what a server sent), trusting only the root."""
    lineage, sent = _judge(pki, tmp_path, case)
    (tmp_path / "root.pem").write_bytes(_pem(pki.root))
    (tmp_path / "leaf.pem").write_bytes(_pem(pki.leaf))
    (tmp_path / "sent.pem").write_bytes(
        _pem(*(x509.load_der_x509_certificate(d) for d in sent[1:]))
    )
    argv = [openssl, "verify", "-no-CApath", "-CAfile", str(tmp_path / "root.pem")]
    if len(sent) > 1:
        argv += ["-untrusted", str(tmp_path / "sent.pem")]
    run = subprocess.run([*argv, str(tmp_path / "leaf.pem")], capture_output=True, check=False)
    passes = chain_verdict(sent, lineage, NOW).problem is None
    assert (run.returncode == 0) == (passes == case.openssl_agrees), run.stdout + run.stderr


def test_the_signature_decides_not_the_key_identifier(pki: Pki, tmp_path: Path) -> None:
    if not lineage_module._SIGNATURE_CHECK:
        pytest.skip("this cryptography cannot check a signature against an issuer")
    lineage = _lineage(pki, tmp_path, (pki.i2, pki.i1))
    verdict = chain_verdict(_sent(pki, pki.forged_i2, pki.i1), lineage, NOW)
    assert "did not issue the leaf" in (verdict.problem or ""), verdict


def test_an_expired_intermediate_is_judged_at_the_time_given(pki: Pki, tmp_path: Path) -> None:
    lineage = _lineage(pki, tmp_path, (pki.i2, pki.expired_i1))
    sent = _sent(pki, pki.i2, pki.expired_i1)
    assert chain_verdict(sent, lineage, NOW - 2 * DAY) == ChainVerdict()
    assert chain_verdict(sent, lineage, NOW).problem


def test_an_unknown_chain_passes(pki: Pki, tmp_path: Path) -> None:
    lineage = _lineage(pki, tmp_path, (pki.i2, pki.i1))
    assert chain_verdict((), lineage, NOW) == ChainVerdict(None, None)


def test_an_unparseable_extra_is_an_extra(pki: Pki, tmp_path: Path) -> None:
    lineage = _lineage(pki, tmp_path, (pki.i2, pki.i1))
    verdict = chain_verdict((*_sent(pki, pki.i2, pki.i1), b"\x30\x03junk"), lineage, NOW)
    assert verdict.problem is None
    assert verdict.warning and verdict.warning.endswith(
        "no path from the leaf uses: an unparseable certificate (clients ignore them; "
        "each handshake carries them)"
    )


# -- through a real handshake ------------------------------------------------------------------


@pytest.fixture
def served_by(pki: Pki, tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    """A loopback TLS server (Python's ssl, that is OpenSSL) sending the leaf and ``certs``
    in that order; yields a function that starts it."""
    peers: list[Peer] = []

    def serve(*certs: x509.Certificate) -> Peer:
        bundle = tmp_path / f"served-{len(peers)}.pem"
        bundle.write_bytes(_pem(pki.leaf, *certs))
        key = tmp_path / "leaf.key"
        key.write_bytes(
            pki.leaf_key.private_bytes(
                PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        peers.append(Peer("tls", bundle, key))
        return peers[-1]

    yield serve
    for peer in peers:
        peer.close()


def _verifying_client_accepts(pki: Pki, port: int) -> bool:
    """What a client that verifies (OpenSSL, trusting only the root) makes of the server."""
    ctx = ssl.create_default_context(cadata=_pem(pki.root).decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=NAME),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False


@pytest.mark.parametrize(
    ("order", "verdict"),
    [
        (("i1", "i2", "root"), "warning"),
        (("root", "i1", "i2"), "warning"),
        (("i2", "i1", "root"), "pass"),
        (("i1",), "fail"),
    ],
    ids=["out of order, root appended", "root first", "root appended", "missing I2"],
)
def test_a_served_chain_is_judged_as_a_verifying_client_judges_it(
    pki: Pki, tmp_path: Path, served_by: Callable[..., Peer], order: tuple[str, ...], verdict: str
) -> None:
    certs = [getattr(pki, name) for name in order]
    peer = served_by(*certs)
    served = fetch_served("127.0.0.1", peer.port, NAME, 5)
    assert served.chain == _sent(pki, *certs)  # sent as configured, not reordered
    judged = chain_verdict(served.chain, _lineage(pki, tmp_path, (pki.i2, pki.i1)), NOW)
    assert _verifying_client_accepts(pki, peer.port) == (judged.problem is None)
    got = "fail" if judged.problem else "warning" if judged.warning else "pass"
    assert got == verdict, judged
    if verdict == "warning":
        assert "out of order" in (judged.warning or "")
        assert "no path from the leaf uses" not in (judged.warning or "")
