"""notify through the real command line and the installer: deploys and repair runs (seconds
each: every run waits out a stale endpoint), with a real script as the notifier.

Whatever the notifier does (fails, hangs, delivers), a deploy's exit code and JSON document are
the same; it is told once when consumers start failing and once when they recover; plain
``status`` tells no one, ``status --repair`` does; the installer tells after its deploy and
after its repair check on every ``certbot renew``. The unit tests
(tests/unit/test_notify.py) hold the state rule, the webhook and the message's content.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from certbot_fanout import notify
from tests.support.cli import invoke
from tests.support.lineages import LineageFactory
from tests.support.notify import (
    NAME,
    CommandSink,
    catch_up,
    deploy_args,
    notify_map,
    stale_peer,
    states,
    status_args,
    without_times,
)
from tests.support.peers import Peer


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state.json")


@pytest.fixture
def sink(tmp_path: Path) -> CommandSink:
    return CommandSink(tmp_path)


@pytest.fixture
def peer(lineages: LineageFactory, tmp_path: Path) -> Iterator[tuple[Path, Peer]]:
    with stale_peer(lineages, tmp_path) as found:
        yield found


def test_notifiers_never_change_a_deploys_exit_code_or_output(
    tmp_path: Path,
    peer: tuple[Path, Peer],
    sink: CommandSink,
    state: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, server = peer
    monkeypatch.setattr(notify, "COMMAND_TIMEOUT", 1.0)
    config = notify_map(tmp_path, server, live, f"    command: {sink.argv}\n")
    outputs = []
    for behaviour in ("fail", "hang"):
        sink.behaviour = behaviour
        result = invoke(deploy_args(tmp_path, config, live, state))
        assert result.returncode == 1, behaviour
        outputs.append(without_times(json.loads(result.stdout)))
        err = capsys.readouterr().err
        assert "not delivered, will retry on the next run" in err, behaviour
    sink.behaviour = "ok"
    result = invoke(deploy_args(tmp_path, config, live, state))
    assert result.returncode == 1 and sink.messages()  # told at last
    assert outputs == [without_times(json.loads(result.stdout))] * 2

    catch_up(live, server)  # the consumer recovers; the notifier now fails
    fixed = notify_map(tmp_path, server, live, f"    command: {sink.argv}\n", leaky=False)
    sink.behaviour = "fail"
    result = invoke(deploy_args(tmp_path, fixed, live, state))
    assert result.returncode == 0, result.stdout
    assert "not delivered" in capsys.readouterr().err
    sink.behaviour = "ok"
    assert invoke(deploy_args(tmp_path, fixed, live, state)).returncode == 0
    assert [states(m) for m in sink.messages()][1:] == [
        [("leaky", "recovered"), ("web", "recovered")]
    ]


def test_status_repair_tells_and_plain_status_does_not(
    tmp_path: Path, peer: tuple[Path, Peer], sink: CommandSink, state: str
) -> None:
    live, server = peer
    (tmp_path / "web").mkdir()
    config = tmp_path / "status.yaml"
    config.write_text(
        f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files: [{{path: {tmp_path}/web/fullchain.pem, content: fullchain}}]
    reload: [/bin/true]
    verify: [{{host: 127.0.0.1, port: {server.port}, server_name: {NAME}}}]
    verify_timeout: 1
    notify: {{command: {sink.argv}}}
"""
    )
    assert invoke(status_args(tmp_path, config, live, state)).returncode == 2
    assert sink.messages() == []  # plain status tells no one
    for _ in range(2):
        assert invoke(status_args(tmp_path, config, live, state, "--repair")).returncode == 2
    ((message,),) = [sink.messages()]
    assert message["run"] == "status --repair" and states(message) == [("web", "failing")]
    assert message["changes"][0]["problems"]

    catch_up(live, server)
    assert invoke(status_args(tmp_path, config, live, state)).returncode == 0
    assert len(sink.messages()) == 1
    assert invoke(status_args(tmp_path, config, live, state, "--repair")).returncode == 0
    assert states(sink.messages()[1]) == [("web", "recovered")]


def test_the_plugin_tells_after_its_deploy(
    tmp_path: Path,
    peer: tuple[Path, Peer],
    sink: CommandSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from certbot import errors

    from certbot_fanout.plugin import Installer

    live, server = peer
    monkeypatch.setenv("CERTBOT_FANOUT_STATE", str(tmp_path / "plugin-state.json"))
    config = notify_map(tmp_path, server, live, f"    command: {sink.argv}\n")
    installer = Installer(SimpleNamespace(fanout_config=str(config)), "fanout")
    lineage = SimpleNamespace(cert_path=f"{live}/cert.pem")
    with pytest.raises(errors.PluginError, match="failed"):
        installer.renew_deploy(lineage)  # type: ignore[arg-type]
    assert [sorted(states(m)) for m in sink.messages()] == [
        [("leaky", "failing"), ("web", "failing")]
    ]
    # certbot renew's check of every lineage (GenericUpdater): the repair fails the same way
    # (web still serves the old certificate), which its notifier was told already; leaky (no
    # files, no endpoints) shows status nothing to judge, so it is not "recovered".
    with pytest.raises(errors.PluginError, match="still broken after repair"):
        installer.generic_updates(lineage)  # type: ignore[arg-type]
    assert len(sink.messages()) == 1
    catch_up(live, server)
    installer.generic_updates(lineage)  # type: ignore[arg-type]
    assert states(sink.messages()[1]) == [("web", "recovered")]
    assert sink.messages()[1]["run"] == "certbot renew (repair)"
