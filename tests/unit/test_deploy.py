"""The deploy flow on real files, real commands and real loopback TLS services.

Each service is the demo's TLS server process, which re-reads its certificate on SIGHUP; a
consumer's reload appends to a marker file and sends that signal, so tests can count reloads.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from certbot_fanout import files
from certbot_fanout.config import parse_config
from certbot_fanout.deploy import DeployOptions, Effects, Outcome, Stage, deploy
from certbot_fanout.errors import LockError, PlacementError
from certbot_fanout.lineage import Lineage, read_lineage
from certbot_fanout.lock import run_lock
from certbot_fanout.model import Config, Dialect, Part
from certbot_fanout.probe import Served
from certbot_fanout.render_deploy import render_deploy_json as render_json
from certbot_fanout.render_deploy import render_deploy_text as render_text
from tests.support.lineages import LineageFactory
from tests.support.peers import Peer
from tests.support.services import Service

NAME = "svc.test"


def consumer_yaml(
    name: str,
    svc: Service,
    *,
    reload: list[str] | None = None,
    test: list[str] | None = None,
    extra: str = "",
) -> str:
    reload_argv = reload if reload is not None else svc.reload_argv()
    lines = [
        f"  {name}:",
        f"    certificate: {NAME}",
        "    files:",
        f"      - {{path: {svc.cert}, content: fullchain}}",
        f"      - {{path: {svc.key}, content: privkey}}",
        f"    reload: {reload_argv!r}",
        f"    verify: [{{host: 127.0.0.1, port: {svc.port}}}]",
        "    verify_timeout: 5",
    ]
    if test is not None:
        lines.append(f"    test: {test!r}")
    return "\n".join(lines) + "\n" + extra


def config_of(*blocks: str) -> Config:
    return parse_config("version: 1\nconsumers:\n" + "".join(blocks))


@pytest.fixture
def renewed(lineages: LineageFactory) -> tuple[Path, Lineage]:
    """A lineage whose first version the services start with; live/ then holds the second."""
    live, _ = lineages.issue(NAME)
    return live, read_lineage(str(live))


def renew(lineages: LineageFactory) -> Lineage:
    live, _ = lineages.renew(NAME)
    return read_lineage(str(live))


def served(svc: Service) -> str:
    from certbot_fanout.lineage import fingerprint
    from certbot_fanout.probe import fetch_leaf

    return fingerprint(fetch_leaf("127.0.0.1", svc.port, NAME, 5))


def test_renewal_reaches_every_consumer_and_is_proven(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    a, b = start_service("a", live), start_service("b", live)
    new = renew(lineages)
    result = deploy(config_of(consumer_yaml("a", a), consumer_yaml("b", b)), new)
    assert [c.outcome for c in result.consumers] == [Outcome.OK, Outcome.OK]
    for c, svc in zip(result.consumers, (a, b), strict=True):
        assert [f.changed for f in c.files] == [True, True]
        assert c.reloaded and c.reload_reason == "files changed"
        assert c.endpoints[0].ok and c.endpoints[0].served == new.cert
        assert served(svc) == new.cert.fingerprint
        assert svc.key.read_bytes() == new.pems[Part.PRIVKEY]
        assert stat.S_IMODE(svc.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(svc.cert.stat().st_mode) == 0o644
    text = render_text(result)
    assert "a  ok      placed 2 of 2 files, reloaded (files changed), verified 127.0.0.1:" in text
    assert "all 2 consumers ok" in text


def test_second_run_rewrites_nothing_and_reloads_nothing(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    new = renew(lineages)
    config = config_of(consumer_yaml("a", svc))
    deploy(config, new)
    inodes = (svc.cert.stat().st_ino, svc.key.stat().st_ino)
    assert svc.reloads() == 1
    again = deploy(config, new).consumers[0]
    assert again.outcome is Outcome.OK
    assert not again.changed_files and not again.reloaded and not again.tested
    assert again.endpoints[0].ok
    assert (svc.cert.stat().st_ino, svc.key.stat().st_ino) == inodes
    assert svc.reloads() == 1


def test_force_rewrites_and_reloads(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    current = read_lineage(str(live))
    inode = svc.cert.stat().st_ino
    result = deploy(config_of(consumer_yaml("a", svc)), current, DeployOptions(force=True))
    c = result.consumers[0]
    assert c.outcome is Outcome.OK and c.reloaded and c.reload_reason == "forced"
    assert svc.cert.stat().st_ino != inode
    assert svc.reloads() == 1


def test_current_files_but_stale_service_is_reloaded(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    new = renew(lineages)
    # The files are already right (someone copied them) but the service never reloaded.
    svc.cert.write_bytes(new.pems[Part.FULLCHAIN])
    svc.key.write_bytes(new.pems[Part.PRIVKEY])
    c = deploy(config_of(consumer_yaml("a", svc)), new).consumers[0]
    assert not c.changed_files
    assert c.reloaded and "not serving the current certificate" in c.reload_reason
    assert c.outcome is Outcome.OK and served(svc) == new.cert.fingerprint


def test_one_failing_consumer_never_stops_another(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    good, bad = start_service("good", live), start_service("bad", live)
    new = renew(lineages)
    failing_reload = ["sh", "-c", "echo 'Job for x.service failed' >&2; exit 1"]
    config = config_of(
        consumer_yaml(
            "bad",
            bad,
            reload=failing_reload,
            extra="    notes: the reload needs the unit to be running\n",
        ),
        consumer_yaml("good", good),
    )
    result = deploy(config, new)
    by_name = {c.name: c for c in result.consumers}
    assert by_name["bad"].outcome is Outcome.FAILED
    assert by_name["bad"].failed_stage is Stage.RELOAD
    assert "exited 1; output: Job for x.service failed" in (by_name["bad"].error or "")
    assert by_name["bad"].rolled_back, "a failed reload puts the files back"
    assert bad.key.read_bytes() != new.pems[Part.PRIVKEY]
    assert by_name["good"].outcome is Outcome.OK
    assert served(good) == new.cert.fingerprint
    text = render_text(result)
    assert "1 of 2 consumers FAILED (bad)" in text
    assert "notes: the reload needs the unit to be running" in text


def test_failed_test_restores_every_file_exactly_and_skips_reload(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service], tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old_cert, old_key = svc.cert.read_bytes(), svc.key.read_bytes()
    os.chown(svc.key, os.getuid(), os.getgid())
    svc.key.chmod(0o640)
    os.utime(svc.cert, ns=(10**9, 3 * 10**9))
    extra_file = tmp_path / "a" / "combined.pem"
    new = renew(lineages)
    block = consumer_yaml("a", svc, test=["sh", "-c", "echo 'emerg: bad' >&2; exit 1"])
    block = block.replace(
        "    reload:", f"      - {{path: {extra_file}, content: [fullchain, privkey]}}\n    reload:"
    )
    config = config_of(block)
    c = deploy(config, new).consumers[0]
    assert c.outcome is Outcome.FAILED and c.failed_stage is Stage.TEST
    assert c.rolled_back and not c.reloaded
    assert "emerg: bad" in (c.error or "")
    assert svc.cert.read_bytes() == old_cert and svc.key.read_bytes() == old_key
    assert stat.S_IMODE(svc.key.stat().st_mode) == 0o640
    assert svc.cert.stat().st_mtime_ns == 3 * 10**9
    assert not extra_file.exists(), "a file that was not there before must be removed again"
    assert svc.reloads() == 0
    assert served(svc) != new.cert.fingerprint


def test_placement_failure_rolls_back_the_files_already_placed(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service], tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old_cert = svc.cert.read_bytes()
    new = renew(lineages)
    text = consumer_yaml("a", svc).replace(
        f"      - {{path: {svc.key}, content: privkey}}\n",
        f"      - {{path: {tmp_path}/missing-dir/key.pem, content: privkey}}\n",
    )
    c = deploy(config_of(text), new).consumers[0]
    assert c.failed_stage is Stage.PLACE and c.rolled_back
    assert "missing-dir does not exist" in (c.error or "")
    assert svc.cert.read_bytes() == old_cert
    assert svc.reloads() == 0


def test_a_placement_that_fails_is_not_put_back_but_the_files_before_it_are(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    # On a full or read-only filesystem, "restoring" the file that could not be placed would
    # fail as well and report a ROLLBACK INCOMPLETE that never happened.
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old_cert, old_key = svc.cert.read_bytes(), svc.key.read_bytes()
    new = renew(lineages)
    real = Effects()
    restored: list[str] = []

    def place(desired: files.Desired) -> None:
        if desired.path == str(svc.key):
            raise PlacementError(f"{desired.path}: cannot write: No space left on device")
        real.place(desired)

    def restore(previous: files.Snapshot) -> None:
        restored.append(previous.path)
        real.restore(previous)

    c = deploy(
        config_of(consumer_yaml("a", svc)), new, effects=Effects(place=place, restore=restore)
    ).consumers[0]
    assert c.failed_stage is Stage.PLACE and c.rolled_back
    assert c.error == f"{svc.key}: cannot write: No space left on device"
    assert restored == [str(svc.cert)]
    assert (svc.cert.read_bytes(), svc.key.read_bytes()) == (old_cert, old_key)


def test_a_placement_that_fails_after_its_rename_is_put_back(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old_cert, old_key = svc.cert.read_bytes(), svc.key.read_bytes()
    new = renew(lineages)
    real = Effects()

    def place(desired: files.Desired) -> None:
        real.place(desired)
        if desired.path == str(svc.key):
            raise PlacementError(f"{desired.path}: cannot fsync the directory: I/O error")

    c = deploy(config_of(consumer_yaml("a", svc)), new, effects=Effects(place=place)).consumers[0]
    assert c.failed_stage is Stage.PLACE and c.rolled_back
    assert (svc.cert.read_bytes(), svc.key.read_bytes()) == (old_cert, old_key)


def test_a_crash_before_the_test_accepted_the_files_puts_them_back(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old_cert, old_key = svc.cert.read_bytes(), svc.key.read_bytes()
    new = renew(lineages)

    def run(argv: Sequence[str], timeout: float, what: str) -> NoReturn:
        raise RuntimeError(f"bug while running the {what}")

    c = deploy(
        config_of(consumer_yaml("a", svc, test=["true"])), new, effects=Effects(run=run)
    ).consumers[0]
    assert c.failed_stage is Stage.INTERNAL and c.rolled_back
    assert "RuntimeError: bug while running the test" in (c.error or "")
    assert (svc.cert.read_bytes(), svc.key.read_bytes()) == (old_cert, old_key)


def test_mismatch_reports_what_is_served_and_what_was_expected(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    old = read_lineage(str(live))
    new = renew(lineages)
    # A reload that "succeeds" but does nothing, like Synapse with a key it cannot load.
    text = consumer_yaml("a", svc, reload=["true"]).replace(
        "verify_timeout: 5", "verify_timeout: 1"
    )
    result = deploy(config_of(text), new)
    c = result.consumers[0]
    assert c.failed_stage is Stage.VERIFY
    ep = c.endpoints[0]
    assert not ep.ok and ep.served is not None
    assert ep.served.fingerprint == old.cert.fingerprint
    assert ep.attempts > 1
    report = render_text(result)
    assert f"served:   subject CN={NAME}, serial {old.cert.serial}" in report
    assert f"expected: subject CN={NAME}, serial {new.cert.serial}" in report
    as_json = render_json(result)
    assert old.cert.fingerprint in as_json and new.cert.fingerprint in as_json


def test_dry_run_changes_runs_and_probes_nothing(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    before = (svc.cert.read_bytes(), svc.cert.stat().st_ino, svc.key.read_bytes())
    new = renew(lineages)
    calls: list[tuple[object, ...]] = []

    def forbidden(*args: object, **kwargs: object) -> NoReturn:
        calls.append(args)
        raise AssertionError(f"a dry run called {args}")

    effects = Effects(place=forbidden, restore=forbidden, run=forbidden, fetch=forbidden)
    result = deploy(
        config_of(consumer_yaml("a", svc, test=["true"])), new, DeployOptions(dry_run=True), effects
    )
    assert calls == []
    c = result.consumers[0]
    assert c.outcome is Outcome.PLANNED and c.tested and c.reloaded
    assert (svc.cert.read_bytes(), svc.cert.stat().st_ino, svc.key.read_bytes()) == before
    assert svc.reloads() == 0
    text = render_text(result)
    assert "dry run: nothing below was changed, run or probed" in text
    assert f"would place {svc.cert} (content differs)" in text


def test_consumers_run_in_parallel(lineages: LineageFactory, tmp_path: Path) -> None:
    # Each reload waits until all of them have started: run one at a time, the first times out.
    live, _ = lineages.issue(NAME)
    n = 6
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    wait_all = (
        f'touch {barrier}/$0; while [ "$(ls {barrier} | wc -l)" -lt {n} ]; do sleep 0.01; done'
    )
    blocks = []
    for i in range(n):
        (tmp_path / f"c{i}").mkdir()
        blocks.append(
            f"  c{i}:\n    certificate: {NAME}\n"
            f"    files: [{{path: {tmp_path}/c{i}/cert.pem, content: cert}}]\n"
            f"    reload: ['sh', '-c', '{wait_all}', 'c{i}']\n    reload_timeout: 5\n"
        )
    result = deploy(config_of(*blocks), read_lineage(str(live)), DeployOptions(jobs=n))
    assert [c.outcome for c in result.consumers] == [Outcome.OK] * n
    assert len(list(barrier.iterdir())) == n


def test_a_crashing_consumer_is_contained(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    a, b = start_service("a", live), start_service("b", live)
    new = renew(lineages)
    real = Effects()

    def fetch(
        host: str,
        port: int,
        sni: str | None,
        timeout: float,
        starttls: Dialect | None = None,
        **restrictions: Any,
    ) -> Served:
        if port == a.port:
            raise RuntimeError("bug in a probe")
        return real.fetch(host, port, sni, timeout, starttls, **restrictions)

    result = deploy(
        config_of(consumer_yaml("a", a), consumer_yaml("b", b)),
        new,
        effects=Effects(fetch=fetch),
    )
    by_name = {c.name: c for c in result.consumers}
    assert by_name["a"].failed_stage is Stage.INTERNAL
    assert "RuntimeError: bug in a probe" in (by_name["a"].error or "")
    assert by_name["b"].outcome is Outcome.OK


def test_link_files_point_into_live_and_warn_when_owner_cannot_follow(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    (tmp_path / "etc").mkdir()
    text = (
        f"  a:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {tmp_path}/etc/fullchain.pem, content: fullchain, link: true,"
        " owner: nobody}\n"
    )
    c = deploy(config_of(text), read_lineage(str(live))).consumers[0]
    assert os.readlink(tmp_path / "etc" / "fullchain.pem") == str(live / "fullchain.pem")
    assert c.outcome is Outcome.OK
    if os.geteuid() == 0:
        assert "nobody cannot follow the link: nobody cannot enter" in (c.files[0].warning or "")
        assert "warning:" in render_text(deploy(config_of(text), read_lineage(str(live))))


def test_run_lock_keeps_runs_one_at_a_time(tmp_path: Path) -> None:
    lock = str(tmp_path / "lock")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with run_lock(lock):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    with pytest.raises(LockError, match="another certbot-fanout run has held"), run_lock(lock, 0.3):
        pass
    release.set()
    t.join()
    with run_lock(lock, 1):
        pass


def test_leaf_only_endpoint_fails_unless_chain_checking_is_off(lineages: LineageFactory) -> None:
    live, _ = lineages.issue(NAME)
    lineage = read_lineage(str(live))
    with Peer("tls", live / "cert.pem", live / "privkey.pem") as peer:
        text = (
            f"  a:\n    certificate: {NAME}\n    verify_timeout: 0.5\n"
            f"    verify: [{{host: 127.0.0.1, port: {peer.port}}}]\n"
        )
        strict = deploy(config_of(text), lineage).consumers[0]
        relaxed_text = text.replace(
            f"port: {peer.port}}}", f"port: {peer.port}, check_chain: false}}"
        )
        relaxed = deploy(config_of(relaxed_text), lineage).consumers[0]
    assert strict.failed_stage is Stage.VERIFY
    assert "serves cert.pem without the chain" in (strict.endpoints[0].error or "")
    assert relaxed.outcome is Outcome.OK


def test_a_consumer_without_files_is_reloaded_only_while_it_serves_the_old_certificate(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("a", live)
    new = renew(lineages)
    # The service reads certbot's files itself: after the renewal they are new on disk.
    svc.cert.write_bytes(new.pems[Part.FULLCHAIN])
    svc.key.write_bytes(new.pems[Part.PRIVKEY])
    text = (
        f"  a:\n    certificate: {NAME}\n    reload: {svc.reload_argv()!r}\n"
        f"    verify: [{{host: 127.0.0.1, port: {svc.port}}}]\n    verify_timeout: 5\n"
    )
    first = deploy(config_of(text), new).consumers[0]
    assert first.outcome is Outcome.OK and first.reloaded
    assert "not serving the current certificate" in first.reload_reason
    second = deploy(config_of(text), new).consumers[0]
    assert second.outcome is Outcome.OK and not second.reloaded
    assert svc.reloads() == 1
    blind = text.split("    verify:")[0]  # nothing shows what it serves: every deploy reloads
    assert deploy(config_of(blind), new).consumers[0].reload_reason == "no files of its own"
    assert svc.reloads() == 2


def test_a_file_that_did_not_exist_reads_as_a_new_file(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    live, _ = lineages.issue(NAME)
    (tmp_path / "etc").mkdir()
    placed = tmp_path / "etc" / "fullchain.pem"
    text = f"  a:\n    certificate: {NAME}\n    files:\n      - {{path: {placed}, content: cert}}\n"
    lineage = read_lineage(str(live))
    plan = render_text(deploy(config_of(text), lineage, DeployOptions(dry_run=True)))
    assert f"would place {placed} (new file)" in plan
    result = deploy(config_of(text), lineage)
    done = render_text(result, verbose=True)
    assert f"placed {placed} (new file)" in done
    assert "missing" not in plan + done
    # JSON keeps the reason as it was: the file was missing before.
    (file_json,) = json.loads(render_json(result))["consumers"][0]["files"]
    assert file_json["reasons"] == ["missing"] and file_json["changed"] is True
    placed.write_text("old")
    again = render_text(deploy(config_of(text), lineage), verbose=True)
    assert f"placed {placed} (content differs)" in again


def test_a_new_file_is_told_by_its_kind_not_by_the_words_of_its_reason(
    lineages: LineageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reword the reason a missing file gets: the report still says "new file", because it reads
    # the difference's kind, and the JSON carries the new words.
    monkeypatch.setattr(files, "MISSING_REASON", "nothing was there")
    live, _ = lineages.issue(NAME)
    placed = tmp_path / "fullchain.pem"
    text = f"  a:\n    certificate: {NAME}\n    files:\n      - {{path: {placed}, content: cert}}\n"
    result = deploy(config_of(text), read_lineage(str(live)))
    assert f"placed {placed} (new file)" in render_text(result, verbose=True)
    (file_json,) = json.loads(render_json(result))["consumers"][0]["files"]
    assert file_json["reasons"] == ["nothing was there"]
    assert result.consumers[0].files[0].new
