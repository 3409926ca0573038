"""Faults during a real deploy, through the real CLI (``certbot-fanout deploy --json``).

Every case first deploys an old certificate, so that each consumer HAS previous files; then it
renews the lineage, plants one fault and deploys again. The faulty consumer is listed first;
beside it a healthy consumer (a loopback TLS service that re-reads its files on SIGHUP) must
still be placed, reloaded and verified for real. For each fault:

- exit code 1 (docs/deploy.md, "Exit codes"); 2 for an unusable lineage, which touches
  nothing at all;
- the JSON report names the faulty consumer, the stage and a specific reason; no traceback;
- the faulty consumer's previous files are intact byte for byte, with owner, mode and mtime
  (untouched, or put back by the rollback), and no temporary file is left beside them;
- the run ends within a bound made of the timeouts it was given;
- a hung reload leaves no process behind, child or grandchild.

A reload that fails or hangs puts the files back too, like a failed test: files left current
would hide from the next run, and from ``status``, that the service never reloaded onto them.

Each case records its measured counts in the ``faults`` tally before asserting on them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout.commands import _KILL_GRACE
from tests.support import cli
from tests.support.cli import explain
from tests.support.integration import by_name
from tests.support.lineages import LineageFactory
from tests.support.maps import write_map
from tests.support.proc import alive
from tests.support.services import Service
from tests.support.stack import file_fingerprint, served_fingerprint
from tests.support.tally import record

NAME = "faults.test"
# Enough names that fullchain.pem needs two 4 KiB pages while privkey.pem fits in one: the
# full-filesystem case needs a second file larger than the first.
NAMES = (NAME, *(f"host-{i:03d}.{NAME}" for i in range(110)))
RELOAD_TIMEOUT = 1.0
VERIFY_TIMEOUT = 10.0
# Interpreter start-up, reading the lineage, placing, reloading and probing the healthy
# consumer: everything in a run that is not a timeout of the faulty one.
OVERHEAD = 6.0
RUN_TIMEOUT = 120.0
SETUP_TIMEOUT = 60.0  # a set-up command: mount, mkfs
TEMP_NAME = re.compile(r"^\..+\.fanout-[0-9a-f]+$")
NOBODY = 65534
# CERTBOT_FANOUT_FAULTS_LOOP=1 takes the loop-mounted ext2 path even where tmpfs mounts.
FORCE_LOOP = os.environ.get("CERTBOT_FANOUT_FAULTS_LOOP") == "1"

pytestmark = pytest.mark.usefixtures("root")


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Kept:
    """What a path holds, compared before and after: bytes, owner, mode, mtime (a file), the
    names in it (a directory), or nothing."""

    kind: str
    data: bytes = b""
    uid: int = -1
    gid: int = -1
    mode: int = -1
    mtime_ns: int = -1
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind != "file":
            return f"{self.kind} {self.names}" if self.names else self.kind
        owner = f"{self.uid}:{self.gid} {self.mode:04o}"
        return f"{len(self.data)} bytes, {owner}, mtime {self.mtime_ns}"


def kept(path: Path) -> Kept:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Kept("missing")
    if stat.S_ISDIR(st.st_mode):
        return Kept("directory", names=tuple(sorted(os.listdir(path))))
    assert stat.S_ISREG(st.st_mode), f"{path}: neither a file nor a directory"
    return Kept(
        "file", path.read_bytes(), st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mtime_ns
    )


def snapshot(paths: Sequence[Path]) -> dict[Path, Kept]:
    return {p: kept(p) for p in paths}


def changed(before: Mapping[Path, Kept]) -> list[str]:
    return [
        f"{p}: was {was.describe()}, now {kept(p).describe()}"
        for p, was in before.items()
        if kept(p) != was
    ]


def temp_files(directories: Sequence[Path]) -> list[str]:
    found = []
    for d in dict.fromkeys(directories):
        with contextlib.suppress(FileNotFoundError):
            found += [str(d / n) for n in os.listdir(d) if TEMP_NAME.match(n)]
    return found


def group_members(pgid: int) -> set[int]:
    """Live processes in process group ``pgid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and alive(int(entry)):
            found.add(int(entry))
    return found


@contextlib.contextmanager
def small_fs(where: Path, kib: int) -> Iterator[str]:
    """A small filesystem mounted at ``where``: tmpfs, or a loop-mounted ext2 image (1 KiB
    blocks, no reserved blocks) where tmpfs cannot be mounted. Unmounted at the end."""
    where.mkdir()
    kind = "tmpfs"
    mounted = None if FORCE_LOOP else cli.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", str(where)],
        timeout=SETUP_TIMEOUT,
    )  # fmt: skip
    if mounted is None or mounted.returncode != 0:
        kind = "ext2"
        if shutil.which("mkfs.ext2") is None:
            pytest.fail(f"cannot mount tmpfs ({mounted and mounted.stderr}) and no mkfs.ext2")
        image = where.with_name(where.name + ".img")
        with open(image, "wb") as f:
            f.truncate(max(kib, 128) * 1024)
        cli.run(
            ["mkfs.ext2", "-q", "-F", "-m", "0", "-b", "1024", "-N", "32", str(image)],
            timeout=SETUP_TIMEOUT,
            check=True,
        )
        cli.run(["mount", "-o", "loop", str(image), str(where)], timeout=SETUP_TIMEOUT, check=True)
    try:
        yield kind
    finally:
        if cli.run(["umount", str(where)], timeout=SETUP_TIMEOUT).returncode != 0:
            cli.run(["umount", "-l", str(where)], timeout=SETUP_TIMEOUT)


def leave_free(directory: Path, blocks: int) -> int:
    """Fill the filesystem of ``directory`` with a filler file until exactly ``blocks`` blocks
    are free; returns the block size."""
    bsize = os.statvfs(directory).f_bsize
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = 0
        while True:
            try:
                size += os.write(fd, b"\0" * bsize)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        os.ftruncate(fd, max(0, size - blocks * bsize))
        os.fsync(fd)
        # ext2 may free an indirect block as well: take back what is over.
        while os.statvfs(directory).f_bavail > blocks:
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, b"\0" * bsize)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == blocks, os.statvfs(directory)
    return bsize


# --------------------------------------------------------------------------- the stand


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def doc(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON document on stdout:\n{explain(self.proc)}")
        assert isinstance(doc, dict)
        return doc

    @property
    def tracebacks(self) -> int:
        return (self.proc.stdout + self.proc.stderr).count("Traceback")


@dataclass
class Stand:
    """A lineage (issued once), a healthy consumer serving it, and the CLI to deploy it."""

    fanout: Path
    lineages: LineageFactory
    workdir: Path
    healthy: Service

    @property
    def live(self) -> Path:
        return self.lineages.config_dir / "live" / NAME

    def renew(self) -> None:
        self.lineages.renew(*NAMES)

    def new_files(self) -> tuple[bytes, bytes]:
        return (self.live / "fullchain.pem").read_bytes(), (self.live / "privkey.pem").read_bytes()

    def healthy_consumer(self) -> dict[str, Any]:
        svc = self.healthy
        return {
            "certificate": NAME,
            "files": [
                {"path": str(svc.cert), "content": "fullchain"},
                {"path": str(svc.key), "content": "privkey"},
            ],
            "reload": svc.reload_argv(),
            "verify": [{"host": "127.0.0.1", "port": svc.port, "server_name": NAME}],
        }

    def deploy(self, consumers: Mapping[str, dict[str, Any]], prefix: Sequence[str] = ()) -> Run:
        config = write_map(
            self.workdir,
            {
                "version": 1,
                "defaults": {"reload_timeout": RELOAD_TIMEOUT, "verify_timeout": VERIFY_TIMEOUT},
                "consumers": dict(consumers),
            },
        )
        argv = [
            *prefix,
            str(self.fanout),
            "deploy",
            "--config",
            str(config),
            "--cert-name",
            NAME,
            "--config-dir",
            str(self.lineages.config_dir),
            "--lock-file",
            str(self.workdir / "fanout.lock"),
            "--json",
        ]
        start = time.monotonic()
        proc = cli.run(argv, timeout=RUN_TIMEOUT)
        return Run(proc, time.monotonic() - start)

    def setup(self, faulty: dict[str, Any]) -> None:
        """Deploy the current (old) certificate to both consumers, the faulty one with a
        harmless reload: afterwards each has previous files."""
        first = self.deploy(
            {"faulty": {**faulty, "reload": ["true"]}, "healthy": self.healthy_consumer()}
        )
        assert first.proc.returncode == 0, explain(first.proc)

    def faulty_in_place(self) -> tuple[list[dict[str, Any]], dict[Path, Kept]]:
        """The faulty consumer's files, deployed once: (its file entries, what its files are
        before the fault)."""
        directory = self.workdir / "faulty"
        directory.mkdir()
        files = files_in(directory)
        self.setup(faulty_consumer(files))
        return files, snapshot([directory / "fullchain.pem", directory / "privkey.pem"])

    def healthy_problems(self, run: Run, doc: dict[str, Any] | None) -> list[str]:
        """Why the healthy consumer was affected by the fault: empty when it got the new
        files, with owner and mode, was reloaded and verified, and serves the new cert."""
        problems = []
        fullchain, key = self.new_files()
        svc = self.healthy
        for path, data, mode in ((svc.cert, fullchain, 0o644), (svc.key, key, 0o600)):
            state = kept(path)
            if (state.data, state.uid, state.gid, state.mode) != (data, 0, 0, mode):
                problems.append(f"{path} is not the new file: {state.describe()}")
        consumer = by_name(doc).get("healthy") if doc else None
        if consumer is None:
            problems.append("the report has no consumer 'healthy'")
        elif consumer["outcome"] != "ok" or not all(e["ok"] for e in consumer["endpoints"]):
            problems.append(f"healthy: {consumer['outcome']}: {consumer['error']}")
        elif not consumer["reloaded"] or not consumer["endpoints"]:
            problems.append("healthy was not reloaded and verified")
        try:
            served = served_fingerprint("127.0.0.1", svc.port, NAME)
        except OSError as e:
            problems.append(f"healthy does not answer: {e}")
        else:
            if served != file_fingerprint(self.live / "cert.pem"):
                problems.append("healthy does not serve the new certificate")
        return problems


@pytest.fixture
def stand(
    fanout_bin: Path,
    lineages: LineageFactory,
    start_service: Callable[[str, Path], Service],
    tmp_path: Path,
) -> Stand:
    live, _ = lineages.issue(*NAMES)
    healthy = start_service("healthy", live)
    return Stand(fanout_bin, lineages, tmp_path, healthy)


def files_in(directory: Path, *, key_first: bool = False) -> list[dict[str, Any]]:
    """The faulty consumer's files: fullchain.pem and privkey.pem in ``directory``, owned by
    nobody:nogroup with an unusual key mode, so that owner and mode are really checked."""
    cert = {"path": str(directory / "fullchain.pem"), "content": "fullchain",
            "owner": NOBODY, "group": NOBODY, "mode": "0644"}  # fmt: skip
    key = {"path": str(directory / "privkey.pem"), "content": "privkey",
           "owner": NOBODY, "group": NOBODY, "mode": "0640"}  # fmt: skip
    return [key, cert] if key_first else [cert, key]


def faulty_consumer(files: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"certificate": NAME, "files": files, "reload": ["true"], **fields}


# --------------------------------------------------------------------------- judging


def judge(
    stand: Stand,
    result: Run,
    *,
    stage: str,
    reason: str,
    previous: Mapping[Path, Kept],
    bound: float,
    pids: Sequence[int] = (),
    rolled_back: bool | None = None,
) -> str:
    """Measure, record, then assert everything a fault must leave; returns the error."""
    doc: dict[str, Any] | None
    try:
        doc = json.loads(result.proc.stdout)
    except json.JSONDecodeError:
        doc = None
    lost = changed(previous)
    temps = temp_files([p.parent for p in previous])
    others = stand.healthy_problems(result, doc)
    leftover = [pid for pid in pids if alive(pid)]
    record(
        "faults",
        cases=1,
        tracebacks=result.tracebacks,
        previous_files_lost=len(lost),
        others_affected=1 if others else 0,
        leftover_processes=len(leftover),
        temp_files_left=len(temps),
        max_seconds=result.seconds,
    )

    said = by_name(doc).get("faulty", {}).get("error") if doc else result.proc.stdout
    print(f"exit {result.proc.returncode} in {result.seconds:.2f} s: {said}")
    shown = explain(result.proc)
    assert result.tracebacks == 0, shown
    assert result.proc.returncode == 1, shown
    assert doc is not None, shown
    faulty = by_name(doc)["faulty"]
    assert faulty["outcome"] == "failed", shown
    assert faulty["failed_stage"] == stage, shown
    error = str(faulty["error"])
    assert re.search(reason, error), f"{reason!r} not in {error!r}"
    assert "ROLLBACK INCOMPLETE" not in error, error
    if rolled_back is not None:
        assert faulty["rolled_back"] is rolled_back, shown
    assert not lost, lost
    assert not temps, temps
    assert not others, others
    assert not leftover, f"still running after the deploy: {leftover}"
    assert result.seconds < bound, f"{result.seconds:.1f} s, expected < {bound:.1f} s"
    return error


# --------------------------------------------------------------------------- reload / test


@pytest.mark.parametrize("ignores_term", [False, True], ids=["hang", "hang-ignoring-SIGTERM"])
def test_a_hung_reload_is_killed_with_its_process_group(stand: Stand, ignores_term: bool) -> None:
    files, before = stand.faulty_in_place()
    pidfile = stand.workdir / "pids"
    # The child (sh) starts a grandchild; both hang. Ignoring SIGTERM (inherited by the
    # grandchild) leaves only the SIGKILL that follows the grace period.
    trap = "trap '' TERM; " if ignores_term else ""
    script = f"{trap}echo $$ >> {pidfile}; sleep 1000 & echo $! >> {pidfile}; sleep 1000; wait"
    stand.renew()
    result = stand.deploy(
        {
            "faulty": faulty_consumer(files, reload=["sh", "-c", script]),
            "healthy": stand.healthy_consumer(),
        }
    )
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2, pids
    # The child leads its own process group: whatever it started (the foreground sleep too)
    # is a member, until the group is killed.
    pids += sorted(group_members(pids[0]) - set(pids))
    grace = _KILL_GRACE if ignores_term else 0.0
    try:
        error = judge(
            stand,
            result,
            stage="reload",
            reason=rf"timed out after {RELOAD_TIMEOUT:g} s; its process group was killed",
            previous=before,
            rolled_back=True,
            pids=pids,
            bound=RELOAD_TIMEOUT + grace + OVERHEAD,
        )
    finally:  # a failed run must not leave its sleepers behind
        for pid in {*pids, *group_members(pids[0])}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    consumer = by_name(result.doc)["faulty"]
    assert RELOAD_TIMEOUT <= consumer["seconds"] < RELOAD_TIMEOUT + grace + 1.5, consumer
    assert error.startswith("reload `sh -c "), error


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("/nonexistent/prog", r"reload `/nonexistent/prog --reload`: program /nonexistent/prog "
         r"not found"),
        ("fanout-no-such-program", r"reload `fanout-no-such-program --reload`: program "
         r"fanout-no-such-program not found on PATH \("),
        ("{script}", r"cannot start {script}: its interpreter /nonexistent/interpreter does not "
         r"exist"),
    ],
    ids=["absolute-path", "not-on-PATH", "missing-interpreter"],
)  # fmt: skip
def test_a_missing_reload_program_is_named(stand: Stand, program: str, reason: str) -> None:
    files, before = stand.faulty_in_place()
    script = stand.workdir / "reload-script"
    script.write_text("#!/nonexistent/interpreter\nexit 0\n")
    script.chmod(0o755)
    program = program.format(script=script)
    stand.renew()
    result = stand.deploy(
        {
            "faulty": faulty_consumer(files, reload=[program, "--reload"]),
            "healthy": stand.healthy_consumer(),
        }
    )
    judge(
        stand,
        result,
        stage="reload",
        reason=reason.format(script=re.escape(str(script))),
        previous=before,
        rolled_back=True,
        bound=OVERHEAD,
    )


def test_a_failing_reload_reports_its_exit_code_and_output(stand: Stand) -> None:
    files, before = stand.faulty_in_place()
    stand.renew()
    reload = ["sh", "-c", "echo 'Job for faulty.service failed: unit not active' >&2; exit 3"]
    result = stand.deploy(
        {"faulty": faulty_consumer(files, reload=reload), "healthy": stand.healthy_consumer()}
    )
    judge(
        stand,
        result,
        stage="reload",
        reason=r"exited 3; output: Job for faulty\.service failed: unit not active$",
        previous=before,
        rolled_back=True,
        bound=OVERHEAD,
    )


def test_a_failing_test_restores_the_previous_files_and_skips_the_reload(stand: Stand) -> None:
    files, previous = stand.faulty_in_place()
    marker = stand.workdir / "reloaded"
    stand.renew()
    result = stand.deploy(
        {
            "faulty": faulty_consumer(
                files,
                test=["sh", "-c", "echo 'emerg: cannot load certificate key' >&2; exit 1"],
                reload=["sh", "-c", f"echo reload >> {marker}"],
            ),
            "healthy": stand.healthy_consumer(),
        }
    )
    reloaded = marker.exists()
    judge(
        stand,
        result,
        stage="test",
        reason=r"test `sh -c .*` exited 1; output: emerg: cannot load certificate key$",
        previous=previous,
        rolled_back=True,
        bound=OVERHEAD,
    )
    assert not reloaded, "the reload ran although the test failed"
    assert by_name(result.doc)["faulty"]["reloaded"] is False


# --------------------------------------------------------------------------- placement


def test_a_full_filesystem_fails_the_key_and_rolls_back_the_certificate(stand: Stand) -> None:
    """The certificate goes to a roomy directory, the key to a filesystem with no block free:
    the key's write fails with ENOSPC, and the certificate placed before it is put back."""
    roomy = stand.workdir / "faulty"
    roomy.mkdir()
    full = stand.workdir / "full"
    with small_fs(full, 64) as kind:
        cert, key = files_in(roomy)
        key["path"] = str(full / "privkey.pem")
        files = [cert, key]
        stand.setup(faulty_consumer(files))
        previous = snapshot([roomy / "fullchain.pem", full / "privkey.pem"])
        leave_free(full, 0)
        stand.renew()
        result = stand.deploy(
            {"faulty": faulty_consumer(files), "healthy": stand.healthy_consumer()}
        )
        judge(
            stand,
            result,
            stage="place",
            reason=rf"^{re.escape(str(full))}/privkey\.pem: cannot write: No space left on device$",
            previous=previous,
            rolled_back=True,
            bound=OVERHEAD,
        )
        print(f"filesystem: {kind}")


def test_a_filesystem_that_fills_between_two_files_rolls_back_the_first(stand: Stand) -> None:
    """Both files on one small filesystem with one block free: the key (one block) is
    placed, the certificate (more than one block) is not, and the key is put back."""
    full = stand.workdir / "full"
    with small_fs(full, 64) as kind:
        files = files_in(full, key_first=True)
        stand.setup(faulty_consumer(files))
        fullchain, key = stand.new_files()
        previous = snapshot([full / "privkey.pem", full / "fullchain.pem"])
        bsize = leave_free(full, 1)
        assert len(key) <= bsize < len(fullchain), (bsize, len(key), len(fullchain))
        stand.renew()
        result = stand.deploy(
            {"faulty": faulty_consumer(files), "healthy": stand.healthy_consumer()}
        )
        judge(
            stand,
            result,
            stage="place",
            reason=rf"^{re.escape(str(full))}/fullchain\.pem: cannot write: No space left on "
            "device$",
            previous=previous,
            rolled_back=True,
            bound=OVERHEAD,
        )
        print(f"filesystem: {kind}")


def test_a_read_only_destination_is_named_and_left_alone(stand: Stand) -> None:
    readonly = stand.workdir / "readonly"
    with small_fs(readonly, 1024):
        files = files_in(readonly)
        stand.setup(faulty_consumer(files))
        previous = snapshot([readonly / "fullchain.pem", readonly / "privkey.pem"])
        cli.run(["mount", "-o", "remount,ro", str(readonly)], timeout=SETUP_TIMEOUT, check=True)
        stand.renew()
        result = stand.deploy(
            {"faulty": faulty_consumer(files), "healthy": stand.healthy_consumer()}
        )
        judge(
            stand,
            result,
            stage="place",
            reason=rf"^{re.escape(str(readonly))}/fullchain\.pem: cannot create a temporary "
            "file: Read-only file system$",
            previous=previous,
            rolled_back=False,
            bound=OVERHEAD,
        )


def test_a_removed_destination_directory_rolls_back_the_files_before_it(stand: Stand) -> None:
    first, second = stand.workdir / "first", stand.workdir / "second"
    first.mkdir()
    second.mkdir()
    cert, key = files_in(first)
    key["path"] = str(second / "privkey.pem")
    files = [cert, key]
    stand.setup(faulty_consumer(files))
    shutil.rmtree(second)
    previous = snapshot([first / "fullchain.pem", second])
    stand.renew()
    result = stand.deploy({"faulty": faulty_consumer(files), "healthy": stand.healthy_consumer()})
    judge(
        stand,
        result,
        stage="place",
        reason=rf"^{re.escape(str(second))}/privkey\.pem: directory {re.escape(str(second))} "
        "does not exist.*; create it",
        previous=previous,
        rolled_back=True,
        bound=OVERHEAD,
    )


def test_a_directory_where_a_file_belongs_is_refused_and_the_rest_rolled_back(
    stand: Stand,
) -> None:
    directory = stand.workdir / "faulty"
    directory.mkdir()
    files = files_in(directory)
    stand.setup(faulty_consumer(files))
    (directory / "privkey.pem").unlink()
    (directory / "privkey.pem").mkdir()
    (directory / "privkey.pem" / "keep-me").write_text("an admin's file\n")
    previous = snapshot([directory / "fullchain.pem", directory / "privkey.pem"])
    stand.renew()
    result = stand.deploy({"faulty": faulty_consumer(files), "healthy": stand.healthy_consumer()})
    judge(
        stand,
        result,
        stage="place",
        reason=rf"^{re.escape(str(directory))}/privkey\.pem: exists and is not a regular file "
        "or symlink; refusing$",
        previous=previous,
        rolled_back=True,
        bound=OVERHEAD,
    )
    assert (directory / "privkey.pem" / "keep-me").read_text() == "an admin's file\n"


# --------------------------------------------------------------------------- the lineage


def _remove(path: Path) -> str:
    path.unlink()
    return "cannot read: No such file or directory"


def _unreadable(path: Path) -> str:
    path.chmod(0)  # root reads it anyway: the run drops CAP_DAC_OVERRIDE (see below)
    return "cannot read: Permission denied"


def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return "not an unencrypted PEM private key"


def _mismatch(path: Path) -> str:
    from certbot_fanout._pki import ThrowawayCA

    path.write_bytes(ThrowawayCA("another").issue([NAME]).key_pem)
    return "does not match cert.pem; refusing to deploy"


@pytest.mark.parametrize(
    "fault",
    [_remove, _unreadable, _truncate, _mismatch],
    ids=["missing", "unreadable", "truncated", "not-matching"],
)
def test_an_unusable_lineage_touches_no_consumer(
    stand: Stand, fault: Callable[[Path], str]
) -> None:
    """docs/deploy.md: the lineage is checked before anything; if it is unusable, nothing is
    touched and the exit code is 2. Every consumer keeps its files (same inode, even) and
    nothing is reloaded."""
    directory = stand.workdir / "other"
    directory.mkdir()
    marker = stand.workdir / "reloaded"
    files = files_in(directory)
    stand.setup(faulty_consumer(files))
    paths = [directory / "fullchain.pem", directory / "privkey.pem", stand.healthy.cert,
             stand.healthy.key]  # fmt: skip
    stand.renew()
    target = (stand.live / "privkey.pem").resolve()  # archive/NAME/privkey2.pem
    expected = fault(target)
    before = {p: (kept(p), p.stat().st_ino, p.stat().st_ctime_ns) for p in paths}
    reloads = stand.healthy.reloads()
    # Root reads a mode-0 file; without these capabilities it is refused like anyone else,
    # while it still owns everything it needs.
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    result = stand.deploy(
        {
            "other": faulty_consumer(files, reload=["sh", "-c", f"echo reload >> {marker}"]),
            "healthy": stand.healthy_consumer(),
        },
        prefix=drop if fault is _unreadable else (),
    )
    touched = [p for p in paths if (kept(p), p.stat().st_ino, p.stat().st_ctime_ns) != before[p]]
    reloaded = int(marker.exists()) + int(stand.healthy.reloads() != reloads)
    temps = temp_files([directory, stand.healthy.workdir])
    record(
        "faults",
        cases=1,
        tracebacks=result.tracebacks,
        previous_files_lost=len(touched),
        others_affected=reloaded,
        leftover_processes=0,
        temp_files_left=len(temps),
        max_seconds=result.seconds,
    )

    print(f"exit {result.proc.returncode} in {result.seconds:.2f} s: {result.proc.stderr}")
    shown = explain(result.proc)
    assert result.tracebacks == 0, shown
    assert result.proc.returncode == 2, shown
    assert result.proc.stdout == "", shown
    assert re.fullmatch(
        rf"certbot-fanout: error: {re.escape(str(stand.live))}(/privkey\.pem)?: "
        rf"(privkey\.pem )?.*{re.escape(expected)}.*\n",
        result.proc.stderr,
    ), shown
    assert "privkey.pem" in result.proc.stderr, shown
    assert not touched, touched
    assert not reloaded, "a consumer was reloaded"
    assert not temps, temps
    assert served_fingerprint("127.0.0.1", stand.healthy.port, NAME) != file_fingerprint(
        stand.live / "cert.pem"
    )
    assert result.seconds < OVERHEAD
