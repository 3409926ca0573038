"""The agent and its exchange (issue 15), without ssh: the real loader and agent started under a
real interpreter with the exact payload a run sends, talking over pipes. (ssh itself, and the
agent under Debian 11's Python 3.9, are the integration tests'.)

What it must hold: the greeting; accounts resolved where it runs; a placement with owner and
mode, a snapshot and a restore, all through the project's own ``files``; commands run without
a shell, a failing one answered as a CommandError; unknown requests answered, not fatal;
requests answered in parallel; a lost connection failing every waiting request; frames bounded
both ways; and no command line carrying key bytes."""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_fanout import files, remote, wire
from certbot_fanout.errors import CommandError, PlacementError
from certbot_fanout.model import Host

KEY = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"


class LocalSession(remote.Session):
    """A session whose 'ssh' is the interpreter itself, started as ssh would start it."""

    def argv(self) -> list[str]:
        return [sys.executable, "-I", "-S", "-c", remote.STAGE1]


@pytest.fixture
def session() -> Iterator[LocalSession]:
    s = LocalSession(Host("here", "root@localhost", connect_timeout=5), "/nonexistent")
    s.open()
    try:
        yield s
    finally:
        s.close()


def test_the_agent_greets_with_its_protocol_python_and_user(session: LocalSession) -> None:
    assert session.hello is not None
    assert session.hello.python == ".".join(map(str, sys.version_info[:3]))
    assert session.hello.uid == os.getuid()
    assert session.proc is not None and session.hello.pid == session.proc.pid


def test_accounts_are_resolved_where_the_agent_runs(session: LocalSession) -> None:
    users, groups = session.resolve(["root", "nobody", "no-such-user-x"], ["root", "no-such-x"])
    assert users == {"root": 0, "nobody": 65534, "no-such-user-x": None}
    assert groups == {"root": 0, "no-such-x": None}


def test_place_snapshot_and_restore_through_the_agent(
    session: LocalSession, tmp_path: Path
) -> None:
    path = tmp_path / "privkey.pem"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o644)
    before = session.snapshot(str(path))
    assert before.data == b"old\n" and before.mode == 0o644
    desired = files.Desired(path=str(path), uid=65534, gid=65534, mode=0o600, data=KEY)
    kinds = {d.kind for d in session.compare(desired, before)}
    assert kinds == {
        files.DifferenceKind.CONTENT,
        files.DifferenceKind.OWNER,
        files.DifferenceKind.GROUP,
        files.DifferenceKind.MODE,
    }
    assert any("expected nobody" in d.message for d in session.compare(desired, before))
    session.place(desired)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o600)
    assert path.read_bytes() == KEY
    assert session.compare(desired, session.snapshot(str(path))) == []
    session.restore(before)
    assert path.read_bytes() == b"old\n" and path.stat().st_mode & 0o777 == 0o644


def test_a_placement_the_target_refuses_is_a_placement_error(
    session: LocalSession, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "x.pem"
    with pytest.raises(PlacementError, match=r"on here: .*no-such-dir"):
        session.place(files.Desired(path=str(missing), uid=0, gid=0, data=b"x"))


def test_commands_run_there_and_a_failure_is_a_command_error(session: LocalSession) -> None:
    ok = session.run(["sh", "-c", "echo $0", "argv0"], 5, "test")
    assert ok.returncode == 0 and ok.output.strip() == "argv0"
    with pytest.raises(CommandError, match="on here: reload `false` exited 1"):
        session.run(["false"], 5, "reload")
    with pytest.raises(CommandError, match="not found"):
        session.run(["no-such-program-x"], 5, "test")


def test_requests_are_answered_in_parallel(session: LocalSession) -> None:
    start = time.monotonic()
    threads = [threading.Thread(target=session.run, args=(["sleep", "0.5"], 5)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 1.6  # four half-second commands, not two seconds


def test_an_unknown_request_is_answered_and_the_agent_goes_on(session: LocalSession) -> None:
    with pytest.raises(remote.RemoteFailure, match="unknown request 'format_disk'"):
        session.call("format_disk", {}, 5)
    assert session.resolve(["root"], [])[0] == {"root": 0}


def test_a_lost_connection_fails_the_waiting_request_and_every_later_one(
    session: LocalSession,
) -> None:
    assert session.proc is not None
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            session.run(["sleep", "30"], 60)
        except CommandError as e:
            errors.append(e)

    waiting = threading.Thread(target=slow)
    waiting.start()
    time.sleep(0.3)
    session.proc.kill()
    waiting.join(10)
    assert not waiting.is_alive()
    assert errors and "connection lost" in str(errors[0])
    with pytest.raises(remote.HostError, match="connection lost"):
        session.resolve(["root"], [])


def test_an_agent_under_an_old_python_says_so(tmp_path: Path) -> None:
    # The loader's own check, run as if under Python 3.8: it must answer, not crash.
    loader = remote.LOADER.replace("sys.version_info < (3, 9)", "sys.version_info < (99, 0)")
    script = tmp_path / "old.py"
    script.write_text(loader)
    import subprocess

    done = subprocess.run(
        [sys.executable, "-I", str(script)], input=b"", capture_output=True, timeout=10, check=False
    )
    assert done.returncode == 3
    message = wire.read_frame(io.BytesIO(done.stdout))
    assert message is not None and message["hello"] == 0
    assert "is older than 3.9" in message["error"]


def test_frames_are_bounded_and_a_torn_frame_is_an_error() -> None:
    with pytest.raises(wire.WireError, match="announced a message of"):
        wire.read_frame(io.BytesIO(struct.pack(">I", wire.MAX_FRAME + 1)))
    with pytest.raises(wire.WireError, match="middle of a message"):
        wire.read_frame(io.BytesIO(struct.pack(">I", 10) + b"{}"))
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.read_frame(io.BytesIO(struct.pack(">I", 3) + b"\xff\xfe!"))
    with pytest.raises(wire.WireError, match="larger than"):
        wire.write_frame(io.BytesIO(), {"data": "x" * wire.MAX_FRAME})
    assert wire.read_frame(io.BytesIO(b"")) is None


def test_the_command_line_holds_no_data_only_the_fixed_loader() -> None:
    host = Host("mx1", "root@mx1", python="/usr/bin/python3")
    command = remote.agent_command(host)
    assert command == f"exec /usr/bin/python3 -I -S -c '{remote.STAGE1}'"
    argv = LocalSession(host, "/run/x/h0").argv()
    real = remote.Session(host, "/run/x/h0").argv()
    assert real[-2:] == ["root@mx1", command] and real[-3] == "--"
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", "ControlMaster=yes"):
        assert option in real
    assert not any(b"PRIVATE" in a.encode() for a in (*argv, *real))


def test_a_hosts_session_closes_when_its_last_consumer_is_released() -> None:
    from certbot_fanout.model import Consumer

    host = Host("here", "root@localhost", connect_timeout=5)
    first, second = (Consumer(name=n, certificate="example.org", host="here") for n in "ab")
    hosts = remote.Hosts([host], [first, second], 4, session_for=LocalSession)
    try:
        session = hosts.session("here")
        assert session.proc is not None
        hosts.release(first)
        assert session.proc is not None, "closed while a consumer of it was left"
        hosts.release(second)
        assert session.proc is None, "still open after its last consumer"
    finally:
        hosts.__exit__(None, None, None)
