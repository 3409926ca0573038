"""The story certbot-fanout was born from, with the real parts.

A Matrix homeserver: nginx terminates the client port, Synapse terminates its federation port
itself with its *own copy* of the certificate. A real Pebble issues the certificate and a real
`certbot renew` runs certbot-fanout as its deploy hook.

1. With a correct map, one renewal reaches both: files placed (Synapse's owned by its user,
   key 0600), nginx tested and reloaded, Synapse sent SIGHUP, and both proven to serve the new
   certificate.
2. With the map of the original incident (the files go where the admin *thought* Synapse reads
   them; Synapse really reads a stale second copy), the very first renewal reports synapse
   FAILED, "serves another certificate", while nginx is ok: the three-month outage is caught
   on day one.

One Synapse (in a venv cached across runs) and one nginx for the whole module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.integration import (
    hook_command,
    lineage_files,
    lineage_fingerprint,
    log_text,
    require_binary,
)
from tests.support.maps import config_text
from tests.support.proc import Account, public_tempdir, write_owned
from tests.support.stack import (
    NGINX_BIN,
    Certbot,
    Nginx,
    Pebble,
    openssl_fingerprint,
    served_fingerprint,
    settled_workers,
)
from tests.support.synapse_env import (
    Synapse,
)

MATRIX = "matrix.fanout.test"
SYNAPSE_NOTES = (
    "Synapse terminates TLS itself on its federation port; nginx handles the client port."
)


@dataclass
class Story:
    certbot: Certbot
    nginx: Nginx
    synapse: Synapse
    account: Account
    fanout: Path
    config: Path
    lock: Path
    nginx_cert: Path
    nginx_key: Path
    synapse_cert: Path  # what homeserver.yaml reads
    synapse_key: Path
    elsewhere: Path  # a directory Synapse does not read

    @property
    def live(self) -> Path:
        return self.certbot.lineage(MATRIX)

    @property
    def hook_command(self) -> str:
        return hook_command(self.fanout, self.lock)

    def lineage_fingerprint(self) -> str:
        return lineage_fingerprint(self.certbot, MATRIX)

    def log(self) -> str:
        return log_text(self.certbot)

    def write_config(self, synapse_dir: Path, synapse_verify_timeout: int = 30) -> None:
        q = json.dumps  # JSON strings and lists are YAML flow syntax
        u = self.account.name
        consumers = f"""\
  nginx:
    certificate: {MATRIX}
    files:
      - {{path: {q(str(self.nginx_cert))}, content: fullchain}}
      - {{path: {q(str(self.nginx_key))}, content: privkey}}
    test: {q(self.nginx.test_argv())}
    reload: {q(self.nginx.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.nginx.port}}}
  synapse:
    certificate: {MATRIX}
    files:
      - {{path: {q(str(synapse_dir / "fullchain.pem"))}, content: fullchain, owner: {u}, group: {u}}}
      - {{path: {q(str(synapse_dir / "privkey.pem"))}, content: privkey, owner: {u}, group: {u}, mode: "0600"}}
    reload: {q(self.synapse.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.synapse.port}, server_name: {MATRIX}}}
    verify_timeout: {synapse_verify_timeout}
    notes: {q(SYNAPSE_NOTES)}
"""  # noqa: E501
        self.config.write_text(config_text(consumers, verify_timeout=30))

    def renew(self) -> tuple[int, str]:
        """`certbot renew --force-renewal ... --deploy-hook certbot-fanout`: (exit code, this
        run's letsencrypt.log; certbot starts a new log file at every run)."""
        result = self.certbot.renew("--deploy-hook", self.hook_command, check=False)
        return result.returncode, self.log()


@pytest.fixture(scope="module")
def story_dir() -> Iterator[Path]:
    """A module temp dir every user can traverse (pytest's tmp base is 0700)."""
    with public_tempdir("certbot-fanout-synapse-") as path:
        yield path


@pytest.fixture(scope="module")
def story(
    root: None,
    fanout_bin: Path,
    pebble: Pebble,
    synapse_python: Path,
    synapse_account: Account,
    story_dir: Path,
) -> Iterator[Story]:
    """The homeserver as the admin set it up by hand at install time: a lineage issued by
    the real Certbot; nginx and Synapse each serving their own copy of it."""
    require_binary(NGINX_BIN, "nginx")
    config = story_dir / "consumers.yaml"
    certbot = Certbot(
        pebble, story_dir / "certbot", extra_env={"CERTBOT_FANOUT_CONFIG": str(config)}
    )
    certbot.issue(MATRIX)
    acct = synapse_account
    nginx_tls, synapse_tls, elsewhere = (
        story_dir / d for d in ("nginx-tls", "synapse-tls", "synapse-tls-new")
    )
    for d in (nginx_tls, synapse_tls, elsewhere):
        d.mkdir(mode=0o755)
    nginx_cert, nginx_key = nginx_tls / "fullchain.pem", nginx_tls / "privkey.pem"
    synapse_cert, synapse_key = synapse_tls / "fullchain.pem", synapse_tls / "privkey.pem"
    fullchain, privkey = lineage_files(certbot, MATRIX)
    write_owned(nginx_cert, fullchain, 0, 0, 0o644)
    write_owned(nginx_key, privkey, 0, 0, 0o600)
    write_owned(synapse_cert, fullchain, acct.uid, acct.gid, 0o644)
    write_owned(synapse_key, privkey, acct.uid, acct.gid, 0o600)

    nginx = Nginx(story_dir / "nginx", nginx_cert, nginx_key, server_name=MATRIX)
    synapse = Synapse(
        synapse_python, story_dir / "synapse", acct, MATRIX, synapse_cert, synapse_key
    )
    synapse.generate_config()
    with nginx, synapse:
        yield Story(
            certbot=certbot,
            nginx=nginx,
            synapse=synapse,
            account=acct,
            fanout=fanout_bin,
            config=config,
            lock=story_dir / "fanout.lock",
            nginx_cert=nginx_cert,
            nginx_key=nginx_key,
            synapse_cert=synapse_cert,
            synapse_key=synapse_key,
            elsewhere=elsewhere,
        )


def _consumer_line(log: str, name: str, status: str) -> str:
    match = re.search(rf"^\s+{name}\s+{status}\s+(.*)$", log, re.MULTILINE)
    assert match, f"no '{name} {status}' line in certbot's log:\n{log[-4000:]}"
    return match.group(1)


def test_renewal_reaches_nginx_and_synapse(story: Story) -> None:
    """One `certbot renew` with certbot-fanout as deploy hook: nginx and Synapse both get
    their files, are tested / reloaded (Synapse by SIGHUP, same PID), and both are proven to
    serve the renewed certificate; certbot's log shows both consumers ok."""
    story.write_config(story.synapse_cert.parent)
    old = story.lineage_fingerprint()
    syn = story.synapse
    pid, replaced = syn.pid, syn.log_text().count("Replacing TLS context factory")

    rc, log = story.renew()

    assert rc == 0, log[-4000:]
    new = story.lineage_fingerprint()
    assert new != old, "certbot did not renew the lineage"
    settled_workers(story.nginx.pid)  # nginx's old worker drains for ~100 ms after a reload
    assert openssl_fingerprint(story.nginx.port, MATRIX) == new
    assert openssl_fingerprint(syn.port, MATRIX) == new
    assert served_fingerprint("127.0.0.1", syn.port, MATRIX) == new

    # Synapse was reloaded by the SIGHUP, not restarted.
    assert syn.running and syn.pid == pid
    assert syn.log_text().count("Replacing TLS context factory") > replaced
    for path, part in ((story.synapse_cert, "fullchain"), (story.synapse_key, "privkey")):
        st = path.lstat()
        mode = 0o600 if part == "privkey" else 0o644
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
            story.account.uid,
            story.account.gid,
            mode,
        ), path
        assert path.read_bytes() == (story.live / f"{part}.pem").read_bytes()

    assert f"Running deploy-hook command: {story.hook_command}" in log
    assert "reported error code" not in log, log[-4000:]
    nginx_line = _consumer_line(log, "nginx", "ok")
    assert nginx_line.startswith("placed 2 of 2 files, tested, reloaded"), nginx_line
    assert f"verified 127.0.0.1:{story.nginx.port}" in nginx_line
    synapse_line = _consumer_line(log, "synapse", "ok")
    assert synapse_line.startswith("placed 2 of 2 files, reloaded"), synapse_line
    assert f"verified 127.0.0.1:{syn.port}" in synapse_line
    assert "all 2 consumers ok" in log


def test_stale_second_copy_is_caught_on_the_first_renewal(story: Story) -> None:
    """The incident's map: Synapse's files go where the admin thought Synapse reads them,
    but homeserver.yaml points at a second copy. The SIGHUP "succeeds" and Synapse keeps
    serving the stale copy: certbot-fanout reports synapse FAILED (serves another
    certificate, with the notes) while nginx is ok; certbot itself still exits 0."""
    story.write_config(story.elsewhere, synapse_verify_timeout=3)
    syn = story.synapse
    stale = served_fingerprint("127.0.0.1", syn.port, MATRIX)
    stale_copy = story.synapse_cert.read_bytes()
    pid = syn.pid

    rc, log = story.renew()

    assert rc == 0, log[-4000:]  # a failing deploy hook does not change certbot's exit code
    new = story.lineage_fingerprint()
    assert new != stale
    settled_workers(story.nginx.pid)
    assert openssl_fingerprint(story.nginx.port, MATRIX) == new
    assert openssl_fingerprint(syn.port, MATRIX) == stale
    assert syn.running and syn.pid == pid
    assert story.synapse_cert.read_bytes() == stale_copy  # the copy Synapse reads: untouched
    assert (story.elsewhere / "fullchain.pem").read_bytes() == (
        story.live / "fullchain.pem"
    ).read_bytes()

    assert f"Running deploy-hook command: {story.hook_command}" in log
    assert "Hook 'deploy-hook' reported error code 1" in log, log[-4000:]
    nginx_line = _consumer_line(log, "nginx", "ok")
    assert f"verified 127.0.0.1:{story.nginx.port}" in nginx_line
    synapse_line = _consumer_line(log, "synapse", "FAILED")
    assert synapse_line.startswith("placed 2 of 2 files, reloaded"), synapse_line
    assert synapse_line.endswith("verify failed:"), synapse_line
    stale_line = f"127.0.0.1:{syn.port} (SNI {MATRIX}, asked for ECDSA) serves another certificate"
    assert stale_line in log, log[-4000:]
    assert re.search(rf"served:\s+.*SHA-256 {stale}", log), log[-4000:]
    assert re.search(rf"expected:\s+.*SHA-256 {new}", log), log[-4000:]
    assert f"notes: {SYNAPSE_NOTES}" in log
    assert "1 of 2 consumers FAILED (synapse); 1 ok" in log
    assert "Traceback" not in log
