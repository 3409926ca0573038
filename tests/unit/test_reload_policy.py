"""The reload decision (deploy.why_reload), the product's core policy, as a table.

Each row is one consumer's situation after its files were placed: what changed, what it has
(files, endpoints, a reload command), the options of the run, and, once asked, what its
endpoints served after the settle probe. The decision is the next step and the words a
deploy's output gives as the reason.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from certbot_fanout.deploy import ReloadFacts, ReloadReason, Step, why_reload

# A consumer with files, endpoints and a reload command, nothing changed, nothing forced.
BASE: dict[str, Any] = {
    "files_changed": False,
    "has_files": True,
    "has_endpoints": True,
    "has_reload": True,
}
NOT_SERVING = "not serving the current certificate"

TABLE: list[tuple[str, dict[str, Any], Step, str]] = [
    # id, facts beyond BASE, the step, the reason as shown
    ("forced", {"force": True, "files_changed": True}, Step.RELOAD, "forced"),
    ("forced, dry run", {"force": True, "dry_run": True}, Step.RELOAD, "forced"),
    ("forced without endpoints", {"force": True, "has_endpoints": False}, Step.RELOAD, "forced"),
    ("forced over a stale endpoint", {"force": True, "stale": ("a:443",)}, Step.RELOAD, "forced"),
    ("files changed", {"files_changed": True}, Step.RELOAD, "files changed"),
    ("files changed, dry run", {"files_changed": True, "dry_run": True}, Step.RELOAD,
     "files changed"),
    ("files changed, no reload command", {"files_changed": True, "has_reload": False},
     Step.RELOAD, "files changed"),
    ("files changed, interrupted", {"files_changed": True, "interrupted": True}, Step.RELOAD,
     "files changed"),
    ("current files: ask the endpoints first", {}, Step.SETTLE, ""),
    ("current files, interrupted: the endpoints decide", {"interrupted": True}, Step.SETTLE, ""),
    ("current files, endpoints all current", {"stale": ()}, Step.CURRENT, ""),
    ("current files, endpoints current, the process sees an old copy",
     {"stale": (), "stale_view": True}, Step.RELOAD, "its process reads an old copy of a file"),
    ("current files, one endpoint stale", {"stale": ("127.0.0.1:8443",)}, Step.RELOAD,
     f"127.0.0.1:8443 {NOT_SERVING}"),
    ("current files, two stale: the first is named", {"stale": ("b:1", "a:2")}, Step.RELOAD,
     f"b:1 {NOT_SERVING}"),
    ("current files, dry run: no probe", {"dry_run": True}, Step.VERIFY, ""),
    ("current files, no reload command: nothing to repair with", {"has_reload": False},
     Step.VERIFY, ""),
    ("no files, endpoints: ask them", {"has_files": False}, Step.SETTLE, ""),
    ("no files, endpoints stale", {"has_files": False, "stale": ("x:25",)}, Step.RELOAD,
     f"x:25 {NOT_SERVING}"),
    ("no files, endpoints current", {"has_files": False, "stale": ()}, Step.CURRENT, ""),
    ("no files, no endpoints: the renewal is the change", {"has_files": False,
     "has_endpoints": False}, Step.RELOAD, "no files of its own"),
    ("no files, no endpoints, dry run", {"has_files": False, "has_endpoints": False,
     "dry_run": True}, Step.RELOAD, "no files of its own"),
    ("no files, no endpoints, no reload command", {"has_files": False, "has_endpoints": False,
     "has_reload": False}, Step.RELOAD, "no files of its own"),
    ("no files, no endpoints, interrupted", {"has_files": False, "has_endpoints": False,
     "interrupted": True}, Step.RELOAD, "no files of its own"),
    ("current files, no endpoints", {"has_endpoints": False}, Step.VERIFY, ""),
    ("current files, no endpoints, interrupted", {"has_endpoints": False, "interrupted": True},
     Step.RELOAD, "the last run was interrupted"),
    ("current files, no endpoints, interrupted, dry run", {"has_endpoints": False,
     "interrupted": True, "dry_run": True}, Step.RELOAD, "the last run was interrupted"),
    ("current files, no endpoints, interrupted, no reload command", {"has_endpoints": False,
     "interrupted": True, "has_reload": False}, Step.RELOAD, "the last run was interrupted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "step", "text"),
    [pytest.param(facts, step, text, id=name) for name, facts, step, text in TABLE],
)
def test_the_reload_decision(facts: dict[str, Any], step: Step, text: str) -> None:
    decision = why_reload(ReloadFacts(**{**BASE, **facts}))
    assert decision.step is step
    assert decision.text == text
    assert (decision.reason is not None) == (step is Step.RELOAD)


def test_every_reason_reads_as_the_output_has_always_said() -> None:
    assert {r: r.value for r in ReloadReason} == {
        ReloadReason.FORCED: "forced",
        ReloadReason.FILES_CHANGED: "files changed",
        ReloadReason.NO_FILES: "no files of its own",
        ReloadReason.INTERRUPTED: "the last run was interrupted",
        ReloadReason.NOT_SERVING: NOT_SERVING,
        ReloadReason.STALE_VIEW: "its process reads an old copy of a file",
    }


FLAGS = ("files_changed", "has_files", "has_endpoints", "has_reload", "force", "dry_run",
         "interrupted")  # fmt: skip
EVERY = [
    ReloadFacts(**dict(zip(FLAGS, bools, strict=True)), stale=stale)
    for bools in itertools.product((False, True), repeat=len(FLAGS))
    for stale in (None, (), ("a:1",))
]


def _id(facts: ReloadFacts) -> str:
    return "-".join(f for f in FLAGS if getattr(facts, f)) + f"-stale={facts.stale}"


@pytest.mark.parametrize("facts", EVERY, ids=_id)
def test_what_holds_in_every_situation(facts: ReloadFacts) -> None:
    decision = why_reload(facts)
    assert decision == why_reload(facts), "pure: the same facts, the same decision"
    if facts.force:
        assert decision.reason is ReloadReason.FORCED
    elif facts.files_changed:
        assert decision.reason is ReloadReason.FILES_CHANGED
    if facts.dry_run:
        assert decision.step in (Step.RELOAD, Step.VERIFY), "a dry run probes nothing"
    if decision.step in (Step.SETTLE, Step.CURRENT) or decision.reason is ReloadReason.NOT_SERVING:
        # Only endpoints can show what is served, and only a reload command can repair it.
        assert facts.has_endpoints and facts.has_reload and not facts.dry_run
    if decision.step is Step.SETTLE:
        assert facts.stale is None
    if facts.has_endpoints and not facts.force and not facts.files_changed:
        assert decision.reason is None or decision.reason is ReloadReason.NOT_SERVING
    assert (decision.reason is None) == (decision.text == "")
