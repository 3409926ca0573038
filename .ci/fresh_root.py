"""Run the README's two commands on a fresh Debian 12 root, as a newcomer would.

``./dev fresh`` (and so ``.ci/run``) calls this as root. It

1. builds a minimal Debian 12 root with mmdebstrap (``--variant=minbase``, plus git and
   ca-certificates), cached as a tarball between runs and unpacked pristine for every run;
2. gives it only what this machine uses to reach its package registries: its apt sources, the
   apt options no package installed (the machine's own), the keys apt verifies with, its pip
   configuration files and ``PIP_*`` variables (with every local file or directory they name:
   files copied, directories bind-mounted read-only at the same path), the extra CA
   certificates it trusts, its resolver, and Debian's standard ``/etc/hosts``;
3. clones the commit under test (HEAD of this checkout) to ``/root/certbot-fanout``;
4. in a private mount and PID namespace, bind-mounts the root onto itself (so "/" is a mount
   point, as on a booted machine), mounts /proc, /sys, /dev, /dev/pts, and tmpfs on /dev/shm,
   /run and /tmp, and runs ``./dev demo`` and then ``./dev test`` there, each as the root of a
   mount namespace of its own (pivot_root, not chroot: ``docker exec`` needs it) with a clean
   environment (only HOME, LANG, PATH and the ``PIP_*`` variables);
5. tears everything down, also on failure or timeout: the PID namespace ends with its first
   process (so no daemon a test started outlives the run), its mounts go with it, and the run
   checks that no process and no mount is left under the root before it removes it.

It exits 0 only if both commands passed and nothing was left behind. Uncommitted changes are
not tested: commit first.

Environment: CERTBOT_FANOUT_FRESH_CACHE (default /var/cache/certbot-fanout-fresh) holds the
bare root; CERTBOT_FANOUT_FRESH_WORK (default /var/tmp) is where the root is unpacked;
CERTBOT_FANOUT_FRESH_TIMEOUT (seconds, default 4800) bounds the whole run.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SUITE = "bookworm"
INCLUDE = ["git", "ca-certificates"]
CLONE = "/root/certbot-fanout"
COMMANDS = (("demo", "./dev demo"), ("test", "./dev test"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CACHE_DAYS = 7
HOSTS = """127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
"""
REPO = Path(__file__).resolve().parent.parent
PYTEST_CLOSING = re.compile(
    r"^=+ .*\b(passed|failed|error|errors|no tests ran)\b.* in [0-9.]+s.* =+$"
)


def say(message: str) -> None:
    print(f"==> fresh root: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kwargs)


# --------------------------------------------------------------------------- what the host uses


def apt_sources() -> list[Path]:
    found = [Path("/etc/apt/sources.list")]
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return [p for p in found if p.is_file() and p.stat().st_size > 0]


def owned_by_a_package(path: Path) -> bool:
    return (
        subprocess.run(
            ["dpkg-query", "-S", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        ).returncode
        == 0
    )


def apt_options() -> list[Path]:
    """The machine's own apt options: files in apt.conf.d that no installed package ships."""
    conf = Path("/etc/apt/apt.conf.d")
    found = [p for p in sorted(conf.iterdir()) if p.is_file()] if conf.is_dir() else []
    apt_conf = Path("/etc/apt/apt.conf")
    if apt_conf.is_file():
        found.insert(0, apt_conf)
    return [p for p in found if not owned_by_a_package(p)]


def apt_keys() -> list[Path]:
    found: list[Path] = []
    for directory in (Path("/etc/apt/trusted.gpg.d"), Path("/etc/apt/keyrings")):
        if directory.is_dir():
            found += [p for p in sorted(directory.iterdir()) if p.is_file()]
    for path in (Path("/etc/apt/trusted.gpg"), *sorted(Path("/etc/apt/auth.conf.d").glob("*"))):
        if path.is_file():
            found.append(path)
    for source in apt_sources():
        for line in source.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "signed-by" and value.strip().startswith("/"):
                found.append(Path(value.strip()))
            if "signed-by=" in line:
                found.append(Path(line.split("signed-by=", 1)[1].split()[0].rstrip("]")))
    return [p for p in found if p.is_file()]


def pip_config_files() -> list[Path]:
    """The pip configuration files pip reads for root, in pip's own order."""
    home = Path(os.environ.get("HOME", "/root"))
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    xdg_home = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    candidates = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d]
    candidates += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        candidates.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [p for p in dict.fromkeys(candidates) if p.is_file()]


def pip_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def local_paths(values: list[str]) -> list[Path]:
    """Absolute paths and file: URLs named in pip settings that exist here."""
    found: list[Path] = []
    for value in values:
        for word in value.split():
            url = word.startswith("file:")
            if url:
                word = unquote(urlparse(word).path).rstrip("/") or "/"
            path = Path(word)
            if not word.startswith("/") or not path.exists():
                continue
            # A PEP 503 index on disk (DIR/simple/NAME/index.html) links to its files with
            # relative URLs (../../files/...): the directory above "simple" holds both.
            if url and path.name == "simple" and path.parent != Path("/"):
                path = path.parent
            found.append(path)
    return list(dict.fromkeys(found))


def pip_values(files: list[Path]) -> list[str]:
    values = list(pip_environment().values())
    for path in files:
        parser = configparser.RawConfigParser()
        with contextlib.suppress(configparser.Error):
            parser.read(path)
            for section in parser.sections():
                values += [v for _, v in parser.items(section)]
    return values


def extra_cas() -> list[Path]:
    base = Path("/usr/local/share/ca-certificates")
    return sorted(p for p in base.rglob("*.crt") if p.is_file()) if base.is_dir() else []


# --------------------------------------------------------------------------- the bare root


def bare_root(cache: Path, options: list[Path]) -> Path:
    """The cached mmdebstrap tarball for these sources and options, built if missing or old."""
    argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}"]
    argv += [f"--aptopt={p}" for p in options]
    sources = apt_sources()
    key = hashlib.sha256(" ".join(argv).encode())
    for path in (*sources, *options):
        key.update(path.read_bytes())
    tarball = cache / f"{SUITE}-minbase-{key.hexdigest()[:16]}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < CACHE_DAYS * 86400:
        say(f"bare root from the cache ({tarball.name})")
        return tarball
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in cache.glob(f"{SUITE}-minbase-*.tar*"):
        old.unlink()
    partial = tarball.with_suffix(".tar.partial")
    started = time.monotonic()
    say(f"building a bare {SUITE} root with mmdebstrap")
    run([*argv, "--format=tar", SUITE, str(partial), *map(str, sources)])
    partial.rename(tarball)
    say(f"bare root built in {time.monotonic() - started:.1f} s")
    return tarball


def copy_in(root: Path, path: Path) -> None:
    dest = root / path.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    shutil.copy2(path, dest)


def configure(root: Path, commit: str) -> list[Path]:
    """Give the unpacked root what it needs to reach the registries; return dirs to bind."""
    sources_d = root / "etc/apt/sources.list.d"
    for old in sources_d.iterdir():
        old.unlink()
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in (*apt_sources(), *apt_options(), *apt_keys()):
        copy_in(root, path)
    pip_files = pip_config_files()
    binds: list[Path] = []
    for path in pip_files:
        copy_in(root, path)
    for path in local_paths(pip_values(pip_files)):
        if path.is_dir():
            binds.append(path)
        else:
            copy_in(root, path)
    for path in extra_cas():
        copy_in(root, path)
    (root / "etc/hosts").write_text(HOSTS)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    run(["chroot", str(root), "update-ca-certificates"], stdout=subprocess.DEVNULL)
    clone = root / CLONE.lstrip("/")
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)])
    run(["git", "-C", str(clone), "checkout", "-q", "--detach", commit])
    run(["git", "-C", str(clone), "remote", "remove", "origin"])
    return binds


# --------------------------------------------------------------------------- inside the namespaces


# The root made the root of a mount namespace of its own (pivot_root, the old root then
# unmounted), not merely chroot'ed into: as on a booted machine, a process that joins another
# mount namespace from there (`docker exec`, nsenter) gets that namespace's root, not the host's.
_PIVOT = 'cd "$1" && shift && mkdir .old-root && pivot_root . .old-root && exec chroot . "$@"'
_DROP_OLD_ROOT = 'umount -l /.old-root && rmdir /.old-root && exec "$@"'


def enter_root(root: Path) -> list[str]:
    """The argv prefix that runs a command as the only root of its own mount namespace."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    pivot = ["/bin/sh", "-c", _PIVOT, "fresh", str(root)]
    return [*unshare, *pivot, "/bin/sh", "-c", _DROP_OLD_ROOT, "fresh"]


def mount(*args: str) -> None:
    run(["mount", *args])


def inside(root: Path, binds: list[Path], log: Path) -> int:
    """PID 1 of a private PID and mount namespace: mount, run both commands, unmount."""
    mount("--make-rprivate", "/")
    # The root is a mount point, as on a booted machine: a test that makes its own private
    # mount namespace (unshare --propagation private) changes the propagation of "/".
    mount("--bind", str(root), str(root))
    mount("-t", "proc", "proc", str(root / "proc"))
    mount("-t", "sysfs", "sysfs", str(root / "sys"))
    # dockerd (the container tests run one) needs the cgroup hierarchy, as a booted machine
    # has it; a fresh sysfs does not carry its mounts.
    if Path("/sys/fs/cgroup").is_dir():
        mount("--rbind", "/sys/fs/cgroup", str(root / "sys/fs/cgroup"))
    mount("--bind", "/dev", str(root / "dev"))
    mount("--bind", "/dev/pts", str(root / "dev/pts"))
    (root / "dev/shm").mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "dev/shm"))
    mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", str(root / "run"))
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "tmp"))
    for path in binds:
        target = root / path.relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        mount("--bind", str(path), str(target))
        mount("-o", "remount,bind,ro", str(target))
    env = {"HOME": "/root", "LANG": "C.UTF-8", "PATH": PATH, **pip_environment()}
    env_argv = [f"{k}={v}" for k, v in env.items()]
    failed = 0
    reaper = Reaper()  # from here on, every child is reaped by it
    reaper.start()
    with log.open("ab") as out:
        for name, command in COMMANDS:
            say(f"running `{command}` in {CLONE}")
            started = time.monotonic()
            proc = subprocess.Popen(
                [
                    *enter_root(root),
                    "/usr/bin/env",
                    "-i",
                    *env_argv,
                    "/bin/sh",
                    "-c",
                    f"cd {CLONE} && exec {command}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(b"==> "):  # dev's steps, stamped: the timings of each
                    line = f"[+{time.monotonic() - started:6.1f} s] ".encode() + line
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                out.write(line)
            code = reaper.wait_for(proc)
            seconds = time.monotonic() - started
            verdict = "passed" if code == 0 else f"FAILED (exit {code})"
            out.write(f"\n@@ {name} {code} {seconds:.1f}\n".encode())
            say(f"`{command}` {verdict} in {seconds:.1f} s")
            failed += code != 0
            # Whatever the command left running dies here, before the next one starts.
            kill_all_but_me()
    for mounted in reversed(mounts_under(root)):
        subprocess.run(["umount", "-l", str(mounted)], check=False)
    return 1 if failed else 0


class Reaper(threading.Thread):
    """PID 1's init duty: reap every child that exits, orphans adopted included (a daemon a
    test detached, the old process of a service a reload restarted); left unreaped, a zombie
    still answers `kill -0`. The exit code of a child this script waits for is kept for
    :meth:`wait_for`. (/proc here is the outer namespace's, so it cannot be used to tell.)"""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.exited: dict[int, int] = {}
        self.changed = threading.Condition()

    def run(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # no child right now
                time.sleep(0.05)
                continue
            with self.changed:
                self.exited[pid] = os.waitstatus_to_exitcode(status)
                self.changed.notify_all()

    def wait_for(self, proc: subprocess.Popen[bytes]) -> int:
        """``proc``'s exit code, once the reaper has collected it."""
        with self.changed:
            self.changed.wait_for(lambda: proc.pid in self.exited)
            proc.returncode = self.exited.pop(proc.pid)
        return proc.returncode


def kill_all_but_me() -> None:
    """In our own PID namespace: SIGKILL every process but this one (PID 1)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def mounts_under(root: Path) -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].replace("\\040", " "))
        if point == root or point.is_relative_to(root):
            found.append(point)
    return found


def processes_under(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            target = Path(os.readlink(entry / "root"))
            if target == root or target.is_relative_to(root):
                found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------- the whole run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inside", nargs=3, metavar=("ROOT", "BINDS", "LOG"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.inside:
        root, binds, log = args.inside
        return inside(Path(root), [Path(b) for b in binds.split(":") if b], Path(log))
    if os.geteuid() != 0:
        print(
            "dev fresh: run as root (it builds a Debian root and mounts into it)", file=sys.stderr
        )
        return 2
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if dirty:
        say(f"uncommitted changes are not tested: testing commit {commit[:12]}")
    total = time.monotonic()
    # A CI runner's SIGTERM (or ^C) must still tear everything down: raise, so `finally` runs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    cache = Path(os.environ.get("CERTBOT_FANOUT_FRESH_CACHE", "/var/cache/certbot-fanout-fresh"))
    timeout = float(os.environ.get("CERTBOT_FANOUT_FRESH_TIMEOUT", "4800"))
    work = Path(
        tempfile.mkdtemp(
            prefix="certbot-fanout-fresh.",
            dir=os.environ.get("CERTBOT_FANOUT_FRESH_WORK", "/var/tmp"),
        )
    )
    root = work / "root"
    log = work / "run.log"
    code = 1
    lines: list[str] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        tarball = bare_root(cache, apt_options())
        started = time.monotonic()
        root.mkdir()
        run(["tar", "-C", str(root), "-xpf", str(tarball)])
        binds = configure(root, commit)
        say(
            f"root unpacked and configured in {time.monotonic() - started:.1f} s at {root}"
            f" (commit {commit[:12]})"
        )
        proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                sys.executable,
                "-I",
                str(Path(__file__).resolve()),
                "--inside",
                str(root),
                ":".join(map(str, binds)),
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=max(60.0, timeout - (time.monotonic() - total)))
        except subprocess.TimeoutExpired:
            say(f"timed out after {timeout:.0f} s")
            code = 124
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lines = log_lines(log)  # read before the teardown removes it
        left = teardown(work, root)
    say(f"{summary(lines)}; whole run {time.monotonic() - total:.1f} s")
    # The suite's own closing line, last, so that whoever reads the end of the log sees it.
    closing = [line for line in lines if PYTEST_CLOSING.match(line)]
    if closing:
        print(closing[-1], flush=True)
    if left:
        return 1
    return 0 if code == 0 else 1


def interrupted(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def teardown(work: Path, root: Path) -> str:
    """Kill and unmount whatever is left under root, remove it; say what had to be cleaned."""
    left = []
    deadline = time.monotonic() + 10
    while (pids := processes_under(root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if pids := processes_under(root):
        left.append(f"processes {pids}")
    mounted = mounts_under(root)
    if mounted:
        left.append(f"mounts {[str(m) for m in mounted]}")
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)
    if not mounts_under(root) and not processes_under(root):
        run(["rm", "-rf", "--one-file-system", str(work)])
    else:
        left.append(f"{work} kept")
    if left:
        say(f"FAILED: left behind: {'; '.join(left)}")
    else:
        say(f"torn down: no process or mount left, {work} removed")
    return "; ".join(left)


def log_lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def summary(lines: list[str]) -> str:
    parts = []
    text = "\n".join(lines)
    for line in lines:
        if line.startswith("@@ "):
            _, name, code, seconds = line.split()
            verdict = "passed" if code == "0" else f"failed with exit {code}"
            parts.append(f"`./dev {name}` {verdict} in {seconds} s")
    for name, _ in COMMANDS:
        if f"@@ {name} " not in text:
            parts.append(f"`./dev {name}` did not finish")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
