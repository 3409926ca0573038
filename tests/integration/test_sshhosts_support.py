"""The ssh test hosts themselves: isolation, strict host keys, faults, a daemon inside a host,
the old Python, and a teardown that leaves nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.netns import leftovers, served_in
from tests.support.oldpython import ensure_python39
from tests.support.sshhosts import SshHost, SshHosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and mounts")


def ssh(hosts: SshHosts, host: SshHost, command: str = "true") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hosts.ssh_argv(host, command), capture_output=True, text=True, timeout=30, check=False
    )


def test_a_file_on_one_host_is_absent_on_the_other(hosts: SshHosts) -> None:
    a, b = hosts.hosts["a"], hosts.hosts["b"]
    a.write("/srv/tls/x.pem", b"A", uid=a.users["svc"].uid, mode=0o640)
    assert a.read_bytes("/srv/tls/x.pem") == b"A"
    assert (a.stat("/srv/tls/x.pem").uid, a.stat("/srv/tls/x.pem").mode) == (2100, 0o640)
    assert not b.exists("/srv/tls/x.pem")
    assert not Path("/srv/tls/x.pem").exists()
    assert ssh(hosts, a, "cat /srv/tls/x.pem").stdout == "A"


def test_a_user_on_one_host_only(hosts: SshHosts) -> None:
    assert hosts.hosts["a"].run(["id", "-u", "svc"]).stdout == b"2100\n"
    assert hosts.hosts["b"].run(["id", "-u", "svc"]).returncode != 0


def test_strict_host_key_checking_then_a_changed_key(hosts: SshHosts) -> None:
    a = hosts.hosts["a"]
    done = ssh(hosts, a, "echo $0")
    assert (done.returncode, done.stdout) == (0, "sh\n"), done.stderr
    a.new_host_key()
    done = ssh(hosts, a)
    assert done.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr


def test_a_revoked_client_key_is_refused(hosts: SshHosts) -> None:
    a = hosts.hosts["a"]
    a.revoke_client_key()
    done = ssh(hosts, a)
    assert done.returncode == 255
    assert "Permission denied" in done.stderr


def test_a_stopped_host_refuses_then_comes_back_with_its_files(hosts: SshHosts) -> None:
    a = hosts.hosts["a"]
    a.write("/srv/tls/kept", b"k")
    a.stop()
    done = ssh(hosts, a)
    assert done.returncode == 255
    assert "Connection refused" in done.stderr
    a.start()
    assert ssh(hosts, a, "cat /srv/tls/kept").stdout == "k"


def place_cert(host: SshHost, tmp_path: Path) -> str:
    """A throwaway certificate and key in the host's /srv/tls; the certificate's SHA-256."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=a.test", "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    host.write("/srv/tls/cert.pem", cert.read_bytes())
    host.write("/srv/tls/key.pem", key.read_bytes(), mode=0o600)
    fingerprint = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return fingerprint.split("=")[1].strip().replace(":", "").lower()


def test_nginx_in_a_host_serves_the_cert_placed_there(hosts: SshHosts, tmp_path: Path) -> None:
    a = hosts.hosts["a"]
    fingerprint = place_cert(a, tmp_path)
    nginx = a.start_nginx("/srv/tls/cert.pem", "/srv/tls/key.pem")
    assert served_in(hosts.controller, a.address, 443, "a.test").fingerprint == fingerprint
    assert a.run(nginx.test_argv).returncode == 0
    assert a.run(nginx.reload_argv).returncode == 0


def test_dovecot_in_a_host_offers_starttls_with_the_cert_there(
    hosts: SshHosts, tmp_path: Path
) -> None:
    a = hosts.hosts["a"]
    fingerprint = place_cert(a, tmp_path)
    dovecot = a.start_dovecot("/srv/tls/cert.pem", "/srv/tls/key.pem")
    client = subprocess.run(
        hosts.controller_argv(
            ["openssl", "s_client", "-starttls", "imap", "-connect", f"{a.address}:143"]
        ),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    leaf = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
        input=client.stdout, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert leaf.split("=")[1].strip().replace(":", "").lower() == fingerprint
    assert a.run(dovecot.reload_argv).returncode == 0


def test_kill_sessions_cuts_an_open_connection(hosts: SshHosts) -> None:
    a = hosts.hosts["a"]
    session = subprocess.Popen(
        hosts.ssh_argv(a, "echo up; sleep 30"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert session.stdout is not None
    assert session.stdout.readline() == b"up\n"
    assert a.kill_sessions()
    assert session.wait(timeout=10) == 255
    assert ssh(hosts, a).returncode == 0  # the listener is still up


def test_an_unreachable_host(hosts: SshHosts) -> None:
    a = hosts.hosts["a"]
    a.stop(unreachable=True)
    done = ssh(hosts, a)
    assert done.returncode == 255
    assert "No route to host" in done.stderr or "timed out" in done.stderr, done.stderr
    a.start()
    assert ssh(hosts, a).returncode == 0


def test_a_full_disk_and_a_path_without_python(tmp_path: Path) -> None:
    with SshHosts(tmp_path / "ssh") as hosts:
        small = hosts.add_host("small", tmpfs_size="64k", path_env="/nonexistent")
        done = ssh(hosts, small, "command -v python3")
        assert done.returncode != 0
        full = ssh(hosts, small, "/usr/bin/head -c 200000 /dev/zero > /srv/tls/big")
        assert full.returncode != 0
        assert "No space left on device" in full.stderr


def test_python39_on_a_host(tmp_path: Path) -> None:
    python = ensure_python39()
    with SshHosts(tmp_path / "ssh") as hosts:
        old = hosts.add_host("old", python=python)
        done = ssh(hosts, old, "python3 -I -c 'import sys; print(sys.version_info[:2])'")
        assert done.stdout == "(3, 9)\n", done.stderr
        piped = subprocess.run(
            hosts.ssh_argv(old, "python3 -I -"),
            input="import sys, pwd; print(sys.version_info[1], pwd.getpwuid(0).pw_shell)\n",
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert piped.stdout == "9 /bin/sh\n", piped.stderr


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    with SshHosts(tmp_path / "ssh") as hosts:
        a = hosts.add_host("a", tmpfs=("/srv/tls", "/srv/sshhosts-probe"))
        pids = {a.anchor_pid, a.sshd.pid if a.sshd else 0}
        stem = hosts.network.stem
    assert leftovers(stem) == []
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert "/srv/sshhosts-probe" not in Path("/proc/mounts").read_text()
    assert not Path("/srv/sshhosts-probe").exists()
