"""Reading services' configuration files for the certificate paths they name, without being led
astray: a glob expanded without following a directory symlink, every directory entry counted
against a budget, each file read as :mod:`certbot_fanout.fswalk` reads one (a symlink followed
only in a directory that only this user can change).

``discover`` reads this host's configurations with it; the agent (:mod:`certbot_fanout.agent`)
ships it to another host for ``discover --host``, so the texts stay there and only the paths
they name come back. Standard library only; runs on Python 3.9.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certbot_fanout import fswalk

MAX_CONFIG_ENTRIES = 20_000  # directory entries the service-configuration walk looks at
MAX_CONFIG_DEPTH = 24  # directories below a ``**``


@dataclass
class Allowance:
    """What is left of a walk's entry budget before its deadline; where it stopped, once it has."""

    deadline: float
    entries: int
    stopped: str | None = None

    def spend(self, where: str) -> bool:
        """Count one entry (at ``where``); False once the entries or the time are spent."""
        if self.stopped is None:
            self.entries -= 1
            if self.entries < 0:
                self.stopped = f"{where} (its budget of {MAX_CONFIG_ENTRIES} entries ran out)"
            elif time.monotonic() > self.deadline:
                self.stopped = f"{where} (the file budget ran out; raise it with --scan-budget)"
        return self.stopped is None

    def stop(self, where: str, why: str) -> None:
        if self.stopped is None:
            self.stopped = f"{where} ({why})"


def links_trusted_in(directory: str) -> bool:
    """Whether a symlink in ``directory`` (such as Debian's ``sites-enabled/``) can only have
    been put there by this user: the directory is its own, and nobody else may write to it. A
    service account's own configuration directory does not qualify."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def expand_glob(pattern: str, allowance: Allowance) -> Iterator[str]:
    """The paths an absolute configuration glob matches (``*``, ``?`` and ``[...]`` within a
    name, ``**`` for any depth of directories, hidden names only for a pattern that starts with
    a dot, as with glob), found without following a directory symlink and with each directory
    entry counted against ``allowance``. The standard ``glob`` follows them: two ``x -> .``
    links make its ``**`` walk exponential."""
    parts = [p for p in pattern.split("/") if p]
    if parts:
        yield from _expand_in("/", parts, allowance, 0)


def _expand_in(directory: str, parts: list[str], allowance: Allowance, depth: int) -> Iterator[str]:
    head, rest = parts[0], parts[1:]
    if head == "**":
        if depth > MAX_CONFIG_DEPTH:
            allowance.stop(directory, f"deeper than {MAX_CONFIG_DEPTH} directories")
            return
        if rest:
            yield from _expand_in(directory, rest, allowance, depth)
        for name, is_dir in _matching(directory, "*", allowance):
            if is_dir:
                yield from _expand_in(os.path.join(directory, name), parts, allowance, depth + 1)
        return
    for name, is_dir in _matching(directory, head, allowance):
        path = os.path.join(directory, name)
        if not rest:
            yield path
        elif is_dir:
            yield from _expand_in(path, rest, allowance, depth)


def _matching(directory: str, pattern: str, allowance: Allowance) -> Iterator[tuple[str, bool]]:
    """(name, is a directory and not a symlink) of each entry of ``directory`` that matches."""
    if not any(c in pattern for c in "*?["):
        try:
            st = os.lstat(os.path.join(directory, pattern))
        except OSError:
            return
        if allowance.spend(directory):
            yield pattern, stat.S_ISDIR(st.st_mode)
        return
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not allowance.spend(directory):
                    return
                if entry.name.startswith(".") and not pattern.startswith("."):
                    continue
                if fnmatch.fnmatchcase(entry.name, pattern):
                    yield entry.name, entry.is_dir(follow_symlinks=False)
    except OSError:
        return


def named_paths(text: str, pattern: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    """(line number, path) of each absolute path the pattern finds in a configuration text."""
    for m in pattern.finditer(text):
        path = m.group(m.lastindex or 1).strip()
        if path.startswith("/"):
            yield text.count("\n", 0, m.start()) + 1, path


def references(
    services: Mapping[str, tuple[Sequence[str], re.Pattern[str]]], allowance: Allowance
) -> Iterator[tuple[str, str, int, str]]:
    """(service, configuration file, line, path) of every absolute path the services'
    configuration files (their globs) name, by the service's pattern."""
    for service, (globs, pattern) in services.items():
        for conf in sorted({p for pat in globs for p in expand_glob(pat, allowance)}):
            if not allowance.spend(conf):
                return
            read = fswalk.read_regular(conf, follow=links_trusted_in(os.path.dirname(conf)))
            if read is None:
                continue
            text = read.data.decode(errors="replace")
            for line, path in named_paths(text, pattern):
                yield service, conf, line, path


def scan_references(
    services: Mapping[str, Sequence[Any]], max_entries: int, seconds: float
) -> dict[str, Any]:
    """:func:`references` for services given as ``{name: [globs, pattern, flags]}`` (a
    request from another host): the references, and where a budget stopped the walk."""
    compiled = {
        str(name): ([str(g) for g in spec[0]], re.compile(str(spec[1]), int(spec[2])))
        for name, spec in services.items()
    }
    allowance = Allowance(time.monotonic() + seconds, max_entries)
    found = [list(ref) for ref in references(compiled, allowance)]
    return {"references": found, "stopped": allowance.stopped}
