"""notify: who is told when a consumer starts failing or recovers, and what they are told.

Real parts throughout: the record in real files, a real script as the command notifier (and as
a stand-in sendmail that keeps the RFC 5322 message it is piped), a real HTTPS receiver on a
loopback port with a throwaway CA, real deploys through the command line against a loopback
TLS peer that serves the wrong certificate. Mail through a real Postfix is in
tests/integration/test_notify_mail.py.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certbot_fanout import notify
from certbot_fanout.config import parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import Consumer, Notify, Webhook
from certbot_fanout.notify import Observation, notify_changes, record_path
from tests.support.cli import invoke
from tests.support.lineages import LineageFactory
from tests.support.notify import (
    NAME,
    CommandSink,
    WebhookReceiver,
    deploy_args,
    key_lines,
    notify_map,
    stale_peer,
    states,
)
from tests.support.peers import Peer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir()
    return str(tmp_path / "state" / "state.json")


@pytest.fixture
def sink(tmp_path: Path) -> CommandSink:
    return CommandSink(tmp_path)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(tmp_path / "webhook")
    yield server
    server.close()


def consumer(name: str, notify_block: Notify, notes: str = "") -> Consumer:
    return Consumer(name=name, certificate=NAME, notes=notes, notify=notify_block)


def seen(c: Consumer, failing: bool, error: str = "it broke") -> Observation:
    return Observation(c, failing, error=error if failing else None)


# -- the state rule ----------------------------------------------------------------------------


def test_a_failure_is_told_once_and_its_recovery_once(sink: CommandSink, state: str) -> None:
    web = consumer("web", Notify(command=tuple(sink.argv)))
    report = notify_changes([seen(web, True)], state, "deploy notify.test")
    assert report.problems == ()
    assert [states(m) for m in sink.messages()] == [[("web", "failing")]]
    assert sink.messages()[0]["run"] == "deploy notify.test"

    report = notify_changes([seen(web, True)], state, "deploy notify.test")
    assert report.deliveries == () and len(sink.messages()) == 1  # still failing: nothing new

    notify_changes([seen(web, False)], state, "status --repair")
    assert [states(m) for m in sink.messages()][1:] == [[("web", "recovered")]]
    notify_changes([seen(web, False)], state, "status --repair")
    assert len(sink.messages()) == 2


def test_a_consumer_never_seen_failing_is_never_announced(sink: CommandSink, state: str) -> None:
    web = consumer("web", Notify(command=tuple(sink.argv)))
    assert notify_changes([seen(web, False)], state, "deploy").deliveries == ()
    assert sink.messages() == []
    assert not os.path.exists(record_path(state))


def test_one_message_per_notifier_lists_every_consumer_that_changed(
    sink: CommandSink, state: str
) -> None:
    block = Notify(command=tuple(sink.argv))
    web, db, cache = consumer("web", block), consumer("db", block), consumer("cache", block)
    notify_changes([seen(web, True), seen(db, True), seen(cache, False)], state, "deploy")
    notify_changes([seen(web, False), seen(db, True), seen(cache, True)], state, "deploy")
    assert [states(m) for m in sink.messages()] == [
        [("db", "failing"), ("web", "failing")],
        [("cache", "failing"), ("web", "recovered")],
    ]
    assert sink.messages()[1]["summary"].endswith(": FAILING cache; recovered web")


def test_a_failing_notifier_is_reported_and_retried_until_it_delivers(
    sink: CommandSink, state: str
) -> None:
    web = consumer("web", Notify(command=tuple(sink.argv)))
    sink.behaviour = "fail"
    report = notify_changes([seen(web, True)], state, "deploy")
    assert [d.ok for d in report.deliveries] == [False]
    (problem,) = report.problems
    assert "not delivered, will retry on the next run" in problem
    assert "exited 3" in problem and "sink said no" in problem
    sink.behaviour = "ok"
    notify_changes([seen(web, True)], state, "deploy")
    assert [states(m) for m in sink.messages()] == [[("web", "failing")]]
    notify_changes([seen(web, True)], state, "deploy")
    assert len(sink.messages()) == 1


def test_a_hanging_command_is_cut_at_its_timeout_and_retried(
    sink: CommandSink, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "COMMAND_TIMEOUT", 1.0)
    web = consumer("web", Notify(command=tuple(sink.argv)))
    sink.behaviour = "hang"
    start = time.monotonic()
    report = notify_changes([seen(web, True)], state, "deploy")
    assert time.monotonic() - start < 8
    assert "timed out after 1 s" in report.problems[0]
    sink.behaviour = "ok"
    notify_changes([seen(web, True)], state, "deploy")
    assert [states(m) for m in sink.messages()] == [[("web", "failing")]]


def test_each_notifier_advances_only_when_it_delivered(
    sink: CommandSink, receiver: WebhookReceiver, state: str
) -> None:
    hook = Webhook(receiver.url(), ca_file=str(receiver.ca_file))
    web = consumer("web", Notify(command=tuple(sink.argv), webhook=hook))
    sink.behaviour = "fail"
    report = notify_changes([seen(web, True)], state, "deploy")
    assert sorted(d.ok for d in report.deliveries) == [False, True]
    assert len(receiver.requests) == 1 and sink.messages() == []
    sink.behaviour = "ok"
    notify_changes([seen(web, True)], state, "deploy")
    assert len(receiver.requests) == 1  # the webhook was told already
    assert [states(m) for m in sink.messages()] == [[("web", "failing")]]


def test_a_missing_unreadable_or_corrupt_record_is_an_empty_one(
    sink: CommandSink, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert record_path(state) == state.removesuffix(".json") + ".notify.json"
    assert record_path("/x/state") == "/x/state.notify.json"
    web = consumer("web", Notify(command=tuple(sink.argv)))
    notify_changes([seen(web, True)], state, "deploy")
    record = json.loads(Path(record_path(state)).read_text())
    assert list(record["notifiers"].values()) == [
        {"label": f"command {sink.script}", "failing": ["web"]}
    ]
    assert os.stat(record_path(state)).st_mode & 0o777 == 0o600
    Path(record_path(state)).write_text("{not json")
    notify_changes([seen(web, True)], state, "deploy")
    assert "is not a certbot-fanout notification record" in caplog.text
    assert len(sink.messages()) == 2  # told again: better twice than never


def test_changing_a_notifier_gives_it_a_record_of_its_own(
    tmp_path: Path, sink: CommandSink, state: str
) -> None:
    other = CommandSink(tmp_path, "other")
    notify_changes([seen(consumer("web", Notify(command=tuple(sink.argv))), True)], state, "d")
    notify_changes([seen(consumer("web", Notify(command=tuple(other.argv))), True)], state, "d")
    assert len(sink.messages()) == 1 and len(other.messages()) == 1


def test_status_judges_only_what_it_can_see() -> None:
    from certbot_fanout.deploy import FileResult
    from certbot_fanout.status import ConsumerStatus, Level, StatusReport

    block = Notify(command=("/bin/true",))
    blind, unreadable, checked, warned = (
        consumer(n, block) for n in ("blind", "unreadable", "checked", "warned")
    )
    copy = (FileResult("/etc/x.pem", False),)
    report = StatusReport(
        consumers=(
            ConsumerStatus(blind, Level.OK),  # no files, no endpoints: nothing to judge
            ConsumerStatus(unreadable, Level.UNKNOWN, ("live/x: missing",)),
            ConsumerStatus(checked, Level.CRITICAL, ("/etc/x.pem: content differs",), copy),
            ConsumerStatus(warned, Level.WARNING, ("/etc/x.pem: mode 0640",), copy),
        ),
        lineages={NAME: None},
        level=Level.UNKNOWN,
        seconds=0.0,
    )
    found = {o.name: (o.failing, o.error) for o in notify.from_status(report)}
    assert found == {
        "unreadable": (True, "live/x: missing"),
        "checked": (True, "/etc/x.pem: content differs"),
        "warned": (False, None),
    }


# -- the webhook -------------------------------------------------------------------------------


def headers_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "hook-headers"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_webhook_gets_the_document_with_the_headers_of_its_file(
    tmp_path: Path, receiver: WebhookReceiver, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy in the environment is never used: the receiver is only reachable directly.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    secret = headers_file(
        tmp_path, "# a token\nAuthorization: Bearer s3cret-token\n\nX-Team: ops\n"
    )
    hook = Webhook(receiver.url("/hook?key=abc"), str(secret), 5, str(receiver.ca_file))
    report = notify_changes([seen(consumer("web", Notify(webhook=hook)), True)], state, "deploy")
    assert report.problems == ()
    ((path, headers, body),) = receiver.requests
    assert path == "/hook?key=abc"
    assert headers["Authorization"] == "Bearer s3cret-token" and headers["X-Team"] == "ops"
    assert headers["Content-Type"] == "application/json"
    assert states(json.loads(body)) == [("web", "failing")]
    assert report.deliveries[0].notifier == f"webhook https://localhost:{receiver.port}/hook"


def test_the_webhook_verifies_tls_against_the_system_without_ca_file(
    receiver: WebhookReceiver, state: str
) -> None:
    hook = Webhook(receiver.url())
    report = notify_changes([seen(consumer("web", Notify(webhook=hook)), True)], state, "d")
    assert "CERTIFICATE_VERIFY_FAILED" in report.problems[0]
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("Authorization: Bearer s3cret-token\n", 0o640, "readable by no one else"),
        ("Authorization Bearer s3cret-token\n", 0o600, "line 1: expected 'Name: value'"),
        ("Host: s3cret-token.example\n", 0o600, "line 1: Host is set by the request"),
    ],
    ids=["group-readable", "not-a-header", "reserved"],
)
def test_a_bad_headers_file_fails_the_webhook_and_never_shows_its_values(
    tmp_path: Path, receiver: WebhookReceiver, state: str, text: str, mode: int, expected: str
) -> None:
    secret = headers_file(tmp_path, text, mode)
    hook = Webhook(receiver.url(), str(secret), ca_file=str(receiver.ca_file))
    report = notify_changes([seen(consumer("web", Notify(webhook=hook)), True)], state, "d")
    (problem,) = report.problems
    assert expected in problem and "s3cret" not in problem
    assert receiver.requests == []


def test_a_hanging_or_refusing_webhook_is_bounded_and_retried(
    receiver: WebhookReceiver, state: str
) -> None:
    hook = Webhook(receiver.url(), timeout=1, ca_file=str(receiver.ca_file))
    web = consumer("web", Notify(webhook=hook))
    receiver.hang = True
    start = time.monotonic()
    report = notify_changes([seen(web, True)], state, "d")
    assert time.monotonic() - start < 4
    assert "no answer within 1 s" in report.problems[0]
    receiver.hang, receiver.status = False, 500
    assert "answered 500" in notify_changes([seen(web, True)], state, "d").problems[0]
    receiver.status = 200
    assert notify_changes([seen(web, True)], state, "d").problems == ()
    assert notify_changes([seen(web, True)], state, "d").deliveries == ()
    assert len(receiver.documents()) == 2  # the refused one, then the one that was taken


# -- through the command line: what is said, and what is not changed -------------------------


@pytest.fixture
def peer(lineages: LineageFactory, tmp_path: Path) -> Iterator[tuple[Path, Peer]]:
    with stale_peer(lineages, tmp_path) as found:
        yield found


def test_a_deploy_tells_what_was_served_and_expected_and_never_the_key(
    tmp_path: Path, peer: tuple[Path, Peer], sink: CommandSink, state: str
) -> None:
    live, server = peer
    mail = CommandSink(tmp_path, "sendmail")  # a real program in sendmail's place
    notify_yaml = (
        f"    command: {sink.argv}\n    mail: [ops@example.org, alice@example.org]\n"
        f"    sendmail: {[*mail.argv, '-t', '-oi']}\n"
    )
    config = notify_map(tmp_path, server, live, notify_yaml)
    result = invoke(deploy_args(tmp_path, config, live, state))
    assert result.returncode == 1
    ((message,), (raw_mail,)) = sink.messages(), mail.raw()

    changes = {c["name"]: c for c in message["changes"]}
    assert set(changes) == {"web", "leaky"}  # quiet has `notify: {}`: nobody
    web = changes["web"]
    document = json.loads(result.stdout)
    assert web["expected"] == document["expected"]
    assert web["failed_stage"] == "verify" and web["state"] == "failing"
    served = web["endpoints"][0]["served"]
    assert served["sha256"] != web["expected"]["sha256"]
    assert web["notes"] == "The web front; call Alice before touching it."
    assert notify.KEY_REMOVED in changes["leaky"]["error"]

    parsed = email.message_from_string(raw_mail, policy=email.policy.default)
    assert parsed["To"] == "ops@example.org, alice@example.org"
    assert parsed["Subject"].endswith(": FAILING leaky, web")
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = parsed.get_body().get_content()  # type: ignore[union-attr]
    assert f"serial {served['serial']}" in text and f"serial {web['expected']['serial']}" in text
    assert "call Alice before touching it" in text

    for raw in (*sink.raw(), raw_mail):
        assert "PRIVATE KEY" not in raw
        assert not [line for line in key_lines(live) if line in raw]


# -- the map -------------------------------------------------------------------------------------


def test_a_consumers_block_replaces_the_defaults_whole_block() -> None:
    config = parse_config(
        """\
version: 1
defaults:
  notify:
    mail: [root@localhost]
    webhook: {url: "https://hooks.example.org/fanout", timeout: 5}
consumers:
  a: {certificate: x}
  b: {certificate: x, notify: {command: /usr/local/bin/page-me --now}}
  c: {certificate: x, notify: {}}
"""
    )
    a, b, c = (x.notify for x in config.consumers)
    assert a == Notify(
        ("root@localhost",), webhook=Webhook("https://hooks.example.org/fanout", timeout=5)
    )
    assert b == Notify(command=("/usr/local/bin/page-me", "--now"))
    assert c == Notify() and not c
    assert a.sendmail == notify.SENDMAIL == ("/usr/sbin/sendmail", "-t", "-oi")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("{mial: [a@b.org]}", "consumers.a.notify.mial: unknown key 'mial'; did you mean 'mail'?"),
        ("{mail: ['Root <a@b.org>']}", "consumers.a.notify.mail[0]: expected a plain mail address"),
        ("{mail: []}", "consumers.a.notify.mail: expected at least one mail address"),
        ("{webhook: {url: 'http://x.org/'}}", "notify.webhook.url: expected an https:// URL"),
        ("{webhook: {url: 'https://u:p@x.org/'}}", "no user or password in it"),
        ("{webhook: {url: 'https://x.org/', timeout: 61}}", "at most 60, got 61"),
        ("{webhook: {url: 'https://x.org/', headers: /h}}", "did you mean 'headers_file'?"),
        ("{webhook: {url: 'https://x.org/', headers_file: h}}", "expected an absolute path"),
        ("{webhook: {timeout: 3}}", "consumers.a.notify.webhook: missing required key 'url'"),
        ("{sendmail: /usr/sbin/sendmail}", "'sendmail' is only used with 'mail'"),
        ("{command: 'page-me | tee'}", "commands run without a shell"),
        ("[a@b.org]", "consumers.a.notify: expected a mapping with any of mail, webhook"),
    ],
)
def test_a_bad_notify_block_is_refused_with_its_place(block: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(f"version: 1\nconsumers:\n  a:\n    certificate: x\n    notify: {block}\n")
    assert expected in str(err.value)
    assert str(err.value).startswith("<config>:5:")


def test_the_hook_path_imports_notify_only_for_a_map_with_a_notify_block(
    tmp_path: Path, lineages: LineageFactory, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue(NAME)
    plain = write_config(
        f"version: 1\nconsumers:\n  a: {{certificate: {NAME}, reload: [/bin/true]}}\n"
    )
    told = tmp_path / "told.yaml"
    told.write_text(plain.read_text() + "defaults: {notify: {command: [/bin/true]}}\n")
    script = (
        "import sys\nfrom certbot_fanout.cli import main\n"
        "main(sys.argv[1:], environ={})\n"
        "print('certbot_fanout.notify' in sys.modules, 'certbot' in sys.modules)\n"
    )
    found = []
    for config in (plain, told):
        argv = deploy_args(tmp_path, config, live, str(tmp_path / "state.json"))
        result = subprocess.run(
            [sys.executable, "-c", script, *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
        found.append(result.stdout.splitlines()[-1])
    assert found == ["False False", "True False"]
