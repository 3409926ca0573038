"""The pure parts of .ci/fresh_root.py (what CI gives the fresh root, and how it reports).

The whole of it runs as CI itself (``./dev fresh``); these pin the choices that a run would only
show by failing much later: which of pip's settings name local directories, and the summary.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / ".ci" / "fresh_root.py"


@pytest.fixture(scope="module")
def fresh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fresh_root", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fresh_root"] = module
    spec.loader.exec_module(module)
    return module


def test_pip_settings_name_the_directories_to_bind(fresh: ModuleType, tmp_path: Path) -> None:
    index = tmp_path / "pypi"
    (index / "simple").mkdir(parents=True)
    (index / "files").mkdir()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2\n")
    values = [
        f"file://{index}/simple/",  # a PEP 503 index: its files are beside "simple"
        f"{wheels} https://pypi.example/simple",
        str(constraints),
        str(tmp_path / "missing"),
        "relative/dir",
        "180",
    ]
    assert fresh.local_paths(values) == [index, wheels, constraints]


def test_pip_values_come_from_files_and_the_environment(
    fresh: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /srv/wheels\n[install]\nconstraint = /etc/c.txt\n")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    values = fresh.pip_values([conf])
    assert {"/srv/wheels", "/etc/c.txt", "/etc/ssl/certs/ca-certificates.crt"} <= set(values)


def test_the_summary_says_each_command_and_which_did_not_finish(fresh: ModuleType) -> None:
    lines = ["noise", "@@ demo 0 13.4", "more", "@@ test 1 485.2"]
    assert fresh.summary(lines) == (
        "`./dev demo` passed in 13.4 s; `./dev test` failed with exit 1 in 485.2 s"
    )
    assert fresh.summary(["@@ demo 0 13.4"]) == (
        "`./dev demo` passed in 13.4 s; `./dev test` did not finish"
    )


@pytest.mark.parametrize(
    ("line", "closing"),
    [
        ("================== 8 failed, 1267 passed in 426.78s (0:07:06) ==================", True),
        ("=========== 1275 passed in 401.02s (0:06:41) ===========", True),
        ("==== 1 passed, 2 errors in 3.10s ====", True),
        ("=========================== short test summary info ============================", False),
        ("==> pytest: the whole suite", False),
    ],
)
def test_the_suite_closing_line_is_recognised(fresh: ModuleType, line: str, closing: bool) -> None:
    assert bool(fresh.PYTEST_CLOSING.match(line)) is closing


REAPER_CHECK = """
import ctypes, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import fresh_root
# As PID 1 in the fresh root: orphans are reparented here.
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
reaper = fresh_root.Reaper()
reaper.start()
proc = subprocess.Popen(["sh", "-c", "sleep 0.2 & echo $!; exit 7"], stdout=subprocess.PIPE)
orphan = int(proc.stdout.readline())
assert reaper.wait_for(proc) == 7 and proc.returncode == 7
deadline = time.monotonic() + 5
while os.path.exists(f"/proc/{orphan}"):  # a zombie until someone reaps it
    assert time.monotonic() < deadline, open(f"/proc/{orphan}/stat").read()
    time.sleep(0.05)
print("reaped")
"""


def test_pid_1_reaps_the_orphans_it_adopts_and_keeps_its_own_childs_exit_code() -> None:
    # In the fresh root this script is PID 1: the old process of a server a test's reload
    # restarted is adopted by it, and left unreaped it is a zombie that `kill -0` still finds
    # (the keystore test's reload then waited for it for ever).
    done = subprocess.run(
        [sys.executable, "-c", REAPER_CHECK, str(SCRIPT.parent)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout == "reaped\n", done.stderr
