"""contrib/systemd: the status timer verifies clean and runs a command the CLI accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certbot_fanout.cli import build_parser

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
SERVICE = UNITS / "certbot-fanout-status.service"
TIMER = UNITS / "certbot-fanout-status.timer"


def exec_start() -> list[str]:
    line = next(x for x in SERVICE.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_service_runs_status_repair_with_metrics() -> None:
    argv = exec_start()
    assert argv[0] == "/usr/bin/certbot-fanout"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.repair) == ("status", True)
    assert args.prometheus.startswith("/var/lib/prometheus/node-exporter/")
    assert "SuccessExitStatus=1" in SERVICE.read_text(), "a WARNING does not fail the unit"


def test_the_timer_fires_twice_a_day_with_a_random_delay() -> None:
    text = TIMER.read_text()
    assert "OnCalendar=*-*-* 00,12:00:00" in text
    assert "RandomizedDelaySec=" in text and "Persistent=true" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # The units name /usr/bin/certbot-fanout, where the packages install it; verify them with the
    # certbot-fanout under test in its place (verify checks that ExecStart is executable).
    venv_bin = Path(sys.executable).with_name("certbot-fanout")
    binary = str(venv_bin) if venv_bin.exists() else (shutil.which("certbot-fanout") or "")
    for unit in (SERVICE, TIMER):
        text = unit.read_text().replace("/usr/bin/certbot-fanout", binary)
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", SERVICE.name, TIMER.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
