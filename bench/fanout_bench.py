"""Fan-out benchmark: wall time and peak RSS of a real `certbot-fanout deploy` to N consumers.

Run with the project's venv:  .venv/bin/python bench/fanout_bench.py [--sizes 1,10,100]
See bench/README.md for what is measured and how to read the output.

One helper process (this file with ``--serve-farm``) hosts every loopback TLS endpoint in a
single non-blocking event loop. Each endpoint serves the certificate from its own file copies
and reloads them when its index arrives on a FIFO. A consumer's reload command is
``/bin/sh -c "sleep 0.2; echo I > FIFO"``: about 200 ms of waiting and two tiny exec()s, no
Python start-up, and like a SIGHUP the reload takes effect asynchronously, after the command
has exited.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

NAME = "fanout-bench.test"
HELP_TARGET_S = 0.150
RSS_TARGET_MB = 60.0
RATIO_TARGET = 2.0
DEPLOY_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------------------------
# The endpoint farm (runs in its own process)
# --------------------------------------------------------------------------------------------


def _server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def serve_farm(spec_path: str) -> int:
    """Listen on one loopback port per endpoint; reload endpoint I when "I" arrives on the FIFO
    ("all" reloads every endpoint). Exits on SIGTERM/SIGINT or when the parent goes away."""
    with open(spec_path) as f:
        spec: dict[str, Any] = json.load(f)
    endpoints: list[dict[str, str]] = spec["endpoints"]
    parent = os.getppid()
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    contexts = [_server_context(e["cert"], e["key"]) for e in endpoints]
    sel = selectors.DefaultSelector()
    listeners: list[socket.socket] = []
    for i in range(len(endpoints)):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(256)
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, ("listen", i))
        listeners.append(lsock)
    ctl = os.open(spec["fifo"], os.O_RDWR | os.O_NONBLOCK)
    sel.register(ctl, selectors.EVENT_READ, ("ctl", -1))
    ctl_buffer = b""
    pending: dict[ssl.SSLSocket, float] = {}

    tmp = spec["ports_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump([s.getsockname()[1] for s in listeners], f)
    os.replace(tmp, spec["ports_file"])

    def reload(i: int) -> None:
        try:
            contexts[i] = _server_context(endpoints[i]["cert"], endpoints[i]["key"])
        except (OSError, ssl.SSLError) as e:  # like a daemon: keep serving the old one
            print(f"farm: endpoint {i}: reload failed: {e}", file=sys.stderr, flush=True)

    def close(tls: ssl.SSLSocket) -> None:
        pending.pop(tls, None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(tls)
        with contextlib.suppress(OSError):
            tls.close()

    def step(tls: ssl.SSLSocket) -> None:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(tls, selectors.EVENT_READ, ("tls", -1))
            return
        except ssl.SSLWantWriteError:
            sel.modify(tls, selectors.EVENT_WRITE, ("tls", -1))
            return
        except OSError:  # includes SSLError: a client gave up; not our concern
            pass
        close(tls)  # handshake done: the client has the certificate it came for

    while not stop:
        for key, _mask in sel.select(timeout=0.5):
            kind, index = key.data
            if kind == "listen":
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    tls = contexts[index].wrap_socket(
                        conn, server_side=True, do_handshake_on_connect=False
                    )
                    pending[tls] = time.monotonic() + 10.0
                    sel.register(tls, selectors.EVENT_READ, ("tls", -1))
                    step(tls)
            elif kind == "tls":
                tls = key.fileobj
                assert isinstance(tls, ssl.SSLSocket)
                step(tls)
            else:
                with contextlib.suppress(BlockingIOError):
                    ctl_buffer += os.read(ctl, 65536)
                *lines, ctl_buffer = ctl_buffer.split(b"\n")
                for line in lines:
                    word = line.strip().decode()
                    if word == "all":
                        for i in range(len(contexts)):
                            reload(i)
                    elif word.isdigit() and int(word) < len(contexts):
                        reload(int(word))
        now = time.monotonic()
        for tls in [t for t, deadline in pending.items() if deadline < now]:
            close(tls)
        if os.getppid() != parent:
            break
    for tls in list(pending):
        close(tls)
    for lsock in listeners:
        lsock.close()
    os.close(ctl)
    return 0


# --------------------------------------------------------------------------------------------
# The bench harness
# --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM to the bench: unwind through every cleanup like Ctrl-C."""


@dataclass
class Processes:
    """Every process the bench starts, so that each can be stopped by its PID."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cwd: str = "/"  # `python -m` puts the cwd first on sys.path: keep it neutral

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, cwd=self.cwd, **kwargs)
        self.procs.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first (a deploy then finishes its consumers and releases its lock), then
    SIGTERM, then SIGKILL; always by PID."""
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        if proc.returncode is not None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


@dataclass(frozen=True)
class Run:
    wall: float
    maxrss_mb: float
    cpu: float  # user+sys of the deploy and the reload commands it waited for
    farm_cpu: float  # user+sys of the endpoint farm during the run (bench side, not product)
    deploy_seconds: float  # the deploy's own measure (JSON "seconds"): after start-up
    consumer_seconds: list[float]
    attempts: list[int]
    verify_seconds: list[float]


@dataclass
class Bench:
    workdir: Path
    python: str
    reload_ms: int
    procs: Processes
    max_n: int
    old_fullchain: bytes = b""
    old_key: bytes = b""
    old_fp: str = ""
    new_fp: str = ""
    live: str = ""
    ports: list[int] = field(default_factory=list)
    fifo: str = ""
    fifo_fd: int = -1
    farm_pid: int = -1

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        from certbot_fanout._pki import ThrowawayCA, write_lineage

        ca = ThrowawayCA("certbot-fanout bench")
        config_dir = self.workdir / "letsencrypt"
        old = ca.issue([NAME])
        self.live = write_lineage(str(config_dir), NAME, old)
        self.old_fullchain, self.old_key = old.fullchain_pem, old.key_pem
        self.old_fp = _pem_fp(old.cert_pem)
        self.fifo = str(self.workdir / "reload.fifo")
        os.mkfifo(self.fifo, 0o600)
        # The bench holds the FIFO open too: a reload command still running after the farm
        # stopped (Ctrl-C) never blocks opening it for writing.
        self.fifo_fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        endpoints = []
        for i in range(self.max_n):
            d = self.service_dir(i)
            d.mkdir(parents=True)
            endpoints.append({"cert": str(d / "fullchain.pem"), "key": str(d / "privkey.pem")})
        self.write_old_copies(self.max_n)
        spec = self.workdir / "farm.json"
        ports_file = self.workdir / "farm.ports"
        spec.write_text(
            json.dumps({"endpoints": endpoints, "fifo": self.fifo, "ports_file": str(ports_file)})
        )
        log = open(self.workdir / "farm.log", "wb")  # noqa: SIM115 - closed below
        try:
            farm = self.procs.start(
                [self.python, os.path.abspath(__file__), "--serve-farm", str(spec)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.farm_pid = farm.pid
        deadline = time.monotonic() + 30
        while not ports_file.exists():
            if farm.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"endpoint farm did not start; see {self.workdir}/farm.log")
            time.sleep(0.02)
        self.ports = json.loads(ports_file.read_text())
        self.wait_serving(self.max_n, self.old_fp)

        new = ca.issue([NAME])
        write_lineage(str(config_dir), NAME, new)  # the renewal: live/ now points at cert2
        self.new_fp = _pem_fp(new.cert_pem)

    def service_dir(self, i: int) -> Path:
        return self.workdir / "services" / f"c{i:03d}"

    def write_old_copies(self, n: int) -> None:
        for i in range(n):
            d = self.service_dir(i)
            _atomic_write(d / "fullchain.pem", self.old_fullchain, 0o644)
            _atomic_write(d / "privkey.pem", self.old_key, 0o600)

    def wait_serving(self, n: int, fp: str, timeout: float = 30.0) -> None:
        from certbot_fanout.errors import ProbeError
        from certbot_fanout.lineage import fingerprint
        from certbot_fanout.probe import fetch_leaf

        deadline = time.monotonic() + timeout
        waiting = list(range(n))
        while waiting:
            still = []
            for i in waiting:
                try:
                    if fingerprint(fetch_leaf("127.0.0.1", self.ports[i], NAME, 5)) != fp:
                        still.append(i)
                except ProbeError:
                    still.append(i)
            waiting = still
            if waiting:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(waiting)} endpoints never served the expected cert")
                time.sleep(0.05)

    def reset(self, n: int) -> None:
        """Old-cert copies back in place and every endpoint serving them again."""
        self.write_old_copies(n)
        os.write(self.fifo_fd, b"all\n")
        self.wait_serving(n, self.old_fp)

    def config(self, n: int) -> str:
        uid, gid = os.getuid(), os.getgid()
        sleep = f"{self.reload_ms / 1000:.3f}"
        consumers = {}
        for i in range(n):
            d = self.service_dir(i)
            consumers[f"c{i:03d}"] = {
                "certificate": NAME,
                "files": [
                    {"path": str(d / "fullchain.pem"), "content": "fullchain",
                     "owner": uid, "group": gid, "mode": "0644"},
                    {"path": str(d / "privkey.pem"), "content": "privkey",
                     "owner": uid, "group": gid, "mode": "0600"},
                ],
                "reload": ["/bin/sh", "-c", f"sleep {sleep}; echo {i} > {self.fifo}"],
                "verify": [{"host": "127.0.0.1", "port": self.ports[i]}],
            }  # fmt: skip
        doc = {
            "version": 1,
            "defaults": {"reload_timeout": 30, "verify_timeout": 30},
            "consumers": consumers,
        }
        path = self.workdir / f"consumers-{n}.yaml"
        path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
        return str(path)

    def deploy_argv(self, n: int, jobs: int | None) -> list[str]:
        argv = [self.python, "-m", "certbot_fanout", "deploy", "--config", self.config(n),
                "--lineage", self.live, "--lock-file", str(self.workdir / "fanout.lock"),
                "--json"]  # fmt: skip
        if jobs is not None:
            argv += ["--jobs", str(jobs)]
        return argv

    # -- measurement -------------------------------------------------------------------------

    def deploy(self, n: int, jobs: int | None) -> Run:
        self.reset(n)
        argv = self.deploy_argv(n, jobs)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            farm_before = self.farm_cpu()
            start = time.perf_counter()
            proc = self.procs.start(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            farm_cpu = self.farm_cpu() - farm_before
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.procs.forget(proc)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        what = f"deploy N={n} jobs={jobs or 'default'}"
        if proc.returncode != 0:
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{stderr}\n{stdout[-4000:]}")
        doc = json.loads(stdout)
        consumers = doc["consumers"]
        bad = [c["name"] for c in consumers if c["outcome"] != "ok" or not c["endpoints"]
               or not all(e["ok"] and e["served"]["sha256"] == self.new_fp
                          for e in c["endpoints"])]  # fmt: skip
        if len(consumers) != n or bad or not doc["ok"]:
            raise RuntimeError(f"{what}: {len(consumers)} consumers, not verified: {bad[:5]}")
        if not all(c["reloaded"] and all(f["changed"] for f in c["files"]) for c in consumers):
            raise RuntimeError(f"{what}: some consumer skipped placing or reloading")
        self.wait_serving(n, self.new_fp, timeout=5)
        eps = [e for c in consumers for e in c["endpoints"]]
        return Run(
            wall=wall,
            maxrss_mb=usage.ru_maxrss / 1024,  # Linux: KiB -> MiB
            cpu=usage.ru_utime + usage.ru_stime,
            farm_cpu=farm_cpu,
            deploy_seconds=float(doc["seconds"]),
            consumer_seconds=[float(c["seconds"]) for c in consumers],
            attempts=[int(e["attempts"]) for e in eps],
            verify_seconds=[float(e["seconds"]) for e in eps],
        )

    def farm_cpu(self) -> float:
        with open(f"/proc/{self.farm_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def importtime(self) -> tuple[float, list[tuple[int, str]], list[str]]:
        """The hook path (bare command, $RENEWED_LINEAGE set) for N=1 under -X importtime:
        total import ms, top-level imports by cumulative us, and forbidden modules seen."""
        self.reset(1)
        lock = str(self.workdir / "fanout.lock")
        argv = [self.python, "-X", "importtime", "-m", "certbot_fanout",
                "--config", self.config(1), "--lock-file", lock]  # fmt: skip
        env = {**os.environ, "RENEWED_LINEAGE": self.live}
        proc = self.procs.start(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = proc.communicate(timeout=60)
        self.procs.forget(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"hook-mode deploy exited {proc.returncode}")
        top: list[tuple[int, str]] = []
        seen: list[str] = []
        for line in stderr.decode().splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)", line)
            if not m:
                continue
            name = m.group(4)
            if name.split(".")[0] in ("certbot", "acme") and name not in seen:
                seen.append(name)
            if not m.group(3):
                top.append((int(m.group(2)), name))
        top.sort(reverse=True)
        return sum(us for us, _ in top) / 1000, top, seen


def _pem_fp(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from certbot_fanout.lineage import fingerprint

    return fingerprint(x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER))


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".bench-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _median_ms(argv: Sequence[str], runs: int, procs: Processes) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = procs.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
        code = proc.wait(60)
        times.append(time.perf_counter() - start)
        procs.forget(proc)
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {code}")
    return statistics.median(times) * 1000


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def _fmt(values: Sequence[float], scale: float = 1.0) -> str:
    return f"{statistics.median(values) * scale:.0f}/{max(values) * scale:.0f}"


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,10,100, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be whole numbers >= 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_sizes, default=[1, 10, 100], help="default 1,10,100")
    parser.add_argument("--reload-ms", type=_positive, default=200, help="reload duration (200)")
    parser.add_argument("--repeat", type=_positive, default=5, help="parallel runs per N (5)")
    parser.add_argument("--seq-repeat", type=_positive, default=1, help="--jobs 1 runs per N (1)")
    parser.add_argument("--help-runs", type=_positive, default=20, help="--help start-ups (20)")
    parser.add_argument("--serve-farm", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_farm:
        return serve_farm(args.serve_farm)
    try:
        import certbot_fanout  # noqa: F401
    except ImportError:
        print("run with the venv: .venv/bin/python bench/fanout_bench.py", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _sigterm)
    procs = Processes()
    try:
        with _workspace() as workdir:
            try:
                return _bench(args, workdir, procs, _say)
            finally:
                procs.stop_all()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; every started process stopped, temp dir removed", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench error: {e}", file=sys.stderr)
        return 2


def _bench(
    args: argparse.Namespace, workdir: Path, procs: Processes, say: Callable[..., None]
) -> int:
    sizes: list[int] = args.sizes
    python = sys.executable
    script = str(Path(python).parent / "certbot-fanout")
    bench = Bench(workdir, python, args.reload_ms, procs, max(sizes))
    try:
        say(f"fanout bench: sizes {sizes}, reload {args.reload_ms} ms, {os.cpu_count()} CPUs, "
            f"python {sys.version.split()[0]}, workdir {workdir}")  # fmt: skip
        bench.setup()
        say(f"{bench.max_n} loopback TLS endpoints up in one farm process; lineage renewed\n")

        par: dict[int, list[Run]] = {}
        seq: dict[int, list[Run]] = {}
        for n in sizes:
            par[n] = [bench.deploy(n, None) for _ in range(args.repeat)]
            seq[n] = [bench.deploy(n, 1) for _ in range(args.seq_repeat)]
            say(f"  N={n}: parallel {[round(r.wall, 3) for r in par[n]]} s, "
                f"sequential {[round(r.wall, 3) for r in seq[n]]} s")  # fmt: skip

        help_ms = _median_ms([script, "--help"], args.help_runs, procs)
        bare_ms = _median_ms([python, "-c", "pass"], args.help_runs, procs)
        import_ms, top, forbidden = bench.importtime()
    finally:
        if bench.fifo_fd >= 0:
            os.close(bench.fifo_fd)

    def wall(runs: list[Run]) -> float:
        return statistics.median(r.wall for r in runs)

    def rss(runs: list[Run]) -> float:
        return max(r.maxrss_mb for r in runs)

    base = wall(par[sizes[0]])
    say("\nwall = median of runs; RSS = max ru_maxrss of the deploy process (os.wait4), MiB")
    say(f"{'N':>5} {'par wall s':>11} {'par RSS MiB':>12} {'seq wall s':>11} "
        f"{'seq RSS MiB':>12} {f'par/par({sizes[0]})':>13}")  # fmt: skip
    for n in sizes:
        say(f"{n:>5} {wall(par[n]):>11.3f} {rss(par[n]):>12.1f} {wall(seq[n]):>11.3f} "
            f"{rss(seq[n]):>12.1f} {wall(par[n]) / base:>13.2f}")  # fmt: skip

    say("\nwhere the time goes (last run of each; med/max over consumers or endpoints):")
    say(f"{'N':>5} {'mode':>4} {'wall s':>7} {'in deploy s':>11} {'outside s':>9} "
        f"{'consumer ms':>12} {'verify ms':>10} {'attempts':>9} {'cpu s':>6} "
        f"{'farm cpu s':>10}")  # fmt: skip
    for n in sizes:
        for mode, runs in (("par", par[n]), ("seq", seq[n])):
            r = runs[-1]
            say(f"{n:>5} {mode:>4} {r.wall:>7.3f} {r.deploy_seconds:>11.3f} "
                f"{r.wall - r.deploy_seconds:>9.3f} {_fmt(r.consumer_seconds, 1000):>12} "
                f"{_fmt(r.verify_seconds, 1000):>10} {_fmt(r.attempts):>9} {r.cpu:>6.2f} "
                f"{r.farm_cpu:>10.2f}")  # fmt: skip

    say(f"\n`certbot-fanout --help`: median {help_ms:.1f} ms of {args.help_runs} "
        f"(bare `python -c pass`: {bare_ms:.1f} ms)")  # fmt: skip
    say(f"hook path (-X importtime, N=1): {import_ms:.0f} ms of imports; top cumulative:")
    for us, name in top[:8]:
        say(f"  {us / 1000:7.1f} ms  {name}")
    say(f"  certbot/acme imported: {', '.join(forbidden) if forbidden else 'no'}")

    big, small = sizes[-1], sizes[0]
    ratio = wall(par[big]) / base
    peak = max(rss(par[big]), rss(seq[big]))
    checks = [
        (f"N={big} parallel wall < {RATIO_TARGET:g}x N={small} wall", ratio < RATIO_TARGET,
         f"{ratio:.2f}x ({wall(par[big]):.3f} s vs {base:.3f} s)"),
        (f"peak RSS < {RSS_TARGET_MB:g} MB at N={big}", peak < RSS_TARGET_MB,
         f"{peak:.1f} MiB"),
        (f"--help < {HELP_TARGET_S * 1000:.0f} ms", help_ms < HELP_TARGET_S * 1000,
         f"{help_ms:.1f} ms"),
        ("hook path imports no certbot/acme", not forbidden, ", ".join(forbidden) or "none"),
    ]  # fmt: skip
    say("\ntargets:")
    for label, ok, value in checks:
        say(f"  {'PASS' if ok else 'FAIL'}  {label}: {value}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
