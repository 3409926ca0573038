"""Test and reload commands: argv only, output kept short, whole process group killed on timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from certbot_fanout.commands import OUTPUT_TAIL_BYTES, run_command
from certbot_fanout.errors import CommandError
from tests.support.proc import alive


def test_success_returns_output() -> None:
    result = run_command(["sh", "-c", "echo configuration ok; echo warn >&2"], 5, "test")
    assert result.returncode == 0
    assert result.output == "configuration ok | warn"


def test_no_shell_is_involved(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    run_command(["echo", "a;", "touch", str(marker)], 5)
    assert not marker.exists()


def test_nonzero_exit_is_an_error_with_its_output() -> None:
    with pytest.raises(CommandError) as err:
        run_command(["sh", "-c", "echo 'emerg: cannot load certificate' >&2; exit 3"], 5, "test")
    assert str(err.value) == (
        "test `sh -c echo 'emerg: cannot load certificate' >&2; exit 3` exited 3; "
        "output: emerg: cannot load certificate"
    )


def test_missing_and_unexecutable_programs(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="program /nonexistent/nginx not found"):
        run_command(["/nonexistent/nginx", "-t"], 5, "test")
    script = tmp_path / "reload.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(CommandError, match="is not executable"):
        run_command([str(script)], 5, "reload")


def test_a_bare_name_missing_from_path_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin")  # the caller's PATH plays no part
    with pytest.raises(CommandError) as err:
        run_command(["fanout-no-such-program", "reload"], 5, "reload")
    assert str(err.value) == (
        "reload `fanout-no-such-program reload`: program fanout-no-such-program not found "
        "on PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
    )


def test_a_script_whose_interpreter_is_missing_is_not_called_missing(tmp_path: Path) -> None:
    script = tmp_path / "reload.sh"
    script.write_text("#!/nonexistent/bash -e\nexit 0\n")
    script.chmod(0o755)
    with pytest.raises(CommandError) as err:
        run_command([str(script)], 5, "reload")
    assert str(err.value) == (
        f"reload `{script}`: cannot start {script}: its interpreter /nonexistent/bash "
        "does not exist"
    )


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(CommandError, match=r"timed out after 0.5 s; its process group was killed"):
        run_command(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 0.5, "reload")
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "a grandchild outlived the timeout"


def test_a_daemon_keeping_stdout_open_does_not_block() -> None:
    # e.g. a reload that restarts a daemon which inherits stdout
    start = time.monotonic()
    result = run_command(["sh", "-c", "sleep 3 & echo started"], 10, "reload")
    assert time.monotonic() - start < 2
    assert result.output == "started"


def test_output_is_bounded() -> None:
    result = run_command(["sh", "-c", "yes x | head -c 1000000"], 10)
    assert len(result.output) <= OUTPUT_TAIL_BYTES + 3
    assert result.output.startswith("...")


def test_killed_by_signal_is_reported() -> None:
    with pytest.raises(CommandError, match="was killed by signal 9"):
        run_command(["sh", "-c", "kill -9 $$"], 5)


def test_environment_is_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_TEST_VALUE", "42")
    assert run_command(["sh", "-c", "echo $FANOUT_TEST_VALUE"], 5).output == "42"
    assert os.environ["FANOUT_TEST_VALUE"] == "42"
