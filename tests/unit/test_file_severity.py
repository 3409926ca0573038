"""status: how serious a file difference is follows from its kind, never from its words."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from certbot_fanout import files
from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.config import parse_config
from certbot_fanout.deploy import Effects, desired_file
from certbot_fanout.lineage import read_lineage
from certbot_fanout.status import FILE_SEVERITY, Level, StatusOptions, check_status, file_level

Kind = files.DifferenceKind
NAME = "severity.test"

# The table restated: a stale or missing copy is CRITICAL; a current copy with the wrong owner,
# group or mode is a WARNING; an extended ACL (a grant the map never made, which on a key lets
# others read it) is CRITICAL on every file. Changing a severity is a decision, to be made here
# as well.
EXPECTED = {
    Kind.MISSING: Level.CRITICAL,
    Kind.NOT_A_SYMLINK: Level.CRITICAL,
    Kind.SYMLINK_TARGET: Level.CRITICAL,
    Kind.NOT_A_COPY: Level.CRITICAL,
    Kind.CONTENT: Level.CRITICAL,
    Kind.OWNER: Level.WARNING,
    Kind.GROUP: Level.WARNING,
    Kind.MODE: Level.WARNING,
    Kind.ACL: Level.CRITICAL,
    Kind.UNREADABLE: Level.CRITICAL,
}

# Words of every kind, and words that say nothing: the old check read "owner ", "group " and
# "mode " at the start of a message.
WORDS = [
    "missing",
    "content differs",
    "owner root, expected nobody",
    "group root, expected ssl-cert",
    "mode 0644, expected 0600",
    "symlink points to /etc/x.pem",
    "",
    "Besitzer falsch",
]


def test_every_kind_of_difference_has_a_severity() -> None:
    assert set(FILE_SEVERITY) == set(Kind)
    assert dict(FILE_SEVERITY) == EXPECTED


@pytest.mark.parametrize("words", WORDS)
@pytest.mark.parametrize("kind", list(Kind))
def test_the_words_of_a_difference_never_change_its_severity(kind: Kind, words: str) -> None:
    assert file_level([files.Difference(kind, words)]) is EXPECTED[kind]


@pytest.mark.parametrize(
    ("kinds", "level"),
    [
        ((), Level.OK),
        ((Kind.MODE,), Level.WARNING),
        ((Kind.OWNER, Kind.GROUP, Kind.MODE), Level.WARNING),
        ((Kind.CONTENT, Kind.MODE), Level.CRITICAL),
        ((Kind.MODE, Kind.CONTENT), Level.CRITICAL),
    ],
)
def test_the_worst_difference_decides(kinds: tuple[Kind, ...], level: Level) -> None:
    assert file_level([files.Difference(k, "mode 0644, expected 0600") for k in kinds]) is level


def reworded(kind: Kind) -> str:
    """Misleading words: a WARNING's kind in a CRITICAL's words, and the other way round."""
    return "content differs" if EXPECTED[kind] is Level.WARNING else "mode 0644, expected 0600"


@pytest.mark.parametrize("reword", [False, True])
def test_status_keeps_its_levels_when_every_message_is_reworded(
    ca: ThrowawayCA, tmp_path: Path, reword: bool
) -> None:
    config_dir = tmp_path / "letsencrypt"
    lineage = read_lineage(write_lineage(str(config_dir), NAME, ca.issue([NAME])))
    etc = tmp_path / "etc"
    etc.mkdir()
    who = f"owner: {os.getuid()}, group: {os.getgid()}"
    names = ("current", "mode", "content", "missing", "symlink", "copy", "target", "directory")
    link = {"copy", "target"}
    config = parse_config(
        "version: 1\nconsumers:\n"
        + "".join(
            f"  {n}:\n    certificate: {NAME}\n    files:\n"
            f"      - {{path: {etc}/{n}.pem, content: fullchain, {who}"
            + (", link: true}\n" if n in link else "}\n")
            for n in names
        )
    )
    for consumer in config.consumers:
        if consumer.name not in ("missing", "directory"):
            files.place(desired_file(consumer.files[0], lineage))
    os.chmod(etc / "mode.pem", 0o640)
    (etc / "content.pem").write_bytes(b"stale\n")
    (etc / "symlink.pem").unlink()
    (etc / "symlink.pem").symlink_to(lineage.live_path(config.consumers[0].files[0].content[0]))
    (etc / "copy.pem").unlink()
    (etc / "copy.pem").write_bytes(lineage.content(config.consumers[0].files[0].content))
    (etc / "target.pem").unlink()
    (etc / "target.pem").symlink_to("/etc/hostname")
    (etc / "directory.pem").mkdir()  # not a file: unreadable as one

    if reword:
        compare = files.compare

        def reworded_compare(
            desired: files.Desired, current: files.Snapshot
        ) -> list[files.Difference]:
            found = compare(desired, current)
            return [dataclasses.replace(d, message=reworded(d.kind)) for d in found]

        effects = Effects(compare=reworded_compare)
    else:
        effects = Effects()

    options = StatusOptions(config_dir=str(config_dir), probe=False)
    report = check_status(config, None, options, effects)
    by_name = {c.name: c for c in report.consumers}
    assert {n: by_name[n].level for n in names} == {
        "current": Level.OK,
        "mode": Level.WARNING,
        "content": Level.CRITICAL,
        "missing": Level.CRITICAL,
        "symlink": Level.CRITICAL,
        "copy": Level.CRITICAL,
        "target": Level.CRITICAL,
        "directory": Level.CRITICAL,
    }
    if reword:  # the messages shown are the reworded ones: the rewording was in effect
        assert by_name["mode"].files[0].reasons == ("content differs",)
        assert by_name["content"].files[0].reasons == ("mode 0644, expected 0600",)
    else:
        assert by_name["mode"].files[0].reasons == ("mode 0640, expected 0644",)
