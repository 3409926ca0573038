"""Where a container consumer's file goes (issue 16), from the container's mounts: a directory
bind mount places it on the host, a single-file bind mount is refused (or rewritten in place),
a path no mount carries is copied in; the reload decision when a process sees an old copy;
and the engine client's own rules (exact names, bounded answers, clear errors), against a
small HTTP server on a real unix socket."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from certbot_fanout import engine
from certbot_fanout.containers import How, plan_file
from certbot_fanout.deploy import ReloadFacts, ReloadReason, Step, why_reload
from certbot_fanout.engine import Container, Engine, EngineError, Gone, Mount
from certbot_fanout.model import FileSpec, Part

BOX = Container(
    id="0123456789abcdef0123",
    name="traefik",
    pid=812,
    mounts=(
        Mount("bind", "/srv/traefik", "/etc/traefik"),
        Mount("bind", "/srv/traefik/certs", "/certs"),
        Mount("bind", "/etc/ssl/single.pem", "/tls/single.pem"),
        Mount("volume", "/var/lib/docker/volumes/tls/_data", "/data"),
    ),
)


def _spec(path: str, **more: Any) -> FileSpec:
    return FileSpec(path=path, content=(Part.FULLCHAIN,), owner=0, group=0, mode=0o644, **more)


def test_a_file_under_a_directory_mount_is_placed_on_the_host_longest_mount_first() -> None:
    plan = plan_file(_spec("/srv/traefik/certs/fullchain.pem"), BOX)
    assert (plan.how, plan.inside, plan.refused) == (How.HOST, "/certs/fullchain.pem", None)
    plan = plan_file(_spec("/srv/traefik/traefik.pem"), BOX)
    assert (plan.how, plan.inside) == (How.HOST, "/etc/traefik/traefik.pem")
    plan = plan_file(_spec("/var/lib/docker/volumes/tls/_data/x.pem"), BOX)
    assert (plan.how, plan.inside) == (How.HOST, "/data/x.pem")


def test_a_single_file_bind_mount_is_refused_with_why_and_what_to_do() -> None:
    plan = plan_file(_spec("/etc/ssl/single.pem"), BOX)
    assert plan.how is How.INPLACE and plan.inside == "/tls/single.pem"
    assert plan.refused is not None
    assert plan.refused.startswith(
        "container traefik (0123456789ab) reads /tls/single.pem through a single-file bind "
        "mount of /etc/ssl/single.pem: an atomic replace on the host gives that path a new file"
    )
    assert "Mount the directory (/etc/ssl) instead" in plan.refused
    assert "'inplace: true'" in plan.refused


def test_a_single_file_bind_mount_with_inplace_is_rewritten_in_place() -> None:
    plan = plan_file(_spec("/etc/ssl/single.pem", inplace=True), BOX)
    assert (plan.how, plan.inside, plan.refused) == (How.INPLACE, "/tls/single.pem", None)


def test_a_reload_that_restarts_the_container_places_a_single_file_on_the_host() -> None:
    plan = plan_file(_spec("/etc/ssl/single.pem"), BOX, restarts=True)
    assert (plan.how, plan.inside, plan.refused) == (How.HOST, "/tls/single.pem", None)


def test_a_path_no_mount_carries_is_copied_in_but_a_link_is_refused() -> None:
    plan = plan_file(_spec("/certs-inside/fullchain.pem"), BOX)
    assert (plan.how, plan.inside, plan.refused) == (How.COPY, "/certs-inside/fullchain.pem", None)
    plan = plan_file(_spec("/certs-inside/fullchain.pem", link=True), BOX)
    assert plan.refused is not None and "would point at nothing there" in plan.refused


def test_a_mount_prefix_is_a_whole_directory_not_a_string_prefix() -> None:
    plan = plan_file(_spec("/srv/traefik-old/x.pem"), BOX)
    assert plan.how is How.COPY


def test_current_files_but_an_old_copy_seen_by_the_process_means_a_reload() -> None:
    facts = ReloadFacts(
        files_changed=False, has_files=True, has_endpoints=True, has_reload=True, stale=()
    )
    assert why_reload(facts).step is Step.CURRENT
    decision = why_reload(ReloadFacts(**{**facts.__dict__, "stale_view": True}))
    assert (decision.step, decision.reason) == (Step.RELOAD, ReloadReason.STALE_VIEW)
    assert decision.text == "its process reads an old copy of a file"


# -- the engine client ------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        status, body = self.answers.get(path, (404, b'{"message": "page not found"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    path = str(tmp_path / "engine.sock")
    answers: dict[str, tuple[int, bytes]] = {}
    handler = type("Handler", (_Handler,), {"answers": answers})
    server = _UnixServer(path, handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield path, answers
    server.shutdown()
    server.server_close()


def test_a_name_matches_the_whole_name_not_a_part(
    fake_engine: tuple[str, dict[str, tuple[int, bytes]]],
) -> None:
    path, answers = fake_engine
    listed = [{"Id": "a1", "Names": ["/web"]}, {"Id": "b2", "Names": ["/web-old"]}]
    answers["/v1.40/containers/json"] = (200, json.dumps(listed).encode())
    assert Engine(path).find({"name": "web"}) == ["a1"]
    assert Engine(path).find({"label": "tls=1"}) == ["a1", "b2"]


def test_an_inspect_gives_the_pid_and_mounts_and_a_gone_container_is_gone(
    fake_engine: tuple[str, dict[str, tuple[int, bytes]]],
) -> None:
    path, answers = fake_engine
    doc = {
        "Id": "a1",
        "Name": "/web",
        "State": {"Pid": 812, "Running": True},
        "Mounts": [{"Type": "bind", "Source": "/srv/c", "Destination": "/certs"}],
    }
    answers["/v1.40/containers/a1/json"] = (200, json.dumps(doc).encode())
    got = Engine(path).inspect("a1")
    assert got == Container("a1", "web", 812, (Mount("bind", "/srv/c", "/certs"),))
    answers["/v1.40/containers/zz/json"] = (404, b'{"message": "No such container: zz"}')
    with pytest.raises(Gone, match="No such container: zz"):
        Engine(path).inspect("zz")
    answers["/v1.40/containers/bad/json"] = (200, b'{"Id": "bad", "Mounts": [{}]}')
    with pytest.raises(EngineError, match="not a container's"):
        Engine(path).inspect("bad")


def test_an_answer_too_large_is_refused_not_read(
    fake_engine: tuple[str, dict[str, tuple[int, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, answers = fake_engine
    monkeypatch.setattr(engine, "MAX_ANSWER", 1000)
    answers["/v1.40/containers/json"] = (200, b"[" + b" " * 5000 + b"]")
    with pytest.raises(EngineError, match="larger than 1000 bytes"):
        Engine(path).find({"name": "web"})


def test_no_engine_at_the_socket_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        Engine(str(tmp_path / "none.sock")).find({"name": "web"})
    assert str(info.value) == (
        f"container engine at {tmp_path}/none.sock: cannot connect (No such file or directory): "
        "is the engine running, and is this its socket?"
    )


def test_an_exec_output_is_taken_from_the_engine_frames() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03out" + b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    assert engine._demultiplex(frames) == "outerr\n"
