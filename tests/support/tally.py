"""Counts for RELIABILITY.md: what the hardening tests tried and what they measured.

A hardening test calls ``record(area, cases=..., <measured>=...)`` with the figures it measured
*before* asserting on them. When ``$CERTBOT_FANOUT_TALLY`` names a file (bench/reliability.py
sets it), each call appends one JSON line there; otherwise it does nothing. The report sums
every count per area, except the ``*_seconds`` figures, of which it keeps the largest.
"""

from __future__ import annotations

import fcntl
import json
import os

TALLY_ENV = "CERTBOT_FANOUT_TALLY"


def record(area: str, **counts: float) -> None:
    """Add ``counts`` to ``area``'s line of the reliability report."""
    path = os.environ.get(TALLY_ENV)
    if not path:
        return
    line = json.dumps(
        {
            "area": area,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "counts": counts,
        },
        sort_keys=True,
    )
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # tests may record from worker threads or processes
        f.write(line + "\n")
