"""XMPP STARTTLS against a real Prosody: c2s (``xmpp``) and s2s (``xmpp-server``).

The probe and ``openssl s_client -starttls`` must agree with the lineage Pebble issued (leaf
and chain), and a full CLI deploy after a real renewal must turn Prosody to the new
certificate on both ports.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certbot_fanout.lineage import chain_problem, fingerprint, read_lineage
from certbot_fanout.model import Dialect
from certbot_fanout.probe import fetch_served
from tests.support.cli import run
from tests.support.daemons_xmpp import PROSODY_BIN, PROSODY_USER, PROSODYCTL_BIN, Prosody
from tests.support.integration import CERT_NAME, lineage_files
from tests.support.maps import config_text
from tests.support.proc import write_owned
from tests.support.stack import Certbot, file_fingerprint, openssl_fingerprint

DIALECTS = ("xmpp", "xmpp-server")


@dataclass
class XmppSite:
    certbot: Certbot
    prosody: Prosody
    cert: Path
    key: Path
    config: Path
    lock: Path
    fanout: Path

    @property
    def live(self) -> Path:
        return self.certbot.lineage(CERT_NAME)

    def port(self, dialect: str) -> int:
        return self.prosody.c2s_port if dialect == "xmpp" else self.prosody.s2s_port

    def served(self) -> dict[str, str]:
        """What openssl gets on each dialect's port right now."""
        return {d: openssl_fingerprint(self.port(d), CERT_NAME, d) for d in DIALECTS}

    def write_config(self, reload: list[str]) -> None:
        q = json.dumps  # JSON strings and lists are YAML flow syntax
        u = PROSODY_USER
        prosody = f"""\
  prosody:
    certificate: {CERT_NAME}
    files:
      - {{path: {q(str(self.cert))}, content: fullchain, owner: {u}, group: {u}, mode: "0644"}}
      - {{path: {q(str(self.key))}, content: privkey, owner: {u}, group: {u}, mode: "0600"}}
    reload: {q(reload)}
    verify:
      - {{host: 127.0.0.1, port: {self.prosody.c2s_port}, starttls: xmpp}}
      - {{host: 127.0.0.1, port: {self.prosody.s2s_port}, starttls: xmpp-server}}
"""
        self.config.write_text(config_text(prosody, verify_timeout=20))

    def deploy(self) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.fanout),
            "deploy",
            "--config",
            str(self.config),
            "--lineage",
            str(self.live),
            "--lock-file",
            str(self.lock),
            "--json",
        ]
        return run(argv)


def _require_prosody() -> pwd.struct_passwd:
    for path in (PROSODY_BIN, PROSODYCTL_BIN):
        if not os.access(path, os.X_OK):
            pytest.skip(
                f"prosody not installed ({path} is not executable): apt-get install prosody"
            )
    try:
        return pwd.getpwnam(PROSODY_USER)
    except KeyError:
        pytest.skip(f"no {PROSODY_USER} user (the Debian package prosody creates it)")


@pytest.fixture
def xmpp(
    root: None,
    certbot: Certbot,
    fanout_bin: Path,
    public_tmp: Path,
    tmp_path: Path,
) -> Iterator[XmppSite]:
    """Prosody serving copies (owned by prosody) of a lineage the real Certbot issued."""
    account = _require_prosody()
    tls = public_tmp / "tls"
    tls.mkdir()
    cert, key = tls / "fullchain.pem", tls / "privkey.pem"
    fullchain, privkey = lineage_files(certbot)
    write_owned(cert, fullchain, account.pw_uid, account.pw_gid, 0o644)
    write_owned(key, privkey, account.pw_uid, account.pw_gid, 0o600)
    with Prosody(public_tmp / "prosody", CERT_NAME, cert, key) as prosody:
        yield XmppSite(
            certbot=certbot,
            prosody=prosody,
            cert=cert,
            key=key,
            config=tmp_path / "consumers.yaml",
            lock=tmp_path / "fanout.lock",
            fanout=fanout_bin,
        )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_probe_and_openssl_agree_with_the_lineage(xmpp: XmppSite, dialect: str) -> None:
    """fetch_served over STARTTLS gets the lineage's leaf and its chain (the chain check
    passes), and `openssl s_client -starttls` sees the same leaf."""
    lineage = read_lineage(str(xmpp.live))
    expected = file_fingerprint(xmpp.live / "cert.pem")
    assert lineage.cert.fingerprint == expected

    served = fetch_served("127.0.0.1", xmpp.port(dialect), CERT_NAME, 10, Dialect(dialect))

    assert fingerprint(served.leaf) == expected
    assert served.chain, "this Python cannot read the served chain"
    assert fingerprint(served.chain[0]) == expected
    assert lineage.chain_der, "Pebble's lineage has no intermediate"
    assert served.chain[1 : 1 + len(lineage.chain_der)] == lineage.chain_der
    assert chain_problem(served.chain, lineage) is None
    assert openssl_fingerprint(xmpp.port(dialect), CERT_NAME, dialect) == expected


RELOADS: dict[str, Callable[[Prosody], list[str]]] = {
    "prosodyctl-reload": Prosody.reload_argv,
    "sighup": Prosody.hup_argv,
}


@pytest.mark.parametrize("how", RELOADS)
def test_cli_deploy_after_renewal_turns_prosody_to_the_new_cert(xmpp: XmppSite, how: str) -> None:
    """After `certbot renew`, `certbot-fanout deploy` places the files (owned by prosody, key
    0600), reloads Prosody (prosodyctl reload, or SIGHUP to its PID), and proves on c2s and s2s
    that the new certificate (with its chain) is served; openssl agrees."""
    old = file_fingerprint(xmpp.live / "cert.pem")
    assert xmpp.served() == {"xmpp": old, "xmpp-server": old}
    xmpp.certbot.renew()  # no hook: the deploy below is the one under test
    new = file_fingerprint(xmpp.live / "cert.pem")
    assert new != old, "certbot did not renew the lineage"
    assert xmpp.served() == {"xmpp": old, "xmpp-server": old}
    xmpp.write_config(RELOADS[how](xmpp.prosody))
    pid = xmpp.prosody.pid

    result = xmpp.deploy()

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    (consumer,) = report["consumers"]
    assert consumer["outcome"] == "ok", consumer
    assert consumer["reloaded"] is True
    assert [f["changed"] for f in consumer["files"]] == [True, True]
    endpoints = {e["port"]: e for e in consumer["endpoints"]}
    assert set(endpoints) == {xmpp.prosody.c2s_port, xmpp.prosody.s2s_port}
    assert all(e["ok"] and e["error"] is None for e in endpoints.values()), endpoints
    assert all(e["server_name"] == CERT_NAME for e in endpoints.values())

    assert xmpp.served() == {"xmpp": new, "xmpp-server": new}
    assert xmpp.prosody.pid == pid and xmpp.prosody.running, "prosody restarted, not reloaded"
    uid = pwd.getpwnam(PROSODY_USER).pw_uid
    for path, mode in ((xmpp.cert, 0o644), (xmpp.key, 0o600)):
        st = path.lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (uid, mode), path
    assert xmpp.cert.read_bytes() == (xmpp.live / "fullchain.pem").read_bytes()
    assert xmpp.key.read_bytes() == (xmpp.live / "privkey.pem").read_bytes()
    lineage = read_lineage(str(xmpp.live))
    for dialect in DIALECTS:
        served = fetch_served("127.0.0.1", xmpp.port(dialect), CERT_NAME, 10, Dialect(dialect))
        assert chain_problem(served.chain, lineage) is None
