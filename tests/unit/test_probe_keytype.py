"""The probe asks for a key type and verifies trust: real handshakes with loopback servers that
hold an RSA and an ECDSA certificate for one name, and a private CA."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certbot_fanout import probe
from certbot_fanout.errors import ProbeError
from certbot_fanout.lineage import key_type_of
from certbot_fanout.model import Dialect, KeyType
from certbot_fanout.probe import Served, Trust, fetch_served
from tests.support.peers import Peer, ScriptedPeer, Step
from tests.support.stack import NGINX_BIN, Nginx

NAME = "dual.test"
RSA, ECDSA = KeyType.RSA, KeyType.ECDSA
_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Pair:
    """A leaf certificate (PEM file, DER) and its key file."""

    cert: Path
    key: Path
    der: bytes


class PrivateCA:
    """A root that signs RSA and ECDSA leaves directly; ``root`` is its PEM file."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keytype tests root")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.root = where / "root.pem"
        self.root.write_bytes(cert.public_bytes(_PEM))

    def issue(self, label: str, key_type: KeyType, names: tuple[str, ...] = (NAME,)) -> Pair:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if key_type is RSA:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert, key_file = self.where / f"{label}.pem", self.where / f"{label}.key"
        cert.write_bytes(leaf.public_bytes(_PEM))
        key_file.write_bytes(
            key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return Pair(cert, key_file, leaf.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("keytype-pki"))


@pytest.fixture(scope="module")
def rsa_leaf(pki: PrivateCA) -> Pair:
    return pki.issue("rsa", RSA)


@pytest.fixture(scope="module")
def ecdsa_leaf(pki: PrivateCA) -> Pair:
    return pki.issue("ecdsa", ECDSA)


def _versions(low: str, high: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are deprecated
        return ssl.TLSVersion[low], ssl.TLSVersion[high]


class CountingPeer(Peer):
    """A Peer that counts connections (``server_names`` counts only the handshakes that got
    past the choice of protocol version)."""

    connections = 0

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        super()._handle(conn)


def dual_peer(
    first: Pair, second: Pair | None = None, versions: tuple[str, str] | None = None
) -> CountingPeer:
    """A loopback TLS server holding ``first`` and (OpenSSL keeps one certificate per key
    type) ``second`` too."""
    limits = _versions(*versions) if versions else None
    peer = CountingPeer("tls", first.cert, first.key, versions=limits)
    if second is not None:
        assert peer.ctx is not None
        peer.ctx.load_cert_chain(second.cert, second.key)
    return peer


def _key_type(served: Served) -> KeyType | None:
    return key_type_of(x509.load_der_x509_certificate(served.leaf))


# -- the key type asked for is the certificate served ---------------------------------------


@pytest.mark.parametrize(
    ("versions", "protocol"),
    [(None, "TLSv1.3"), (("TLSv1_3", "TLSv1_3"), "TLSv1.3"), (("TLSv1_2", "TLSv1_2"), "TLSv1.2")],
    ids=["tls1.2-1.3", "tls1.3-only", "tls1.2-only"],
)
@pytest.mark.parametrize("order", ["ecdsa-first", "rsa-first"])
def test_a_dual_certificate_server_presents_the_key_type_asked_for(
    rsa_leaf: Pair, ecdsa_leaf: Pair, versions: tuple[str, str] | None, protocol: str, order: str
) -> None:
    pairs = (ecdsa_leaf, rsa_leaf) if order == "ecdsa-first" else (rsa_leaf, ecdsa_leaf)
    with dual_peer(*pairs, versions=versions) as peer:
        plain = fetch_served("127.0.0.1", peer.port, NAME, 5)
        as_rsa = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=RSA)
        as_ecdsa = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=ECDSA)
    # Unasked, the server prefers ECDSA: the RSA certificate is never seen (the issue's case).
    assert plain.leaf == ecdsa_leaf.der
    assert (as_rsa.leaf, as_rsa.protocol, as_rsa.key_type_offered) == (rsa_leaf.der, protocol, True)
    assert (as_ecdsa.leaf, as_ecdsa.protocol) == (ecdsa_leaf.der, protocol)
    assert as_ecdsa.key_type_offered
    assert peer.server_names == [NAME] * 3, "one handshake each"


@pytest.mark.parametrize(("low", "shown"), [("TLSv1", "TLSv1"), ("TLSv1_1", "TLSv1.1")])
def test_a_legacy_dual_certificate_server_presents_the_key_type_asked_for(
    rsa_leaf: Pair, ecdsa_leaf: Pair, low: str, shown: str
) -> None:
    with dual_peer(ecdsa_leaf, rsa_leaf, versions=(low, low)) as peer:
        as_rsa = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=RSA)
        as_ecdsa = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=ECDSA)
    assert (as_rsa.leaf, as_rsa.legacy_protocol, as_rsa.key_type_offered) == (
        rsa_leaf.der,
        shown,
        True,
    )
    assert (as_ecdsa.leaf, as_ecdsa.legacy_protocol) == (ecdsa_leaf.der, shown)


@pytest.mark.parametrize(
    "versions", [None, ("TLSv1_2", "TLSv1_2"), ("TLSv1", "TLSv1")], ids=["tls1.3", "tls1.2", "tls1"]
)
@pytest.mark.parametrize(("has", "asked"), [(RSA, ECDSA), (ECDSA, RSA)])
def test_a_server_without_the_key_type_asked_for_serves_its_other_one_and_says_so(
    rsa_leaf: Pair,
    ecdsa_leaf: Pair,
    has: KeyType,
    asked: KeyType,
    versions: tuple[str, str] | None,
) -> None:
    only = rsa_leaf if has is RSA else ecdsa_leaf
    with dual_peer(only, versions=versions) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=asked)
        same = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=has)
    assert (served.leaf, served.key_type_offered, _key_type(served)) == (only.der, False, has)
    assert (same.leaf, same.key_type_offered) == (only.der, True)
    # Asked for the other type: that offer, then any; over TLS 1.0 each after a refused 1.2+.
    assert peer.connections == (6 if versions and versions[0] == "TLSv1" else 3)


def test_the_key_type_asked_for_is_served_after_starttls_too(
    rsa_leaf: Pair, ecdsa_leaf: Pair
) -> None:
    steps: list[Step] = [
        ("send", b"220 mx.test ESMTP\r\n"),
        ("line", b""),
        ("send", b"250-mx.test\r\n250 STARTTLS\r\n"),
        ("line", b""),
        ("send", b"220 2.0.0 go ahead\r\n"),
        ("tls", b""),
    ]
    with ScriptedPeer(steps, ecdsa_leaf.cert, ecdsa_leaf.key) as peer:
        assert peer.ctx is not None
        peer.ctx.load_cert_chain(rsa_leaf.cert, rsa_leaf.key)
        as_rsa = fetch_served("127.0.0.1", peer.port, NAME, 5, Dialect.SMTP, key_type=RSA)
        as_ecdsa = fetch_served("127.0.0.1", peer.port, NAME, 5, Dialect.SMTP, key_type=ECDSA)
    assert (as_rsa.leaf, as_ecdsa.leaf) == (rsa_leaf.der, ecdsa_leaf.der)


def test_a_failure_with_any_key_type_keeps_both_reasons(rsa_leaf: Pair) -> None:
    with (
        Peer("alert", rsa_leaf.cert, rsa_leaf.key) as peer,
        pytest.raises(ProbeError) as failed,
    ):
        fetch_served("127.0.0.1", peer.port, NAME, 2, key_type=ECDSA)
    alert = f"127.0.0.1:{peer.port}: TLS handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert str(failed.value) == f"{alert}; with any key type: {alert}"


def test_a_server_that_does_not_speak_tls_is_not_asked_again_for_any_key_type() -> None:
    with Peer("garbage") as peer, pytest.raises(ProbeError, match="did not answer in TLS") as e:
        fetch_served("127.0.0.1", peer.port, NAME, 2, key_type=RSA)
    assert "any key type" not in str(e.value)


def test_without_signature_algorithms_a_key_typed_probe_stops_at_tls_1_2(
    rsa_leaf: Pair, ecdsa_leaf: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the ctypes call is not safe (not CPython, a static _ssl, a disagreement), the
    # cipher suites choose the certificate, which only TLS 1.2 and older let them do.
    monkeypatch.setattr(probe, "_openssl", lambda: None)
    _clear_cached_contexts()
    with dual_peer(ecdsa_leaf, rsa_leaf) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=RSA)
    assert (served.leaf, served.protocol) == (rsa_leaf.der, "TLSv1.2")
    with dual_peer(ecdsa_leaf, rsa_leaf, versions=("TLSv1_3", "TLSv1_3")) as peer:
        unrestricted = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=RSA)
    assert (unrestricted.leaf, unrestricted.key_type_offered) == (ecdsa_leaf.der, False)


def _clear_cached_contexts() -> None:
    for cached in (probe._reading_context, probe._legacy_context, probe._trust_context):
        cached.cache_clear()


@pytest.fixture(autouse=True)
def _contexts_made_afresh_after_each_test() -> Iterator[None]:
    yield
    _clear_cached_contexts()


# -- the SSL_CTX pointer is used only when C and Python agree about it ------------------------


def test_the_pointer_under_a_context_is_found_and_proven() -> None:
    openssl = probe._openssl()
    assert openssl is not None, "this CPython's _ssl should offer the calls"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    before = ctx.options
    assert openssl._ssl_ctx(ctx) is not None
    assert ctx.options == before, "the probe put the option it flipped back"


class _LyingOptions(ssl.SSLContext):
    @property  # type: ignore[override]
    def options(self) -> ssl.Options:
        return ssl.Options(0)

    @options.setter
    def options(self, value: ssl.Options) -> None:
        pass


class _LyingVerifyMode(ssl.SSLContext):
    @property  # type: ignore[override]
    def verify_mode(self) -> ssl.VerifyMode:
        return ssl.CERT_NONE  # a client context's is CERT_REQUIRED

    @verify_mode.setter
    def verify_mode(self, value: ssl.VerifyMode) -> None:
        pass


@pytest.mark.parametrize("kind", [_LyingOptions, _LyingVerifyMode])
def test_a_pointer_that_c_and_python_disagree_about_is_not_used(kind: type) -> None:
    # The same real SSL_CTX underneath (so every read is safe), but Python says otherwise.
    openssl = probe._openssl()
    assert openssl is not None
    ctx = kind(ssl.PROTOCOL_TLS_CLIENT)
    assert openssl._ssl_ctx(ctx) is None
    assert not openssl.set_sigalgs(ctx, "rsa_pss_rsae_sha256")


def test_an_object_too_small_to_hold_a_pointer_is_not_read() -> None:
    openssl = probe._openssl()
    assert openssl is not None
    assert openssl._ssl_ctx(object()) is None  # type: ignore[arg-type]


# -- trust: the chain and the name, as a verifying client checks them -------------------------


def test_a_private_ca_verifies_with_its_ca_file(pki: PrivateCA, ecdsa_leaf: Pair) -> None:
    with dual_peer(ecdsa_leaf) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, trust=Trust(NAME, str(pki.root)))
    assert (served.leaf, served.trust_error) == (ecdsa_leaf.der, None)
    assert peer.server_names == [NAME], "one verifying handshake, nothing more"


def test_without_its_ca_file_a_private_ca_does_not_verify_and_the_leaf_is_still_read(
    ecdsa_leaf: Pair,
) -> None:
    with dual_peer(ecdsa_leaf) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, trust=Trust(NAME))
    assert served.trust_error == "unable to get local issuer certificate"
    assert served.leaf == ecdsa_leaf.der
    assert peer.server_names == [NAME, NAME], "the verifying handshake, then the read"


def test_a_wrong_name_does_not_verify(pki: PrivateCA, ecdsa_leaf: Pair) -> None:
    trust = Trust("other.test", str(pki.root))
    with dual_peer(ecdsa_leaf) as peer:
        served = fetch_served("127.0.0.1", peer.port, "other.test", 5, trust=trust)
    assert served.trust_error == "Hostname mismatch, certificate is not valid for 'other.test'."
    assert served.leaf == ecdsa_leaf.der


def test_an_ip_literal_name_is_checked_against_the_address_and_no_sni_is_sent(
    pki: PrivateCA,
) -> None:
    by_ip = pki.issue("by-ip", ECDSA, ("127.0.0.1",))
    with dual_peer(by_ip) as peer:
        ok = fetch_served("127.0.0.1", peer.port, None, 5, trust=Trust("127.0.0.1", str(pki.root)))
        wrong = fetch_served("127.0.0.1", peer.port, None, 5, trust=Trust("::1", str(pki.root)))
    assert ok.trust_error is None
    assert wrong.trust_error == "IP address mismatch, certificate is not valid for '::1'."
    assert set(peer.server_names) == {None}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alt.test", None),
        ("x.wild.test", None),
        ("x.y.wild.test", "Hostname mismatch, certificate is not valid for 'x.y.wild.test'."),
        ("127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'."),
        ("nope.test", "Hostname mismatch, certificate is not valid for 'nope.test'."),
    ],
)
def test_a_name_other_than_the_sni_is_checked_after_the_handshake(
    pki: PrivateCA, name: str, problem: str | None
) -> None:
    leaf = pki.issue("several", ECDSA, (NAME, "alt.test", "*.wild.test"))
    with dual_peer(leaf) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, trust=Trust(name, str(pki.root)))
    assert (served.leaf, served.trust_error) == (leaf.der, problem)
    assert peer.server_names == [NAME], "the SNI is the server name; one handshake"


def test_a_dns_name_is_checked_also_when_no_sni_is_sent(pki: PrivateCA, ecdsa_leaf: Pair) -> None:
    trust = Trust(NAME, str(pki.root))
    with dual_peer(ecdsa_leaf) as peer:
        ok = fetch_served("127.0.0.1", peer.port, None, 5, trust=trust)
        wrong = fetch_served("127.0.0.1", peer.port, None, 5, trust=Trust("x.test", trust.ca_file))
    assert (ok.trust_error, wrong.trust_error) == (
        None,
        "Hostname mismatch, certificate is not valid for 'x.test'.",
    )
    assert peer.server_names == [None, None]


def test_without_x509_check_host_a_name_other_than_the_sni_is_sent_as_the_sni(
    pki: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "_openssl", lambda: None)
    _clear_cached_contexts()
    leaf = pki.issue("two-names", ECDSA, (NAME, "alt.test"))
    with dual_peer(leaf) as peer:
        served = fetch_served(
            "127.0.0.1", peer.port, NAME, 5, trust=Trust("alt.test", str(pki.root))
        )
    assert served.trust_error is None
    assert peer.server_names == ["alt.test"]


def test_trust_and_a_key_type_together(pki: PrivateCA, rsa_leaf: Pair, ecdsa_leaf: Pair) -> None:
    trust = Trust(NAME, str(pki.root))
    with dual_peer(ecdsa_leaf, rsa_leaf) as peer:
        as_rsa = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=RSA, trust=trust)
    assert (as_rsa.leaf, as_rsa.trust_error, as_rsa.protocol) == (rsa_leaf.der, None, "TLSv1.3")
    with dual_peer(rsa_leaf) as peer:
        fallback = fetch_served("127.0.0.1", peer.port, NAME, 5, key_type=ECDSA, trust=trust)
    assert (fallback.leaf, fallback.key_type_offered, fallback.trust_error) == (
        rsa_leaf.der,
        False,
        None,
    )


def test_a_legacy_server_is_read_and_its_trust_reported_as_not_established(
    pki: PrivateCA, ecdsa_leaf: Pair
) -> None:
    with dual_peer(ecdsa_leaf, versions=("TLSv1", "TLSv1")) as peer:
        served = fetch_served("127.0.0.1", peer.port, NAME, 5, trust=Trust(NAME, str(pki.root)))
    assert served.leaf == ecdsa_leaf.der and served.legacy_protocol == "TLSv1"
    assert served.trust_error == "TLS handshake failed: TLSV1_ALERT_PROTOCOL_VERSION"
    assert peer.connections == 2, "the verifying handshake, then straight to TLS 1.0"


def test_an_unreadable_ca_file_is_a_probe_error(tmp_path: Path, ecdsa_leaf: Pair) -> None:
    missing = tmp_path / "missing.pem"
    with (
        dual_peer(ecdsa_leaf) as peer,
        pytest.raises(ProbeError, match=rf"cannot read the CA file {missing}: No such file"),
    ):
        fetch_served("127.0.0.1", peer.port, NAME, 5, trust=Trust(NAME, str(missing)))


# -- real nginx with both certificates --------------------------------------------------------


class DualNginx(Nginx):
    """nginx with an ECDSA and an RSA certificate in one server, as Certbot's pair is served."""

    def __init__(self, prefix: Path, ecdsa: Pair, rsa_pair: Pair, protocols: str) -> None:
        super().__init__(prefix, ecdsa.cert, ecdsa.key, server_name=NAME)
        self.second = rsa_pair
        self.protocols = protocols

    def write_config(self) -> None:
        super().write_config()
        text = self.conf_path.read_text()
        extra = (
            f'        ssl_certificate "{self.second.cert}";\n'
            f'        ssl_certificate_key "{self.second.key}";\n'
            f"        ssl_protocols {self.protocols};\n"
        )
        marker = "        default_type"
        assert marker in text
        self.conf_path.write_text(text.replace(marker, extra + marker, 1))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("protocols", "shown"), [("TLSv1.2 TLSv1.3", "TLSv1.3"), ("TLSv1.2", "TLSv1.2")]
)
def test_real_nginx_with_both_certificates_presents_each_when_asked(
    tmp_path: Path, rsa_leaf: Pair, ecdsa_leaf: Pair, protocols: str, shown: str
) -> None:
    if not Path(NGINX_BIN).exists():
        pytest.skip("nginx is not installed")
    nginx = DualNginx(tmp_path / "nginx", ecdsa_leaf, rsa_leaf, protocols)
    try:
        nginx.start()
        plain = fetch_served("127.0.0.1", nginx.port, NAME, 5)
        as_rsa = fetch_served("127.0.0.1", nginx.port, NAME, 5, key_type=RSA)
        as_ecdsa = fetch_served("127.0.0.1", nginx.port, NAME, 5, key_type=ECDSA)
    finally:
        nginx.stop()
    assert plain.leaf == ecdsa_leaf.der
    assert (as_rsa.leaf, as_rsa.protocol, as_rsa.key_type_offered) == (rsa_leaf.der, shown, True)
    assert (as_ecdsa.leaf, as_ecdsa.protocol) == (ecdsa_leaf.der, shown)
