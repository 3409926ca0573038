"""Where does a parallel deploy's time go? In-process deploy() to N farm endpoints, with every
side effect timed, plus isolated experiments (process spawns, TLS handshakes, fsync, start-up).

    .venv/bin/python bench/profile_deploy.py [--n 100] [--reload-ms 200]

A diagnostic companion to fanout_bench.py (same endpoint farm); it checks no targets.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

sys.path.insert(0, str(Path(__file__).parent))

from fanout_bench import NAME, Bench, Processes, _workspace

from certbot_fanout import commands, deploy, files, probe
from certbot_fanout.config import load_config
from certbot_fanout.lineage import read_lineage
from certbot_fanout.render_deploy import render_deploy_json

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

SUBMITTED: list[float] = []  # when deploy()'s pool.map finished submitting (all threads started)


class RecordingPool(ThreadPoolExecutor):
    """deploy()'s pool as is, noting when the last task was submitted."""

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        results = super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        SUBMITTED.append(time.monotonic())
        return results


class GatedPool(ThreadPoolExecutor):
    """Experiment: start every worker thread first, then let them all work."""

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        gate = threading.Event()

        def gated(*args: Any) -> T:
            gate.wait()
            return fn(*args)

        futures = [self.submit(gated, *args) for args in zip(*iterables, strict=True)]
        SUBMITTED.append(time.monotonic())
        gate.set()
        return (f.result(timeout) for f in futures)


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.events: dict[str, list[tuple[float, float]]] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, label: str, fn: Callable[P, R]) -> Callable[P, R]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start, cpu = time.monotonic(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                end, cpu = time.monotonic(), time.thread_time() - cpu
                with self.lock:
                    self.events.setdefault(label, []).append((start - self.t0, end - start))
                    self.cpu[label] = self.cpu.get(label, 0.0) + cpu

        return timed

    def report(self, wall: float) -> None:
        print(f"  deploy() wall {wall * 1000:.0f} ms")
        if "run" in self.events and len(self.events["run"]) > 1:
            starts = sorted(s * 1000 for s, _ in self.events["run"])
            q = statistics.quantiles(starts, n=10)
            print(f"  reload start times (ms from deploy start): min {starts[0]:.0f} "
                  f"p10 {q[0]:.0f} p50 {q[4]:.0f} p90 {q[8]:.0f} max {starts[-1]:.0f}")  # fmt: skip
        print(f"  {'effect':<8} {'calls':>5} {'med ms':>7} {'max ms':>7} {'sum ms':>8} "
              f"{'first start':>11} {'last start':>10} {'last end':>9} "
              f"{'thread cpu ms':>13}")  # fmt: skip
        for label, ev in self.events.items():
            durs = [d * 1000 for _, d in ev]
            starts = [s * 1000 for s, _ in ev]
            ends = [(s + d) * 1000 for s, d in ev]
            print(f"  {label:<8} {len(ev):>5} {statistics.median(durs):>7.1f} {max(durs):>7.1f} "
                  f"{sum(durs):>8.0f} {min(starts):>11.0f} {max(starts):>10.0f} "
                  f"{max(ends):>9.0f} {self.cpu[label] * 1000:>13.0f}")  # fmt: skip


def _use_pool(cls: type[ThreadPoolExecutor]) -> None:
    vars(deploy)["ThreadPoolExecutor"] = cls  # bench process only; the product is untouched


@dataclass(frozen=True)
class Sample:
    wall: float
    threads_started: float
    last_reload_start: float
    place_med: float
    probe_med: float
    cpu_self: float
    cpu_children: float


def timed_deploy(bench: Bench, n: int, *, detail: bool = False) -> Sample:
    bench.reset(n)
    config = load_config(bench.config(n))
    lineage = read_lineage(bench.live)
    tl = Timeline()
    fx = deploy.Effects(
        snapshot=tl.wrap("snapshot", files.snapshot),
        place=tl.wrap("place", files.place),
        run=tl.wrap("run", commands.run_command),
        fetch=tl.wrap("probe", probe.fetch_served),
        sleep=tl.wrap("sleep", time.sleep),
    )
    SUBMITTED.clear()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = deploy.deploy(config, lineage, deploy.DeployOptions(), fx)
    wall = time.monotonic() - start
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert not result.failed, [c.error for c in result.failed]
    if detail:
        tl.report(wall)
    return Sample(
        wall=wall * 1000,
        threads_started=(SUBMITTED[0] - start) * 1000,
        last_reload_start=max(s for s, _ in tl.events["run"]) * 1000,
        place_med=statistics.median(d for _, d in tl.events["place"]) * 1000,
        probe_med=statistics.median(d for _, d in tl.events["probe"]) * 1000,
        cpu_self=_cpu(self_after) - _cpu(self_before),
        cpu_children=_cpu(children_after) - _cpu(children_before),
    )


def _cpu(usage: resource.struct_rusage) -> float:
    return (usage.ru_utime + usage.ru_stime) * 1000


def profile_consumers(bench: Bench, n: int, top: int = 18) -> None:
    """cProfile every consumer thread of one deploy (deploy() itself is unchanged)."""
    original = deploy._guarded
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def guarded(*args: Any) -> deploy.ConsumerResult:
        prof = cProfile.Profile()
        with lock:
            profiles.append(prof)
        result: deploy.ConsumerResult = prof.runcall(original, *args)
        return result

    bench.reset(n)
    config = load_config(bench.config(n))
    lineage = read_lineage(bench.live)
    vars(deploy)["_guarded"] = guarded
    try:
        deploy.deploy(config, lineage)
    finally:
        vars(deploy)["_guarded"] = original
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    stats.sort_stats("tottime").print_stats(top)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Bench-process-only changes, to see what each cost is worth."""
    interval = sys.getswitchinterval()
    real_fsync = os.fsync
    if "gated" in name:
        _use_pool(GatedPool)
    if "switch" in name:
        sys.setswitchinterval(0.0005)
    if "nofsync" in name:
        os.fsync = lambda fd: None
    try:
        yield
    finally:
        _use_pool(RecordingPool)
        sys.setswitchinterval(interval)
        os.fsync = real_fsync


VARIANTS = {
    "as is": "the product's deploy() unchanged",
    "switch": "sys.setswitchinterval(0.0005) (faster GIL hand-off)",
    "gated": "all worker threads started before any consumer work",
    "nofsync": "os.fsync a no-op (what the fsyncs cost)",
    "gated+nofsync": "both",
}


def concurrently(n: int, fn: Callable[[int], Any]) -> tuple[float, list[float]]:
    def one(i: int) -> float:
        start = time.monotonic()
        fn(i)
        return time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        durs = list(pool.map(one, range(n)))
    return time.monotonic() - start, durs


def show(label: str, wall: float, durs: Sequence[float]) -> None:
    print(f"  {label:<48} wall {wall * 1000:6.0f} ms; each med "
          f"{statistics.median(durs) * 1000:6.1f} max {max(durs) * 1000:6.1f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--reload-ms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true", help="profile consumer threads")
    args = parser.parse_args()
    n: int = args.n
    procs = Processes()
    with _workspace() as workdir:
        bench = Bench(workdir, sys.executable, args.reload_ms, procs, n)
        _use_pool(RecordingPool)
        try:
            bench.setup()
            sleep = f"{args.reload_ms / 1000:.3f}"

            print(f"in-process deploy, N={n}, product as is (timed effects; ms from start):")
            timed_deploy(bench, n, detail=True)
            print("in-process deploy, N=1:")
            timed_deploy(bench, 1, detail=True)

            print(f"\nvariants, N={n}, median of {args.runs} runs each (ms):")
            print(f"  {'variant':<14} {'wall':>5} {'threads up':>10} {'last reload start':>17} "
                  f"{'place med':>9} {'probe med':>9} {'cpu self':>8} {'cpu kids':>8}  "
                  "what")  # fmt: skip
            for name, what in VARIANTS.items():
                with variant(name):
                    samples = [timed_deploy(bench, n) for _ in range(args.runs)]

                def med(get: Callable[[Sample], float], runs: list[Sample] = samples) -> float:
                    return statistics.median(get(r) for r in runs)

                print(f"  {name:<14} {med(lambda r: r.wall):>5.0f} "
                      f"{med(lambda r: r.threads_started):>10.0f} "
                      f"{med(lambda r: r.last_reload_start):>17.0f} "
                      f"{med(lambda r: r.place_med):>9.1f} {med(lambda r: r.probe_med):>9.1f} "
                      f"{med(lambda r: r.cpu_self):>8.0f} {med(lambda r: r.cpu_children):>8.0f}  "
                      f"{what}")  # fmt: skip

            if args.cprofile:
                print(f"\ncProfile of the {n} consumer threads (tottime; CPU under the GIL):")
                profile_consumers(bench, n)

            print(f"\nisolated experiments, {n} at once from {n} threads:")
            argv = ["/bin/sh", "-c", f"sleep {sleep}"]
            show(f"run_command(sh -c 'sleep {sleep}')", *concurrently(
                n, lambda i: commands.run_command(argv, 30, "reload")))  # fmt: skip
            show("run_command(/bin/true)", *concurrently(
                n, lambda i: commands.run_command(["/bin/true"], 30, "reload")))  # fmt: skip
            bench.reset(n)
            show("fetch_leaf (TLS handshake to the farm)", *concurrently(
                n, lambda i: probe.fetch_leaf("127.0.0.1", bench.ports[i], NAME, 10)))  # fmt: skip
            wall, _ = concurrently(
                1, lambda i: [probe.fetch_leaf("127.0.0.1", p, NAME, 10) for p in bench.ports]
            )
            print(f"  {n} fetch_leaf one after another: {wall * 1000:.0f} ms "
                  f"({wall * 1000 / n:.2f} ms each)")  # fmt: skip

            print(f"\nin-process start-up work for N={n}:")
            for label, fn in (
                ("load_config", lambda: load_config(bench.config(n))),
                ("read_lineage", lambda: read_lineage(bench.live)),
            ):
                start = time.monotonic()
                fn()
                print(f"  {label:<18} {(time.monotonic() - start) * 1000:6.1f} ms")
            bench.reset(n)
            config, lineage = load_config(bench.config(n)), read_lineage(bench.live)
            result = deploy.deploy(config, lineage)
            start = time.monotonic()
            render_deploy_json(result)
            print(f"  {'render_deploy_json':<18} {(time.monotonic() - start) * 1000:6.1f} ms")
        finally:
            if bench.fifo_fd >= 0:
                os.close(bench.fifo_fd)
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
