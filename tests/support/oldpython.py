"""A real Python 3.9 (Debian 11's), to stand in for an old target's ``python3``.

Built on this Debian 12 machine without touching its apt state: apt downloads bullseye's
``python3.9-minimal``, ``libpython3.9-minimal``, ``libpython3.9-stdlib`` and the libraries
they need (glibc 2.31 included) with a private state, cache and sources list; ``dpkg-deb -x``
unpacks them into one directory; a ``python3`` wrapper runs the interpreter through bullseye's
own ld.so with bullseye's libraries first. The interpreter finds its stdlib from its own path
(``ROOT/usr/lib/python3.9``), so ``-I`` (which ignores ``PYTHONHOME``) works.

Cached in ``/var/cache/certbot-fanout-tests/python3.9`` (rebuilt when missing or broken).
Caveat: ``sys.executable`` is the bare ``python3.9`` binary, which does not run without the
wrapper; a target program that re-executes ``sys.executable`` would fail.

Stand-alone: no pytest and no project imports. ``python -m tests.support.oldpython`` builds it
and prints the wrapper's path and the build time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CACHE", "CHECK_MODULES", "PACKAGES", "ensure_python39", "python39_works"]

CACHE = Path("/var/cache/certbot-fanout-tests/python3.9")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCE = f"deb [signed-by={KEYRING}] http://deb.debian.org/debian bullseye main"
PACKAGES = (
    "python3.9-minimal",
    "libpython3.9-minimal",
    "libpython3.9-stdlib",
    "libc6",
    "libgcc-s1",
    "libcrypt1",
    "libssl1.1",
    "zlib1g",
    "libexpat1",
    "libffi7",
    "libmpdec3",
    "libbz2-1.0",
    "liblzma5",
)
CHECK_MODULES = (
    "os",
    "pwd",
    "grp",
    "json",
    "struct",
    "select",
    "fcntl",
    "hashlib",
    "secrets",
    "base64",
    "signal",
    "subprocess",
)
_CHECK = (
    "import sys, " + ", ".join(CHECK_MODULES) + "\n"
    "assert sys.version_info[:2] == (3, 9), sys.version\n"
    "hashlib.sha256(sys.stdin.buffer.read())\n"
    "print('.'.join(map(str, sys.version_info[:3])))\n"
)


def _wrapper(root: Path) -> str:
    libs = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    # lib64/ld-linux-x86-64.so.2 is an absolute symlink (to the machine's ld.so): use the
    # one in lib/x86_64-linux-gnu, a relative link to bullseye's ld-2.31.so.
    ld_so = f"{root}/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    return f'#!/bin/sh\nexec {ld_so} --library-path {libs} {root}/usr/bin/python3.9 "$@"\n'


def python39_works(python3: Path) -> bool:
    """True when ``python3 -I -c CHECK`` (reading stdin) reports 3.9 with every module."""
    try:
        done = subprocess.run(
            [str(python3), "-I", "-c", _CHECK],
            input=b"x",
            capture_output=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.startswith(b"3.9.")


def _download(debs: Path) -> None:
    state, cache, etc = debs / "state", debs / "cache", debs / "etc"
    for d in (state / "lists" / "partial", cache / "archives" / "partial", etc):
        d.mkdir(parents=True, exist_ok=True)
    (state / "status").write_text("")
    (etc / "sources.list").write_text(SOURCE + "\n")
    options = [
        f"-oDir::State={state}",
        f"-oDir::State::status={state / 'status'}",
        f"-oDir::Cache={cache}",
        f"-oDir::Etc::SourceList={etc / 'sources.list'}",
        "-oDir::Etc::SourceParts=/nonexistent",
        "-oAPT::Architecture=amd64",
        "-oAPT::Architectures::=amd64",
        "-oAPT::Sandbox::User=root",
        "-oDebug::NoLocking=1",
    ]
    for words in (["update"], ["download", *PACKAGES]):
        done = subprocess.run(
            ["apt-get", "-q", *options, *words],
            cwd=debs,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"apt-get {words[0]} (bullseye) failed:\n{done.stderr[-3000:]}")


def ensure_python39(cache: Path = CACHE) -> Path:
    """The ``python3`` wrapper of a Debian 11 Python 3.9, built into ``cache`` if missing or
    broken (about 3 s with a fast mirror). RuntimeError when the build fails."""
    python3 = cache / "bin" / "python3"
    if python39_works(python3):
        return python3
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.parent.chmod(0o755)
    build = Path(tempfile.mkdtemp(prefix=".python3.9-", dir=cache.parent))
    try:
        build.chmod(0o755)
        _download(build / "debs")
        root = cache / "root"  # the final path: the wrapper names it
        staging = build / "root"
        for deb in sorted((build / "debs").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, timeout=120)
        shutil.rmtree(build / "debs")
        (build / "bin").mkdir()
        (build / "bin" / "python3").write_text(_wrapper(root))
        (build / "bin" / "python3").chmod(0o755)
        if cache.exists():
            shutil.rmtree(cache)
        os.rename(build, cache)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if not python39_works(python3):
        raise RuntimeError(f"{python3} was built but does not run Python 3.9 with its modules")
    return python3


def main() -> int:
    started = time.monotonic()
    python3 = ensure_python39()
    print(f"{python3} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
