"""Reading a certbot lineage through live/NAME, and refusing one that no service could load."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from certbot_fanout._pki import Issued, ThrowawayCA
from certbot_fanout.cli import main
from certbot_fanout.errors import LineageError
from certbot_fanout.lineage import (
    MAX_PEM_BYTES,
    CertInfo,
    cert_info,
    cert_info_from_der,
    fingerprint,
    lineage_dir,
    read_lineage,
    split_pem_certs,
)
from certbot_fanout.model import KeyType, Part


class Lineages(Protocol):
    """The ``lineages`` fixture of tests/conftest.py."""

    config_dir: Path

    def issue(self, name: str, *more_names: str, days: float = 90) -> tuple[Path, Issued]: ...

    def renew(self, name: str, *more_names: str, days: float = 90) -> tuple[Path, Issued]: ...


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _overwrite(live: Path, filename: str, data: bytes) -> None:
    """Change a lineage file the way a hand edit would: through the live/ symlink."""
    (live / filename).resolve(strict=True).write_bytes(data)


def _refused(live: Path | str) -> str:
    with pytest.raises(LineageError) as info:
        read_lineage(str(live))
    return str(info.value)


# -- reading --------------------------------------------------------------------------------


def test_reads_every_part_through_relative_symlinks(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org", "www.example.org")
    assert os.readlink(live / "cert.pem") == "../../archive/example.org/cert1.pem"

    lineage = read_lineage(str(live))

    assert lineage.name == "example.org"
    assert lineage.live_dir == str(live)
    assert lineage.pems == {
        Part.CERT: issued.cert_pem,
        Part.CHAIN: issued.chain_pem,
        Part.FULLCHAIN: issued.fullchain_pem,
        Part.PRIVKEY: issued.key_pem,
    }
    cert = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert lineage.cert == CertInfo(
        subject="CN=example.org",
        serial=openssl_serial(live / "cert.pem"),
        not_after=cert.not_valid_after_utc,
        fingerprint=hashlib.sha256(der).hexdigest(),
        names=("example.org", "www.example.org"),
        key_type=KeyType.ECDSA,
    )
    assert lineage.cert.not_after.tzinfo is not None
    assert lineage.default_server_name == "example.org"
    assert lineage.live_path(Part.PRIVKEY) == str(live / "privkey.pem")
    assert lineage.cert.fingerprint in lineage.cert.describe()
    assert lineage.cert.serial in lineage.cert.describe()


def test_lineage_dir_and_a_trailing_slash(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    assert lineage_dir(str(lineages.config_dir), "example.org") == str(live)
    lineage = read_lineage(f"{live}/")
    assert (lineage.name, lineage.live_dir) == ("example.org", str(live))


def test_the_common_name_comes_first(lineages: Lineages) -> None:
    live, _ = lineages.issue("b.example.org", "a.example.org", "c.example.org")
    assert read_lineage(str(live)).cert.names == ("b.example.org", "a.example.org", "c.example.org")


def test_reads_the_renewed_certificate(lineages: Lineages) -> None:
    live, first = lineages.issue("example.org")
    before = read_lineage(str(live))
    _, second = lineages.renew("example.org")

    after = read_lineage(str(live))

    assert os.readlink(live / "privkey.pem") == "../../archive/example.org/privkey2.pem"
    assert after.pems[Part.CERT] == second.cert_pem != first.cert_pem
    assert after.pems[Part.PRIVKEY] == second.key_pem
    assert after.cert.fingerprint == fingerprint(_der(second.cert_pem))
    assert after.cert.fingerprint != before.cert.fingerprint
    assert after.cert.serial != before.cert.serial


def test_content_concatenates_parts_in_order(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    lineage = read_lineage(str(live))
    assert lineage.content((Part.PRIVKEY, Part.FULLCHAIN)) == issued.key_pem + issued.fullchain_pem
    assert lineage.content((Part.FULLCHAIN, Part.PRIVKEY)) == issued.fullchain_pem + issued.key_pem
    assert lineage.content((Part.CERT, Part.CHAIN)) == issued.fullchain_pem
    assert lineage.content((Part.CHAIN,)) == issued.chain_pem
    assert lineage.content(()) == b""


def test_content_ends_every_part_with_a_newline(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    _overwrite(live, "privkey.pem", issued.key_pem.rstrip(b"\n"))
    _overwrite(live, "cert.pem", issued.cert_pem.rstrip(b"\n"))
    lineage = read_lineage(str(live))
    assert lineage.content((Part.PRIVKEY, Part.CERT)) == issued.key_pem + issued.cert_pem
    assert lineage.content((Part.CERT,)) == issued.cert_pem


# -- refusing -------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "live" / "nope.example.org"
    message = _refused(missing)
    assert message == f"{missing}: no such lineage directory"


def test_a_file_instead_of_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"")
    assert "no such lineage directory" in _refused(path)


@pytest.mark.parametrize("filename", ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"])
def test_missing_file(lineages: Lineages, filename: str) -> None:
    live, _ = lineages.issue("example.org")
    (live / filename).unlink()
    message = _refused(live)
    assert message.startswith(f"{live / filename}: cannot read")
    assert "No such file or directory" in message


def test_a_fifo_in_the_lineage_is_refused_not_waited_on(lineages: Lineages) -> None:
    # A blocking open() of a FIFO with no writer never returns: certbot, holding its lock while
    # the hook runs, would hang with it.
    live, _ = lineages.issue("example.org")
    (live / "privkey.pem").unlink()
    os.mkfifo(live / "privkey.pem")
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.append(_refused(live)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # free the hung reader by opening the FIFO's other end
        os.close(os.open(live / "privkey.pem", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert said == [f"{live / 'privkey.pem'}: not a regular file"]


def test_dangling_symlink(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    (live / "chain.pem").resolve().unlink()
    assert _refused(live).startswith(f"{live / 'chain.pem'}: cannot read: No such file")


@pytest.mark.parametrize("filename", ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"])
@pytest.mark.parametrize("data", [b"", b"\n \n"])
def test_empty_file(lineages: Lineages, filename: str, data: bytes) -> None:
    live, _ = lineages.issue("example.org")
    _overwrite(live, filename, data)
    assert _refused(live) == f"{live / filename}: empty file"


@pytest.mark.parametrize("filename", ["cert.pem", "privkey.pem"])
def test_file_over_one_mebibyte(lineages: Lineages, filename: str) -> None:
    live, _ = lineages.issue("example.org")
    data = (live / filename).read_bytes()
    _overwrite(live, filename, data + b"\n" * (MAX_PEM_BYTES - len(data) + 1))
    message = _refused(live)
    assert message == f"{live / filename}: larger than {MAX_PEM_BYTES} bytes, not a PEM file"


def test_a_file_of_exactly_one_mebibyte_is_read(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    _overwrite(live, "chain.pem", issued.chain_pem.ljust(MAX_PEM_BYTES, b"\n"))
    assert len(read_lineage(str(live)).pems[Part.CHAIN]) == MAX_PEM_BYTES


def test_key_from_another_lineage(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    _, other = lineages.issue("other.example.org")
    _overwrite(live, "privkey.pem", other.key_pem)
    message = _refused(live)
    assert message.startswith(f"{live}: privkey.pem does not match cert.pem")
    assert "refusing to deploy" in message


def test_cert_from_another_lineage(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    _, other = lineages.issue("other.example.org")
    _overwrite(live, "cert.pem", other.cert_pem)
    assert "privkey.pem does not match cert.pem" in _refused(live)


def test_fullchain_that_does_not_start_with_cert(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    _overwrite(live, "fullchain.pem", issued.chain_pem + issued.cert_pem)
    assert _refused(live) == f"{live}: fullchain.pem does not start with cert.pem"


def test_fullchain_of_another_lineage(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    _, other = lineages.issue("other.example.org")
    _overwrite(live, "fullchain.pem", other.fullchain_pem)
    assert _refused(live) == f"{live}: fullchain.pem does not start with cert.pem"


@pytest.mark.parametrize("variant", ["cert only", "chain twice", "other CA", "no certificate"])
def test_fullchain_that_is_not_cert_then_chain(lineages: Lineages, variant: str) -> None:
    live, issued = lineages.issue("example.org")
    other_ca = ThrowawayCA("another CA")
    fullchain = {
        "cert only": issued.cert_pem,
        "chain twice": issued.fullchain_pem + issued.chain_pem,
        "other CA": issued.cert_pem
        + other_ca.intermediate.public_bytes(serialization.Encoding.PEM),
        "no certificate": b"not a certificate\n",
    }[variant]
    _overwrite(live, "fullchain.pem", fullchain)
    message = _refused(live)
    if variant == "no certificate":
        assert message == f"{live}: fullchain.pem does not start with cert.pem"
    else:
        assert message == f"{live}: fullchain.pem is not cert.pem followed by chain.pem"


def test_chain_that_does_not_match_fullchain(lineages: Lineages) -> None:
    live, _ = lineages.issue("example.org")
    _overwrite(live, "chain.pem", ThrowawayCA("another CA").root_pem)
    assert "fullchain.pem is not cert.pem followed by chain.pem" in _refused(live)


@pytest.mark.parametrize(
    ("filename", "data", "words"),
    [
        ("cert.pem", b"garbage\n", "cert.pem: not a PEM certificate"),
        (
            "cert.pem",
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "cert.pem: not a PEM certificate",
        ),
        (
            "chain.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "chain.pem or fullchain.pem is not PEM",
        ),
        (
            "fullchain.pem",
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "chain.pem or fullchain.pem is not PEM",
        ),
        ("privkey.pem", b"garbage\n", "privkey.pem: not an unencrypted PEM private key"),
        (
            "privkey.pem",
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "privkey.pem: not an unencrypted PEM private key",
        ),
    ],
)
def test_garbage_pem(lineages: Lineages, filename: str, data: bytes, words: str) -> None:
    live, _ = lineages.issue("example.org")
    _overwrite(live, filename, data)
    message = _refused(live)
    assert message.startswith(f"{live}")
    assert words in message


def test_garbage_chain_is_refused_even_when_fullchain_has_no_chain(lineages: Lineages) -> None:
    # split_pem_certs finds no certificate in text without a BEGIN line, so garbage chain.pem
    # equals an empty chain and matches a fullchain that holds only the certificate: the
    # garbage would then be placed for every `content: chain`.
    live, issued = lineages.issue("example.org")
    _overwrite(live, "chain.pem", b"garbage\n")
    _overwrite(live, "fullchain.pem", issued.cert_pem)
    assert "chain.pem" in _refused(live)


def test_a_key_in_place_of_the_certificate(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    _overwrite(live, "cert.pem", issued.key_pem)
    assert "cert.pem: not a PEM certificate" in _refused(live)


def test_encrypted_key(lineages: Lineages) -> None:
    live, issued = lineages.issue("example.org")
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    _overwrite(live, "privkey.pem", encrypted)
    message = _refused(live)
    assert message.startswith(f"{live}/privkey.pem: not an unencrypted PEM private key")
    assert "is encrypted" in message


# -- through the command line ---------------------------------------------------------------


def _config_for(tmp_path: Path, certificate: str = "example.org") -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    config = tmp_path / "consumers.yaml"
    config.write_text(
        "version: 1\n"
        "consumers:\n"
        "  web:\n"
        f"    certificate: {certificate}\n"
        f"    files: [{{path: {out}/key.pem, content: privkey}}]\n"
    )
    return config


def _deploy(tmp_path: Path, config: Path, live: Path) -> int:
    argv = ["deploy", "--config", str(config), "--lineage", str(live)]
    return main([*argv, "--lock-file", str(tmp_path / "lock")], environ={})


@pytest.mark.parametrize("damage", ["swap key", "missing chain", "no directory"])
def test_cli_lineage_error_exits_2_and_touches_nothing(
    lineages: Lineages, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    live, _ = lineages.issue("example.org")
    if damage == "swap key":
        _, other = lineages.issue("other.example.org")
        _overwrite(live, "privkey.pem", other.key_pem)
        expected = "privkey.pem does not match cert.pem"
    elif damage == "missing chain":
        (live / "chain.pem").unlink()
        expected = "chain.pem: cannot read"
    else:
        live = live.parent / "gone.example.org"
        expected = "no such lineage directory"
    config = _config_for(tmp_path, live.name)

    assert _deploy(tmp_path, config, live) == 2

    captured = capsys.readouterr()
    assert captured.err.startswith(f"certbot-fanout: error: {live}")
    assert expected in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_deploys_a_sound_lineage(
    lineages: Lineages, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The control for the test above: the same config and an intact lineage do place the key.
    live, issued = lineages.issue("example.org")
    assert _deploy(tmp_path, _config_for(tmp_path), live) == 0, capsys.readouterr()
    placed = tmp_path / "out" / "key.pem"
    assert placed.read_bytes() == issued.key_pem
    assert placed.stat().st_mode & 0o777 == 0o600


# -- cert_info ------------------------------------------------------------------------------


def _self_signed(subject: x509.Name, *extensions: x509.ExtensionType) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(0xC0FFEE)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def test_cert_info_without_san_or_common_name() -> None:
    cert = _self_signed(x509.Name([]))
    info = cert_info(cert)
    assert info == CertInfo(
        subject="(empty subject)",
        serial="C0FFEE",
        not_after=datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        names=(),
        key_type=KeyType.ECDSA,
    )
    assert "(empty subject)" in info.describe()
    assert "2031-02-03 04:05:06 UTC" in info.describe()


def test_cert_info_without_san_but_with_other_subject_fields() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Ltd")])
    info = cert_info(_self_signed(subject))
    assert (info.subject, info.names) == ("O=Example Ltd", ())


def test_cert_info_puts_the_common_name_first_only_when_it_is_a_san() -> None:
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("a.example"),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("b.example"),
        ]
    )
    with_cn = _self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b.example")]), san)
    assert cert_info(with_cn).names == ("b.example", "a.example")
    foreign_cn = _self_signed(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "z.example")]), san
    )
    assert cert_info(foreign_cn).names == ("a.example", "b.example")


def test_cert_info_from_der_tolerates_garbage() -> None:
    info = cert_info_from_der(b"not DER")
    assert info.subject == "(unparseable certificate)"
    assert info.fingerprint == hashlib.sha256(b"not DER").hexdigest()
    assert info.names == ()


def test_split_pem_certs_keeps_the_order(ca: ThrowawayCA) -> None:
    issued = ca.issue(["example.org"])
    certs = split_pem_certs(issued.fullchain_pem + ca.root_pem)
    assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [
        _der(issued.cert_pem),
        _der(issued.chain_pem),
        ca.root.public_bytes(serialization.Encoding.DER),
    ]
    assert split_pem_certs(b"") == []


# -- serial numbers, as openssl prints them ---------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl_serial(pem: Path) -> str:
    """What ``openssl x509 -noout -serial`` says, without its ``serial=``."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("serial="), out
    return out.strip().removeprefix("serial=")


@pytest.fixture(scope="module")
def openssl_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("openssl") / "key.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key.write_bytes(pem)
    return key


@needs_openssl
@pytest.mark.parametrize(
    ("serial", "printed"),
    [
        (0x5, "05"),  # one hex digit
        (0xABC, "0ABC"),  # odd length
        (0xC0FFEE, "C0FFEE"),
        (0x80, "80"),  # DER holds 00 80 (the top bit is set); openssl prints the value
        (0xFF, "FF"),
        (0x0FFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF, "0F" + "F" * 38),  # 39 digits
        (0x7FFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF, "7F" + "F" * 38),
        (0x8000_0000_0000_0000_0000_0000_0000_0000_0000_0000, "80" + "0" * 38),
        (1, "01"),
        (0, "00"),
        (-5, "-05"),  # negative serials exist in old certificates
        (-0x80, "-80"),
        (-0xABC, "-0ABC"),
    ],
)
def test_serials_print_as_openssl_prints_them(
    serial: int, printed: str, openssl_key: Path, tmp_path: Path
) -> None:
    pem = tmp_path / "cert.pem"
    argv = ["openssl", "req", "-x509", "-key", str(openssl_key), "-subj", "/CN=serial.test"]
    argv += ["-days", "1", "-set_serial", str(serial), "-out", str(pem)]
    subprocess.run(argv, capture_output=True, check=True)
    with warnings.catch_warnings():  # cryptography warns about zero and negative serials
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        assert cert.serial_number == serial
        shown = cert_info(cert).serial
    assert openssl_serial(pem) == printed
    assert shown == printed
