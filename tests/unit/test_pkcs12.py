"""content: pkcs12 and content: der, on real files, real keystores and the real openssl.

A keystore is never the same bytes twice (random salts), so "unchanged" is what it holds: the
key, the certificate, the alias, the chain in order, and the encryption (modern or legacy),
decrypted with the password. Each test below that says a keystore is left alone or rewritten
checks the inode, so it would fail if the comparison fell back to the bytes.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certbot_fanout import files, keystore
from certbot_fanout.config import parse_config
from certbot_fanout.deploy import DeployOptions, Effects, Outcome, Stage, deploy, desired_file
from certbot_fanout.errors import ConfigError
from certbot_fanout.lineage import Lineage, read_lineage
from certbot_fanout.model import Config, Encoding, Keystore, Part
from certbot_fanout.render_deploy import render_deploy_json, render_deploy_text
from certbot_fanout.status import Level, StatusOptions, check_status
from tests.support.lineages import LineageFactory

NAME = "keystore.test"
PASSWORD = "correct horse battery"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership tests need root")


def password_file(directory: Path, text: str = PASSWORD + "\n", mode: int = 0o600) -> Path:
    path = directory / "keystore.pass"
    path.write_text(text)
    path.chmod(mode)
    return path


def entry(path: Path | str, pw: Path | str, extra: str = "") -> str:
    return f"      - {{path: {path}, content: pkcs12, password_file: {pw}{extra}}}\n"


def config_of(file_entries: str, reload: list[str] | None = None) -> Config:
    text = f"version: 1\nconsumers:\n  tomcat:\n    certificate: {NAME}\n    files:\n{file_entries}"
    if reload:
        text += f"    reload: {reload!r}\n"
    return parse_config(text, "test.yaml")


def reload_counter(tmp_path: Path) -> tuple[list[str], Path]:
    marker = tmp_path / "reloads"
    return ["sh", "-c", f"echo reloaded >> {marker}"], marker


def reloads(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def load(path: Path, password: str = PASSWORD) -> pkcs12.PKCS12KeyAndCertificates:
    return pkcs12.load_pkcs12(path.read_bytes(), password.encode())


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def holds(path: Path, lineage: Lineage, alias: str = NAME) -> None:
    """The keystore at ``path`` holds exactly ``lineage``'s key, certificate and chain."""
    loaded = load(path)
    assert loaded.cert is not None and loaded.key is not None
    assert loaded.cert.certificate.public_bytes(serialization.Encoding.DER) == der(
        lineage.pems[Part.CERT]
    )
    assert loaded.cert.friendly_name == alias.encode()
    assert (
        tuple(
            c.certificate.public_bytes(serialization.Encoding.DER) for c in loaded.additional_certs
        )
        == lineage.chain_der
    )
    key_pem = loaded.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert key_pem == lineage.pems[Part.PRIVKEY]


# -- the map ----------------------------------------------------------------------------------


def test_pkcs12_entry_reads_as_a_keystore_of_key_and_fullchain_mode_0600(tmp_path: Path) -> None:
    pw = password_file(tmp_path)
    spec = config_of(entry(tmp_path / "a.p12", pw)).consumers[0].files[0]
    assert spec.encoding is Encoding.PKCS12
    assert spec.content == (Part.PRIVKEY, Part.FULLCHAIN) and spec.holds_key
    assert spec.keystore == Keystore(password_file=str(pw), legacy=False, alias=None)
    assert spec.mode == 0o600
    spec = (
        config_of(
            entry(tmp_path / "b.p12", pw, ", pkcs12_legacy: true, alias: tomcat, mode: '0640'")
        )
        .consumers[0]
        .files[0]
    )
    assert spec.keystore == Keystore(password_file=str(pw), legacy=True, alias="tomcat")
    assert spec.mode == 0o640
    # A one-item list is the same file.
    one = f"      - {{path: {tmp_path}/c.p12, content: [pkcs12], password_file: {pw}}}\n"
    assert config_of(one).consumers[0].files[0].encoding is Encoding.PKCS12


def test_der_entry_is_the_certificate_alone_mode_0644(tmp_path: Path) -> None:
    spec = config_of(f"      - {{path: {tmp_path}/c.der, content: der}}\n").consumers[0].files[0]
    assert (spec.encoding, spec.content, spec.mode, spec.keystore) == (
        Encoding.DER,
        (Part.CERT,),
        0o644,
        None,
    )


def _refusal(tmp_path: Path, case: str) -> tuple[str, str, str]:
    """The file entry for ``case``, the key path refused and words of the message."""
    p12 = tmp_path / "a.p12"
    pw = password_file(tmp_path)
    if case == "world-readable":
        pw.chmod(0o644)
        return entry(p12, pw), "password_file", "mode 0644 lets its group or others read it"
    if case == "group-readable":
        pw.chmod(0o640)
        return entry(p12, pw), "password_file", "mode 0640 lets its group or others read it"
    if case == "missing":
        return entry(p12, tmp_path / "nope"), "password_file", "does not exist"
    if case == "relative":
        return entry(p12, "keystore.pass"), "password_file", "expected an absolute path"
    if case == "directory":
        return entry(p12, tmp_path), "password_file", "not a regular file"
    if case == "not-root":
        os.chown(pw, pwd.getpwnam("nobody").pw_uid, -1)
        return entry(p12, pw), "password_file", "is owned by nobody"
    if case == "untrusted-directory":
        (tmp_path / "open").mkdir()
        (tmp_path / "open").chmod(0o777)
        other = password_file(tmp_path / "open")
        return entry(p12, other), "password_file", "writable by every user"
    if case == "empty":
        password_file(tmp_path, "\n")
        return entry(p12, pw), "password_file", "empty"
    if case == "not-ascii":
        password_file(tmp_path, "pässword\n")
        return entry(p12, pw), "password_file", "printable ASCII"
    if case == "too-long":
        password_file(tmp_path, "x" * 5000)
        return entry(p12, pw), "password_file", "more than 4096 bytes"
    if case == "in-a-list":
        text = f"      - {{path: {p12}, content: [privkey, pkcs12], password_file: {pw}}}\n"
        return text, "content[1]", "'pkcs12' is a whole file of its own"
    if case == "der-in-a-list":
        return f"      - {{path: {p12}, content: [der, chain]}}\n", "content[0]", "der"
    if case == "no-password-file":
        return f"      - {{path: {p12}, content: pkcs12}}\n", "content", "needs 'password_file'"
    if case == "password-without-pkcs12":
        text = f"      - {{path: {p12}, content: fullchain, password_file: {pw}}}\n"
        return text, "password_file", "only for content: pkcs12"
    if case == "alias-with-der":
        return f"      - {{path: {p12}, content: der, alias: x}}\n", "alias", "only for content"
    if case == "legacy-not-bool":
        return entry(p12, pw, ", pkcs12_legacy: maybe"), "pkcs12_legacy", "true or false"
    if case == "empty-alias":
        return entry(p12, pw, ", alias: ''"), "alias", "1 to 128 printable"
    if case == "link":
        return entry(p12, pw, ", link: true"), "link", "live/ holds no pkcs12 file"
    raise AssertionError(case)


REFUSALS = [
    "world-readable",
    "group-readable",
    "missing",
    "relative",
    "directory",
    "not-root",
    "untrusted-directory",
    "empty",
    "not-ascii",
    "too-long",
    "in-a-list",
    "der-in-a-list",
    "no-password-file",
    "password-without-pkcs12",
    "alias-with-der",
    "legacy-not-bool",
    "empty-alias",
    "link",
]


@needs_root
@pytest.mark.parametrize("case", REFUSALS)
def test_a_bad_keystore_entry_is_refused_at_its_key_path(tmp_path: Path, case: str) -> None:
    text, key, words = _refusal(tmp_path, case)
    with pytest.raises(ConfigError) as caught:
        config_of(text)
    message = str(caught.value)
    assert f"consumers.tomcat.files[0].{key}" in message
    assert words in message
    assert PASSWORD not in message


def test_the_unknown_content_message_names_pkcs12_and_der(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'pkcs12'\?.*pkcs12 or der"):
        config_of(f"      - {{path: {tmp_path}/a, content: pkcs21}}\n")


# -- placing and comparing --------------------------------------------------------------------


@needs_root
def test_a_keystore_is_placed_with_its_owner_and_mode_whatever_the_umask(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    nobody = pwd.getpwnam("nobody")
    pw = password_file(tmp_path)
    p12 = tmp_path / "tls" / "tomcat.p12"
    p12.parent.mkdir()
    placed: list[files.Desired] = []

    def place(d: files.Desired) -> None:
        placed.append(d)
        files.place(d)

    config = config_of(entry(p12, pw, f", owner: nobody, group: {nobody.pw_gid}"))
    old = os.umask(0)
    try:
        result = deploy(config, read_lineage(str(live)), effects=Effects(place=place))
    finally:
        os.umask(old)
    assert result.consumers[0].outcome is Outcome.OK
    st = p12.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o600)
    # It went through the one placement (temp file given owner and mode before its bytes:
    # tests/unit/test_files.py watches that happen), not a path of its own.
    assert [(d.path, d.uid, d.mode) for d in placed] == [(str(p12), nobody.pw_uid, 0o600)]
    assert PASSWORD not in repr(placed[0])
    holds(p12, read_lineage(str(live)))


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_an_unchanged_keystore_keeps_its_inode_and_a_renewal_rewrites_it(
    lineages: LineageFactory, tmp_path: Path, legacy: bool
) -> None:
    live, _ = lineages.issue(NAME)
    pw = password_file(tmp_path)
    p12 = tmp_path / "tomcat.p12"
    reload, marker = reload_counter(tmp_path)
    config = config_of(entry(p12, pw, f", pkcs12_legacy: {str(legacy).lower()}"), reload)
    first = deploy(config, read_lineage(str(live))).consumers[0]
    assert first.outcome is Outcome.OK and first.reloaded
    inode, data = p12.stat().st_ino, p12.read_bytes()
    for _ in range(2):
        again = deploy(config, read_lineage(str(live))).consumers[0]
        assert again.outcome is Outcome.OK
        assert not again.changed_files and not again.reloaded
        assert (p12.stat().st_ino, p12.read_bytes()) == (inode, data)
    assert reloads(marker) == 1
    # The same content built again is other bytes: only what it holds can say "unchanged".
    assert desired_file(config.consumers[0].files[0], read_lineage(str(live))).data != data

    renewed = read_lineage(str(lineages.renew(NAME)[0]))
    third = deploy(config, renewed).consumers[0]
    assert third.outcome is Outcome.OK and third.reloaded
    assert third.files[0].changed and third.files[0].reasons == ("content differs",)
    assert p12.stat().st_ino != inode
    holds(p12, renewed)
    assert reloads(marker) == 2


def _existing(path: Path, lineage: Lineage, kw: dict[str, object] | None = None) -> None:
    """A keystore of ``lineage`` at ``path`` as another writer made it (``kw``: what differs:
    password, legacy, alias, chain, rounds)."""
    kw = kw or {}
    password = str(kw.get("password", PASSWORD))
    key = serialization.load_pem_private_key(lineage.pems[Part.PRIVKEY], None)
    cert = x509.load_pem_x509_certificate(lineage.pems[Part.CERT])
    chain = [x509.load_der_x509_certificate(d) for d in lineage.chain_der]
    chain = list(kw.get("chain", chain))  # type: ignore[call-overload]
    builder = serialization.PrivateFormat.PKCS12.encryption_builder()
    if kw.get("legacy"):
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        builder = builder.hmac_hash(hashes.SHA1())
    else:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        builder = builder.hmac_hash(hashes.SHA256())
    if "rounds" in kw:
        builder = builder.kdf_rounds(kw["rounds"])  # type: ignore[arg-type]
    alias = kw.get("alias", NAME)
    data = pkcs12.serialize_key_and_certificates(
        alias.encode() if isinstance(alias, str) else None,
        key,  # type: ignore[arg-type]
        cert,
        chain,
        builder.build(password.encode()),
    )
    path.write_bytes(data)
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("same", None),
        ("wrong-password", "content differs"),
        ("legacy-encryption", "content differs"),
        ("other-alias", "content differs"),
        ("no-alias", "content differs"),
        ("chain-missing", "content differs"),
        ("chain-extra", "content differs"),
        ("garbage", "content differs"),
        ("truncated", "content differs"),
        ("pem", "content differs"),
        ("mode", "mode 0644, expected 0600"),
    ],
)
def test_what_is_held_decides_and_whatever_is_on_disk_never_crashes(
    lineages: LineageFactory, tmp_path: Path, case: str, reason: str | None
) -> None:
    live, issued = lineages.issue(NAME)
    lineage = read_lineage(str(live))
    pw = password_file(tmp_path)
    p12 = tmp_path / "tomcat.p12"
    root = x509.load_pem_x509_certificate(lineages.ca.root_pem)
    intermediate = x509.load_der_x509_certificate(lineage.chain_der[0])
    variants: dict[str, dict[str, object]] = {
        "same": {},
        "wrong-password": {"password": "not it"},
        "legacy-encryption": {"legacy": True},
        "other-alias": {"alias": "other"},
        "no-alias": {"alias": None},
        "chain-missing": {"chain": []},
        "chain-extra": {"chain": [intermediate, root]},
        "mode": {},
    }
    if case in variants:
        _existing(p12, lineage, variants[case])
        if case == "mode":
            p12.chmod(0o644)
    elif case == "garbage":
        p12.write_bytes(os.urandom(1500))
    elif case == "truncated":
        _existing(p12, lineage)
        p12.write_bytes(p12.read_bytes()[:-40])
    else:
        p12.write_bytes(issued.fullchain_pem)
    p12.chmod(0o644 if case == "mode" else 0o600)
    inode = p12.stat().st_ino
    config = config_of(entry(p12, pw))
    found = files.compare(
        desired_file(config.consumers[0].files[0], lineage), files.snapshot(str(p12))
    )
    assert [d.message for d in found] == ([reason] if reason else [])
    result = deploy(config, lineage).consumers[0]
    assert result.outcome is Outcome.OK
    assert (p12.stat().st_ino == inode) is (reason is None)
    holds(p12, lineage)


def test_a_keystore_with_too_many_iterations_is_never_decrypted(
    lineages: LineageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, _ = lineages.issue(NAME)
    lineage = read_lineage(str(live))
    p12 = tmp_path / "tomcat.p12"
    _existing(p12, lineage, {"rounds": keystore.KDF_ROUNDS})
    pw = password_file(tmp_path)
    spec = config_of(entry(p12, pw)).consumers[0].files[0]
    match = keystore.build_pkcs12(lineage, spec.keystore)  # type: ignore[arg-type]
    assert match.same_content(p12.read_bytes())
    found = keystore.encryption_of(p12.read_bytes())
    assert found is not None and keystore.KDF_ROUNDS in found.iterations
    monkeypatch.setattr(keystore, "MAX_ITERATIONS", keystore.KDF_ROUNDS - 1)
    assert not match.same_content(p12.read_bytes())


def test_the_encryption_is_read_from_the_file_and_any_bytes_are_safe(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    lineage = read_lineage(str(live))
    pw = password_file(tmp_path)
    modern = keystore.build_pkcs12(lineage, Keystore(str(pw))).data
    legacy = keystore.build_pkcs12(lineage, Keystore(str(pw), legacy=True)).data
    found_modern, found_legacy = keystore.encryption_of(modern), keystore.encryption_of(legacy)
    assert found_modern is not None and found_legacy is not None
    aes = "1.2.840.113549.1.5.13(1.2.840.113549.1.5.12,1.2.840.113549.2.9,2.16.840.1.101.3.4.1.42)"
    assert found_modern.algorithms == ("mac:2.16.840.1.101.3.4.2.1", f"certs:{aes}", f"key:{aes}")
    des = "1.2.840.113549.1.12.1.3"
    assert found_legacy.algorithms == ("mac:1.3.14.3.2.26", f"certs:{des}", f"key:{des}")
    match = keystore.build_pkcs12(lineage, Keystore(str(pw))).same_content
    # Every prefix and a sweep of flipped bytes: an answer, never an exception.
    for end in range(len(modern)):
        keystore.encryption_of(modern[:end])
        assert not match(modern[:end])
    for i in range(0, len(modern), 7):
        flipped = bytearray(modern)
        flipped[i] ^= 0xFF
        keystore.encryption_of(bytes(flipped))
        match(bytes(flipped))


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_openssl_and_cryptography_read_both_encryptions(
    lineages: LineageFactory, tmp_path: Path, legacy: bool
) -> None:
    live, issued = lineages.issue(NAME)
    pw = password_file(tmp_path)
    p12 = tmp_path / "tomcat.p12"
    extra = f", alias: tomcat, pkcs12_legacy: {str(legacy).lower()}"
    deploy(config_of(entry(p12, pw, extra)), read_lineage(str(live)))
    holds(p12, read_lineage(str(live)), alias="tomcat")
    # OpenSSL 3 reads PBE-SHA1-3DES with its default provider: no -legacy (that is for RC2).
    out = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-passin", f"file:{pw}", "-nodes", "-info"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "friendlyName: tomcat" in out.stdout
    assert "-----BEGIN PRIVATE KEY-----" in out.stdout
    certs = [c.public_bytes(serialization.Encoding.DER) for c in _pem_certs(out.stdout)]
    assert certs[0] == der(issued.cert_pem)
    assert certs[1:] == [der(issued.chain_pem)]
    expected = "pbeWithSHA1And3-KeyTripleDES-CBC" if legacy else "AES-256-CBC"
    assert (
        f"Shrouded Keybag: {expected}" in out.stderr
        or f"Shrouded Keybag: PBES2, PBKDF2, {expected}" in out.stderr
    )
    assert ("MAC: sha1" if legacy else "MAC: sha256") in out.stderr


def _pem_certs(text: str) -> list[x509.Certificate]:
    begin = "-----BEGIN CERTIFICATE-----"
    return [
        x509.load_pem_x509_certificate(
            (
                begin + block.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
            ).encode()
        )
        for block in text.split(begin)[1:]
    ]


def test_der_content_is_the_certificate_alone(lineages: LineageFactory, tmp_path: Path) -> None:
    live, issued = lineages.issue(NAME)
    path = tmp_path / "cert.der"
    config = config_of(f"      - {{path: {path}, content: der}}\n")
    assert deploy(config, read_lineage(str(live))).consumers[0].outcome is Outcome.OK
    assert path.read_bytes() == der(issued.cert_pem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    assert not deploy(config, read_lineage(str(live))).consumers[0].changed_files
    assert path.stat().st_ino == inode


def test_the_password_is_in_no_output_and_a_password_file_gone_bad_fails_its_consumer(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    pw = password_file(tmp_path)
    p12 = tmp_path / "tomcat.p12"
    config = config_of(entry(p12, pw))
    first = read_lineage(str(live))
    result = deploy(config, first)
    for text in (render_deploy_text(result), render_deploy_json(result), repr(result)):
        assert PASSWORD not in text
    pw.chmod(0o644)  # after the map was read
    failed = deploy(config, read_lineage(str(lineages.renew(NAME)[0])), DeployOptions())
    c = failed.consumers[0]
    assert c.outcome is Outcome.FAILED and c.failed_stage is Stage.PLACE
    assert c.error is not None and "lets its group or others read it" in c.error
    assert PASSWORD not in c.error
    holds(p12, first)  # the old keystore stays


def test_status_sees_a_current_keystore_as_current_and_a_stale_one_as_content_drift(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    pw = password_file(tmp_path)
    p12 = tmp_path / "tomcat.p12"
    config = config_of(entry(p12, pw))
    options = StatusOptions(config_dir=str(lineages.config_dir), probe=False)
    deploy(config, read_lineage(str(live)))
    current = check_status(config, None, options)
    assert current.level is Level.OK and current.consumers[0].files_current
    lineages.renew(NAME)
    stale = check_status(config, None, options)
    assert stale.level is Level.CRITICAL
    kinds = [d.kind for d in stale.consumers[0].files[0].differences]
    assert kinds == [files.DifferenceKind.CONTENT]
