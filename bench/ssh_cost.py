"""Where a remote host's CPU goes (issue 15): one ssh connection, then the agent's start, each
measured on both sides, for the scale page (docs/scale.md).

Run as root with the project's venv, from the checkout:
    .venv/bin/python bench/ssh_cost.py [--repeat 20] [--kex ALGORITHMS]

One test host (tests/support/sshhosts.py: a real sshd in its own namespaces, 198.18.0.0/15).
Each repeat is one of:
- ``ssh HOST true``: a connection with the run's options (key exchange, authentication, a
  session), nothing else;
- the agent: the same connection running the fixed loader, the agent's sources sent on stdin,
  until its hello; then its stdin closes and it ends.
The controller's CPU is that of every child (ssh and what it starts), from
``getrusage(RUSAGE_CHILDREN)``; the target's is its sshd's cpuacct group (every session and
process sshd starts for it). Medians of ``--repeat`` runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot_fanout import remote, wire
from certbot_fanout.model import Host
from tests.support.cpuacct import TargetCpu
from tests.support.sshhosts import SshHost, SshHosts


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ssh_argv(hosts: SshHosts, host: SshHost, command: str) -> list[str]:
    entry = Host(name=host.label, **host.map_entry())  # type: ignore[arg-type]
    return hosts.controller_argv(
        [remote.ssh_program(), *remote.ssh_options(entry), "--", host.destination, command]
    )


def _one(argv: list[str], payload: bytes, targets: TargetCpu) -> tuple[float, float, float]:
    cpu, target, start = _cpu(), targets.seconds() or 0.0, time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    if payload:
        proc.stdin.write(payload)
        proc.stdin.flush()
        hello = wire.read_frame(proc.stdout)
        assert hello is not None and hello.get("hello") == wire.PROTOCOL, hello
    proc.stdin.close()
    proc.stdout.read()
    if proc.wait(timeout=30) != 0:
        raise SystemExit(f"{argv} failed")
    wall = time.monotonic() - start
    return wall, _cpu() - cpu, (targets.seconds() or 0.0) - target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--kex", help="KexAlgorithms for the client's ssh_config")
    args = parser.parse_args()
    targets = TargetCpu()
    rows = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ssh-cost-", dir="/var/tmp") as scratch,
            SshHosts(Path(scratch) / "ssh") as hosts,
        ):
            if args.kex:
                with open(hosts.ssh_config, "a") as f:
                    f.write(f"  KexAlgorithms {args.kex}\n")
            host = hosts.add_host("h0")
            assert host.sshd is not None
            targets.add(host.sshd.pid)
            entry = Host(name="h0", ssh=host.destination)
            cases = {
                "connection (ssh HOST true)": (_ssh_argv(hosts, host, "true"), b""),
                "connection and agent start": (
                    _ssh_argv(hosts, host, remote.agent_command(entry)),
                    remote.agent_payload(),
                ),
            }
            for name, (argv, payload) in cases.items():
                samples = [_one(argv, payload, targets) for _ in range(args.repeat)]
                rows[name] = {
                    "wall_ms": round(statistics.median(s[0] for s in samples) * 1000, 1),
                    "controller_cpu_ms": round(statistics.median(s[1] for s in samples) * 1000, 1),
                    "target_cpu_ms": round(statistics.median(s[2] for s in samples) * 1000, 1),
                }
                print(json.dumps({name: rows[name]}), flush=True)
    finally:
        targets.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
