"""The CPU a benchmark's simulated targets use, apart from the controller's: a cgroup-v1
cpuacct group that each test host's sshd is moved into (its sessions and agents inherit it).

Stand-alone: no project imports.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class TargetCpu:
    """The CPU the simulated targets use (every sshd, with its sessions and agents), apart
    from the controller's: a cgroup-v1 cpuacct group each host's sshd is moved into (its
    children inherit it). Disabled (None readings) where there is no cpuacct hierarchy."""

    def __init__(self) -> None:
        self.group: Path | None = None
        if CPUACCT.is_dir() and os.access(CPUACCT, os.W_OK):
            self.group = CPUACCT / f"certbot-fanout-bench-targets.{os.getpid()}"
            self.group.mkdir()

    def add(self, pid: int) -> None:
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(f"{pid}\n")

    def seconds(self) -> float | None:
        if self.group is None:
            return None
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        """Move what is left to the root group, then remove the group."""
        if self.group is None:
            return
        for pid in (self.group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # already gone
                (CPUACCT / "cgroup.procs").write_text(f"{pid}\n")
        for _ in range(50):
            try:
                self.group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
