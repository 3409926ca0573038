"""A real Java TLS server loads the keystore certbot-fanout places, for both encryptions.

The server is a small JSSE program written and compiled (javac, OpenJDK 17) by this module:
it reads the password from the keystore's password file itself (never from a command line),
loads the PKCS#12 file as a ``KeyStore``, and serves it on a loopback port, logging the
aliases it found. Its reload is a restart: the consumer's reload command is a script that
kills the running server by its PID and starts another. A real deploy (the CLI, on a lineage
from the throwaway CA) places the keystore, restarts the server and verifies what Java
serves, leaf and chain; a second deploy leaves the keystore alone (same inode) and does not
restart the server; a renewal rewrites and restarts it. Each placement of the keystore is
traced (strace) to show its temporary file got owner and mode before its first byte.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout.lineage import read_lineage
from tests.support.cli import explain, json_document, run
from tests.support.lineages import LineageFactory
from tests.support.maps import write_map
from tests.support.proc import alive, free_port, terminate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: places root-only keystores"),
]

NAME = "java.fanout.test"
PASSWORD = "changeit-but-not-on-a-command-line"
JAVA = shutil.which("java")
JAVAC = shutil.which("javac")
STRACE = shutil.which("strace")
CLI_TIMEOUT = 120

SERVER_JAVA = r"""
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.KeyStore;
import java.util.Collections;
import javax.net.ssl.*;

/** Serves a PKCS#12 keystore over TLS; the password comes from a file, never from argv. */
public class KeystoreServer {
    public static void main(String[] args) throws Exception {
        String keystore = args[0], passwordFile = args[1];
        int port = Integer.parseInt(args[2]);
        byte[] raw = Files.readAllBytes(Paths.get(passwordFile));
        String pw = new String(raw, StandardCharsets.US_ASCII);
        if (pw.endsWith("\n")) pw = pw.substring(0, pw.length() - 1);
        char[] password = pw.toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(keystore)) { ks.load(in, password); }
        System.out.println("aliases " + Collections.list(ks.aliases()));
        String algorithm = KeyManagerFactory.getDefaultAlgorithm();
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(algorithm);
        kmf.init(ks, password);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), null, null);
        SSLServerSocket server = (SSLServerSocket) ctx.getServerSocketFactory()
            .createServerSocket(port, 50, InetAddress.getByName("127.0.0.1"));
        System.out.println("listening " + port);
        System.out.flush();
        while (true) {
            SSLSocket s = (SSLSocket) server.accept();
            new Thread(() -> {
                try (SSLSocket c = s) {
                    c.setSoTimeout(10000);
                    c.startHandshake();
                    c.getOutputStream().write("HTTP/1.0 200 OK\r\n\r\nok\n".getBytes());
                } catch (IOException e) {
                    // a probe that hangs up after the handshake
                }
            }).start();
        }
    }
}
"""

# The consumer's reload: stop the running server by its PID, start a new one, detached from
# the reload's process group and output, and note each start.
RELOAD_SH = """#!/bin/sh
set -eu
if [ -f {pid} ]; then
    old=$(cat {pid})
    kill "$old" 2>/dev/null || true
    while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
fi
echo start >> {starts}
setsid {java} -cp {classes} KeystoreServer {keystore} {password} {port} \
    >> {log} 2>&1 < /dev/null &
echo $! > {pid}
"""


@dataclass
class JavaBed:
    directory: Path
    keystore: Path
    password: Path
    port: int
    config: Path
    reload: Path
    pid: Path
    starts: Path
    log: Path

    def server_pid(self) -> int:
        return int(self.pid.read_text())

    def start_count(self) -> int:
        return len(self.starts.read_text().splitlines()) if self.starts.exists() else 0


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if JAVA is None or JAVAC is None:
        pytest.skip("needs java and javac (apt-get install openjdk-17-jdk-headless)")
    directory = tmp_path_factory.mktemp("java")
    source = directory / "KeystoreServer.java"
    source.write_text(SERVER_JAVA)
    run([JAVAC, "-d", directory, source], check=True, timeout=120)
    return directory


@pytest.fixture
def bed(tmp_path: Path, classes: Path) -> Iterator[JavaBed]:
    tls = tmp_path / "tls"
    tls.mkdir()
    password = tmp_path / "keystore.pass"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    made = JavaBed(
        directory=tmp_path,
        keystore=tls / "keystore.p12",
        password=password,
        port=free_port(),
        config=tmp_path / "map" / "consumers.yaml",
        reload=tmp_path / "restart-java",
        pid=tmp_path / "server.pid",
        starts=tmp_path / "starts",
        log=tmp_path / "server.log",
    )
    made.reload.write_text(
        RELOAD_SH.format(
            java=JAVA,
            classes=classes,
            keystore=made.keystore,
            password=password,
            port=made.port,
            pid=made.pid,
            starts=made.starts,
            log=made.log,
        )
    )
    made.reload.chmod(0o755)
    try:
        yield made
    finally:
        if made.pid.exists():
            pid = made.server_pid()
            if alive(pid):
                terminate(pid, signal.SIGTERM)


def consumer_map(bed: JavaBed, legacy: bool) -> dict[str, object]:
    return {
        "version": 1,
        "consumers": {
            "java": {
                "certificate": NAME,
                "files": [
                    {
                        "path": str(bed.keystore),
                        "content": "pkcs12",
                        "password_file": str(bed.password),
                        "pkcs12_legacy": legacy,
                        "alias": "tomcat",
                    }
                ],
                "reload": [str(bed.reload)],
                "verify": [{"host": "127.0.0.1", "port": bed.port, "server_name": NAME}],
                "verify_timeout": 60,
                "notes": "a JSSE server that reads its keystore at start: reload = restart",
            }
        },
    }


def deploy(
    fanout: Path, bed: JavaBed, lineages: LineageFactory, *, traced: Path | None = None
) -> dict[str, Any]:
    argv: list[str | Path] = [
        fanout,
        "deploy",
        "--config", bed.config, "--config-dir", lineages.config_dir, "--cert-name", NAME,
        "--state-file", bed.directory / "state.json", "--lock-file", bed.directory / "lock",
        "--json",
    ]  # fmt: skip
    if traced is not None:
        assert STRACE is not None
        # Every thread of the deploy, but not the programs it runs (the server outlives it).
        argv = [STRACE, "-ff", "-b", "execve", "-qq", "-y", "-s", "0", "-o", traced / "t", "-e",
                "trace=openat,fchown,fchmod,write,rename,renameat,renameat2", *argv]  # fmt: skip
    result = run(argv, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, explain(result) + "\n" + _tail(bed.log)
    doc = json_document(result)
    assert PASSWORD not in result.stdout + result.stderr
    return doc


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)"


_CREATE = re.compile(r'^openat\(\d+<[^>]*>, "([^"]*)", ([A-Z_|]+), (0\d+)\) = \d+<([^>]*)>')
_FD_CALL = re.compile(r"^(fchown|fchmod|write)\(\d+<([^>]*)>,")


def keystore_events(trace_dir: Path, keystore: Path) -> list[tuple[int, list[str]]]:
    """For each temporary file created beside ``keystore``: its creation mode, then what was
    done to it, in order (chown, chmod, write)."""
    prefix = f"{keystore.parent}/.{keystore.name}.fanout-"
    found: dict[str, tuple[int, list[str]]] = {}
    for trace in sorted(trace_dir.iterdir()):
        for line in trace.read_text(errors="replace").splitlines():
            if (m := _CREATE.match(line)) and "O_CREAT" in m[2] and m[4].startswith(prefix):
                found[m[4]] = (int(m[3], 8), [])
            elif (m := _FD_CALL.match(line)) and m[2] in found:
                found[m[2]][1].append(m[1][1:] if m[1] != "write" else "write")
    return list(found.values())


def wait_listening(bed: JavaBed, pid: int) -> None:
    deadline = time.monotonic() + 30
    while f"listening {bed.port}" not in _tail(bed.log):
        assert alive(pid) and time.monotonic() < deadline, _tail(bed.log)
        time.sleep(0.05)


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_java_serves_the_placed_keystore_and_an_unchanged_one_is_left_alone(
    fanout_bin: Path, bed: JavaBed, lineages: LineageFactory, tmp_path: Path, legacy: bool
) -> None:
    lineages.issue(NAME)
    write_map(bed.config.parent, consumer_map(bed, legacy))

    traces = tmp_path / "trace"
    traces.mkdir()
    first = deploy(fanout_bin, bed, lineages, traced=traces if STRACE else None)
    consumer = first["consumers"][0]
    assert consumer["outcome"] == "ok" and consumer["reloaded"], first
    assert consumer["endpoints"][0]["ok"], first
    live = read_lineage(str(lineages.config_dir / "live" / NAME))
    assert consumer["endpoints"][0]["served"]["sha256"] == live.cert.fingerprint
    pid = bed.server_pid()
    wait_listening(bed, pid)
    assert "aliases [tomcat]" in _tail(bed.log)
    st = bed.keystore.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    if STRACE:
        events = keystore_events(traces, bed.keystore)
        assert len(events) == 1, events
        mode, done = events[0]
        assert mode & 0o077 == 0
        assert done[:2] == ["chown", "chmod"] and "write" in done, done

    # Unchanged: not rewritten, not restarted, still verified.
    second = deploy(fanout_bin, bed, lineages)
    again = second["consumers"][0]
    assert again["outcome"] == "ok" and not again["reloaded"], second
    assert [f["changed"] for f in again["files"]] == [False]
    assert bed.keystore.stat().st_ino == st.st_ino
    assert bed.server_pid() == pid and alive(pid) and bed.start_count() == 1

    # A renewal: rewritten, restarted, and Java serves the new certificate.
    lineages.renew(NAME)
    third = deploy(fanout_bin, bed, lineages)
    renewed = third["consumers"][0]
    assert renewed["outcome"] == "ok" and renewed["reloaded"], third
    new = read_lineage(str(lineages.config_dir / "live" / NAME))
    assert new.cert.fingerprint != live.cert.fingerprint
    assert renewed["endpoints"][0]["served"]["sha256"] == new.cert.fingerprint
    assert bed.keystore.stat().st_ino != st.st_ino
    assert bed.server_pid() != pid and not alive(pid) and bed.start_count() == 2
