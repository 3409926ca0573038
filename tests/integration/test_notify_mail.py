"""notify's mail through a real Postfix, read back from the mailbox it delivered to.

A private Postfix instance (``daemons_mail.LocalPostfix``: its own config and queue
directories, local delivery to an mbox per user in its own spool directory) takes each message
from ``sendmail -C DIR -t -oi`` (the map's ``sendmail:``); the test reads ``nobody``'s mbox.
Through the real command line: a deploy whose consumer's endpoint serves the wrong certificate
sends one mail, the same failure again sends none, the recovery sends one; the same through
``status --repair``. No key material reaches the mailbox.
"""

from __future__ import annotations

import email.message
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_fanout._pki import ThrowawayCA
from tests.support.cli import invoke
from tests.support.daemons_mail import POSTFIX_BIN, SENDMAIL_BIN, LocalPostfix
from tests.support.lineages import LineageFactory
from tests.support.notify import (
    NAME,
    catch_up,
    deploy_args,
    key_lines,
    notify_map,
    stale_peer,
    status_args,
)
from tests.support.peers import Peer
from tests.support.proc import public_tempdir

USER = "nobody"


@pytest.fixture
def postfix() -> Iterator[LocalPostfix]:
    if os.geteuid() != 0:
        pytest.skip("a Postfix instance is started as root")
    for binary in (POSTFIX_BIN, SENDMAIL_BIN):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} missing (Debian package postfix)")
    with public_tempdir("cfanout-notify-mail-") as workdir:
        issued = ThrowawayCA("notify mail").issue(["localhost"])
        chain = workdir / "chain.pem"
        chain.write_bytes(issued.key_pem + issued.fullchain_pem)
        chain.chmod(0o600)
        daemon = LocalPostfix(workdir / "postfix", chain)
        daemon.workdir.mkdir()
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture
def peer(lineages: LineageFactory, tmp_path: Path) -> Iterator[tuple[Path, Peer]]:
    with stale_peer(lineages, tmp_path) as found:
        yield found


def settled(postfix: LocalPostfix, count: int) -> list[email.message.Message]:
    """The mailbox once ``count`` messages are in it and nothing more is queued."""
    postfix.wait_for_messages(USER, count)
    deadline = time.monotonic() + 10
    while not postfix.queue_empty() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert postfix.queue_empty(), postfix.logs()
    return postfix.messages(USER)


def body(message: email.message.Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def mail_block(postfix: LocalPostfix) -> str:
    return f"    mail: [{USER}@localhost]\n    sendmail: {postfix.sendmail_argv()}\n"


def test_a_deploy_mails_its_failure_once_and_its_recovery_once(
    tmp_path: Path, postfix: LocalPostfix, peer: tuple[Path, Peer]
) -> None:
    live, server = peer
    state = str(tmp_path / "state.json")
    config = notify_map(tmp_path, server, live, mail_block(postfix))
    for _ in range(2):  # the second run fails the same way: no second mail
        assert invoke(deploy_args(tmp_path, config, live, state)).returncode == 1
    (failing,) = settled(postfix, 1)
    assert failing["Subject"] == f"certbot-fanout on {os.uname().nodename}: FAILING leaky, web"
    assert failing["To"] == f"{USER}@localhost"
    text = body(failing)
    assert f"FAILING: web (certificate {NAME})" in text
    assert "failed at verify" in text and "call Alice before touching it" in text
    raw = postfix.mailbox(USER).read_text()
    assert "PRIVATE KEY" not in raw
    assert not [line for line in key_lines(live) if line in raw]

    catch_up(live, server)
    fixed = notify_map(tmp_path, server, live, mail_block(postfix), leaky=False)
    assert invoke(deploy_args(tmp_path, fixed, live, state)).returncode == 0
    assert invoke(deploy_args(tmp_path, fixed, live, state)).returncode == 0
    _, recovered = settled(postfix, 2)
    assert recovered["Subject"].endswith(": recovered leaky, web")
    assert "RECOVERED: web" in body(recovered)


def test_status_repair_mails_a_failure_once_and_its_recovery_once(
    tmp_path: Path, postfix: LocalPostfix, peer: tuple[Path, Peer]
) -> None:
    live, server = peer
    state = str(tmp_path / "state.json")
    (tmp_path / "web").mkdir()
    config = tmp_path / "status.yaml"
    config.write_text(
        f"""\
version: 1
defaults:
  notify:
{mail_block(postfix)}consumers:
  web:
    certificate: {NAME}
    files: [{{path: {tmp_path}/web/fullchain.pem, content: fullchain}}]
    reload: [/bin/true]
    verify: [{{host: 127.0.0.1, port: {server.port}, server_name: {NAME}}}]
    verify_timeout: 1
"""
    )
    for _ in range(2):
        assert invoke(status_args(tmp_path, config, live, state, "--repair")).returncode == 2
    (failing,) = settled(postfix, 1)
    assert failing["Subject"].endswith(": FAILING web")
    assert "after `status --repair`" in body(failing)

    catch_up(live, server)
    for _ in range(2):
        assert invoke(status_args(tmp_path, config, live, state, "--repair")).returncode == 0
    _, recovered = settled(postfix, 2)
    assert recovered["Subject"].endswith(": recovered web")
