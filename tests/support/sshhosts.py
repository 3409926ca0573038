"""SSH test hosts: real Debian sshds, each in its own network and mount namespace.

Built on ``netns.TestNetwork``: the controller namespace holds the bridge; host N is at
198.18.0.(10+N) (never any other address). Each host's mount namespace is held by a small
anchor process (``unshare --mount --propagation private sh -c 'MOUNTS && exec sleep
infinity'`` inside ``ip netns exec NS``); its sshd is started into that namespace with
``nsenter -t ANCHOR -m -n sshd -D -e -f CFG``. The anchor keeps the host's files (its tmpfs)
across ``stop()``/``start()`` and ``new_host_key()``, as a real host's disk would.

Inside each host: a tmpfs on each ``tmpfs`` directory (made on the machine first if missing),
and per-host copies of /etc/passwd, /etc/group and /etc/shadow bind-mounted over the originals,
so ``users`` exist on that host only and root's shell there is /bin/sh.

The controller side: one ed25519 client key, an ``ssh_config`` and a ``known_hosts`` in the
workdir. ``controller_argv`` runs a command in the controller namespace.

Files on a host are read and written through ``/proc/ANCHOR/root`` (the anchor's view of the
filesystem), so a path must not pass through an absolute symlink; ``run`` enters the host.

Stand-alone: no pytest and no project imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .netns import IP_BIN, TestNetwork, in_netns, sweep_leftovers
from .proc import Account, alive, find_binary, spawn, tail, terminate

__all__ = ["HostStat", "HostUser", "InHostDaemon", "SshHost", "SshHosts"]

SSHD_BIN = find_binary("sshd", "/usr/sbin/sshd")
SSH_KEYGEN_BIN = find_binary("ssh-keygen", "/usr/bin/ssh-keygen")
SSH_BIN = find_binary("ssh", "/usr/bin/ssh")
NSENTER_BIN = find_binary("nsenter", "/usr/bin/nsenter")
UNSHARE_BIN = find_binary("unshare", "/usr/bin/unshare")
NGINX_BIN = find_binary("nginx", "/usr/sbin/nginx")
DOVECOT_BIN = find_binary("dovecot", "/usr/sbin/dovecot")
DOVEADM_BIN = find_binary("doveadm", "/usr/bin/doveadm")
# A tmpfs of every host for daemons' runtime files: every user can traverse it (Dovecot's
# login processes run as dovenull), unlike a test's workdir.
HOST_RUN = "/run/sshhosts"
START_TIMEOUT = 10.0
FIRST_UID = 2100

HostUser = str | tuple[str, int]


@dataclass(frozen=True)
class HostStat:
    uid: int
    gid: int
    mode: int
    inode: int
    size: int


def _quote(word: str | Path) -> str:
    return "'" + str(word).replace("'", "'\\''") + "'"


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited {proc.poll()}" if proc.poll() is not None else "not ready"
            raise RuntimeError(f"{what} {state}:\n{tail(log)}")
        time.sleep(0.01)


@dataclass
class InHostDaemon:
    """A daemon started inside a host (our child, in the foreground); stopped by PID."""

    label: str
    proc: subprocess.Popen[bytes]
    test_argv: list[str]
    reload_argv: list[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc.pid)
        self.proc.wait(timeout=10)


@dataclass
class SshHost:
    """One test host: ``address``, ``destination`` (``root@ADDRESS``), its files and sshd."""

    hosts: SshHosts
    label: str
    netns: str
    address: str
    dir: Path
    tmpfs: tuple[str, ...]
    tmpfs_size: str | None
    path_env: str | None
    users: dict[str, Account] = field(default_factory=dict)
    anchor: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    daemons: list[InHostDaemon] = field(default_factory=list)

    # ---------------------------------------------------------------- paths and setup

    @property
    def destination(self) -> str:
        return f"root@{self.address}"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    def map_entry(self) -> dict[str, str]:
        """The product's map entry for this host."""
        return {
            "ssh": self.destination,
            "ssh_config": str(self.hosts.ssh_config),
            "known_hosts": str(self.hosts.known_hosts),
        }

    def _accounts(self, users: Sequence[HostUser]) -> None:
        passwd = Path("/etc/passwd").read_text().splitlines()
        group = Path("/etc/group").read_text().splitlines()
        shadow = Path("/etc/shadow").read_text().splitlines()
        taken = {int(line.split(":")[2]) for line in passwd + group if line.count(":") >= 3}
        next_uid = FIRST_UID
        for user in users:
            name, uid = (user, None) if isinstance(user, str) else user
            if uid is None:
                while next_uid in taken:
                    next_uid += 1
                uid = next_uid
            taken.add(uid)
            passwd.append(f"{name}:x:{uid}:{uid}::/nonexistent:/bin/sh")
            group.append(f"{name}:x:{uid}:")
            shadow.append(f"{name}:*:20000:0:99999:7:::")
            self.users[name] = Account(name, uid, uid)
        # Root's bash start-up costs ~100 ms per command; a locked (!) root refuses keys.
        passwd = [
            ":".join([*f.split(":")[:6], "/bin/sh"]) if (f := line).startswith("root:") else line
            for line in passwd
        ]
        shadow = [
            "root:*:" + line.split(":", 2)[2] if line.startswith("root:!") else line
            for line in shadow
        ]
        for name, lines, mode in (
            ("passwd", passwd, 0o644),
            ("group", group, 0o644),
            ("shadow", shadow, 0o640),
        ):
            path = self.dir / name
            path.write_text("\n".join(lines) + "\n")
            path.chmod(mode)

    def _write_sshd_config(self) -> None:
        lines = [
            f"ListenAddress {self.address}",
            "Port 22",
            f"HostKey {self.host_key}",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "LogLevel VERBOSE",
            "UseDNS no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
        ]
        if self.path_env is not None:
            lines.append(f"SetEnv PATH={self.path_env}")
        self.sshd_config.write_text("\n".join(lines) + "\n")

    def _new_host_key(self) -> None:
        for path in (self.host_key, self.host_key.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        subprocess.run(
            [SSH_KEYGEN_BIN, "-q", "-t", "ed25519", "-N", "", "-C", self.label, "-f",
             str(self.host_key)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def _mount_script(self) -> str:
        steps = []
        for directory in self.tmpfs:
            size = f",size={self.tmpfs_size}" if self.tmpfs_size else ""
            steps.append(
                f"mount -t tmpfs -o mode=0755{size} {_quote(self.label)} {_quote(directory)}"
            )
        steps.append(f"mount -t tmpfs -o mode=0755,size=4m {_quote(self.label)} {HOST_RUN}")
        for name in ("passwd", "group", "shadow"):
            steps.append(f"mount --bind {_quote(self.dir / name)} /etc/{name}")
        return " && ".join([*steps, "exec sleep infinity"])

    def _open(self, users: Sequence[HostUser]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._accounts(users)
        self._new_host_key()
        self.authorized_keys.write_text(self.hosts.identity.with_suffix(".pub").read_text())
        self._write_sshd_config()
        for directory in (*self.tmpfs, HOST_RUN):
            if not Path(directory).is_dir():
                Path(directory).mkdir(parents=True)
                self.hosts.made_dirs.append(Path(directory))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = self.dir / "anchor.log"
        script = self._mount_script()
        argv = in_netns(
            self.netns, [UNSHARE_BIN, "--mount", "--propagation", "private", "sh", "-c", script]
        )
        self.anchor = spawn(argv, log, append=False)
        anchor = self.anchor
        _wait(
            f"host {self.label} mounts",
            lambda: _comm(anchor.pid) == "sleep",
            anchor,
            log,
        )
        self.start()

    # ---------------------------------------------------------------- on the host

    @property
    def anchor_pid(self) -> int:
        if self.anchor is None or self.anchor.poll() is not None:
            raise RuntimeError(f"host {self.label} is not set up")
        return self.anchor.pid

    def enter_argv(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run inside this host (its mount and network namespaces)."""
        # -r and -w: entering a mount namespace resets the root to that namespace's own; in a
        # chroot (CI's fresh root) that is the outer filesystem, not the anchor's root.
        anchor = str(self.anchor_pid)
        return [NSENTER_BIN, "-t", anchor, "-m", "-n", "-r", "-w", *(str(a) for a in argv)]

    def run(
        self, argv: Sequence[str | Path], input: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` on this host as root (not through ssh); output captured."""
        return subprocess.run(
            self.enter_argv(argv), input=input, capture_output=True, timeout=timeout, check=False
        )

    def path(self, path: str | Path) -> Path:
        """``path`` as seen on this host, from the machine (through ``/proc/ANCHOR/root``)."""
        return Path(f"/proc/{self.anchor_pid}/root") / str(path).lstrip("/")

    def read_bytes(self, path: str | Path) -> bytes:
        return self.path(path).read_bytes()

    def exists(self, path: str | Path) -> bool:
        return self.path(path).exists()

    def stat(self, path: str | Path) -> HostStat:
        st = os.stat(self.path(path))
        return HostStat(st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_ino, st.st_size)

    def write(
        self, path: str | Path, data: bytes, uid: int = 0, gid: int = 0, mode: int = 0o644
    ) -> None:
        """Write ``data`` to ``path`` on this host (parents made), then give it owner and mode."""
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chown(target, uid, gid)
        target.chmod(mode)

    # ---------------------------------------------------------------- sshd and faults

    @property
    def running(self) -> bool:
        return self.sshd is not None and self.sshd.poll() is None

    def start(self) -> None:
        """Start sshd (listening on port 22 of the address) if it is not running."""
        if self.running:
            return
        link_up = [IP_BIN, "-n", self.netns, "link", "set", "eth0", "up"]
        subprocess.run(link_up, check=True, capture_output=True, timeout=30)
        self.sshd = spawn(
            self.enter_argv([SSHD_BIN, "-D", "-e", "-f", self.sshd_config]),
            self.sshd_log,
        )
        sshd = self.sshd
        _wait(f"sshd of {self.label}", lambda: self._listening(), sshd, self.sshd_log)

    def _listening(self) -> bool:
        done = self.run(["ss", "-Htln", f"src {self.address}:22"], timeout=10)
        return b"LISTEN" in done.stdout

    def stop(self, *, unreachable: bool = False) -> None:
        """Host down: its sshd is killed (with every session). By default the address stays
        up, so a connection is refused at once ("Connection refused"); with ``unreachable``
        the host's link goes down too, so nothing answers ARP and a connection fails after
        ARP gives up ("No route to host", about 3 s). The host's files are kept; ``start``
        brings the link and sshd back."""
        if unreachable:
            run_ip = [IP_BIN, "-n", self.netns, "link", "set", "eth0", "down"]
            subprocess.run(run_ip, check=True, capture_output=True, timeout=30)
        sshd, self.sshd = self.sshd, None
        if sshd is not None:
            if sshd.poll() is None:
                terminate(sshd.pid)
            sshd.wait(timeout=10)

    def new_host_key(self) -> None:
        """Regenerate the host key and restart sshd: the known_hosts entry is now wrong."""
        self.stop()
        self._new_host_key()
        self.start()

    def revoke_client_key(self) -> None:
        """Remove the client key from this host's authorized keys: auth is refused."""
        self.authorized_keys.write_text("")

    def authorize_client_key(self) -> None:
        self.authorized_keys.write_text(self.hosts.identity.with_suffix(".pub").read_text())

    def kill_sessions(self) -> list[int]:
        """SIGKILL the session processes of this host's sshd (its children), not the
        listener: cuts every open connection. The PIDs killed."""
        if self.sshd is None:
            return []
        killed = []
        for pid in _children(self.sshd.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    # ---------------------------------------------------------------- daemons

    def start_nginx(
        self, cert_path: str, key_path: str, port: int = 443, listen: str | None = None
    ) -> InHostDaemon:
        """nginx (foreground master) inside this host, serving ``cert_path``/``key_path`` (paths
        on the host) on ADDRESS:port (or ``listen``:port, such as the host's own 127.0.0.1);
        config, pid file and logs in the host's directory."""
        address = listen or self.address
        prefix = self.dir / f"nginx-{address}-{port}"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        temps = "".join(
            f"    {kind}_temp_path {prefix / 'tmp' / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix / "access.log"};
{temps}    server {{
        listen {address}:{port} ssl;
        ssl_certificate {cert_path};
        ssl_certificate_key {key_path};
        default_type text/plain;
        return 200 "ok\\n";
    }}
}}
"""
        )
        flags = [NGINX_BIN, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
        log = prefix / "launch.log"
        proc = spawn(self.enter_argv(flags), log, append=False)
        daemon = InHostDaemon("nginx", proc, [*flags, "-t"], [*flags, "-s", "reload"], log)
        self.daemons.append(daemon)
        _wait(
            "nginx",
            lambda: b"LISTEN" in self.run(["ss", "-Htln", f"src {address}:{port}"]).stdout,
            proc,
            prefix / "error.log",
        )
        return daemon

    def start_dovecot(self, cert_path: str, key_path: str, port: int = 143) -> InHostDaemon:
        """Dovecot (IMAP with STARTTLS, foreground master) inside this host on ADDRESS:port,
        serving ``cert_path``/``key_path`` (paths on the host); its ``reload_argv`` is
        ``doveadm -c CONF reload`` (run on the host). Config and log in the host's directory,
        runtime files in the host's own /run/sshhosts."""
        state = self.dir / f"dovecot-{port}"
        state.mkdir(parents=True, exist_ok=True)
        conf = state / "dovecot.conf"
        base = f"{HOST_RUN}/dovecot-{port}"
        # No !include of /etc/dovecot: nothing of the system instance is read.
        conf.write_text(
            f"""base_dir = {base}
state_dir = {base}/state
log_path = {state / "dovecot.log"}
protocols = imap
listen = {self.address}
ssl = yes
ssl_cert = <{cert_path}
ssl_key = <{key_path}
mail_location = maildir:{base}/mail/%u
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {self.address}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        )
        log = state / "launch.log"
        proc = spawn(self.enter_argv([DOVECOT_BIN, "-F", "-c", conf]), log, append=False)
        daemon = InHostDaemon(
            "dovecot",
            proc,
            [DOVECOT_BIN, "-c", str(conf), "-n"],
            [DOVEADM_BIN, "-c", str(conf), "reload"],
            log,
        )
        self.daemons.append(daemon)
        address = self.address
        _wait(
            "dovecot",
            lambda: b"LISTEN" in self.run(["ss", "-Htln", f"src {address}:{port}"]).stdout,
            proc,
            state / "dovecot.log",
        )
        return daemon

    def close(self) -> list[str]:
        problems = []
        for daemon in reversed(self.daemons):
            try:
                daemon.stop()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                problems.append(f"{self.label} {daemon.label}: {exc}")
        self.daemons.clear()
        try:
            self.stop()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            problems.append(f"{self.label} sshd: {exc}")
        anchor, self.anchor = self.anchor, None
        if anchor is not None:
            anchor.kill()
            anchor.wait(timeout=10)
        return problems


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rfind(")") + 2 :].split()[1]) == pid and alive(int(entry)):
            found.add(int(entry))
    return found


class SshHosts:
    """N ssh test hosts on one ``TestNetwork``; a context manager. ``workdir`` (kept for the
    caller) holds the keys, configs and logs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.network = TestNetwork(ipv6=False)
        self.hosts: dict[str, SshHost] = {}
        self.made_dirs: list[Path] = []

    @property
    def identity(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def controller(self) -> str:
        return self.network.controller

    def __enter__(self) -> Self:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sweep_leftovers()  # a killed run's namespaces, and the sshds and daemons in them
        self.network.open()
        subprocess.run(
            [SSH_KEYGEN_BIN, "-q", "-t", "ed25519", "-N", "", "-C", "controller", "-f",
             str(self.identity)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.identity.chmod(0o600)
        self.ssh_config.write_text(
            f"""Host *
    User root
    IdentityFile {self.identity}
    IdentitiesOnly yes
    IdentityAgent none
    ForwardAgent no
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
"""
        )
        self.known_hosts.write_text("")

    def add_host(
        self,
        label: str,
        *,
        users: Sequence[HostUser] = (),
        python: Path | None = None,
        tmpfs: Sequence[str] = ("/srv/tls",),
        tmpfs_size: str | None = None,
        path_env: str | None = None,
    ) -> SshHost:
        """A new host with its own sshd, running when this returns. ``users``: names or
        (name, uid) present on this host only; ``python``: an interpreter exposed as
        ``python3`` first on the session PATH; ``path_env``: the session PATH."""
        net_host = self.network.add_host(label)
        host = SshHost(
            self, label, net_host.netns, net_host.ipv4, self.workdir / label,
            tuple(tmpfs), tmpfs_size, path_env,
        )  # fmt: skip
        self.hosts[label] = host
        if python is not None:
            bin_dir = host.dir / "bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / "python3").unlink(missing_ok=True)
            (bin_dir / "python3").symlink_to(python)
            host.path_env = f"{bin_dir}:{path_env or '/usr/bin:/bin'}"
        host._open(users)
        self.refresh_known_hosts()
        return host

    def refresh_known_hosts(self) -> None:
        """Rewrite known_hosts with the key each host had when it was added."""
        lines = []
        for host in self.hosts.values():
            key = host.dir / "known_key.pub"
            if not key.exists():
                key.write_text(host.host_key.with_suffix(".pub").read_text())
            kind, blob = key.read_text().split()[:2]
            lines.append(f"{host.address} {kind} {blob}\n")
        self.known_hosts.write_text("".join(lines))

    def controller_argv(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run in the controller namespace (which reaches every host)."""
        return in_netns(self.controller, argv)

    def ssh_argv(self, host: SshHost, *command: str) -> list[str]:
        """``ssh -F ssh_config root@ADDRESS COMMAND`` in the controller namespace."""
        return self.controller_argv([SSH_BIN, "-F", self.ssh_config, host.destination, *command])

    def close(self) -> None:
        problems = []
        for host in reversed(self.hosts.values()):
            problems += host.close()
        self.hosts.clear()
        try:
            self.network.close()
        except RuntimeError as exc:
            problems.append(str(exc))
        for directory in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self.made_dirs.clear()
        if problems:
            raise RuntimeError("ssh hosts teardown: " + "; ".join(problems))
