"""The deploy hook's start-up, before and after a change: wall time and imported modules.

Runs the bare hook (``certbot-fanout`` with ``$RENEWED_LINEAGE`` set, as Certbot runs a deploy
hook) from two trees of this repository: a base revision (checked out into a temporary git
worktree) and the working tree. The map has one plain consumer (one file, no reload, no
endpoint), so what is timed is start-up, imports, the map, the lineage and one placement. The
runs alternate between the trees, so drift on the machine hits both alike, and both read their
bytecode from one cache the run makes (so neither pays for compiling, whatever the trees hold).

    .venv/bin/python bench/hook_startup.py --base 62fd83d            # 40 runs of each
    .venv/bin/python bench/hook_startup.py --base 62fd83d --runs 100

Prints the median and 90th percentile of each, their difference, and the modules one imports
that the other does not. Exits 1 if the working tree imports a module the base does not.
Needs no root and no network; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from certbot_fanout._pki import ThrowawayCA, write_lineage  # noqa: E402

RUNNER = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from certbot_fanout.cli import main; sys.exit(main())"
)


def hook(
    tree: Path, env: dict[str, str], lock: Path, importtime: bool = False
) -> tuple[float, str]:
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", RUNNER]
    argv += [str(tree), "--lock-file", str(lock)]
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the hook failed from {tree}:\n{result.stdout}{result.stderr}")
    return seconds, result.stderr


def modules(importtime_stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanout-startup-") as tmp:
        work = Path(tmp)
        base = work / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.base],
            check=True,
        )
        try:
            return compare(work, base, args.runs)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False
            )


def compare(work: Path, base: Path, runs: int) -> int:
    live = write_lineage(str(work / "le"), "startup.test", ThrowawayCA().issue(["startup.test"]))
    placed = work / "placed.pem"
    config = work / "consumers.yaml"
    config.write_text(
        "version: 1\nconsumers:\n  svc:\n    certificate: startup.test\n    files:\n"
        f"      - {{path: {placed}, content: fullchain, owner: {os.getuid()}, "
        f"group: {os.getgid()}}}\n"
    )
    env = dict(os.environ, RENEWED_LINEAGE=live, CERTBOT_FANOUT_CONFIG=str(config))
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    # Both trees read bytecode from one cache of this run's own, written by the warm-up run: a
    # tree with a __pycache__ of its own against one without (or PYTHONDONTWRITEBYTECODE, set
    # on some machines) would time the compiler, about 55 ms here, not the start-up.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    trees = {"base": base, "this tree": REPO}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for tree in trees.values():  # warm the page cache and the bytecode
        hook(tree, env, work / "lock")
    order = list(trees.items())
    for _ in range(runs):
        order.reverse()  # each tree goes first every other round
        for name, tree in order:
            placed.unlink(missing_ok=True)  # each run places the file
            times[name].append(hook(tree, env, work / "lock")[0])
    seen = {name: modules(hook(tree, env, work / "lock", True)[1]) for name, tree in trees.items()}
    print(f"bare deploy hook, one consumer with one file; {runs} runs of each, alternating")
    print(f"{'tree':<10} {'median ms':>10} {'p90 ms':>8} {'modules':>8}")
    for name in trees:
        ordered = sorted(times[name])
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        median = statistics.median(ordered)
        print(f"{name:<10} {median * 1000:>10.1f} {p90 * 1000:>8.1f} {len(seen[name]):>8}")
    delta = statistics.median(times["this tree"]) - statistics.median(times["base"])
    print(f"difference of the medians: {delta * 1000:+.1f} ms")
    added = sorted(seen["this tree"] - seen["base"])
    gone = sorted(seen["base"] - seen["this tree"])
    print(f"imported now, not before: {', '.join(added) or 'none'}")
    print(f"imported before, not now: {', '.join(gone) or 'none'}")
    return 1 if added else 0


if __name__ == "__main__":
    sys.exit(main())
