"""Crashes and concurrency, with the real CLI on real files and loopback TLS services.

- ``kill -9`` at random points of a run, and at every rename, fsync and temp-file write of a
  run (strace's fault injection delivers SIGKILL exactly there): every destination is whole,
  its old or its new content with the owner and mode that belong to that content (a link: its
  old or its new target); the next run finishes the job and leaves no temporary file; the state
  file always parses.
- Two runs started at once both succeed, one after the other.
- A lock held by a process that was killed, or a lock file nobody holds, blocks nobody.
- A corrupt state file is a warning and an empty record, never a traceback.

The map flips between two lineages, A and B (each its own config dir, so links flip too), and
the owner and mode of the copies flip with them: every kill interrupts a real change, and a
file whose bytes are new but whose mode is old counts as torn.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pwd
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout._pki import ThrowawayCA
from tests.support import cli
from tests.support.cli import explain
from tests.support.lineages import LineageFactory
from tests.support.proc import alive, family
from tests.support.services import Service
from tests.support.tally import record

NAME = "crash.test"
CONSUMERS = 4
SIDES = ("a", "b")
SEED = int(os.environ.get("CERTBOT_FANOUT_CRASH_SEED", "20261126"))
RANDOM_KILLS = int(os.environ.get("CERTBOT_FANOUT_CRASH_KILLS", "200"))
RUN_TIMEOUT = 60.0
STRACE = "/usr/bin/strace"
TEMP_RE = re.compile(r"\A\..+\.fanout-[0-9a-f]{12}\Z")
WAITING = "waiting for another certbot-fanout run"


@dataclass(frozen=True)
class Want:
    """What a destination holds once one side is deployed: bytes, owner and mode, or a link."""

    data: bytes | None = None
    target: str | None = None
    uid: int = 0
    gid: int = 0
    mode: int = 0


@dataclass
class Census:
    """Which side each destination holds after a kill."""

    found: dict[str, str] = field(default_factory=dict)  # path -> side, or "torn: why"

    def count(self, side: str) -> int:
        return sum(1 for v in self.found.values() if v == side)

    @property
    def torn(self) -> list[str]:
        return [f"{p}: {v}" for p, v in self.found.items() if v not in SIDES]


@dataclass
class Scene:
    """Four consumers, each a loopback TLS service reading two copies (a fullchain and a key
    owned by nobody) plus a link into live/; maps for lineage A and lineage B."""

    fanout: Path
    base: Path
    services: list[Service]
    live: dict[str, Path]
    wants: dict[str, dict[str, Want]]
    lock: Path
    state: Path
    reload_sleep: float

    @property
    def dirs(self) -> list[Path]:
        return sorted({Path(p).parent for p in self.wants["a"]} | {self.state.parent})

    def map_path(self, side: str, reload_sleep: float | None = None) -> Path:
        """The map that deploys ``side``; its reloads sleep first, then SIGHUP the service."""
        pause = self.reload_sleep if reload_sleep is None else reload_sleep
        path = self.base / f"map-{side}-{pause:g}.yaml"
        if path.exists():
            return path
        nobody = pwd.getpwnam("nobody")
        consumers: dict[str, Any] = {}
        for i, svc in enumerate(self.services):
            copy_mode, key_owner, key_mode = (
                ("0644", "nobody", "0640") if side == "a" else ("0444", "root", "0600")
            )
            script = f"sleep {pause:g}; echo reload >> {svc.marker}; kill -HUP {svc.proc.pid}"
            consumers[f"c{i}"] = {
                "certificate": NAME,
                "files": [
                    {"path": str(svc.cert), "content": "fullchain", "mode": copy_mode},
                    {
                        "path": str(svc.key),
                        "content": "privkey",
                        "owner": key_owner,
                        "group": nobody.pw_gid,
                        "mode": key_mode,
                    },
                    {"path": str(svc.workdir / "live.pem"), "content": "fullchain", "link": True},
                ],
                "reload": ["sh", "-c", script],
                "verify": [{"host": "127.0.0.1", "port": svc.port}],
                "verify_timeout": 10,
            }
        path.write_text(json.dumps({"version": 1, "consumers": consumers}, indent=2))
        return path

    def argv(self, side: str, *extra: str, reload_sleep: float | None = None) -> list[str]:
        return [
            str(self.fanout),
            "deploy",
            "--config",
            str(self.map_path(side, reload_sleep)),
            "--lineage",
            str(self.live[side]),
            "--lock-file",
            str(self.lock),
            "--state-file",
            str(self.state),
            *extra,
        ]

    def deploy(self, side: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return cli.run(self.argv(side, *extra), timeout=RUN_TIMEOUT)

    def census(self) -> Census:
        census = Census()
        for path in self.wants["a"]:
            census.found[path] = self.which(path)
        return census

    def which(self, path: str) -> str:
        """``a`` or ``b``: the side whose content, owner and mode ``path`` holds; else why not."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "torn: missing"
        if os.path.islink(path):
            target = os.readlink(path)
            sides = [s for s in SIDES if self.wants[s][path].target == target]
            return sides[0] if sides else f"torn: a link to {target}"
        if self.wants["a"][path].target is not None:
            return "torn: a regular file where a link belongs"
        data = Path(path).read_bytes()
        for side in SIDES:
            want = self.wants[side][path]
            if data == want.data:
                got = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
                if got != (want.uid, want.gid, want.mode):
                    return (
                        f"torn: {side}'s bytes with owner/mode {got[0]}:{got[1]} {got[2]:04o}, "
                        f"not {want.uid}:{want.gid} {want.mode:04o}"
                    )
                return side
        return f"torn: {len(data)} bytes that are neither A's nor B's"

    def temp_files(self) -> list[str]:
        return [str(d / name) for d in self.dirs for name in os.listdir(d) if TEMP_RE.match(name)]

    def state_problem(self) -> str | None:
        """Why the state file is not a whole certbot-fanout state file (None: it is)."""
        try:
            doc = json.loads(self.state.read_bytes())
        except (OSError, ValueError) as e:
            return f"{self.state}: {e}"
        if not isinstance(doc, dict) or not isinstance(doc.get("consumers"), dict):
            return f"{self.state}: not a state document: {doc!r:.200}"
        return None

    def serves(self, side: str) -> list[str]:
        """The services that do not serve ``side``'s certificate."""
        from certbot_fanout.lineage import fingerprint, read_lineage
        from certbot_fanout.probe import fetch_leaf

        expected = read_lineage(str(self.live[side])).cert.fingerprint
        return [
            f"service {i} (port {svc.port})"
            for i, svc in enumerate(self.services)
            if fingerprint(fetch_leaf("127.0.0.1", svc.port, NAME, 5)) != expected
        ]


def crash(proc: subprocess.Popen[Any]) -> bool:
    """SIGKILL ``proc`` (a session leader) with its process group and every descendant, as a
    crash of the whole service would; True if it was still running. The group is stopped
    first, so that nothing forks between finding the descendants and killing them."""
    running = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        running = False
    kin = family(proc.pid) if running else set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in kin:  # the test and reload commands run in their own sessions
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(RUN_TIMEOUT)
    return running and proc.returncode == -signal.SIGKILL


SceneFactory = Callable[[str], "Scene"]


@pytest.fixture
def make_scene(
    root: None,
    fanout_bin: Path,
    ca: ThrowawayCA,
    tmp_path: Path,
    start_service: Callable[[str, Path], Service],
) -> SceneFactory:
    """make_scene(label): lineage A deployed to four services, B ready, all under
    tmp_path/label. Needs root: the key belongs to nobody."""

    def make(label: str) -> Scene:
        base = tmp_path / label
        live: dict[str, Path] = {}
        for side in SIDES:
            config_dir = base / f"letsencrypt-{side}"
            config_dir.mkdir(parents=True)
            live[side], _ = LineageFactory(ca, config_dir).issue(NAME)
        services = [start_service(f"{label}-svc{i}", live["a"]) for i in range(CONSUMERS)]
        nobody = pwd.getpwnam("nobody")
        wants: dict[str, dict[str, Want]] = {}
        for side in SIDES:
            fullchain = (live[side] / "fullchain.pem").read_bytes()
            key = (live[side] / "privkey.pem").read_bytes()
            link = str(live[side] / "fullchain.pem")
            wants[side] = {}
            for svc in services:
                if side == "a":
                    wants[side][str(svc.cert)] = Want(data=fullchain, mode=0o644)
                    wants[side][str(svc.key)] = Want(
                        data=key, uid=nobody.pw_uid, gid=nobody.pw_gid, mode=0o640
                    )
                else:
                    wants[side][str(svc.cert)] = Want(data=fullchain, mode=0o444)
                    wants[side][str(svc.key)] = Want(data=key, gid=nobody.pw_gid, mode=0o600)
                wants[side][str(svc.workdir / "live.pem")] = Want(target=link)
        (base / "state").mkdir()
        built = Scene(
            fanout=fanout_bin,
            base=base,
            services=services,
            live=live,
            wants=wants,
            lock=base / "run.lock",
            state=base / "state" / "state.json",
            reload_sleep=0.01,
        )
        first = built.deploy("a")
        assert first.returncode == 0, explain(first)
        assert built.census().count("a") == len(wants["a"]), built.census().found
        return built

    return make


@pytest.fixture
def scene(make_scene: SceneFactory) -> Scene:
    return make_scene("scene")


def repair(scene: Scene, new: str) -> tuple[list[str], list[str]]:
    """Run the next deploy to completion; (problems, temp files left)."""
    proc = scene.deploy(new)
    problems = [] if proc.returncode == 0 else [f"the repair run failed: {explain(proc)}"]
    census = scene.census()
    if census.count(new) != len(census.found):
        problems.append(f"after the repair run, not every file is {new}: {census.found}")
    if problem := scene.state_problem():
        problems.append(f"after the repair run: {problem}")
    return problems, scene.temp_files()


# --------------------------------------------------------------------------- random kills


@dataclass
class KillLoop:
    """What one loop of random kills found."""

    landed: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    finished_first: int = 0


def random_kills(scene: Scene, seed: int, kills: int, span: float) -> KillLoop:
    rng = random.Random(seed)
    loop = KillLoop()
    for i in range(kills):
        old, new = SIDES[i % 2], SIDES[(i + 1) % 2]
        delay = rng.uniform(0, span)
        proc = subprocess.Popen(
            scene.argv(new, "--jobs", "1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        if not crash(proc):
            loop.finished_first += 1
        census, state_problem = scene.census(), scene.state_problem()
        found_old, found_new = census.count(old), census.count(new)
        loop.landed[found_new] += 1
        problems, temps = repair(scene, new)
        record(
            "kills (random)",
            cases=1,
            torn_files=len(census.torn),
            temp_files_after_repair=len(temps),
            repair_failures=len(problems),
            found_old=found_old,
            found_new=found_new,
            unparseable_state=int(state_problem is not None),
        )
        why = census.torn + problems + [f"left after the repair: {t}" for t in temps]
        if state_problem:
            why.append(f"after the kill: {state_problem}")
        if why:
            loop.failures.append(
                f"seed {seed}, kill {i} ({old}->{new}) after {delay:.3f} s: " + "; ".join(why)
            )
            if len(loop.failures) >= 5:
                break
    return loop


def test_kill_9_at_random_points_never_tears_a_file(make_scene: SceneFactory) -> None:
    """Start a deploy, SIGKILL it (and its children) after a random delay spread over a whole
    run, check every destination, then let the next run repair; two scenes at once, each with
    its own seed (SEED and SEED + 1). Override the seed with $CERTBOT_FANOUT_CRASH_SEED and the
    number of kills with $CERTBOT_FANOUT_CRASH_KILLS."""
    scenes = [make_scene(f"loop{k}") for k in range(2)]
    print(f"seed {SEED}, {RANDOM_KILLS} kills")
    # Uninterrupted runs, timed as the kills will see them (both scenes busy at once).
    with ThreadPoolExecutor(len(scenes)) as pool:
        timings = list(pool.map(_time_runs, scenes))
    span = statistics.median(t for ts in timings for t in ts)
    print(f"an uninterrupted run takes {span:.3f} s (median of {sum(map(len, timings))})")

    began = time.monotonic()
    share = -(-RANDOM_KILLS // len(scenes))
    with ThreadPoolExecutor(len(scenes)) as pool:
        loops = list(
            pool.map(lambda k: random_kills(scenes[k], SEED + k, share, span), range(len(scenes)))
        )
    elapsed = time.monotonic() - began
    landed = sum((loop.landed for loop in loops), collections.Counter[int]())
    failures = [f for loop in loops for f in loop.failures]
    spread = ", ".join(f"{n} new: {landed[n]}" for n in sorted(landed))
    print(
        f"{landed.total()} kills in {elapsed:.1f} s "
        f"({sum(loop.finished_first for loop in loops)} runs ended before their kill); "
        f"files found new per kill: {spread}"
    )
    assert not failures, "\n".join(failures)
    assert landed.total() >= RANDOM_KILLS, landed
    # The kills landed everywhere: before any change, between consumers, after the last
    # (checked for a full run; a handful of kills, from the environment, may miss one).
    total = len(scenes[0].wants["a"])
    everywhere = landed[0] and landed[total] and any(landed[n] for n in range(1, total))
    assert everywhere or RANDOM_KILLS < 100, landed


def _time_runs(scene: Scene) -> list[float]:
    durations = []
    for side in ("b", "a", "b", "a"):
        start = time.monotonic()
        done = scene.deploy(side, "--jobs", "1")
        durations.append(time.monotonic() - start)
        assert done.returncode == 0, explain(done)
    return durations


# --------------------------------------------------------------------------- strace


@dataclass(frozen=True)
class Call:
    thread: int
    syscall: str
    fd_path: str
    line: str


_CALL_RE = re.compile(r"^(?:(\d+)\s+)?(\w+)\((?:-?\d+<([^>]*)>)?")


def trace_calls(argv: Sequence[str], syscalls: str, *, threads: bool = True) -> list[Call]:
    """The ``syscalls`` calls (strace's -e trace= set) a run of ``argv`` makes, in order, with
    the path of each one's first (descriptor) argument. Without ``threads``, only the main
    thread's."""
    log = Path(f"/tmp/certbot-fanout-strace-{os.getpid()}.log")
    follow = ["-f"] if threads else []
    try:
        proc = cli.run(
            [STRACE, *follow, "-qq", "-y", "-o", str(log), "-e", f"trace={syscalls}", *argv],
            timeout=RUN_TIMEOUT,
        )
        assert proc.returncode == 0, explain(proc)
        calls = []
        for line in log.read_text().splitlines():
            m = _CALL_RE.match(line)
            if m and "resumed>" not in line:
                calls.append(Call(int(m.group(1) or 0), m.group(2), m.group(3) or "", line))
        return calls
    finally:
        log.unlink(missing_ok=True)


def injection_targets(calls: list[Call]) -> list[Call]:
    """For N = 1, 2, ...: the call that ``when=N`` hits. strace counts each thread's calls
    separately, so the Nth is the first call that is the Nth of its own thread."""
    seen: collections.Counter[int] = collections.Counter()
    targets: dict[int, Call] = {}
    for call in calls:
        seen[call.thread] += 1
        targets.setdefault(seen[call.thread], call)
    return [targets[n] for n in sorted(targets)]


def kill_at(
    argv: Sequence[str], syscalls: str, n: int, *, threads: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under strace, which sends SIGKILL on entering the Nth ``syscalls`` call
    of a thread (before the call runs); without ``threads``, of the main thread (the others
    are not traced). strace then kills itself with the same signal."""
    return cli.run(
        [
            STRACE,
            *(["-f"] if threads else []),
            "-qq",  # not --seccomp-bpf: with it, strace 6.1 counts only the first call
            "-o",
            "/dev/null",
            "-e",
            f"trace={syscalls}",
            "-e",
            f"inject={syscalls}:signal=KILL:when={n}",
            *argv,
        ],
        timeout=RUN_TIMEOUT,
    )


def _short(call: Call) -> str:
    return f"{call.syscall} {os.path.basename(call.fd_path) or call.fd_path}"


RENAMES = "rename,renameat,renameat2"


def test_kill_9_at_every_rename_fsync_and_temp_write(scene: Scene) -> None:
    """SIGKILL exactly at the Nth rename, the Nth fsync and each write to a temp file of a run
    (one consumer at a time, so the order is fixed), for every N; then repair."""
    if not os.access(STRACE, os.X_OK):
        pytest.skip(f"{STRACE} is not installed")
    failures: list[str] = []
    points = 0
    side = "a"
    for syscalls, temp_only in ((RENAMES, False), ("fsync", False), ("write", True)):
        new = "b" if side == "a" else "a"
        calls = trace_calls(scene.argv(new, "--jobs", "1"), syscalls)
        side = new  # the counting run deployed it
        targets = injection_targets(calls)
        print(f"{syscalls}: {len(calls)} calls; when=N hits: {[_short(c) for c in targets]}")
        chosen = [
            (n, c) for n, c in enumerate(targets, 1) if not temp_only or ".fanout-" in c.fd_path
        ]
        assert chosen, calls
        if syscalls == RENAMES:  # one per destination (the state file's: see below)
            assert len(chosen) >= len(scene.wants[new]), calls
        for n, call in chosen:
            old, new = side, ("b" if side == "a" else "a")
            killed = kill_at(scene.argv(new, "--jobs", "1"), syscalls, n)
            census, state_problem = scene.census(), scene.state_problem()
            problems, temps = repair(scene, new)
            side = new
            points += 1
            record(
                "kills (at each rename/fsync)",
                cases=1,
                torn_files=len(census.torn),
                temp_files_after_repair=len(temps),
                repair_failures=len(problems),
                found_old=census.count(old),
                found_new=census.count(new),
                unparseable_state=int(state_problem is not None),
            )
            why = census.torn + problems + [f"left after the repair: {t}" for t in temps]
            if killed.returncode != -signal.SIGKILL:
                why.append(f"the run was not killed: {explain(killed)}")
            if state_problem:
                why.append(f"after the kill: {state_problem}")
            print(
                f"  {syscalls} #{n} ({_short(call)}): {census.count(new)} of "
                f"{len(census.found)} new"
            )
            if why:
                failures.append(f"{syscalls} #{n} ({call.line}): " + "; ".join(why))
    print(f"{points} kill points")
    assert not failures, "\n".join(failures)


def test_kill_9_while_writing_the_state_file(scene: Scene) -> None:
    """A consumer that reads live/ itself (no files, no endpoints) is reloaded on every run,
    and the main thread records that in the state file. strace, tracing the main thread only,
    kills the run at each call of the state file's placement: creating the temp file, setting
    its owner and mode, writing it, both fsyncs, the rename. The state file stays whole; the
    next run replaces it and leaves no temporary file."""
    if not os.access(STRACE, os.X_OK):
        pytest.skip(f"{STRACE} is not installed")
    config = scene.base / "map-reader.yaml"
    reader = {"certificate": NAME, "reload": ["true"]}
    config.write_text(json.dumps({"version": 1, "consumers": {"reader": reader}}))
    argv = [str(a) for a in scene.argv("a")]
    argv[argv.index("--config") + 1] = str(config)
    failures: list[str] = []
    points = 0
    for syscalls in ("openat", "fchown", "fchmod", "write", "fsync", RENAMES):
        calls = trace_calls(argv, syscalls, threads=False)
        targets = injection_targets(calls)
        chosen = [
            (n, c)
            for n, c in enumerate(targets, 1)
            if "state" in c.line and (syscalls != "openat" or ".fanout-" in c.line)
        ]
        print(f"{syscalls}: when=N hits the state file at {[n for n, _ in chosen]}")
        for n, call in chosen:
            before = scene.state.read_bytes()
            killed = kill_at(argv, syscalls, n, threads=False)
            problem = scene.state_problem()
            temps_after_kill = scene.temp_files()
            again = cli.run(argv, timeout=RUN_TIMEOUT)
            temps = scene.temp_files()
            points += 1
            record("state file kills", cases=1, unparseable=int(problem is not None))
            why = [problem] if problem else []
            if killed.returncode != -signal.SIGKILL:
                why.append(f"the run was not killed: {explain(killed)}")
            if scene.state.read_bytes() == before:
                why.append("the repair run did not rewrite the state file")
            if again.returncode != 0:
                why.append(f"the next run failed: {explain(again)}")
            if after := scene.state_problem():
                why.append(f"after the next run: {after}")
            why += [f"left after the next run: {t}" for t in temps]
            print(f"  {syscalls} #{n} ({_short(call)}): temp files after the kill: "
                  f"{[os.path.basename(t) for t in temps_after_kill]}")  # fmt: skip
            if why:
                failures.append(f"{syscalls} #{n} ({call.line}): " + "; ".join(why))
    assert not failures, "\n".join(failures)
    assert points >= 7, points  # open, fchown, fchmod, write, 2 fsyncs, rename


# --------------------------------------------------------------------------- concurrency


def test_two_runs_at_once_run_one_after_the_other(scene: Scene) -> None:
    """Two deploys of the same map started at the same instant: both exit 0; the one that
    waited for the lock finds every file current and reloads nothing."""
    pairs = 10
    failures: list[str] = []
    for i in range(pairs):
        new = SIDES[(i + 1) % 2]
        argv = scene.argv(new, reload_sleep=0.3)
        reloads = [svc.reloads() for svc in scene.services]
        procs = [
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            outputs.append((proc.returncode, out, err, time.monotonic()))
        census = scene.census()
        bad = [o for o in outputs if o[0] != 0]
        record("concurrent runs", cases=1, failures=len(bad), torn_files=len(census.torn))
        waited = [o for o in outputs if WAITING in o[2]]
        extra = [svc.reloads() - n for svc, n in zip(scene.services, reloads, strict=True)]
        why = [f"exit {o[0]}: {o[1]}{o[2]}" for o in bad] + census.torn
        if census.count(new) != len(census.found):
            why.append(f"not every file is {new}: {census.found}")
        if len(waited) != 1:
            why.append(f"{len(waited)} runs said '{WAITING}'")
        elif "files current" not in waited[0][1] or "placed" in waited[0][1]:
            why.append(f"the run that waited still changed something:\n{waited[0][1]}")
        if extra != [1] * CONSUMERS:
            why.append(f"reloads per service: {extra}, expected one each")
        if why:
            failures.append(f"pair {i}: " + "; ".join(why))
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- stale locks


def _timed_deploy(
    scene: Scene, side: str, timeout: float = RUN_TIMEOUT
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The run and its wall time; a run still waiting after ``timeout`` is ended (exit -9)."""
    argv = scene.argv(side)
    start = time.monotonic()
    try:
        proc = cli.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out, err = (x.decode() if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        proc = subprocess.CompletedProcess(argv, -signal.SIGKILL, out, err + "\n(timed out)")
    return proc, time.monotonic() - start


def test_a_lock_whose_holder_was_killed_blocks_nobody(scene: Scene) -> None:
    """run_lock held by a process that is then SIGKILLed; a deploy killed while its reload
    runs (the reload outlives it, in its own session); a lock file nobody holds: none of them
    delays the next run."""
    baseline_proc, baseline = _timed_deploy(scene, "b")
    assert baseline_proc.returncode == 0, explain(baseline_proc)
    limit = baseline + 5.0
    results: list[tuple[str, subprocess.CompletedProcess[str], float]] = []

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from certbot_fanout.lock import run_lock\n"
            "with run_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(scene.lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    assert crash(holder)
    proc, seconds = _timed_deploy(scene, "a", limit + 5)
    results.append(("run_lock holder killed", proc, seconds))

    # A deploy stuck in a 60 s reload, killed; the reload itself lives on.
    stuck = subprocess.Popen(
        scene.argv("b", reload_sleep=60),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    orphans: set[int] = set()
    failures = []
    try:
        deadline = time.monotonic() + limit + 5
        while not any("sleep" in _cmdline(p) for p in family(stuck.pid) - {stuck.pid}):
            if stuck.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        orphans = family(stuck.pid) - {stuck.pid}
        os.killpg(stuck.pid, signal.SIGKILL)  # the deploy's group only, not the reload's
        stuck.wait(RUN_TIMEOUT)
        if not any(alive(p) for p in orphans):
            failures.append(f"the deploy never got to its reload, or the reload died: {orphans}")
        else:
            proc, seconds = _timed_deploy(scene, "b", limit + 5)
            results.append(("deploy killed in its slow reload, which lives on", proc, seconds))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stuck.pid, signal.SIGKILL)
        stuck.wait(RUN_TIMEOUT)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # A lock file left on disk by a dead process, held by nobody.
    scene.lock.unlink()
    scene.lock.write_text("4194303\n")  # a PID no process has
    proc, seconds = _timed_deploy(scene, "a", limit + 5)
    results.append(("lock file nobody holds", proc, seconds))

    for what, proc, seconds in results:
        record("stale locks", cases=1, blocked_seconds=seconds)
        if proc.returncode != 0 or WAITING in proc.stderr or seconds > limit:
            failures.append(f"{what}: {seconds:.2f} s (limit {limit:.2f} s), {explain(proc)}")
    print({what: round(seconds, 3) for what, _, seconds in results}, f"baseline {baseline:.3f}")
    assert not failures, "\n".join(failures)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --------------------------------------------------------------------------- state file


CORRUPT_STATES: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"version": 1, "consumers": {"c0": {"certif',
    "binary": bytes(range(256)),
    "a list": b"[1, 2, 3]\n",
    "consumers is a list": b'{"version": 1, "consumers": []}\n',
    "a record is a number": b'{"version": 1, "consumers": {"c0": 5}}\n',
    "too large": b'{"version": 1, "consumers": {}, "pad": "' + b"x" * (5 << 20) + b'"}',
}


@pytest.mark.parametrize("kind", CORRUPT_STATES)
def test_a_corrupt_state_file_is_a_warning_not_a_traceback(scene: Scene, kind: str) -> None:
    scene.state.write_bytes(CORRUPT_STATES[kind])
    proc = scene.deploy("b")
    problem = scene.state_problem()
    record("state file kills", cases=1, unparseable=int(problem is not None))
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    assert "is not a certbot-fanout state file; ignoring it" in proc.stderr, explain(proc)
    assert problem is None, problem
    doc = json.loads(scene.state.read_bytes())
    assert sorted(doc["consumers"]) == [f"c{i}" for i in range(CONSUMERS)], doc
    assert not scene.temp_files()


def test_an_unreadable_state_path_never_fails_the_deploy(scene: Scene) -> None:
    """A directory where the state file belongs: a warning, and the deploy still succeeds."""
    scene.state.unlink()
    scene.state.mkdir()
    proc = scene.deploy("b")
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    assert "cannot read state file" in proc.stderr, explain(proc)
    assert scene.census().count("b") == len(scene.wants["b"])


# --------------------------------------------------------------------------- what a kill leaves


def test_temp_files_a_killed_run_left_go_even_when_nothing_changes(scene: Scene) -> None:
    """A run killed between creating a temp file and renaming it (say a --force run, whose
    files were already current) leaves ``.NAME.fanout-<hex>``, a copy of the key: the next
    run removes it though it places nothing. A look-alike name is none of its business."""
    nobody = pwd.getpwnam("nobody")
    planted, kept = [], []
    for path in [*scene.wants["a"], str(scene.state)]:
        directory, name = os.path.split(path)
        leftover = Path(directory, f".{name}.fanout-0123456789ab")
        leftover.write_bytes(b"-----BEGIN PRIVATE KEY-----\nleft by a killed run\n")
        os.chown(leftover, nobody.pw_uid, nobody.pw_gid)
        leftover.chmod(0o640)
        planted.append(str(leftover))
        lookalike = Path(directory, f".{name}.fanout-not-ours")
        lookalike.write_bytes(b"someone else's\n")
        kept.append(lookalike)
    assert sorted(scene.temp_files()) == sorted(planted), "the plant did not happen"

    proc = scene.deploy("a")

    left = scene.temp_files()
    record("kills (what a kill leaves)", cases=len(planted), temp_files_after_repair=len(left))
    assert proc.returncode == 0, explain(proc)
    assert "reloaded" not in proc.stdout, "nothing changed, yet something was reloaded"
    assert left == []
    assert all(p.exists() for p in kept)


def test_a_reload_lost_to_a_crash_is_done_by_the_next_run(
    root: None, fanout_bin: Path, lineages: LineageFactory, tmp_path: Path
) -> None:
    """A consumer without endpoints: only its reload shows it took the new files. A run killed
    after placing them and before the reload finished must not leave the next run believing
    it is done."""
    live, _ = lineages.issue(NAME)
    reloads = tmp_path / "reloads"
    reloads.touch()
    (tmp_path / "dst").mkdir()
    placed = tmp_path / "dst" / "fullchain.pem"
    config = tmp_path / "map.yaml"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "consumers": {
                    "svc": {
                        "certificate": NAME,
                        "files": [{"path": str(placed), "content": "fullchain"}],
                        "reload": ["sh", "-c", f"sleep 1; echo reloaded >> {reloads}"],
                    }
                },
            }
        )
    )
    argv = [str(fanout_bin), "deploy", "--config", str(config), "--lineage", str(live)]
    argv += ["--lock-file", str(tmp_path / "lock"), "--state-file", str(tmp_path / "state.json")]

    def count() -> int:
        return len(reloads.read_text().splitlines())

    first = cli.run(argv, timeout=RUN_TIMEOUT)
    assert first.returncode == 0 and count() == 1, explain(first)
    lineages.renew(NAME)
    new = (live / "fullchain.pem").read_bytes()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while placed.read_bytes() != new and time.monotonic() < deadline:
        time.sleep(0.01)
    assert placed.read_bytes() == new, "the run never placed the new file"
    assert crash(proc), "the run ended before the crash"
    assert count() == 1, "the reload finished before the crash: nothing was lost"

    after = cli.run(argv, timeout=RUN_TIMEOUT)
    lost = 1 if count() != 2 else 0
    record("kills (what a kill leaves)", cases=1, reloads_lost=lost)
    assert after.returncode == 0, explain(after)
    assert count() == 2, f"the next run did not reload: {explain(after)}"
    assert "interrupted" in after.stdout, explain(after)
    again = cli.run(argv, timeout=RUN_TIMEOUT)
    assert again.returncode == 0 and count() == 2, "the mark outlived the run that did the reload"
