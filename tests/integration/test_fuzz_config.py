"""A bounded run of the atheris harness fuzz/fuzz_config.py: 30 s of coverage-guided inputs to
the map loader, seeded with the malformed-map corpus and a few valid maps; any exception but a
ConfigError is a crash, and a crash fails this test with the input that caused it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.tally import record

ROOT = Path(__file__).resolve().parent.parent.parent
HARNESS = ROOT / "fuzz" / "fuzz_config.py"
SEEDS = [ROOT / "fuzz" / "seeds", ROOT / "tests" / "corpus" / "malformed_maps"]
SECONDS = 30
AREA = "fuzz (atheris, CI run)"


def test_fuzzing_the_config_loader_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test extra")
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=2048",
            "-max_len=65536",
            "-timeout=10",
            "-print_final_stats=1",
            f"-dict={ROOT / 'fuzz' / 'config.dict'}",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
            *map(str, SEEDS),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        cwd=ROOT,
    )
    seconds = time.monotonic() - started
    log = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    executions = int(runs[1]) if runs else int(done[1]) if done else 0
    coverage = re.findall(r"\bcov: (\d+)", log)
    record(
        AREA,
        cases=executions,
        crashes=len(crashes),
        coverage_edges=int(coverage[-1]) if coverage else 0,
        max_seconds=seconds,
    )
    assert proc.returncode == 0, log[-4000:]
    assert crashes == [], (crashes, log[-4000:])
    assert executions > 1000, log[-2000:]
