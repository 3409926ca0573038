"""The command line, in-process through main(argv) and once as real processes."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from certbot_fanout import demo
from certbot_fanout.cli import build_parser, main
from certbot_fanout.lineage import read_lineage
from tests.support import cli
from tests.support.cli import invoke
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer
from tests.support.public import PublicInstall

NAME = "cli.test"
ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str]:
    result = invoke(argv, environ)
    return result.returncode, result.stdout


def simple_config(write_config: Callable[[str], Path], tmp_path: Path, port: int) -> Path:
    (tmp_path / "svc").mkdir(exist_ok=True)
    return write_config(
        f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files:
      - {{path: {tmp_path}/svc/fullchain.pem, content: fullchain}}
      - {{path: {tmp_path}/svc/privkey.pem, content: privkey}}
    verify:
      - {{host: 127.0.0.1, port: {port}, server_name: {NAME}}}
    verify_timeout: 2
"""
    )


def test_bare_without_hook_environment_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run([])
    assert code == 2
    assert "run bare only as a certbot deploy hook, with $RENEWED_LINEAGE set" in (
        capsys.readouterr().err
    )


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["deploy", "--frobnicate"])[0] == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_hook_mode_deploys_renewed_lineage(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem") as peer:
        config = simple_config(write_config, tmp_path, peer.port)
        env = {"RENEWED_LINEAGE": str(live), "CERTBOT_FANOUT_CONFIG": str(config)}
        code, out = run(["--lock-file", str(tmp_path / "lock")], env)
    assert code == 0, out
    assert "web  ok      placed 2 of 2 files, verified 127.0.0.1:" in out
    assert (tmp_path / "svc" / "privkey.pem").read_bytes() == (live / "privkey.pem").read_bytes()


def test_cert_name_resolves_under_config_dir_and_json_is_stable(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    with Peer("tls", live / "fullchain.pem", live / "privkey.pem") as peer:
        config = simple_config(write_config, tmp_path, peer.port)
        code, out = run(
            [
                "deploy",
                "--config",
                str(config),
                "--config-dir",
                str(lineages.config_dir),
                "--cert-name",
                NAME,
                "--json",
                "--lock-file",
                str(tmp_path / "lock"),
            ]
        )
    assert code == 0
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["ok"] is True and doc["certificate"] == NAME
    assert doc["expected"]["sha256"] == read_lineage(str(live)).cert.fingerprint
    (web,) = doc["consumers"]
    assert web["outcome"] == "ok" and web["failed_stage"] is None
    assert [f["changed"] for f in web["files"]] == [True, True]
    assert web["endpoints"][0]["ok"] is True
    assert set(web) == {
        "name",
        "host",
        "outcome",
        "failed_stage",
        "error",
        "notes",
        "files",
        "tested",
        "reloaded",
        "reload_reason",
        "rolled_back",
        "endpoints",
        "process_view",
        "seconds",
    }


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_failing_consumer_exits_1_and_is_named(
    lineages: LineageFactory, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    with Peer("silent") as peer:
        config = simple_config(write_config, tmp_path, peer.port)
        code, out = run(
            [
                "deploy",
                "--config",
                str(config),
                "--lineage",
                str(live),
                "--lock-file",
                str(tmp_path / "lock"),
            ]
        )
    assert code == 1
    assert "1 of 1 consumer FAILED (web)" in out
    assert "TLS handshake not finished" in out


def test_no_consumer_for_the_certificate_exits_0_without_reading_it(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    config = write_config("version: 1\nconsumers: {}\n")
    env = {
        "RENEWED_LINEAGE": str(tmp_path / "does-not-exist" / "other.test"),
        "CERTBOT_FANOUT_CONFIG": str(config),
    }
    code, out = run([], env)
    assert code == 0
    assert "no consumer in" in out and "uses certificate other.test; nothing to do" in out


def test_config_and_lineage_errors_exit_2_without_traceback(
    lineages: LineageFactory,
    write_config: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, _ = lineages.issue(NAME)
    missing = tmp_path / "nope.yaml"
    assert run(["deploy", "--config", str(missing), "--lineage", str(live)])[0] == 2
    err = capsys.readouterr().err
    assert f"{missing}: config file not found" in err and "Traceback" not in err

    config = simple_config(write_config, tmp_path, 1)
    (live / "privkey.pem").unlink()
    (live / "privkey.pem").write_bytes(lineages.ca.issue([NAME]).key_pem)
    code, _ = run(["deploy", "--config", str(config), "--lineage", str(live)])
    assert code == 2
    err = capsys.readouterr().err
    assert "privkey.pem does not match cert.pem" in err and "Traceback" not in err
    assert not (tmp_path / "svc" / "fullchain.pem").exists()


def test_deploy_without_a_certificate_is_a_usage_error(
    write_config: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("version: 1\n")
    assert run(["deploy", "--config", str(config)])[0] == 2
    assert "deploy needs a certificate: --cert-name NAME" in capsys.readouterr().err


def test_options_before_and_after_the_sub_command(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    config = write_config("version: 1\n")
    lineage = str(tmp_path / "x.test")
    assert run(["--config", str(config), "deploy", "--lineage", lineage])[0] == 0
    assert run(["deploy", "--config", str(config), "--lineage", lineage])[0] == 0


def _leftovers() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("certbot-fanout-demo-")}


def _demo_processes() -> list[str]:
    """The demo's own service processes (other tests start the same server elsewhere)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"certbot_fanout._demo_server" in cmdline and b"certbot-fanout-demo-" in cmdline:
                found.append(pid)
    return found


@dataclass
class DemoRun:
    code: int
    out: str
    started: list[tuple[str, int]]  # (label, port) of every service the demo started
    leftovers_before: set[str]


@pytest.fixture(scope="module")
def demo_run() -> DemoRun:
    """One in-process demo run, shared; it records every service the demo starts."""
    started: list[tuple[str, int]] = []

    class Recorded(demo._Service):
        def __init__(self, workdir: str, label: str, cert: str, key: str) -> None:
            super().__init__(workdir, label, cert, key)
            started.append((label, self.port))

    before = _leftovers()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_Service", Recorded)
        code, out = run(["demo"])
    return DemoRun(code, out, started, before)


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_demo_in_process_passes_and_leaves_nothing(demo_run: DemoRun) -> None:
    code, out = demo_run.code, demo_run.out
    assert code == 0, out
    assert "Demo passed" in out
    assert "federation-stale  FAILED" in out and "serves another certificate" in out
    assert _leftovers() == demo_run.leftovers_before
    assert _demo_processes() == []


NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_demo_says_how_many_services_it_starts_and_lists_each(demo_run: DemoRun) -> None:
    lines = demo_run.out.splitlines()
    (step,) = [i for i, line in enumerate(lines) if line.startswith("2. ")]
    said = re.match(r"2\. (\w+) loopback TLS services start", lines[step])
    assert said, lines[step]
    listed = []
    for line in lines[step + 1 :]:
        row = re.match(r"^ {5}(\S+) +127\.0\.0\.1:(\d+)  \(", line)
        if not row:
            break
        listed.append((row[1], int(row[2])))
    assert len(demo_run.started) == 3
    assert NUMBERS[said[1].lower()] == len(listed) == len(demo_run.started)
    assert listed == demo_run.started
    # Every service the demo talks about later is one of those it listed.
    assert {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", demo_run.out)} == {
        port for _, port in listed
    }
    # The command's help and the README's quick start say the same number.
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    demo_help = commands.choices["demo"]
    assert f"start {said[1].lower()} loopback TLS services" in " ".join(
        str(demo_help.description).split()
    )
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ")[0]
    assert f"starts {said[1].lower()} loopback TLS services" in " ".join(quick_start.split())


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
def test_demo_passes_as_an_unprivileged_user(public_install: PublicInstall) -> None:
    """The demo as nobody, on Debian's own python3 and its python3-cryptography/yaml."""
    proc = cli.run(
        [
            shutil.which("runuser") or "/usr/sbin/runuser",
            "-u",
            "nobody",
            "--",
            *public_install.argv("demo"),
        ],
        cwd=public_install.directory,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Demo passed" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_console_script_help_runs_as_a_process() -> None:
    proc = cli.run([sys.executable, "-m", "certbot_fanout", "--help"], timeout=30)
    assert proc.returncode == 0
    assert "usage: certbot-fanout" in proc.stdout
    assert "deploy" in proc.stdout and "demo" in proc.stdout


def test_quiet_hook_prints_nothing_for_an_unused_certificate(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    config = write_config("version: 1\nconsumers: {}\n")
    env = {
        "RENEWED_LINEAGE": str(tmp_path / "absent" / "x.test"),
        "CERTBOT_FANOUT_CONFIG": str(config),
    }
    assert run(["deploy", "--quiet"], env) == (0, "")
    assert run(["deploy"], env)[1].endswith("uses certificate x.test; nothing to do\n")


NO_MAP_COMMANDS = {  # each command's documented exit code for a config error
    "check": (["check", "--no-probe"], 1),
    "deploy": (["deploy", "--cert-name", "x.test"], 2),
    "status": (["status", "--no-probe"], 3),
    "discover": (["discover"], 2),
}


def _no_map(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> tuple[int, str]:
    """A command's answer to a missing map, without its channel's prefix (PROBLEM:, UNKNOWN:,
    certbot-fanout: error:), which each command keeps for a config error."""
    out = io.StringIO()
    code = main([*argv, "--config-dir", str(tmp_path / "le")], environ=environ, stdout=out)
    text = out.getvalue() + capsys.readouterr().err
    assert "Traceback" not in text and "not valid" not in text, text
    for prefix in ("PROBLEM: ", "UNKNOWN: ", "certbot-fanout: error: "):
        if text.startswith(prefix):
            return code, text.removeprefix(prefix)
    raise AssertionError(f"no known prefix: {text!r}")


@pytest.mark.parametrize(
    "origin", ["--config", "$CERTBOT_FANOUT_CONFIG", "default"], ids=["option", "env", "default"]
)
def test_a_missing_map_gets_one_message_that_says_how_to_begin(
    origin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from certbot_fanout.model import DEFAULT_CONFIG_PATH

    path = str(tmp_path / "no" / "consumers.yaml")
    more: list[str] = []
    environ: dict[str, str] = {}
    if origin == "--config":
        more = ["--config", path]
    elif origin == "$CERTBOT_FANOUT_CONFIG":
        environ = {"CERTBOT_FANOUT_CONFIG": path}
    else:
        if os.path.lexists(DEFAULT_CONFIG_PATH):
            pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this host")
        path = DEFAULT_CONFIG_PATH
    messages = {}
    for command, (argv, expected_code) in NO_MAP_COMMANDS.items():
        code, message = _no_map([*argv, *more], environ, capsys, tmp_path)
        assert code == expected_code, (command, message)
        messages[command] = message
    assert len(set(messages.values())) == 1, messages
    message = messages["check"]
    first = message.splitlines()[0]
    assert first.startswith(f"{path}: config file not found: no consumer map there yet (")
    if origin == "default":
        assert "(the default path; --config FILE or $CERTBOT_FANOUT_CONFIG names another)" in first
    else:
        assert first.endswith(f"(named by {origin})")
    assert "`certbot-fanout presets` lists them" in message
    assert f"  certbot-fanout presets NAME --certificate CERT --map > {path}\n" in message
    assert "  certbot-fanout discover --cert-name CERT\n" in message
    check = "certbot-fanout check" + (f" --config {path}" if origin == "--config" else "")
    assert message.endswith(f"then see whether a deploy would work: {check}\n")
    if origin != "default":
        assert f"  mkdir -p {tmp_path / 'no'}\n" in message


def test_the_commands_a_missing_map_suggests_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the message tells a newcomer to run works: the preset's map is written, and
    discover looks for a certificate before any map exists."""
    path = tmp_path / "consumers.yaml"
    out = io.StringIO()
    assert main(["presets", "nginx", "--certificate", "x.test", "--map"], {}, out) == 0
    path.write_text(out.getvalue())
    from certbot_fanout.config import load_config

    assert [c.certificate for c in load_config(str(path)).consumers] == ["x.test"]
    capsys.readouterr()
    assert main(["discover", "--help"]) == 0
    assert "--cert-name NAME" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "prog"),
    [
        (["deploy", "--cert-name", "status", "--bogus"], 2, "certbot-fanout deploy"),
        (["deploy", "--lineage", "/x/status", "status", "--bogus"], 2, "certbot-fanout deploy"),
        (["status", "--bogus"], 3, "certbot-fanout status"),
        (["--bogus", "status"], 3, "certbot-fanout status"),
        (["status", "--no-probe", "extra"], 3, "certbot-fanout status"),
        (["check", "--config", "status", "--bogus"], 2, "certbot-fanout check"),
        (["discover", "--path", "status", "--bogus"], 2, "certbot-fanout discover"),
        (["--bogus"], 2, "certbot-fanout"),
        (["--config", "status", "--bogus"], 2, "certbot-fanout"),
    ],
)
def test_a_usage_error_exits_with_the_code_of_the_command_given(
    argv: list[str], code: int, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sub-command that was parsed decides, not whether the word status appears."""
    assert run(argv) == (code, "")
    err = capsys.readouterr().err
    assert f"{prog}: error: unrecognized arguments: " in err and "Traceback" not in err


def test_a_usage_error_in_hook_mode_is_deploys(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--bogus"], {"RENEWED_LINEAGE": "/x/live/status"})[0] == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
