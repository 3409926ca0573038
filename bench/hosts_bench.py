"""Remote-hosts benchmark (issue 15): `certbot-fanout deploy` to N test hosts over OpenSSH,
against the serial loop hand-written hooks and acme.sh use (one ssh per file, host by host).

Run as root with the project's venv, from the checkout:
    .venv/bin/python bench/hosts_bench.py [--sizes 1,10,50] [--repeat 3]

Each test host is a real sshd in its own network and mount namespace (tests/support/sshhosts.py,
198.18.0.0/15 only), with two consumers of two files each (a full chain and a key, owned by
root) and a reload of about 200 ms (`sleep 0.2`). Every repeat deploys a fresh lineage, so
every file changes and every consumer is reloaded. For each N it reports the median wall time
and the controller's CPU (user + system of the deploy and every ssh it started, from
`getrusage(RUSAGE_CHILDREN)`), and the same for the serial loop: per host, per file, `ssh HOST
'cat > TMP && mv TMP PATH'` with the bytes on stdin, then one `ssh HOST 'sleep 0.2'` per
consumer.

Targets (the issue's): N=10 within 1.5x of N=1; N=50 within 3x of N=1; at N=50 at least 10x
faster than the serial loop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot_fanout._pki import ThrowawayCA, write_lineage
from tests.support.cpuacct import TargetCpu
from tests.support.sshhosts import SshHosts

CERT = "bench.example.test"
CONSUMERS = 2


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _map(hosts: SshHosts) -> dict[str, Any]:
    consumers = {}
    for label in hosts.hosts:
        for i in range(CONSUMERS):
            consumers[f"svc{i}-{label}"] = {
                "host": label,
                "certificate": CERT,
                "files": [
                    {"path": f"/srv/tls/c{i}/fullchain.pem", "content": "fullchain"},
                    {"path": f"/srv/tls/c{i}/privkey.pem", "content": "privkey"},
                ],
                "reload": ["sleep", "0.2"],
            }
    return {
        "version": 1,
        "hosts": {label: h.map_entry() for label, h in hosts.hosts.items()},
        "consumers": consumers,
    }


def _fanout(
    hosts: SshHosts, work: Path, ca: ThrowawayCA, targets: TargetCpu
) -> tuple[float, float, float | None]:
    live = write_lineage(str(work / "le"), CERT, ca.issue([CERT]))
    config = work / "consumers.yaml"
    config.write_text(json.dumps(_map(hosts)))
    argv = hosts.controller_argv(
        [
            str(Path(sys.executable).parent / "certbot-fanout"),
            "deploy",
            "--config",
            str(config),
            "--lineage",
            live,
            "--state-file",
            str(work / "state.json"),
            "--lock-file",
            str(work / "lock"),
        ]
    )
    cpu, target, start = _cpu(), targets.seconds(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    after = targets.seconds()
    if done.returncode != 0:
        raise SystemExit(f"deploy failed:\n{done.stdout}\n{done.stderr}")
    return wall, _cpu() - cpu, None if after is None or target is None else after - target


def _serial(hosts: SshHosts, work: Path, ca: ThrowawayCA) -> tuple[float, float]:
    issued = ca.issue([CERT])
    parts = {"fullchain.pem": issued.fullchain_pem, "privkey.pem": issued.key_pem}
    cpu, start = _cpu(), time.monotonic()
    for host in hosts.hosts.values():
        for i in range(CONSUMERS):
            for name, data in parts.items():
                path = f"/srv/tls/c{i}/{name}"
                command = f"cat > {path}.tmp && mv {path}.tmp {path}"
                subprocess.run(hosts.ssh_argv(host, command), input=data, check=True)
            subprocess.run(hosts.ssh_argv(host, "sleep 0.2"), check=True)
    return time.monotonic() - start, _cpu() - cpu


def measure(size: int, repeat: int, serial: bool, kex: str | None = None) -> dict[str, Any]:
    ca = ThrowawayCA("hosts bench")
    targets = TargetCpu()
    try:
        with tempfile.TemporaryDirectory(prefix="hosts-bench-", dir="/var/tmp") as scratch:
            work = Path(scratch)
            os.chmod(work, 0o755)
            with SshHosts(work / "ssh") as hosts:
                if kex:  # what an admin may choose in ssh_config: a cheaper key exchange
                    with open(hosts.ssh_config, "a") as f:
                        f.write(f"  KexAlgorithms {kex}\n")
                for n in range(size):
                    host = hosts.add_host(f"h{n}")
                    assert host.sshd is not None
                    targets.add(host.sshd.pid)
                    for i in range(CONSUMERS):
                        host.run(["mkdir", "-p", f"/srv/tls/c{i}"])
                fanout = [_fanout(hosts, work, ca, targets) for _ in range(repeat)]
                loop = [_serial(hosts, work, ca) for _ in range(1 if serial else 0)]
    finally:
        targets.close()
    row: dict[str, Any] = {
        "hosts": size,
        "wall_s": round(statistics.median(w for w, _, _ in fanout), 3),
        "cpu_s": round(statistics.median(c for _, c, _ in fanout), 3),
    }
    target_cpu = [t for _, _, t in fanout if t is not None]
    if target_cpu:
        row["target_cpu_s"] = round(statistics.median(target_cpu), 3)
        # With every target on this machine's cores, no run can beat all CPU over the cores.
        row["cpu_bound_s"] = round((row["cpu_s"] + row["target_cpu_s"]) / (os.cpu_count() or 1), 3)
    if loop:
        row["serial_wall_s"] = round(loop[0][0], 3)
        row["serial_cpu_s"] = round(loop[0][1], 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--kex", help="KexAlgorithms for the client's ssh_config (default: ssh's own)"
    )
    parser.add_argument("--no-serial", action="store_true", help="skip the serial loop")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(size, args.repeat, serial=not args.no_serial, kex=args.kex))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["wall_s"]
    for row in rows:
        ratio = row["wall_s"] / base
        speedup = row.get("serial_wall_s", 0) / row["wall_s"]
        targets = (
            f", targets' cpu {row['target_cpu_s']:.3f} s (all cpu / cores:"
            f" {row['cpu_bound_s']:.3f} s)"
            if "target_cpu_s" in row
            else ""
        )
        print(
            f"{row['hosts']:>4} hosts: {row['wall_s']:.3f} s ({ratio:.2f}x of {rows[0]['hosts']}),"
            f" controller cpu {row['cpu_s']:.3f} s{targets}; serial loop"
            f" {row.get('serial_wall_s', 0):.3f} s ({speedup:.1f}x slower)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
