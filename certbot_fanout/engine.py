"""A container engine's API: Docker's Engine API (which Podman also serves) over its unix socket.

Plain HTTP/1.1 over ``AF_UNIX`` with the standard library: no SDK. Every request is bounded in
time (the socket's timeout) and every answer in size; a container is found by name, label or
compose service, inspected for its main PID and its mounts, signalled, restarted, exec'd into,
and given or asked for files through the archive endpoints (a tar stream).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import tarfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from certbot_fanout.errors import FanoutError

API = "/v1.40"  # Docker 19.03 and later; Podman's compatibility API answers it too
MAX_ANSWER = 8 << 20  # the largest JSON answer (a list or an inspect) read
MAX_ARCHIVE = 4 << 20  # the largest tar of one file read back from a container
MAX_OUTPUT = 64 << 10  # what an exec's output is kept of
DEFAULT_TIMEOUT = 15.0


class EngineError(FanoutError):
    """The engine could not be reached, or refused or failed a request."""


class Gone(EngineError):
    """The container is no longer there (it was removed or stopped since it was found)."""


@dataclass(frozen=True)
class Mount:
    """One of a container's mounts: a bind's host ``source`` (a volume's, for a volume) and
    the ``destination`` the container sees it at."""

    kind: str  # "bind", "volume", "tmpfs", ...
    source: str
    destination: str


@dataclass(frozen=True)
class Container:
    """A running container as ``inspect`` showed it."""

    id: str
    name: str
    pid: int  # its main process, as this host numbers it
    mounts: tuple[Mount, ...]
    running: bool = True
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[str, ...] = ()  # published: "0.0.0.0:443->443/tcp"

    @property
    def label(self) -> str:
        return f"container {self.name} ({self.id[:12]})"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _read(response: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    data = response.read(limit + 1)
    if len(data) > limit:
        raise EngineError(f"{what}: the engine's answer is larger than {limit} bytes")
    return data


class Engine:
    """The engine listening on the unix socket ``path``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def _request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        limit: int | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        what = f"container engine at {self.path}"
        limit = MAX_ANSWER if limit is None else limit
        conn = _UnixConnection(self.path, self.timeout if timeout is None else timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, API + url, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, _read(response, limit, what)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise EngineError(
                f"{what}: cannot connect ({e.strerror}): is the engine running, and is this "
                "its socket?"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise EngineError(f"{what}: {method} {url.split('?')[0]}: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, url: str, payload: Any = None, ok: Sequence[int] = (200,)) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self._request(method, url, body)
        self._check(status, data, url, ok)
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise EngineError(f"container engine at {self.path}: {url}: not JSON") from None

    def _check(self, status: int, data: bytes, url: str, ok: Sequence[int]) -> None:
        if status in ok:
            return
        try:
            message = str(json.loads(data).get("message", ""))
        except (ValueError, AttributeError):
            message = data[:200].decode("utf-8", "replace")
        if status in (404, 409) and url.startswith("/containers/"):
            raise Gone(message or f"HTTP {status}")
        raise EngineError(f"container engine at {self.path}: HTTP {status}: {message}")

    def find(self, selector: dict[str, str]) -> list[str]:
        """The ids of the running containers ``selector`` matches: ``name`` (exactly),
        ``label`` ("KEY" or "KEY=VALUE") or ``compose_service``."""
        filters: dict[str, list[str]] = {}
        if "name" in selector:
            filters["name"] = [selector["name"]]
        if "label" in selector:
            filters["label"] = [selector["label"]]
        if "compose_service" in selector:
            filters["label"] = [f"com.docker.compose.service={selector['compose_service']}"]
        query = urllib.parse.urlencode({"filters": json.dumps(filters)})
        found = self._json("GET", f"/containers/json?{query}")
        if not isinstance(found, list):
            raise EngineError(f"container engine at {self.path}: the container list is not a list")
        ids = []
        for entry in found:
            names = [str(n).lstrip("/") for n in entry.get("Names") or ()]
            # The engine's name filter matches a part of the name; the map means all of it.
            if "name" in selector and selector["name"] not in names:
                continue
            ids.append(str(entry.get("Id", "")))
        return ids

    def inspect(self, ident: str) -> Container:
        doc = self._json("GET", f"/containers/{urllib.parse.quote(ident)}/json")
        try:
            state = doc.get("State") or {}
            mounts = tuple(
                Mount(str(m.get("Type", "")), str(m.get("Source", "")), str(m["Destination"]))
                for m in doc.get("Mounts") or ()
            )
            labels = (doc.get("Config") or {}).get("Labels") or {}
            return Container(
                id=str(doc["Id"]),
                name=str(doc.get("Name", "")).lstrip("/"),
                pid=int(state.get("Pid") or 0),
                mounts=mounts,
                running=bool(state.get("Running")),
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                ports=_ports((doc.get("NetworkSettings") or {}).get("Ports") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise EngineError(
                f"container engine at {self.path}: an inspect it answered is not a container's"
            ) from None

    def kill(self, ident: str, signal: str) -> None:
        query = urllib.parse.urlencode({"signal": signal})
        self._json("POST", f"/containers/{urllib.parse.quote(ident)}/kill?{query}", ok=(204,))

    def restart(self, ident: str, timeout: float) -> None:
        query = urllib.parse.urlencode({"t": int(timeout)})
        status, data = self._request(
            "POST",
            f"/containers/{urllib.parse.quote(ident)}/restart?{query}",
            timeout=timeout + self.timeout,
        )
        self._check(status, data, "/containers/", (204,))

    def exec(self, ident: str, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run ``argv`` in the container (no shell); its exit status and its output's tail."""
        created = self._json(
            "POST",
            f"/containers/{urllib.parse.quote(ident)}/exec",
            {"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True},
            ok=(201,),
        )
        exec_id = urllib.parse.quote(str(created["Id"]))
        status, data = self._request(
            "POST",
            f"/exec/{exec_id}/start",
            json.dumps({"Detach": False, "Tty": False}).encode(),
            limit=MAX_OUTPUT * 16,
            timeout=timeout,
        )
        self._check(status, data, "/exec/", (200,))
        deadline = time.monotonic() + self.timeout
        while True:
            state = self._json("GET", f"/exec/{exec_id}/json")
            if not state.get("Running") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        code = state.get("ExitCode")
        return (-1 if code is None else int(code)), _demultiplex(data)[-MAX_OUTPUT:]

    def put_file(self, ident: str, path: str, data: bytes, uid: int, gid: int, mode: int) -> None:
        """``data`` as the file ``path`` in the container (its directory must exist), owner and
        mode set in the archive, so they are there before any byte of it is."""
        directory, _, name = path.rpartition("/")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, gid, mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        query = urllib.parse.urlencode({"path": directory or "/", "noOverwriteDirNonDir": "true"})
        status, answer = self._request(
            "PUT",
            f"/containers/{urllib.parse.quote(ident)}/archive?{query}",
            buffer.getvalue(),
            content_type="application/x-tar",
        )
        self._check(status, answer, "/containers/", (200,))

    def get_file(self, ident: str, path: str) -> tuple[bytes, int, int, int] | None:
        """The regular file ``path`` in the container, with its owner, group and mode; None if
        there is none."""
        query = urllib.parse.urlencode({"path": path})
        status, data = self._request(
            "GET", f"/containers/{urllib.parse.quote(ident)}/archive?{query}", limit=MAX_ARCHIVE
        )
        if status == 404:
            try:
                message = str(json.loads(data).get("message", ""))
            except (ValueError, AttributeError):
                message = ""
            if "no such container" in message.lower():
                raise Gone(message)
            return None
        self._check(status, data, "/containers/", (200,))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    return None
                extracted = tar.extractfile(member)
                if extracted is None:
                    return None
                return extracted.read(), member.uid, member.gid, member.mode & 0o7777
        except tarfile.TarError:
            raise EngineError(f"container engine at {self.path}: {path}: not a tar") from None


def _ports(published: dict[str, Any]) -> tuple[str, ...]:
    """``{"443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}]}`` as
    ``("0.0.0.0:8443->443/tcp",)``."""
    shown = []
    for inside, bindings in sorted(published.items()):
        for binding in bindings or ():
            shown.append(f"{binding.get('HostIp', '')}:{binding.get('HostPort', '')}->{inside}")
    return tuple(shown)


def matches(container: Container, selector: dict[str, str]) -> bool:
    """Whether ``container`` is one that ``selector`` (a ``ContainerSpec``'s) finds."""
    labels = dict(container.labels)
    if "name" in selector:
        return container.name == selector["name"]
    if "compose_service" in selector:
        return labels.get("com.docker.compose.service") == selector["compose_service"]
    key, has_value, value = selector.get("label", "").partition("=")
    return key in labels and (not has_value or labels[key] == value)


def _demultiplex(stream: bytes) -> str:
    """An exec's attached output: the engine's frames (8-byte headers) joined, as text."""
    out = []
    offset = 0
    while offset + 8 <= len(stream):
        _, size = struct.unpack(">BxxxL", stream[offset : offset + 8])
        out.append(stream[offset + 8 : offset + 8 + size])
        offset += 8 + size
    return b"".join(out).decode("utf-8", "replace")
