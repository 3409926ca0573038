"""Run the hardening tests and print what they tried and what held: the figures of RELIABILITY.md.

    .venv/bin/python bench/reliability.py [--markdown]     (or: ./dev reliability)

Each hardening test records what it measured through tests/support/tally.py; this script runs
them (as root, with every daemon they need installed: ./dev reliability sees to that) with
Hypothesis's "ci" profile, sums the records per area and prints one table. It exits non-zero
if a test failed or any count that must be zero (tracebacks, torn files, writes through links,
...) is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = (
    "tests/unit/test_malformed_maps.py",
    "tests/unit/test_generated_maps.py",
    "tests/integration/test_fuzz_config.py",
    "tests/unit/test_hostile_peers.py",
    "tests/unit/test_hostile_users.py",
    "tests/integration/test_exposure.py",
    "tests/integration/test_crashes.py",
    "tests/integration/test_faults.py",
    "tests/unit/test_trust.py",
    "tests/unit/test_acl.py",
    "tests/unit/test_isolation.py",
    "tests/unit/test_lock.py",
    "tests/unit/test_probe.py",
    "tests/unit/test_escaping.py",
    "tests/integration/test_discover_bounds.py",
    "tests/unit/test_write_map.py",
    "tests/integration/test_write_map.py",
)
# Counts that must be zero: what each protection exists to prevent.
MUST_BE_ZERO = (
    "tracebacks",
    "files_touched",
    "crashes",
    "over_timeout",
    "writes_through_links",
    "writes_outside",
    "hard_link_targets_changed",
    "exposure_instants",
    "torn_files",
    "temp_files_after_repair",
    "repair_failures",
    "failures",
    "unparseable",
    "unparseable_state",
    "previous_files_lost",
    "others_affected",
    "leftover_processes",
    "temp_files_left",
    "reloads_lost",
    "commands_run_from_writable",
    "untrusted_accepted",
    "acl_readable_keys",
    "imports_from_cwd",
    "runs_blocked_by_others",
    "links_followed",
    "raw_control_chars",
    "discover_hangs",
    "false_nothing_found",
    "warnings_leaked",
    "commands_from_names",
    "unisolated_wrappers",
    "unisolated_spawns",
    "unverified",
    "weaker_retries_without_cause",
    "verdicts_changed",
    "forged_lines",
    "not_unknown",
    "maps_overwritten",
    "half_maps_left",
    "first_maps_refused",
)


def aggregate(lines: list[str]) -> dict[str, dict[str, float]]:
    """Per area: counts summed, ``*_seconds`` and ``max_*`` figures kept at their largest."""
    areas: dict[str, dict[str, float]] = defaultdict(dict)
    tests: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        entry = json.loads(line)
        area = areas[entry["area"]]
        tests[entry["area"]].add(entry["test"])
        for key, value in entry["counts"].items():
            if key.endswith("_seconds") or key.startswith("max_"):
                area[key] = max(area.get(key, value), value)
            else:
                area[key] = area.get(key, 0) + value
    for name, area in areas.items():
        area["tests"] = len(tests[name])
    return dict(areas)


def _figure(value: float) -> str:
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 1 else f"{value:,.2f}"


def table(areas: dict[str, dict[str, float]]) -> str:
    rows = [
        "| area | tests | cases | must be zero | other figures |",
        "|---|---:|---:|---|---|",
    ]
    for name in sorted(areas):
        area = areas[name]
        zero = ", ".join(f"{k} {_figure(v)}" for k, v in sorted(area.items()) if k in MUST_BE_ZERO)
        other = ", ".join(
            f"{k} {_figure(v)}"
            for k, v in sorted(area.items())
            if k not in MUST_BE_ZERO and k not in ("tests", "cases")
        )
        rows.append(
            f"| {name} | {_figure(area['tests'])} | {_figure(area.get('cases', 0))} "
            f"| {zero or '-'} | {other or '-'} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally = Path(tmp) / "tally.jsonl"
        tally.touch()
        env = dict(os.environ, CERTBOT_FANOUT_TALLY=str(tally))
        env["CERTBOT_FANOUT_REQUIRE_INTEGRATION"] = "1"
        start = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-q", "--hypothesis-profile=ci", *TESTS]
        result = subprocess.run([*command, *args.pytest_args], cwd=ROOT, env=env)
        elapsed = time.monotonic() - start
        areas = aggregate(tally.read_text().splitlines())
    print()
    print(table(areas))
    print(f"\n{len(TESTS)} test files, {elapsed:.0f} s wall; pytest exit {result.returncode}")
    nonzero = [
        f"{name}: {key} {value:g}"
        for name, area in areas.items()
        for key, value in area.items()
        if key in MUST_BE_ZERO and value
    ]
    for problem in nonzero:
        print(f"NOT ZERO: {problem}", file=sys.stderr)
    return result.returncode or (1 if nonzero or not areas else 0)


if __name__ == "__main__":
    sys.exit(main())
