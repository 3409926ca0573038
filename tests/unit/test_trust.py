"""Only what root alone could have written is trusted: the map, and the programs it runs.

A service account plants a map, or a test/reload program, where it (and not only root) could
change it: the file itself, a directory above it, a link on the way, a program's interpreter.
Every command refuses such a map with exit 2, naming the path and the owner or mode at fault,
and a deploy never runs such a program (that consumer fails, the others go on); ``check``
reports both. A run by another user trusts root and that user. Bare command names are looked
up in one fixed PATH, whatever PATH the caller had, and commands run with it.

Each planted map or program, if run, would create a marker file: the tests count the markers
(``commands_run_from_writable``) and the untrusted maps accepted (``untrusted_accepted``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from certbot import errors as certbot_errors

from certbot_fanout import trust
from certbot_fanout.commands import COMMAND_PATH_TEXT, run_command
from certbot_fanout.errors import CommandError
from certbot_fanout.plugin import Installer
from tests.support.cli import explain, invoke, run
from tests.support.lineages import LineageFactory
from tests.support.maps import flow
from tests.support.proc import Account, chown_to, ensure_account, owned_dir, public_dir
from tests.support.public import PublicInstall
from tests.support.tally import record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as others")

AREA = "untrusted files"
NAME = "trust.test"
SERVICE = "fanout-trust-svc"
OTHER = "fanout-trust-other"


@pytest.fixture(scope="module")
def svc() -> Iterator[Account]:
    with ensure_account(SERVICE) as account:
        yield account


@pytest.fixture(scope="module")
def other() -> Iterator[Account]:
    with ensure_account(OTHER) as account:
        yield account


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Layout:
    """A path set up under a trusted base, and what the rule must say of it."""

    path: Path
    fault: trust.Fault | None
    at: Path | None = None  # the component at fault (default: the path)
    says: str = ""  # a part of the message


def _file(path: Path, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("version: 1\n")
    path.chmod(mode)
    return path


def _root_file(base: Path, svc: Account) -> Layout:
    return Layout(_file(base / "d" / "map.yaml"), None)


def _user_file(base: Path, svc: Account) -> Layout:
    path = chown_to(_file(base / "map.yaml"), svc)
    return Layout(
        path, trust.Fault.OWNER, says=f"is owned by {SERVICE} (uid {svc.uid}), not by root"
    )


def _group_writable_file(base: Path, svc: Account) -> Layout:
    path = _file(base / "map.yaml", 0o664)
    os.chown(path, 0, svc.gid)
    return Layout(
        path, trust.Fault.GROUP_WRITABLE, says=f"writable by its group {SERVICE} (mode 0664)"
    )


def _other_writable_file(base: Path, svc: Account) -> Layout:
    path = _file(base / "map.yaml", 0o646)
    return Layout(path, trust.Fault.OTHER_WRITABLE, says="writable by every user (mode 0646)")


def _user_dir(base: Path, svc: Account) -> Layout:
    directory = owned_dir(base / "srv", svc, 0o755)
    return Layout(
        _file(directory / "map.yaml"),
        trust.Fault.OWNER,
        directory,
        f"the directory {directory} is owned by {SERVICE}",
    )


def _group_writable_dir(base: Path, svc: Account) -> Layout:
    directory = base / "srv"
    directory.mkdir()
    os.chown(directory, 0, svc.gid)
    directory.chmod(0o775)
    return Layout(
        _file(directory / "sub" / "map.yaml"),
        trust.Fault.GROUP_WRITABLE,
        directory,
        f"the directory {directory} is writable by its group {SERVICE} (mode 0775)",
    )


def _other_writable_dir(base: Path, svc: Account) -> Layout:
    directory = base / "srv"
    directory.mkdir()
    directory.chmod(0o777)
    return Layout(
        _file(directory / "map.yaml"),
        trust.Fault.OTHER_WRITABLE,
        directory,
        "is writable by every user (mode 0777 and not sticky)",
    )


def _sticky_dir(base: Path, svc: Account) -> Layout:
    directory = base / "tmp"
    directory.mkdir()
    directory.chmod(0o1777)
    return Layout(_file(directory / "map.yaml"), None)


def _user_file_in_sticky_dir(base: Path, svc: Account) -> Layout:
    directory = base / "tmp"
    directory.mkdir()
    directory.chmod(0o1777)
    return Layout(chown_to(_file(directory / "map.yaml"), svc), trust.Fault.OWNER)


def _writable_file_in_sticky_dir(base: Path, svc: Account) -> Layout:
    directory = base / "tmp"
    directory.mkdir()
    directory.chmod(0o1777)
    path = _file(directory / "map.yaml", 0o666)
    return Layout(path, trust.Fault.OTHER_WRITABLE, says="(mode 0666)")


def _link_into_user_dir(base: Path, svc: Account) -> Layout:
    directory = owned_dir(base / "home" / "svc", svc, 0o755)
    target = _file(directory / "map.yaml")
    link = base / "etc" / "map.yaml"
    link.parent.mkdir()
    link.symlink_to(target)
    return Layout(link, trust.Fault.OWNER, directory, f"is owned by {SERVICE}")


def _user_link_in_sticky_dir(base: Path, svc: Account) -> Layout:
    directory = base / "tmp"
    directory.mkdir()
    directory.chmod(0o1777)
    link = directory / "map.yaml"
    link.symlink_to(_file(base / "etc" / "map.yaml"))
    os.lchown(link, svc.uid, svc.gid)
    return Layout(link, trust.Fault.OWNER)


def _relative_link_with_dotdot(base: Path, svc: Account) -> Layout:
    _file(base / "real" / "map.yaml")
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "b" / "up").symlink_to("../../real")
    return Layout(base / "a" / "b" / "up" / ".." / "real" / "map.yaml", None)


def _link_loop(base: Path, svc: Account) -> Layout:
    (base / "one").symlink_to("two")
    (base / "two").symlink_to("one")
    return Layout(base / "one" / "map.yaml", trust.Fault.LOOP, base / "one" / "map.yaml")


def _missing(base: Path, svc: Account) -> Layout:
    return Layout(base / "absent" / "map.yaml", trust.Fault.MISSING, base / "absent")


LAYOUTS: dict[str, Callable[[Path, Account], Layout]] = {
    "root-file": _root_file,
    "user-file": _user_file,
    "group-writable-file": _group_writable_file,
    "other-writable-file": _other_writable_file,
    "user-dir": _user_dir,
    "group-writable-dir": _group_writable_dir,
    "other-writable-dir": _other_writable_dir,
    "sticky-dir": _sticky_dir,
    "user-file-in-sticky-dir": _user_file_in_sticky_dir,
    "writable-file-in-sticky-dir": _writable_file_in_sticky_dir,
    "link-into-user-dir": _link_into_user_dir,
    "user-link-in-sticky-dir": _user_link_in_sticky_dir,
    "relative-link-with-dotdot": _relative_link_with_dotdot,
    "link-loop": _link_loop,
    "missing": _missing,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_rule_on_real_owners_and_modes(layout: str, svc: Account, tmp_path: Path) -> None:
    expected = LAYOUTS[layout](tmp_path, svc)
    problem = trust.path_problem(str(expected.path))
    record(
        AREA,
        cases=1,
        untrusted_accepted=int(expected.fault is not None and problem is None),
    )
    if expected.fault is None:
        assert problem is None, str(problem)
        return
    assert problem is not None
    assert problem.fault is expected.fault, str(problem)
    assert problem.path == str(expected.at or expected.path)
    assert str(problem).startswith(("the directory " + problem.path, problem.path))
    assert expected.says in str(problem)


def test_a_run_by_another_user_trusts_that_user_and_root(
    svc: Account, other: Account, tmp_path: Path
) -> None:
    directory = owned_dir(tmp_path / "home", svc, 0o755)
    own = chown_to(_file(directory / "own.yaml"), svc)
    roots = _file(directory / "roots.yaml")
    theirs = chown_to(_file(directory / "theirs.yaml"), other)
    problem = trust.path_problem(str(theirs), svc.uid)
    accepted = [p for p in (theirs,) if trust.path_problem(str(p), svc.uid) is None]
    record(AREA, cases=3, untrusted_accepted=len(accepted))
    assert trust.path_problem(str(own), svc.uid) is None
    assert trust.path_problem(str(roots), svc.uid) is None
    assert problem is not None and problem.fault is trust.Fault.OWNER
    assert str(problem) == (
        f"{theirs} is owned by {OTHER} (uid {other.uid}), not by root or {SERVICE}"
    )
    # And root's own run does not trust that user.
    assert trust.path_problem(str(own)) is not None


# --------------------------------------------------------------------------- the map


def map_text(tmp_path: Path, marker: Path) -> str:
    files = tmp_path / "placed"
    files.mkdir(exist_ok=True)
    return f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files:
      - {{path: {files}/fullchain.pem, content: fullchain}}
    reload: [touch, {flow(str(marker))}]
"""


def _map_entry_points(
    config: Path, lineages: LineageFactory, tmp_path: Path
) -> dict[str, Callable[[], tuple[int, str]]]:
    """Every way the map is loaded: each returns (exit code, what it said)."""
    common = ["--config-dir", str(lineages.config_dir), "--lock-file", str(tmp_path / "lock")]
    live = lineages.config_dir / "live" / NAME

    def cli(
        argv: list[str], environ: dict[str, str] | None = None
    ) -> Callable[[], tuple[int, str]]:
        def go() -> tuple[int, str]:
            result = invoke(argv, environ)
            return result.returncode, result.stdout + (result.stderr or "")

        return go

    def plugin() -> tuple[int, str]:
        installer = Installer(SimpleNamespace(fanout_config=str(config)), "fanout")
        try:
            installer.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]
        except certbot_errors.PluginError as e:
            return 2, str(e)
        return 0, "accepted"

    return {
        "deploy --config": cli(["deploy", "--config", str(config), "--cert-name", NAME, *common]),
        "$CERTBOT_FANOUT_CONFIG": cli(
            common, {"CERTBOT_FANOUT_CONFIG": str(config), "RENEWED_LINEAGE": str(live)}
        ),
        "check": cli(["check", "--config", str(config), "--no-probe", *common]),
        "status": cli(["status", "--config", str(config), "--no-probe", *common]),
        "discover": cli(["discover", "--config", str(config), "--cert-name", NAME, *common]),
        "plugin --fanout-config": plugin,
    }


MAP_PLACEMENTS = (
    "user-file",
    "group-writable-file",
    "other-writable-file",
    "user-dir",
    "group-writable-dir",
    "other-writable-dir",
    "link-into-user-dir",
)


@pytest.mark.parametrize("placement", MAP_PLACEMENTS)
def test_an_untrusted_map_is_refused_everywhere_with_exit_2(
    placement: str,
    svc: Account,
    lineages: LineageFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lineages.issue(NAME)
    marker = tmp_path / "reloaded"
    base = tmp_path / "maps"
    base.mkdir()
    layout = LAYOUTS[placement](base, svc)
    real = Path(os.path.realpath(layout.path))
    mode, owner = real.stat().st_mode, (real.stat().st_uid, real.stat().st_gid)
    real.write_text(map_text(tmp_path, marker))
    os.chown(real, *owner)
    real.chmod(mode)
    at = str(layout.at or layout.path)
    outcomes = {}
    for entry, load in _map_entry_points(layout.path, lineages, tmp_path).items():
        code, said = load()
        said += capsys.readouterr().err
        outcomes[entry] = (code, said)
    accepted = [e for e, (code, said) in outcomes.items() if code != 2 or "refused:" not in said]
    record(
        AREA,
        cases=len(outcomes),
        untrusted_accepted=len(accepted),
        commands_run_from_writable=int(marker.exists()),
    )
    assert not marker.exists(), "the planted map's reload ran"
    assert not accepted, {e: outcomes[e] for e in accepted}
    for entry, (_, said) in outcomes.items():
        assert f"{layout.path}: refused: " in said, (entry, said)
        assert at in said and layout.says in said, (entry, said)
        assert "Traceback" not in said


def test_the_same_map_made_trusted_is_read(
    svc: Account, lineages: LineageFactory, tmp_path: Path
) -> None:
    """The control: the refusals above are about ownership and mode, not about the map."""
    lineages.issue(NAME)
    marker = tmp_path / "reloaded"
    config = tmp_path / "consumers.yaml"
    config.write_text(map_text(tmp_path, marker))
    common = ["--config-dir", str(lineages.config_dir), "--lock-file", str(tmp_path / "lock")]
    result = invoke(["deploy", "--config", str(config), "--cert-name", NAME, *common])
    assert result.returncode == 0, explain(result)
    assert marker.exists()


# --------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class Planted:
    """A consumer whose reload (or test) program someone other than root could change."""

    name: str
    argv: list[str]
    marker: Path
    says: str
    step: str = "reload"


def plant_programs(tmp_path: Path, svc: Account) -> list[Planted]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    svc_dir = owned_dir(tmp_path / "srv", svc, 0o755)

    def script(path: Path, marker: Path, mode: int = 0o755, first: str = "#!/bin/sh") -> str:
        path.write_text(f"{first}\ntouch {marker}\n")
        path.chmod(mode)
        return str(path)

    planted = []
    marker = tmp_path / "ran-in-user-dir"
    planted.append(
        Planted(
            "in-user-dir",
            [script(svc_dir / "reload", marker)],
            marker,
            f"the directory {svc_dir} is owned by {SERVICE}",
        )
    )
    marker = tmp_path / "ran-writable"
    planted.append(
        Planted(
            "writable",
            [script(bin_dir / "writable", marker, 0o777)],
            marker,
            f"{bin_dir}/writable is writable by every user (mode 0777)",
        )
    )
    marker = tmp_path / "ran-group"
    path = script(bin_dir / "group", marker, 0o775)
    os.chown(path, 0, svc.gid)
    planted.append(
        Planted(
            "group-writable-test",
            [path],
            marker,
            f"{path} is writable by its group {SERVICE} (mode 0775)",
            step="test",
        )
    )
    marker = tmp_path / "ran-user-owned"
    path = script(bin_dir / "user-owned", marker)
    os.chown(path, svc.uid, svc.gid)
    planted.append(Planted("user-owned", [path], marker, f"{path} is owned by {SERVICE}"))
    marker = tmp_path / "ran-interpreter"
    (svc_dir / "sh").symlink_to("/bin/sh")
    path = script(bin_dir / "interpreted", marker, first=f"#!{svc_dir}/sh")
    planted.append(
        Planted(
            "planted-interpreter",
            [path],
            marker,
            f"its interpreter {svc_dir}/sh: the directory {svc_dir} is owned by {SERVICE}",
        )
    )
    return planted


def programs_map(tmp_path: Path, planted: list[Planted], good: Path) -> str:
    (tmp_path / "placed").mkdir(exist_ok=True)
    entries = "".join(
        f"""\
  {p.name}:
    certificate: {NAME}
    files: [{{path: {tmp_path}/placed/{p.name}.pem, content: fullchain}}]
    {p.step}: {flow(p.argv)}
"""
        for p in planted
    )
    return f"""\
version: 1
consumers:
{entries}  good:
    certificate: {NAME}
    files: [{{path: {tmp_path}/placed/good.pem, content: fullchain}}]
    test: ["true"]
    reload: [touch, {flow(str(good))}]
"""


def test_a_program_others_could_change_fails_its_consumer_and_is_never_run(
    svc: Account, lineages: LineageFactory, tmp_path: Path
) -> None:
    lineages.issue(NAME)
    planted = plant_programs(tmp_path, svc)
    good = tmp_path / "good-reloaded"
    config = tmp_path / "consumers.yaml"
    config.write_text(programs_map(tmp_path, planted, good))
    common = ["--config-dir", str(lineages.config_dir), "--lock-file", str(tmp_path / "lock")]
    result = invoke(["deploy", "--config", str(config), "--cert-name", NAME, *common])
    ran = [p.name for p in planted if p.marker.exists()]
    record(AREA, cases=len(planted), commands_run_from_writable=len(ran))
    assert not ran, f"planted programs ran: {ran}"
    assert result.returncode == 1, explain(result)
    assert good.exists(), explain(result)
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["good", "ok"] for line in lines), explain(result)
    for p in planted:
        text = "\n".join(line for line in lines if p.name in line)
        assert "was not run:" in text and p.says in text, (p.name, explain(result))
        assert "certbot-fanout runs only programs that root alone can change" in text


def test_check_reports_an_untrusted_program_for_its_consumer(
    svc: Account, lineages: LineageFactory, tmp_path: Path
) -> None:
    lineages.issue(NAME)
    planted = plant_programs(tmp_path, svc)
    config = tmp_path / "consumers.yaml"
    config.write_text(programs_map(tmp_path, planted, tmp_path / "good-reloaded"))
    result = invoke(["check", "--config", str(config), "--config-dir", str(lineages.config_dir)])
    lines = result.stdout.splitlines()
    missed = [
        p.name
        for p in planted
        if not any(
            line.startswith(f"PROBLEM: {p.name}: the {p.step} command ")
            and "it would not be run: " in line
            and p.says in line
            for line in lines
        )
    ]
    ran = [p.name for p in planted if p.marker.exists()]
    record(AREA, cases=len(planted), commands_run_from_writable=len(ran))
    assert not missed, (missed, explain(result))
    assert result.returncode == 1
    assert not any(line.startswith("PROBLEM: good:") for line in lines), explain(result)


def test_the_plugins_config_test_never_runs_an_untrusted_test(svc: Account, tmp_path: Path) -> None:
    svc_dir = owned_dir(tmp_path / "srv", svc, 0o755)
    marker = tmp_path / "tested"
    program = svc_dir / "test"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    config = tmp_path / "consumers.yaml"
    config.write_text(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n    test: [{program}]\n"
    )
    installer = Installer(SimpleNamespace(fanout_config=str(config)), "fanout")
    with pytest.raises(certbot_errors.MisconfigurationError) as err:
        installer.config_test()
    record(AREA, cases=1, commands_run_from_writable=int(marker.exists()))
    assert not marker.exists()
    assert f"was not run: the directory {svc_dir} is owned by {SERVICE}" in str(err.value)


# --------------------------------------------------------------------------- a non-root run


def test_a_run_by_a_service_user_trusts_that_user_in_place_of_root(
    svc: Account, other: Account, public_install: PublicInstall
) -> None:
    home = public_dir("certbot-fanout-trust-")
    try:
        owned_dir(home, svc, 0o755)
        program = chown_to(_file(home / "reload", 0o755), svc)
        theirs = chown_to(_file(home / "theirs", 0o755), other)
        own_map = chown_to(_file(home / "own.yaml"), svc)
        own_map.write_text(
            f"version: 1\nconsumers:\n  mine:\n    certificate: {NAME}\n    reload: [{program}]\n"
            f"  not-mine:\n    certificate: {NAME}\n    reload: [{theirs}]\n"
        )
        their_map = chown_to(_file(home / "theirs.yaml"), other)
        config_dir = owned_dir(home / "letsencrypt", svc, 0o755)
        lock = home / "lock"

        def check(config: Path) -> tuple[int, str]:
            argv = public_install.argv(
                "check", "--no-probe", "--config", str(config), "--config-dir", str(config_dir),
                "--lock-file", str(lock), "--state-file", str(home / "state.json"),
            )  # fmt: skip
            proc = run(argv, user=svc, env={"PATH": "/usr/bin:/bin"}, cwd=home, timeout=60)
            return proc.returncode, proc.stdout + proc.stderr

        own_code, own_said = check(own_map)
        their_code, their_said = check(their_map)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    record(AREA, cases=2, untrusted_accepted=int(their_code != 2))
    assert their_code == 2, their_said
    assert (
        f"{their_map}: refused: {their_map} is owned by {OTHER} (uid {other.uid}), "
        f"not by root or {SERVICE}"
    ) in their_said
    assert own_code == 1, own_said  # its lineage is missing, but the map was read
    assert "refused" not in own_said
    assert "PROBLEM: mine: the reload command" not in own_said, own_said
    assert (
        f"PROBLEM: not-mine: the reload command `{theirs}` cannot run: it would not be run: "
        f"{theirs} is owned by {OTHER}"
    ) in own_said


# --------------------------------------------------------------------------- one PATH


def test_bare_names_come_from_the_fixed_path_whatever_the_callers(
    svc: Account, lineages: LineageFactory, tmp_path: Path, public_install: PublicInstall
) -> None:
    """Under PATH=/nonexistent, a cron-like PATH without sbin, and a hostile directory first on
    PATH holding programs of the same names, deploy and check find the same programs: those
    in the fixed PATH, which is also the PATH the commands see."""
    live, _ = lineages.issue(NAME)
    hostile = owned_dir(tmp_path / "hostile", svc, 0o755)
    hostile_ran = tmp_path / "hostile-ran"
    for name in ("touch", "sh", "ldconfig", "true"):
        (hostile / name).write_text(f"#!/bin/sh\necho {name} >> {hostile_ran}\n")
        (hostile / name).chmod(0o755)
        os.chown(hostile / name, svc.uid, svc.gid)
    marker, seen_path = tmp_path / "reloaded", tmp_path / "path-seen"
    (tmp_path / "placed").mkdir()
    config = tmp_path / "consumers.yaml"
    config.write_text(
        f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files: [{{path: {tmp_path}/placed/web.pem, content: fullchain}}]
    test: [ldconfig, --version]
    reload: [touch, {flow(str(marker))}]
  env:
    certificate: {NAME}
    files: [{{path: {tmp_path}/placed/env.pem, content: fullchain}}]
    reload: [sh, -c, {flow(f'echo "$PATH" > {seen_path}')}]
"""
    )
    paths = {
        "nonexistent": "/nonexistent",
        "cron": "/usr/bin:/bin",
        "hostile": f"{hostile}:/usr/bin:/bin",
    }
    outcomes = {}
    for label, path in paths.items():
        marker.unlink(missing_ok=True)
        seen_path.unlink(missing_ok=True)
        common = [
            "--config", str(config), "--config-dir", str(lineages.config_dir),
            "--lock-file", str(tmp_path / "lock"), "--state-file", str(tmp_path / "state.json"),
        ]  # fmt: skip
        env = {"PATH": path}
        deploy = run(
            public_install.argv("deploy", "--force", "--cert-name", NAME, *common), env=env
        )
        check = run(public_install.argv("check", "--no-probe", *common), env=env)
        seen = seen_path.read_text().strip() if seen_path.exists() else None
        outcomes[label] = (deploy, check, marker.exists(), seen)
    ran = hostile_ran.read_text().split() if hostile_ran.exists() else []
    record(AREA, cases=len(paths), commands_run_from_writable=len(ran))
    assert not ran, f"programs from the caller's PATH ran: {ran}"
    for label, (deploy, check, reloaded, seen) in outcomes.items():
        assert deploy.returncode == 0, (label, explain(deploy))
        assert reloaded, (label, explain(deploy))
        assert seen == COMMAND_PATH_TEXT, (label, seen)
        assert check.returncode == 0, (label, explain(check))
    assert live.exists()


def test_a_fifo_named_as_a_program_is_not_waited_on(tmp_path: Path) -> None:
    """Looking for a program's #! interpreter opens it: never a FIFO's blocking open."""
    fifo = tmp_path / "reload"
    os.mkfifo(fifo, 0o755)
    start = time.monotonic()
    with pytest.raises(CommandError, match="is not executable"):
        run_command([str(fifo)], 5, "reload")
    assert time.monotonic() - start < 2
