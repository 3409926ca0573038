#!/bin/sh
# The no-exposure unit test (tests/unit/test_files.py -k umask: the real placer and its naive
# control under an inotify watcher) RUNS times in a row while two busy loops take the machine's
# two cores, with pytest's temp dir on a tmpfs, where a write and fsync take no time and a
# watcher that races the scheduler misses the most. Prints how many runs passed.
#   bench/exposure_under_load.sh [RUNS] [BASETEMP]     defaults: 20, a dir under /dev/shm
# Run from the checkout, as root (the test chowns to nobody), after ./dev test has made .venv.
set -eu
cd "$(dirname "$0")/.."
runs="${1:-20}"
base="${2:-$(mktemp -d /dev/shm/certbot-fanout-exposure.XXXXXX)}"
logs="$(mktemp -d)"
sh -c 'while :; do :; done' & hog1=$!
sh -c 'while :; do :; done' & hog2=$!
trap 'kill "$hog1" "$hog2" 2>/dev/null; rm -rf "$base" "$logs"' EXIT INT TERM
passed=0 failed=0 i=0
while [ "$i" -lt "$runs" ]; do
    i=$((i + 1))
    if .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$base/run$i" \
        tests/unit/test_files.py -k umask >"$logs/run$i.log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        grep -E '^E ' "$logs/run$i.log" | head -3 >&2
    fi
done
echo "exposure test under two busy loops: $passed passed, $failed failed of $runs runs"
[ "$failed" -eq 0 ]
