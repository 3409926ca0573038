"""No exposure instant: strace shows how every file that receives key bytes was created.

A real deploy runs under ``strace -ff -y`` with umask 000. For each file that receives private
key bytes, the trace must show: created (O_CREAT) without group or other permission bits; given
its final owner and mode (fchown, fchmod) before the first key byte is written; renamed into
place only after that. A naive placer traced the same way is the control: the parser must see
its exposure, or the check proves nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.lineages import LineageFactory
from tests.support.tally import record

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("strace") is None,
    reason="needs root and strace (apt-get install strace)",
)

AREA = "exposure (strace)"
NAME = "exposure.test"
KEY_MARKER = "PRIVATE KEY"
SYSCALLS = (
    "open,openat,openat2,creat,fchmod,fchown,fchmodat,fchownat,write,rename,renameat,renameat2"
)

# One trace file a thread (no interleaved lines), fds shown with their paths, whole writes.
STRACE = ("strace", "-ff", "-qq", "-y", "-s", "8192", "-e", f"trace={SYSCALLS}")
# openat(AT_FDCWD</x>, "name", O_WRONLY|O_CREAT|..., 0600) = 5</x/name>
_OPEN = re.compile(
    r'^(open|openat|creat)\((?:[^,]+, )?"([^"]*)", ([A-Z_|]+)(?:, (0\d*))?\) = (\d+)<([^>]*)>'
)
_FD_CALL = re.compile(r"^(fchown|fchmod|write)\((\d+)<([^>]*)>, (.*)\) = (-?\d+)")
_RENAME = re.compile(
    r'^(rename|renameat2?)\((?:\d+<([^>]*)>, )?"([^"]*)", (?:\d+<([^>]*)>, )?"([^"]*)"'
)


@dataclass
class Created:
    """What the trace shows of one file created during the run."""

    path: str
    mode: int
    events: list[str] = field(default_factory=list)  # "chown", "chmod", "key", "write", "rename"


def parse(trace_dir: Path) -> dict[str, Created]:
    """Files created with O_CREAT, by path (per thread trace file, in order)."""
    created: dict[str, Created] = {}
    for trace in sorted(trace_dir.iterdir()):
        for line in trace.read_text(errors="replace").splitlines():
            if m := _OPEN.match(line):
                call, _, flags, mode, _, path = m.groups()
                if "O_CREAT" in flags or call == "creat":
                    created[path] = Created(path, int(mode or "0", 8))
            elif m := _FD_CALL.match(line):
                call, _, path, args, result = m.groups()
                if path in created and int(result) >= 0:
                    if call == "write":
                        created[path].events.append("key" if KEY_MARKER in args else "write")
                    else:
                        created[path].events.append(call[1:])
            elif m := _RENAME.match(line):
                _, src_dir, src, _, _ = m.groups()
                source = src if src.startswith("/") else f"{src_dir}/{src}"
                if source in created:
                    created[source].events.append("rename")
    return created


def exposures(created: dict[str, Created]) -> list[str]:
    """Each way a file that received key bytes could be read by someone it should not."""
    found = []
    for c in created.values():
        if "key" not in c.events:
            continue
        first_key = c.events.index("key")
        if c.mode & 0o077:
            found.append(f"{c.path}: created with mode {c.mode:04o}")
        if "chown" not in c.events[:first_key]:
            found.append(f"{c.path}: key bytes written before its owner was set")
        if "chmod" not in c.events[:first_key]:
            found.append(f"{c.path}: key bytes written before its mode was set")
        if "rename" in c.events and c.events.index("rename") < first_key:
            found.append(f"{c.path}: renamed into place before it was complete")
    return found


def traced(argv: list[str], trace_dir: Path) -> subprocess.CompletedProcess[str]:
    trace_dir.mkdir()
    return subprocess.run(
        [*STRACE, "-o", str(trace_dir / "t"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        umask=0,
    )


def test_every_key_file_is_created_private_and_owned_before_a_key_byte(
    public_tmp: Path, lineages: LineageFactory
) -> None:
    live, _ = lineages.issue(NAME)
    tls = public_tmp / "tls"
    tls.mkdir()
    config = public_tmp / "consumers.yaml"
    config.write_text(
        "version: 1\nconsumers:\n"
        f"  web:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tls}/web.crt, content: fullchain}}\n"
        f"      - {{path: {tls}/web.key, content: privkey}}\n"
        f"  mail:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tls}/mail.key, content: privkey, owner: nobody, group: nogroup,"
        " mode: '0640'}\n"
        f"  proxy:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tls}/proxy.pem, content: [fullchain, privkey], owner: nobody}}\n"
        f"  db:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tls}/db.key, content: privkey, owner: nobody, mode: '0600'}}\n"
        f"  linked:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tls}/linked.key, content: privkey, link: true}}\n"
    )
    argv = [sys.executable, "-m", "certbot_fanout", "deploy", "--config", str(config)]
    argv += ["--lineage", str(live), "--lock-file", str(public_tmp / "lock")]
    argv += ["--state-file", str(public_tmp / "state.json")]
    key_files = ("web.key", "mail.key", "proxy.pem", "db.key")

    runs = []
    for round_ in range(3):  # first placement, a renewal, and a renewal over existing files
        if round_:
            lineages.renew(NAME)
        result = traced(argv, public_tmp / f"trace{round_}")
        assert result.returncode == 0, result.stderr
        runs.append(parse(public_tmp / f"trace{round_}"))

    keyed = [c for run in runs for c in run.values() if "key" in c.events]
    found = [problem for run in runs for problem in exposures(run)]
    tmp_names = {os.path.basename(c.path).split(".fanout-")[0].lstrip(".") for c in keyed}
    record(AREA, cases=len(keyed), exposure_instants=len(found))
    assert found == []
    assert tmp_names == set(key_files), "the trace missed a key file; the check proves nothing"
    assert len(keyed) == 3 * len(key_files)
    for c in keyed:
        assert "rename" in c.events, f"{c.path} never renamed into place"
    assert all((tls / name).stat().st_mode & 0o7 == 0 for name in key_files)


NAIVE = """
import os, sys
path = sys.argv[1]
with open(path, "w") as f:      # what a hand-written hook does: create, write, then fix up
    f.write(open(sys.argv[2]).read())
os.chown(path, 65534, 65534)
os.chmod(path, 0o600)
"""


def test_the_trace_check_sees_a_naive_placer_expose_the_key(
    public_tmp: Path, lineages: LineageFactory
) -> None:
    live, _ = lineages.issue(NAME)
    target = public_tmp / "naive.key"
    result = traced(
        [sys.executable, "-c", NAIVE, str(target), str(live / "privkey.pem")],
        public_tmp / "trace",
    )
    assert result.returncode == 0, result.stderr
    found = exposures(parse(public_tmp / "trace"))
    assert f"{target}: created with mode 0666" in found
    assert f"{target}: key bytes written before its owner was set" in found
