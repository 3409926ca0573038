"""The renderer of a preflight check: each problem on a ``PROBLEM:`` line, then the verdict
with what was checked (``render_check_text``).

Pure: it reads only the report it is given and the map's name. Each problem (which may quote
a path, a link target or a program found on this host) passes through ``escape.printable``.
"""

from __future__ import annotations

from certbot_fanout.check import CheckReport
from certbot_fanout.escape import printable
from certbot_fanout.render_common import plural


def render_check_text(report: CheckReport, source: str) -> str:
    """The problems found in the map ``source`` names, then how many, or that it checks out."""
    lines = [f"PROBLEM: {printable(str(problem))}" for problem in report.problems]
    source = printable(source)
    counts = {"consumer": report.consumers, "file": report.files, "endpoint": report.endpoints}
    scope = ", ".join(plural(n, word) for word, n in counts.items())
    scope += "" if report.probed else " (not probed)"
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s) in {source} ({scope})")
    else:
        lines.append(f"OK: {source} checks out ({scope})")
    return "\n".join(lines) + "\n"
