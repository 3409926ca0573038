"""The test helpers that other users depend on do what they promise."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.proc import public_dir, reachable_by_all


def test_a_public_dir_is_reachable_by_every_user_even_under_a_private_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert not reachable_by_all(private)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    made = public_dir("certbot-fanout-support-")
    try:
        assert reachable_by_all(made)
        assert made.parent in (Path("/var/tmp"), Path("/tmp"))
        assert made.stat().st_mode & 0o777 == 0o755
    finally:
        shutil.rmtree(made)


def test_a_public_dir_stays_in_a_tmpdir_every_user_can_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(shared))
        made = public_dir()
        assert made.parent == shared.resolve()
    finally:
        shutil.rmtree(shared)
