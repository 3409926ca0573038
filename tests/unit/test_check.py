"""check: every problem that would break a deploy, in a sentence, before anything happens."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import hosts
from tests.support.cli import explain, invoke
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer

NAME = "check.test"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")


def run(config: Path, lineages: LineageFactory, *more: str) -> tuple[int, list[str]]:
    argv = ["check", "--config", str(config), "--config-dir", str(lineages.config_dir), *more]
    result = invoke(argv)
    return result.returncode, result.stdout.splitlines()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_clean_map_passes(
    lineages: LineageFactory, write_config: Callable[[str], Path], public_tmp: Path
) -> None:
    live, _ = lineages.issue(NAME)
    (public_tmp / "tls").mkdir()
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem") as peer:
        config = write_config(
            f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files:
      - {{path: {public_tmp}/tls/fullchain.pem, content: fullchain, owner: nobody}}
      - {{path: {public_tmp}/tls/privkey.pem, content: privkey, owner: nobody}}
    test: [sh, -c, "true"]
    reload: /bin/true
    verify: [{{host: 127.0.0.1, port: {peer.port}}}]
"""
        )
        code, lines = run(config, lineages)
    assert code == 0, lines
    assert lines == [f"OK: {config} checks out (1 consumer, 2 files, 1 endpoint)"]


@needs_root
def test_every_problem_is_listed_in_a_sentence(
    lineages: LineageFactory, write_config: Callable[[str], Path], public_tmp: Path
) -> None:
    live, _ = lineages.issue(NAME)
    locked = public_tmp / "locked"
    locked.mkdir(mode=0o700)
    (public_tmp / "open").mkdir()
    port = closed_port()
    config = write_config(
        f"""\
version: 1
consumers:
  synapse:
    certificate: {NAME}
    files:
      - {{path: {locked}/fullchain.pem, content: fullchain, owner: nobody}}
      - {{path: {public_tmp}/open/privkey.pem, content: privkey, owner: nobody, mode: "0644"}}
      - {{path: {public_tmp}/missing/cert.pem, content: cert}}
      - {{path: {public_tmp}/open/link.pem, content: fullchain, link: true, owner: nobody}}
    reload: [systemctl-of-a-dream, reload, synapse]
    test: [{public_tmp}/open/not-executable]
    verify: [{{host: 127.0.0.1, port: {port}}}]
  other:
    certificate: absent.test
"""
    )
    (public_tmp / "open" / "not-executable").write_text("#!/bin/sh\n")
    code, lines = run(config, lineages)
    assert code == 1
    text = "\n".join(lines)
    assert (
        f"PROBLEM: synapse: nobody is to own {locked}/fullchain.pem but could not read it: "
        f"nobody cannot enter {locked} (mode 0700, owner root); let nobody (or its group) enter "
        "every directory on the way, or place the file elsewhere"
    ) in lines
    assert (
        f"PROBLEM: synapse: {public_tmp}/open/privkey.pem holds the private key, and its "
        'configured mode 0644 lets every user on this host read it; use mode "0600", or "0640" '
        "with a group"
    ) in lines
    assert f"the directory {public_tmp}/missing does not exist; create it" in text
    assert (
        "PROBLEM: synapse: the reload command `systemctl-of-a-dream reload synapse` cannot run: "
        "no program named systemctl-of-a-dream on PATH "
        "(/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin); install it, or give its "
        "full path"
    ) in lines
    assert f"{public_tmp}/open/not-executable is not an executable file" in text
    assert f"link to {live}/fullchain.pem, but nobody cannot enter" in text
    assert "could not read its certificate through it" in text
    assert f"nothing accepts connections at 127.0.0.1:{port} (Connection refused)" in text
    assert "PROBLEM: certificate absent.test: " in text and "no such lineage directory" in text
    assert lines[-1].startswith("8 problem(s) in ")
    assert not (public_tmp / "open" / "privkey.pem").exists(), "check changes nothing"
    assert not (public_tmp / "open" / "link.pem").exists()

    code, lines = run(config, lineages, "--no-probe")
    assert not any("accepts connections" in line for line in lines)
    assert "(not probed)" in lines[-1]


@needs_root
def test_a_key_already_readable_by_others_on_disk(
    lineages: LineageFactory, write_config: Callable[[str], Path], public_tmp: Path
) -> None:
    lineages.issue(NAME)
    key = public_tmp / "privkey.pem"
    key.write_text("old key")
    key.chmod(0o644)
    config = write_config(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n"
        f"    files: [{{path: {key}, content: privkey}}]\n"
    )
    code, lines = run(config, lineages)
    assert code == 1
    assert any("is readable by every user on this host right now (mode 0644)" in x for x in lines)


def test_an_invalid_map_is_a_problem_not_a_crash(
    lineages: LineageFactory, write_config: Callable[[str], Path]
) -> None:
    config = write_config("version: 1\nconsumers:\n  web:\n    certificat: x\n")
    code, lines = run(config, lineages)
    assert code == 1
    assert lines == [
        f"PROBLEM: the map is not valid: {config}:4:5: consumers.web.certificat: unknown key "
        "'certificat'; did you mean 'certificate'?"
    ]


def test_a_problem_shared_by_several_files_is_reported_once(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    lineages.issue(NAME)
    missing = tmp_path / "missing"
    config = write_config(
        f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files:
      - {{path: {missing}/fullchain.pem, content: fullchain}}
      - {{path: {missing}/privkey.pem, content: privkey}}
      - {{path: {missing}/cert.pem, content: cert}}
  mail:
    certificate: {NAME}
    files:
      - {{path: {missing}/mail.pem, content: [privkey, fullchain]}}
"""
    )
    code, lines = run(config, lineages, "--no-probe")
    assert code == 1
    problem = f"the directory {missing} does not exist; create it"
    # Once per consumer that needs it, not once per file.
    assert [line.split(": ", 2)[1] for line in lines if problem in line] == ["web", "mail"]
    assert lines[-1] == (
        f"2 problem(s) in {config} (2 consumers, 4 files, 0 endpoints (not probed))"
    ), lines


def test_counts_are_pluralised(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    lineages.issue(NAME)
    (tmp_path / "tls").mkdir()
    config = write_config(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n"
        f"    files: [{{path: {tmp_path}/tls/cert.pem, content: cert}}]\n"
        "    verify: [{host: 127.0.0.1, port: 1}]\n"
    )
    assert run(config, lineages, "--no-probe") == (
        0,
        [f"OK: {config} checks out (1 consumer, 1 file, 1 endpoint (not probed))"],
    )


def test_every_address_of_a_name_must_accept_connections(tmp_path: Path) -> None:
    # The name is 127.0.0.1 and ::1 (a hosts file of the check's own); only 127.0.0.1
    # listens: the check names the other address, as a deploy would fail on it.
    why = hosts.available()
    if why:
        pytest.skip(why)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = (
            "from certbot_fanout.check import _endpoint_problems\n"
            "from certbot_fanout.model import Endpoint, Family\n"
            f"print(_endpoint_problems(Endpoint('both.check.test', {port})))\n"
            f"print(_endpoint_problems(Endpoint('both.check.test', {port}, family=Family.IPV4)))\n"
        )
        done = hosts.python_with_hosts(tmp_path, {"both.check.test": ["127.0.0.1", "::1"]}, code)
    assert done.returncode == 0, explain(done)
    every, v4 = done.stdout.splitlines()
    assert f"nothing accepts connections at [::1]:{port} (of both.check.test)" in every
    assert f"127.0.0.1:{port}" not in every
    assert v4 == "[]"


def test_a_notifier_that_could_not_deliver_is_a_problem(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    # The map loads (a headers_file is only read when the webhook sends), but a deploy's
    # failure would reach no one: check says so before it matters.
    lineages.issue(NAME)
    headers = tmp_path / "headers"
    headers.write_text("Authorization: Bearer not-shown\n")
    headers.chmod(0o644)  # readable by every user: refused when sending
    config = write_config(
        f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    notify:
      mail: [root@localhost]
      sendmail: [/nonexistent/sendmail, -t, -oi]
      command: [no-such-pager-here]
      webhook:
        url: "https://127.0.0.1:9/hook"
        headers_file: {headers}
        ca_file: {tmp_path}/none.pem
"""
    )
    code, lines = run(config, lineages, "--no-probe")
    assert code == 1, lines
    text = "\n".join(lines)
    assert (
        "PROBLEM: web: the mail notifier's sendmail `/nonexistent/sendmail -t -oi` cannot run"
        in text
    )
    assert (
        "PROBLEM: web: the notify command `no-such-pager-here` cannot run: no program named" in text
    )
    assert (
        "PROBLEM: web: the webhook https://127.0.0.1:9/hook would not be told: "
        f"headers_file {headers}" in text
    )
    assert f"the webhook's ca_file {tmp_path}/none.pem cannot be read" in text
    assert "not-shown" not in text
