"""Fail when a function of the package grows too branchy or a module too hard to maintain.

The limits of the house (docs/development.md): radon's cyclomatic complexity under 20 for every
function and method (rank C at most), and a maintainability index of rank A or B for every
module. Run by ``./dev test``; by hand: ``.venv/bin/python .ci/complexity.py [PATH...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from radon.complexity import cc_rank, cc_visit
from radon.metrics import mi_rank, mi_visit

MAX_COMPLEXITY = 19  # rank C ends at 20; the house keeps every function under it
WORST_MODULE_RANK = "B"


def problems(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        code = path.read_text()
        for block in cc_visit(code):
            if block.complexity > MAX_COMPLEXITY:
                found.append(
                    f"{path}:{block.lineno}: {block.fullname} has cyclomatic complexity "
                    f"{block.complexity} (rank {cc_rank(block.complexity)}); "
                    f"the limit is {MAX_COMPLEXITY}"
                )
        mi = mi_visit(code, multi=True)
        if mi_rank(mi) > WORST_MODULE_RANK:
            found.append(
                f"{path}: maintainability index {mi:.1f} (rank {mi_rank(mi)}); "
                f"the limit is rank {WORST_MODULE_RANK}"
            )
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("certbot_fanout")]
    paths = sorted(p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py")))
    if not paths:
        print(f"complexity: no Python files under {' '.join(map(str, roots))}", file=sys.stderr)
        return 2
    found = problems(paths)
    for line in found:
        print(line, file=sys.stderr)
    print(f"complexity: {len(paths)} modules, {len(found)} over the limits", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
