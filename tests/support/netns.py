"""A test network of Linux network namespaces: hosts with their own addresses, and a DNS
server that answers for them.

The layout (see the "Test hosts with their own addresses" recipe): one controller namespace
holding a bridge at 198.18.0.1/24 (and 2001:2::1/64), with the DNS server's own address
198.18.0.2 on it; one namespace per host, each with a veth on that bridge at 198.18.0.(10+N)
(and 2001:2::(10+N)). 198.18.0.0/15 is set aside for network tests and 2001:2::/48 for
benchmarking, so nothing outside these namespaces is ever a target.

``Dnsmasq`` runs in the controller namespace and answers A, AAAA and SRV for the names it is
given, and NXDOMAIN for every other name under its local domains (``test``); the controller's
``/etc/netns/NAME/resolv.conf`` points at it, so whatever runs there through ``ip netns exec``
(getaddrinfo, dnspython) resolves through it, and the machine's own resolver is never touched.

Every namespace and ``/etc/netns`` directory is named ``cfanout-PID-TOKEN-ROLE``: unique per
network, and a network whose creating process has died (a killed run) is swept by that name
(``sweep_leftovers``). ``TestNetwork.close`` kills what runs in its namespaces by PID, deletes
them and removes their ``/etc/netns`` directories, also after a failure half-way.

Processes run in a namespace as ``ip netns exec NS argv...`` (no shell); ``ip netns exec``
execs the command in place, so the PID of the Popen is the PID of the program.

Stand-alone: no pytest and no project imports. Run ``python -m tests.support.netns sweep`` to
remove the leftovers of killed runs by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .cli import run
from .proc import Account, alive, find_binary, spawn, tail

__all__ = [
    "CONTROLLER_V4",
    "CONTROLLER_V6",
    "DNS_V4",
    "PREFIX",
    "Dnsmasq",
    "Host",
    "NetnsServed",
    "Srv",
    "TestNetwork",
    "leftovers",
    "served_in",
    "sweep_leftovers",
]

IP_BIN = find_binary("ip", "/usr/sbin/ip", "/sbin/ip")
DNSMASQ_BIN = find_binary("dnsmasq", "/usr/sbin/dnsmasq")
SETPRIV_BIN = find_binary("setpriv", "/usr/bin/setpriv")
OPENSSL_BIN = find_binary("openssl", "/usr/bin/openssl")

PREFIX = "cfanout"
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
_NAME = re.compile(rf"^{PREFIX}-(?P<pid>\d+)-(?P<token>[0-9a-f]+)-(?P<role>[a-z0-9]+)$")

CONTROLLER_V4 = "198.18.0.1"
DNS_V4 = "198.18.0.2"
CONTROLLER_V6 = "2001:2::1"
PREFIX_V4, PREFIX_V6 = 24, 64
MAX_HOSTS = 200
STOP_TIMEOUT = 5.0
DNS_START_TIMEOUT = 10.0


def v4_of(index: int) -> str:
    return f"198.18.0.{10 + index}"


def v6_of(index: int) -> str:
    return f"2001:2::{10 + index}"


def in_netns(netns: str, argv: Sequence[str | Path]) -> list[str]:
    """``ip netns exec NETNS argv...``."""
    return [IP_BIN, "netns", "exec", netns, *(str(a) for a in argv)]


def as_user(account: Account, argv: Sequence[str | Path]) -> list[str]:
    """``argv`` run as ``account`` (user, its group, no supplementary groups) through
    setpriv: ``ip netns exec`` needs root, so the switch comes after it."""
    return [
        SETPRIV_BIN,
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        "--",
        *(str(a) for a in argv),
    ]


def _ip(*args: str) -> None:
    run([IP_BIN, *args], timeout=30, check=True)


@dataclass(frozen=True)
class Host:
    """A host of the network: its namespace and addresses on the bridge."""

    label: str
    netns: str
    index: int
    ipv4: str
    ipv6: str | None

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.ipv4,) if self.ipv6 is None else (self.ipv4, self.ipv6)

    def argv(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run in this host's namespace."""
        return in_netns(self.netns, argv)


@dataclass(frozen=True)
class Srv:
    """An SRV record: ``name`` (``_matrix-fed._tcp.example.test``) -> ``target``:``port``."""

    name: str
    target: str
    port: int
    priority: int = 10
    weight: int = 0

    def option(self) -> str:
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


@dataclass(frozen=True)
class NetnsServed:
    """What ``openssl s_client`` run in a namespace saw: the leaf's SHA-256 (lower-case hex),
    and, when a CA file was given, whether the chain and the name verified (``verify_error``
    is openssl's words when not)."""

    fingerprint: str
    verified: bool | None
    verify_error: str | None


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_VERIFY = re.compile(r"Verify return code: (\d+) \(([^)]*)\)")


def served_in(
    netns: str,
    host: str,
    port: int,
    server_name: str,
    *,
    ca_file: Path | None = None,
    timeout: float = 10,
) -> NetnsServed:
    """``openssl s_client -connect HOST:PORT -servername NAME`` in ``netns`` (with
    ``-CAfile`` and ``-verify_hostname NAME`` when ``ca_file`` is given). AssertionError if it
    got no certificate."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [OPENSSL_BIN, "s_client", "-connect", target, "-servername", server_name]
    if ca_file is not None:
        argv += ["-CAfile", str(ca_file), "-verify_hostname", server_name]
    client = subprocess.run(
        in_netns(netns, argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    leaf = _PEM_CERT.search(client.stdout)
    if leaf is None:
        raise AssertionError(
            f"openssl s_client -connect {target} -servername {server_name} in {netns} got no"
            f" certificate (exit {client.returncode}):\n{client.stderr[-2000:]}"
        )
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.group(0))).hexdigest()
    verified: bool | None = None
    error: str | None = None
    if ca_file is not None:
        match = _VERIFY.search(client.stdout)
        verified = match is not None and match.group(1) == "0"
        error = None if verified else (match.group(2) if match else "no verify result")
    return NetnsServed(fingerprint, verified, error)


# --------------------------------------------------------------------------- the network


@dataclass
class TestNetwork:
    """A controller namespace with a bridge and the hosts added to it; a context manager
    (``close`` on exit). ``ipv6``: give every host an IPv6 address too."""

    __test__ = False  # not a pytest test class

    ipv6: bool = True
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.token}"

    @property
    def controller(self) -> str:
        """The controller's namespace name."""
        return f"{self.stem}-ctl"

    @property
    def names(self) -> tuple[str, ...]:
        """Every namespace this network made (the controller first)."""
        return tuple(self._made)

    def __enter__(self) -> Self:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        self._made.append(name)  # before: a failed add is cleaned up as well
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")

    def open(self) -> None:
        """Make the controller namespace: the bridge with the controller's and the DNS
        server's addresses, and the resolver file pointing at that server."""
        ctl = self.controller
        self._add_netns(ctl)
        _ip("-n", ctl, "link", "add", "br0", "type", "bridge")
        _ip("-n", ctl, "addr", "add", f"{CONTROLLER_V4}/{PREFIX_V4}", "dev", "br0")
        _ip("-n", ctl, "addr", "add", f"{DNS_V4}/{PREFIX_V4}", "dev", "br0")
        if self.ipv6:
            _ip("-n", ctl, "-6", "addr", "add", f"{CONTROLLER_V6}/{PREFIX_V6}", "dev", "br0",
                "nodad")  # fmt: skip
        _ip("-n", ctl, "link", "set", "br0", "up")
        etc = NETNS_ETC / ctl
        etc.mkdir(parents=True, exist_ok=True)
        etc.chmod(0o755)
        # ip netns exec bind-mounts this over /etc/resolv.conf (for getaddrinfo and dnspython).
        (etc / "resolv.conf").write_text(f"nameserver {DNS_V4}\noptions timeout:2 attempts:1\n")

    def add_host(self, label: str) -> Host:
        """A new host namespace ``label`` with a veth on the bridge at the next address."""
        if label in self.hosts:
            raise ValueError(f"host {label} exists")
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise ValueError("too many hosts")
        name = f"{self.stem}-h{index}"
        self._add_netns(name)
        port = f"h{index}"
        _ip("-n", self.controller, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", name)  # fmt: skip
        _ip("-n", self.controller, "link", "set", port, "master", "br0", "up")
        host = Host(label, name, index, v4_of(index), v6_of(index) if self.ipv6 else None)
        _ip("-n", name, "addr", "add", f"{host.ipv4}/{PREFIX_V4}", "dev", "eth0")
        if host.ipv6 is not None:
            _ip("-n", name, "-6", "addr", "add", f"{host.ipv6}/{PREFIX_V6}", "dev", "eth0",
                "nodad")  # fmt: skip
        _ip("-n", name, "link", "set", "eth0", "up")
        self.hosts[label] = host
        return host

    def spawn(
        self,
        netns: str,
        argv: Sequence[str | Path],
        log: Path,
        *,
        user: Account | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a foreground daemon in ``netns`` (as ``user``, if given), output to ``log``;
        it is stopped by PID on ``close`` unless stopped before (``stop``)."""
        if netns not in self._made:
            raise ValueError(f"{netns} is not a namespace of this network")
        words = as_user(user, argv) if user is not None else list(argv)
        proc = spawn(in_netns(netns, words), log, append=False, cwd=cwd, env=env)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop one of the daemons ``spawn`` started, by PID, and reap it."""
        _stop(proc, sig)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def pids(self) -> set[int]:
        """Every live process in this network's namespaces."""
        return {p for name in self._made for p in netns_pids(name)}

    def close(self) -> None:
        """Stop every process in the namespaces (ours by PID first, then whatever is left),
        delete the namespaces and their /etc/netns directories. Tries every step; raises
        RuntimeError at the end when any failed."""
        problems: list[str] = []
        for proc in reversed(self._procs):
            try:
                _stop(proc)
            except (OSError, subprocess.SubprocessError, RuntimeError) as e:
                problems.append(f"pid {proc.pid}: {e}")
        self._procs.clear()
        for name in reversed(self._made):
            problems += remove_netns(name)
        self._made.clear()
        self.hosts.clear()
        if problems:
            raise RuntimeError("test network teardown: " + "; ".join(problems))


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=STOP_TIMEOUT)


def netns_pids(name: str) -> set[int]:
    """The live processes in namespace ``name`` (``ip netns pids``); empty if it is gone."""
    if not (NETNS_RUN / name).exists():
        return set()
    done = run([IP_BIN, "netns", "pids", name], timeout=30)
    return {int(p) for p in done.stdout.split() if p.isdigit() and alive(int(p))}


def _kill_all(pids: set[int]) -> set[int]:
    """SIGTERM, then SIGKILL; the PIDs still alive after that."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (pids := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pids:
            break
    return pids


def remove_netns(name: str) -> list[str]:
    """Kill what runs in ``name``, delete it and its /etc/netns directory; the problems."""
    problems = []
    left = _kill_all(netns_pids(name))
    if left:
        problems.append(f"{name}: processes {sorted(left)} survived SIGKILL")
    if (NETNS_RUN / name).exists():
        done = run([IP_BIN, "netns", "del", name], timeout=30)
        if done.returncode != 0:
            problems.append(f"ip netns del {name}: {done.stderr.strip()}")
    etc = NETNS_ETC / name
    if etc.exists():
        shutil.rmtree(etc, ignore_errors=True)
        if etc.exists():
            problems.append(f"{etc} could not be removed")
    return problems


def leftovers(stem: str = PREFIX) -> list[str]:
    """Namespaces, /etc/netns directories and processes whose namespace name starts with
    ``stem``: what a closed network must not leave behind."""
    found = []
    for base in (NETNS_RUN, NETNS_ETC):
        if base.is_dir():
            found += [str(p) for p in sorted(base.iterdir()) if p.name.startswith(stem)]
    if NETNS_RUN.is_dir():
        for p in sorted(NETNS_RUN.iterdir()):
            if p.name.startswith(stem):
                found += [f"pid {pid} in {p.name}" for pid in sorted(netns_pids(p.name))]
    return found


def sweep_leftovers() -> list[str]:
    """Remove the namespaces and /etc/netns directories of networks whose creating process
    is gone (a killed run), and what still runs in them; the names removed. Networks of live
    processes (another run now) are left alone."""
    names: set[str] = set()
    for base in (NETNS_RUN, NETNS_ETC):
        if base.is_dir():
            names |= {p.name for p in base.iterdir()}
    removed = []
    for name in sorted(names):
        match = _NAME.match(name)
        if match is None or alive(int(match.group("pid"))):
            continue
        remove_netns(name)
        removed.append(name)
    return removed


# --------------------------------------------------------------------------- DNS


@dataclass
class Dnsmasq:
    """dnsmasq in the controller namespace of ``network``, listening on DNS_V4:53: A and AAAA
    from a hosts file it is given, SRV records, NXDOMAIN for any other name in
    ``local_domains``. ``serve`` (re)starts it with a new set of records (dnsmasq re-reads
    neither its options nor SRV records on SIGHUP)."""

    network: TestNetwork
    workdir: Path
    local_domains: tuple[str, ...] = ("test",)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts_file(self) -> Path:
        return self.workdir / "dns-hosts"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dnsmasq.log"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("dnsmasq not running")
        return self._proc.pid

    def argv(self, srv: Sequence[Srv]) -> list[str]:
        return [
            DNSMASQ_BIN,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--listen-address={DNS_V4}",
            "--bind-interfaces",
            "--pid-file=",
            "--log-queries",
            f"--log-facility={self.log_path}",
            f"--addn-hosts={self.hosts_file}",
            *(f"--local=/{d}/" for d in self.local_domains),
            *(s.option() for s in srv),
        ]

    def serve(self, hosts: Mapping[str, Sequence[str]], srv: Sequence[Srv] = ()) -> None:
        """Answer for exactly these names: ``hosts`` maps a name to its addresses (A and
        AAAA), ``srv`` lists the SRV records. Returns once dnsmasq is listening."""
        self.stop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # dnsmasq reads the hosts file after dropping root
        lines = [f"{addr} {name}" for name, addrs in hosts.items() for addr in addrs]
        self.hosts_file.write_text("".join(line + "\n" for line in lines))
        self.hosts_file.chmod(0o644)
        self.log_path.write_bytes(b"")
        self._proc = self.network.spawn(
            self.network.controller, self.argv(srv), self.workdir / "dnsmasq.out"
        )
        deadline = time.monotonic() + DNS_START_TIMEOUT
        # dnsmasq binds its sockets before it logs "started".
        while "started, version" not in tail(self.log_path, 200):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                out = tail(self.workdir / "dnsmasq.out")
                raise RuntimeError(f"dnsmasq did not start (exit {self._proc.poll()}):\n{out}")
            time.sleep(0.01)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self.network.stop(proc)

    def log(self) -> str:
        return tail(self.log_path, 400)


def main(argv: Sequence[str]) -> int:
    if list(argv) == ["sweep"]:
        for name in sweep_leftovers():
            print(f"removed {name}")
        return 0
    print("usage: python -m tests.support.netns sweep", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
