"""Every map in tests/corpus/malformed_maps/ through the real command line.

Each file holds one defect. ``expected.tsv`` gives, for each, a regex the error must match and
the line:column it must name (``-`` where no place applies; columns count in the file as
stored). In a file, ``@DEST@`` stands for a fresh, empty destination directory and
``@CERTBOT@`` for certbot's config dir (``--config-dir``, holding a real lineage), so that a
map the loader wrongly accepted would really write there. For every file: exit 2 from
``deploy`` (and the "map is not valid" answer from ``check``), the problem and its place on
stderr, no traceback, nothing written anywhere, within 5 seconds. Huge documents are made here
at run time, not committed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.cli import main
from certbot_fanout.config import MAX_CONFIG_BYTES
from tests.support.tally import record

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "malformed_maps"
MANIFEST = CORPUS / "expected.tsv"
AREA = "malformed maps (corpus)"
TIME_LIMIT = 5.0
CERT_NAME = "example.org"


@dataclass(frozen=True)
class Case:
    name: str
    regex: str
    location: str  # "LINE:COL" in the stored file, or "-"


def _manifest() -> list[Case]:
    cases = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, regex, location = line.split("\t")
        cases.append(Case(name, regex, location))
    return cases


CASES = _manifest()


@dataclass
class World:
    """Where a run could write: certbot's dir (with a lineage) and the destination."""

    root: Path
    certbot_dir: Path
    dest: Path
    config: Path

    def substitutions(self) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"@DEST@", bytes(self.dest)), (b"@CERTBOT@", bytes(self.certbot_dir)))

    def write_map(self, raw: bytes) -> None:
        for placeholder, value in self.substitutions():
            raw = raw.replace(placeholder, value)
        self.config.write_bytes(raw)

    def expected_location(self, raw: bytes, location: str) -> str:
        """``location`` in the file as written: columns after a placeholder move right."""
        line, column = (int(n) for n in location.split(":"))
        lines = raw.split(b"\n")
        text = lines[line - 1].decode("utf-8", "replace") if line <= len(lines) else ""
        shift = 0
        for placeholder, value in self.substitutions():
            word = placeholder.decode()
            at = text.find(word)
            while 0 <= at < column - 1:
                shift += len(value.decode()) - len(word)
                at = text.find(word, at + 1)
        return f"{line}:{column + shift}"

    def deploy_argv(self) -> list[str]:
        return [
            "deploy",
            "--config",
            str(self.config),
            "--cert-name",
            CERT_NAME,
            "--config-dir",
            str(self.certbot_dir),
            "--lock-file",
            str(self.root / "run" / "lock"),
            "--state-file",
            str(self.root / "run" / "state.json"),
        ]

    def check_argv(self) -> list[str]:
        return [
            "check",
            "--no-probe",
            "--config",
            str(self.config),
            "--config-dir",
            str(self.certbot_dir),
        ]


Snapshot = dict[str, tuple[str, int, bytes]]


def snapshot(top: Path, skip: Path | None = None) -> Snapshot:
    """Every entry under ``top``: kind, mode (with owner) and content or link target."""
    seen: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path == skip:
                continue
            st = path.lstat()
            mode = st.st_mode | (st.st_uid << 32) | (st.st_gid << 48)
            if path.is_symlink():
                seen[str(path)] = ("link", mode, os.readlink(path).encode())
            elif path.is_dir():
                seen[str(path)] = ("dir", mode, b"")
            else:
                seen[str(path)] = ("file", mode, path.read_bytes())
    return seen


def _touched(before: Snapshot, after: Snapshot) -> int:
    return sum(before.get(k) != after.get(k) for k in before.keys() | after.keys())


@pytest.fixture(scope="module")
def certbot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("certbot")
    issued = ThrowawayCA("malformed maps").issue([CERT_NAME])
    write_lineage(str(top / "letsencrypt"), CERT_NAME, issued)
    return top / "letsencrypt"


@pytest.fixture
def world(tmp_path: Path, certbot_dir: Path) -> World:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "run").mkdir()
    return World(tmp_path, certbot_dir, dest, tmp_path / "consumers.yaml")


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    touched: int


class Runaway(BaseException):
    """Raised into a run that outlived the watchdog; not an Exception, so main() cannot
    swallow it."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Runaway(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(world: World, argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    before = snapshot(world.root, skip=world.config), snapshot(world.certbot_dir)
    out = io.StringIO()
    capsys.readouterr()
    started = time.monotonic()
    with watchdog(2 * TIME_LIMIT):  # a runaway fails the test instead of hanging it
        code = main(argv, environ={}, stdout=out)
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    after = snapshot(world.root, skip=world.config), snapshot(world.certbot_dir)
    touched = _touched(before[0], after[0]) + _touched(before[1], after[1])
    return Outcome(code, out.getvalue() + captured.out, captured.err, seconds, touched)


def assert_rejected(world: World, outcome: Outcome, case: Case, raw: bytes) -> None:
    assert outcome.code == 2, (outcome.code, outcome.out, outcome.err)
    assert "Traceback" not in outcome.out + outcome.err
    assert outcome.touched == 0
    assert outcome.seconds < TIME_LIMIT
    assert outcome.err.startswith(f"certbot-fanout: error: {world.config}"), outcome.err
    if case.location == "-":
        assert outcome.err.startswith(f"certbot-fanout: error: {world.config}: "), outcome.err
    else:
        where = world.expected_location(raw, case.location)
        assert outcome.err.startswith(f"certbot-fanout: error: {world.config}:{where}: "), (
            where,
            outcome.err,
        )
    assert re.search(case.regex, outcome.err), (case.regex, outcome.err)


# -- the corpus and its manifest ---------------------------------------------------------------


def test_the_corpus_is_big_and_every_file_has_exactly_one_manifest_line() -> None:
    files = sorted(p.name for p in CORPUS.iterdir() if p.name != MANIFEST.name)
    listed = [c.name for c in CASES]
    record(AREA, corpus_files=len(files), manifest_lines=len(listed))
    assert len(files) >= 200
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert sorted(listed) == files
    for case in CASES:
        re.compile(case.regex)
        assert case.location == "-" or re.fullmatch(r"\d+:\d+", case.location), case


def test_the_corpus_files_are_small() -> None:
    sizes = {p.name: p.stat().st_size for p in CORPUS.iterdir()}
    assert max(sizes.values()) < 64 * 1024, max(sizes.items(), key=lambda kv: kv[1])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_map_is_refused_by_deploy_and_check(
    case: Case, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (CORPUS / case.name).read_bytes()
    world.write_map(raw)
    deploy = run_in_process(world, world.deploy_argv(), capsys)
    check = run_in_process(world, world.check_argv(), capsys)
    record(
        AREA,
        cases=1,
        tracebacks=sum("Traceback" in o.out + o.err for o in (deploy, check)),
        files_touched=deploy.touched + check.touched,
        max_seconds=max(deploy.seconds, check.seconds),
    )
    assert_rejected(world, deploy, case, raw)
    # `check` answers an invalid map with its own exit code (1: a problem found) and the same
    # message on stdout.
    assert check.code == 1, (check.out, check.err)
    assert "Traceback" not in check.out + check.err
    assert check.touched == 0
    assert check.seconds < TIME_LIMIT
    message = deploy.err.removeprefix("certbot-fanout: error: ").strip()
    assert f"PROBLEM: the map is not valid: {message}" in check.out


# -- huge documents, made here ---------------------------------------------------------------


def _consumers(count: int, start: int = 0) -> bytes:
    return b"".join(
        b"  c%d: {certificate: example.org, files: [{path: @DEST@/c%d.pem, content: cert}]}\n"
        % (i, i)
        for i in range(start, start + count)
    )


def _huge(kind: str) -> bytes:
    head = b"version: 1\nconsumers:\n"
    if kind == "50 MB of comments":
        return head + (b"# " + b"x" * 98 + b"\n") * (50 * 10**4)
    if kind == "a million consumers":
        return head + b"".join(b"  c%d: {certificate: example.org}\n" % i for i in range(10**6))
    if kind == "one byte over the limit":
        text = head + _consumers(100)
        return text + b"#" * (MAX_CONFIG_BYTES + 1 - len(text))
    if kind == "nodes past the bound, under the size limit":
        body = head + b"".join(b"  c%d: {certificate: example.org}\n" % i for i in range(25_000))
        assert len(body) < MAX_CONFIG_BYTES
        return body
    if kind == "a late syntax error, under the size limit":
        body = head + b"  web: {certificate: example.org, reload: [" + b"x, " * 330_000 + b"\n:"
        assert len(body) < MAX_CONFIG_BYTES
        return body
    if kind == "one long line, under the size limit":
        return (
            b"version: 1\nconsumers: {web: {certificate: example.org, notes: ["
            + b"x" * (MAX_CONFIG_BYTES - 100)
            + b"]}}\n"
        )
    raise AssertionError(kind)


HUGE = [
    ("50 MB of comments", rf"config file is larger than {MAX_CONFIG_BYTES} bytes", "-"),
    ("a million consumers", rf"config file is larger than {MAX_CONFIG_BYTES} bytes", "-"),
    ("one byte over the limit", rf"config file is larger than {MAX_CONFIG_BYTES} bytes", "-"),
    (
        "nodes past the bound, under the size limit",
        r"consumers(\.c\d+)?: the document expands to more than 20000 nodes",
        None,
    ),
    ("a late syntax error, under the size limit", r"YAML syntax error", "4:1"),
    (
        "one long line, under the size limit",
        r"consumers\.web\.notes: expected a string, got a list",
        "2:52",
    ),
]


@pytest.mark.parametrize(("kind", "regex", "location"), HUGE, ids=[h[0] for h in HUGE])
def test_huge_documents_are_refused_quickly(
    kind: str,
    regex: str,
    location: str | None,
    world: World,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = _huge(kind)
    world.write_map(raw)
    outcome = run_in_process(world, world.deploy_argv(), capsys)
    record(
        AREA,
        cases=1,
        huge_bytes=len(raw),
        tracebacks=int("Traceback" in outcome.out + outcome.err),
        files_touched=outcome.touched,
        max_seconds=outcome.seconds,
    )
    if location is None:  # somewhere inside: the place is checked to be one
        match = re.match(
            rf"certbot-fanout: error: {re.escape(str(world.config))}:(\d+):(\d+): ", outcome.err
        )
        assert match, outcome.err[:300]
        location = f"{match[1]}:{match[2]}"
    case = Case(kind, regex, location)
    assert_rejected(world, outcome, case, raw)


# -- the same at process level ---------------------------------------------------------------

# One from each kind of defect.
AS_PROCESSES = [
    "syntax-unclosed-flow-seq.yaml",
    "encoding-utf16le-bom.yaml",
    "encoding-latin1-in-value.yaml",
    "dupkey-file-path.yaml",
    "alias-merge-laughs.yaml",
    "schema-unknown-consumer-key-reloda.yaml",
    "path-certbot-archive.yaml",
    "mode-0o640-quoted.yaml",
    "endpoint-starttls-smpt.yaml",
    "preset-certificate-injects-keys.yaml",
]


def test_some_corpus_maps_as_real_processes(tmp_path: Path, certbot_dir: Path) -> None:
    by_name = {c.name: c for c in CASES}
    runs = []
    for name in AS_PROCESSES:
        case = by_name[name]
        top = tmp_path / name
        (top / "dest").mkdir(parents=True)
        (top / "run").mkdir()
        world = World(top, certbot_dir, top / "dest", top / "consumers.yaml")
        raw = (CORPUS / name).read_bytes()
        world.write_map(raw)
        before = snapshot(top, skip=world.config), snapshot(certbot_dir)
        env = {k: v for k, v in os.environ.items() if k != "RENEWED_LINEAGE"}
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "certbot_fanout", *world.deploy_argv()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        runs.append((case, world, raw, before, started, proc))
    outcomes = []
    for case, world, raw, before, started, proc in runs:
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - started
        after = snapshot(world.root, skip=world.config), snapshot(certbot_dir)
        touched = _touched(before[0], after[0]) + _touched(before[1], after[1])
        outcome = Outcome(proc.returncode, out.decode(), err.decode(), seconds, touched)
        outcomes.append((case, world, raw, outcome))
    record(
        AREA,
        processes=len(outcomes),
        tracebacks=sum("Traceback" in o.out + o.err for *_, o in outcomes),
        files_touched=sum(o.touched for *_, o in outcomes),
        max_seconds=max(o.seconds for *_, o in outcomes),
    )
    for case, world, raw, outcome in outcomes:
        assert_rejected(world, outcome, case, raw)
