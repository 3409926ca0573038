"""The Debian package (contrib/debian) and the Python distributions, built and installed for real.

The .deb is built once with contrib/debian/build, checked with lintian, installed with apt on
this machine (with policy-rc.d in place, so nothing starts), used through Debian's own certbot
and python3, then removed and purged. Anything of certbot-fanout's that was on the machine
before (state, a map, a lock file) is moved aside first and put back afterwards, and the
package is purged even when a test fails, so no /usr/bin/certbot-fanout is left to shadow the
virtualenv's in other tests. The wheel and sdist are built with `python -m build`, checked with
`twine check`, and the wheel is installed next to PyPI's certbot in a fresh virtualenv.

Needs root, Debian 12 and its package registry (for the build dependencies), PyPI, and
lintian. Takes about a minute.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from certbot_fanout._pki import ThrowawayCA, write_lineage
from tests.support import cli

PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = "certbot-fanout"
BUILD = PROJECT / "contrib" / "debian" / "build"
DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_CERTBOT = "/usr/bin/certbot"
BINARY = Path("/usr/bin/certbot-fanout")
CONFIG = Path("/etc/certbot-fanout/consumers.yaml")
HOOK = Path("/etc/letsencrypt/renewal-hooks/deploy/certbot-fanout")
STATE_DIR = Path("/var/lib/certbot-fanout")
LOCK = Path("/run/certbot-fanout.lock")
PROM_DIR = Path("/var/lib/prometheus/node-exporter")
PROM = PROM_DIR / "certbot-fanout.prom"
TIMER_LINK = Path("/etc/systemd/system/timers.target.wants/certbot-fanout-status.timer")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")
# What the package or its runs put on the machine, and purge must take away again.
RUNTIME_PATHS = (CONFIG.parent, HOOK, STATE_DIR, LOCK, PROM)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# A command runs as root's shell would run it: cli.run with system_env(), in /, and (unless the test
# looks at a failure itself) check=True, which fails the test with the tail of its output.
RUN_TIMEOUT = 600.0
LINEAGE = "pkg.fanout.test"


def version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(PROJECT / "setup.cfg")
    return cfg["metadata"]["version"]


def debian_version() -> str:
    """setup.cfg's version as contrib/debian/build writes it: a pre-release sorts first."""
    return re.sub(r"[.-]?(a|b|rc|dev)([0-9]+)", r"~\1\2", version())


def system_env(**extra: str) -> dict[str, str]:
    """What a root shell, certbot or systemd would give a command: no virtualenv, no
    PYTHONPATH, no CERTBOT_FANOUT_* from the test session."""
    return {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", **extra}


def apt_get(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q", *args],
        env=system_env(DEBIAN_FRONTEND="noninteractive"),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    )


def package_status() -> str:
    """dpkg's status of the package: "" (unknown), "install ok installed", "deinstall ok
    config-files" (removed, conffiles kept), ..."""
    proc = cli.run(
        ["dpkg-query", "-W", "-f=${Status}", PACKAGE],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def is_installed() -> bool:
    return package_status() == "install ok installed"


def install(deb: Path) -> None:
    if not is_installed():
        apt_get("install", "--no-install-recommends", deb)
    assert is_installed()


def purge() -> None:
    if package_status() not in ("", "unknown ok not-installed"):
        apt_get("purge", PACKAGE)


@contextlib.contextmanager
def policy_rc_denies_starts() -> Iterator[None]:
    created = not POLICY_RC.exists()
    if created:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        if created:
            POLICY_RC.unlink(missing_ok=True)


@contextlib.contextmanager
def paths_set_aside(paths: Sequence[Path]) -> Iterator[None]:
    """Move whatever is at ``paths`` out of the way, and put it back at the end."""
    backup = Path(tempfile.mkdtemp(prefix="certbot-fanout-pkgtest-backup-", dir="/var/tmp"))
    moved: list[tuple[Path, Path]] = []
    try:
        for i, path in enumerate(paths):
            if path.exists() or path.is_symlink():
                kept = backup / str(i)
                shutil.move(path, kept)
                moved.append((path, kept))
        yield
    finally:
        for path, kept in moved:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(kept, path)
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def directory_made(path: Path) -> Iterator[None]:
    """``path`` exists while inside; the directories this made are removed afterwards."""
    made = []
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            parent.mkdir()
            made.append(parent)
    try:
        yield
    finally:
        for directory in reversed(made):
            shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def debian_machine() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds and installs a Debian package")
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        pytest.skip("needs a Debian machine with apt")


@pytest.fixture(scope="module")
def built(debian_machine: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of contrib/debian/build: .deb, .changes, source package."""
    out = tmp_path_factory.mktemp("deb")
    cli.run([BUILD, out], env=system_env(), cwd="/", timeout=1200, check=True)
    return out


@pytest.fixture(scope="module")
def deb(built: Path) -> Path:
    debs = sorted(built.glob("*.deb"))
    assert [d.name for d in debs] == [f"{PACKAGE}_{debian_version()}_all.deb"]
    return debs[0]


@pytest.fixture(scope="module")
def machine(debian_machine: None) -> Iterator[None]:
    """This module may install and purge the package: it was not installed before, what its
    runs write is set aside and restored, and it is purged at the end whatever happened."""
    if package_status() not in ("", "unknown ok not-installed"):
        pytest.skip(
            f"the {PACKAGE} package is on this machine ({package_status()}); not touching it"
        )
    if BINARY.exists():
        pytest.skip(f"{BINARY} exists and is not from the package; not overwriting it")
    # dpkg removes the hook directories on purge when they are empty; certbot made them.
    certbot_dirs = [d for d in (HOOK.parent.parent, HOOK.parent) if d.is_dir()]
    with policy_rc_denies_starts(), paths_set_aside(RUNTIME_PATHS):
        try:
            yield
        finally:
            purge()
            for directory in certbot_dirs:
                directory.mkdir(mode=0o755, exist_ok=True)
            assert not BINARY.exists()


@pytest.fixture
def installed(machine: None, deb: Path) -> None:
    install(deb)


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("certbot-fanout packaging test")


@pytest.fixture
def live(ca: ThrowawayCA, tmp_path: Path) -> Path:
    """A throwaway certbot-shaped lineage, live/pkg.fanout.test."""
    return Path(write_lineage(str(tmp_path / "letsencrypt"), LINEAGE, ca.issue([LINEAGE])))


def run_hook(lineage: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The deploy hook as certbot runs it: RENEWED_LINEAGE and RENEWED_DOMAINS set."""
    env = system_env(RENEWED_LINEAGE=str(lineage), RENEWED_DOMAINS=LINEAGE, **extra)
    return cli.run([HOOK], env=env, cwd="/", timeout=120)


def certbot_plugins(certbot: str | Path, workdir: Path) -> str:
    """`certbot plugins` with private config, work and logs directories."""
    dirs = []
    for name in ("config", "work", "logs"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
        dirs += [f"--{name}-dir", str(workdir / name)]
    return cli.run(
        [certbot, "plugins", *dirs], env=system_env(), cwd="/", timeout=300, check=True
    ).stdout


def consumer_map(tmp_path: Path) -> tuple[Path, Path]:
    """A map with one consumer of LINEAGE that gets a copy of its fullchain; returns the map
    and the copy's path."""
    target = tmp_path / "consumer"
    target.mkdir()
    copy = target / "fullchain.pem"
    config = tmp_path / "consumers.yaml"
    config.write_text(
        "version: 1\n"
        "consumers:\n"
        "  files-only:\n"
        f"    certificate: {LINEAGE}\n"
        f"    files: [{{path: {copy}, content: fullchain}}]\n"
    )
    return config, copy


# --------------------------------------------------------------------------- the .deb


def test_the_deb_has_setup_cfg_version(deb: Path) -> None:
    assert (
        cli.run(
            ["dpkg-deb", "-f", deb, "Version"],
            env=system_env(),
            cwd="/",
            timeout=RUN_TIMEOUT,
            check=True,
        ).stdout.strip()
        == debian_version()
    )


def test_lintian_reports_no_errors(built: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (apt-get install lintian)")
    changes = sorted(built.glob("*.changes"))
    assert len(changes) == 1, changes
    proc = cli.run(
        ["lintian", "--info", "--display-info", *changes],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
    )
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert not errors, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_deb_ships_every_piece(deb: Path) -> None:
    listing = cli.run(
        ["dpkg-deb", "-c", deb], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True
    ).stdout
    files = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    expected = {
        str(BINARY),
        str(CONFIG),
        str(HOOK),
        "/usr/share/man/man1/certbot-fanout.1.gz",
        "/usr/share/doc/certbot-fanout/README.md.gz",
        "/usr/share/doc/certbot-fanout/copyright",
        "/usr/lib/python3/dist-packages/certbot_fanout/plugin.py",
        f"/usr/lib/python3/dist-packages/certbot_fanout-{version()}.dist-info/entry_points.txt",
    }
    assert expected <= files, expected - files
    units = {f for f in files if f.startswith(UNIT_DIRS) and f.endswith((".service", ".timer"))}
    assert {Path(u).name for u in units} == {
        "certbot-fanout-status.service",
        "certbot-fanout-status.timer",
    }
    conffiles = cli.run(
        ["dpkg-deb", "-I", deb, "conffiles"],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout.split()
    assert sorted(conffiles) == sorted([str(CONFIG), str(HOOK)])
    control = cli.run(
        ["dpkg-deb", "-f", deb, "Depends"],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    for dependency in ("python3-certbot (>= 2.1)", "python3-yaml", "python3-cryptography"):
        assert dependency in control


# --------------------------------------------------------------------------- installed


@pytest.mark.usefixtures("installed")
def test_debian_certbot_lists_the_plugin(tmp_path: Path) -> None:
    out = certbot_plugins(DEBIAN_CERTBOT, tmp_path)
    assert "* fanout" in out, out
    assert "Entry point: fanout = certbot_fanout.plugin:Installer" in out


@pytest.mark.usefixtures("installed")
def test_the_command_runs_on_debian_python() -> None:
    assert BINARY.read_text().splitlines()[0] == f"#!{DEBIAN_PYTHON}"
    proc = cli.run([BINARY, "--help"], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True)
    assert "usage: certbot-fanout" in proc.stdout
    assert (
        cli.run(
            [BINARY, "--version"], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True
        ).stdout.strip()
        == f"certbot-fanout {version()}"
    )
    where = cli.run(
        [DEBIAN_PYTHON, "-c", "import certbot_fanout; print(certbot_fanout.__file__)"],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert where.stdout.startswith("/usr/lib/python3/dist-packages/certbot_fanout/")


@pytest.mark.usefixtures("installed")
def test_the_shipped_map_has_no_consumer() -> None:
    assert CONFIG.read_bytes() == (PROJECT / "contrib" / "consumers.yaml").read_bytes()
    proc = cli.run(
        [BINARY, "check", "--no-probe"], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True
    )
    assert proc.stdout.startswith("OK:"), proc.stdout


@pytest.mark.usefixtures("installed")
def test_the_hook_is_quiet_for_a_lineage_no_consumer_uses(live: Path, tmp_path: Path) -> None:
    assert os.access(HOOK, os.X_OK)
    for lineage in (live, tmp_path / "letsencrypt" / "live" / "nonexistent.test"):
        proc = run_hook(lineage)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), lineage


@pytest.mark.usefixtures("installed")
def test_the_hook_deploys_for_a_consumer(live: Path, tmp_path: Path) -> None:
    config, copy = consumer_map(tmp_path)
    proc = run_hook(live, CERTBOT_FANOUT_CONFIG=str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert copy.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert "files-only" in proc.stdout


@pytest.mark.usefixtures("installed")
def test_systemd_units_verify_clean() -> None:
    units = [
        f
        for f in cli.run(
            ["dpkg", "-L", PACKAGE], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True
        ).stdout.splitlines()
        if f.startswith(UNIT_DIRS) and f.endswith((".service", ".timer"))
    ]
    assert len(units) == 2, units
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = cli.run(["systemd-analyze", "verify", *units], env=system_env(), cwd="/", timeout=120)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert TIMER_LINK.is_symlink(), "the timer is enabled on install"


@pytest.mark.usefixtures("installed")
def test_man_finds_the_page() -> None:
    page = cli.run(
        ["man", "-w", "certbot-fanout"], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True
    ).stdout.strip()
    assert page == "/usr/share/man/man1/certbot-fanout.1.gz"
    proc = cli.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page],
        env=system_env(MANWIDTH="80"),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert proc.stderr == ""
    assert Path("/usr/share/doc/certbot-fanout/README.md.gz").is_file()


# --------------------------------------------------------------------------- remove, purge


def make_runtime_state(live: Path, tmp_path: Path) -> None:
    """What a working installation accumulates: a deploy through the hook (state file and
    lock) and a run of the status service's command (metrics file)."""
    config, _ = consumer_map(tmp_path)
    proc = run_hook(live, CERTBOT_FANOUT_CONFIG=str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (STATE_DIR / "state.json").is_file()
    assert LOCK.exists()
    unit = next(
        Path(d) / "certbot-fanout-status.service"
        for d in UNIT_DIRS
        if (Path(d) / "certbot-fanout-status.service").exists()
    )
    exec_start = next(
        line.removeprefix("ExecStart=")
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    assert f"--prometheus {PROM}" in exec_start
    cli.run(shlex.split(exec_start), env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True)
    assert PROM.is_file()


def test_remove_keeps_conffiles_and_state(
    machine: None, deb: Path, live: Path, tmp_path: Path
) -> None:
    install(deb)
    with directory_made(PROM_DIR):
        make_runtime_state(live, tmp_path)
        apt_get("remove", PACKAGE)
        assert PROM.is_file()
    assert package_status() == "deinstall ok config-files"
    assert not BINARY.exists()
    assert CONFIG.is_file() and HOOK.is_file()
    assert (STATE_DIR / "state.json").is_file()
    # The hook is a conffile that outlives the command: it must then do nothing, quietly.
    for lineage in (live, tmp_path / "nonexistent"):
        proc = run_hook(lineage)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert "* fanout" not in certbot_plugins(DEBIAN_CERTBOT, tmp_path / "certbot")
    purge()
    assert package_status() in ("", "unknown ok not-installed")
    assert not CONFIG.parent.exists() and not HOOK.exists()


def test_purge_removes_conffiles_state_metrics_and_lock(
    machine: None, deb: Path, live: Path, tmp_path: Path
) -> None:
    install(deb)
    with directory_made(PROM_DIR):
        make_runtime_state(live, tmp_path)
        apt_get("purge", PACKAGE)
        assert not PROM.exists()
    assert package_status() in ("", "unknown ok not-installed")
    for path in (BINARY, CONFIG.parent, HOOK, STATE_DIR, LOCK, TIMER_LINK):
        assert not (path.exists() or path.is_symlink()), path
    assert "* fanout" not in certbot_plugins(DEBIAN_CERTBOT, tmp_path / "certbot")


# --------------------------------------------------------------------------- wheel and sdist


def copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", "build", "dist"
    )
    return Path(shutil.copytree(PROJECT, dest, ignore=ignore))


def venv(path: Path, *packages: str | Path) -> Path:
    """A fresh virtualenv from Debian's python3 with ``packages`` from PyPI; returns bin/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = SYSTEM_PATH
    cli.run([DEBIAN_PYTHON, "-m", "venv", path], env=env, cwd="/", timeout=RUN_TIMEOUT, check=True)
    cli.run(
        [path / "bin" / "pip", "install", "-q", "--disable-pip-version-check", *packages],
        env=env,
        cwd="/",
        timeout=900,
        check=True,
    )
    return path / "bin"


def project_warnings(output: str) -> list[str]:
    """The warnings a build printed: Python warnings as pip relays them (``...: SomeWarning:
    message``) and as ``build`` prints them (``WARNING message``). pip's own ``WARNING:``
    lines (about this machine's package indexes) are not the project's."""
    relayed = re.findall(r"\b[A-Z]\w*Warning: (.*)", output)
    built = re.findall(r"^WARNING (.*)$", output, flags=re.MULTILINE)
    return sorted(set(relayed + built))


def test_wheel_and_sdist_pass_twine_and_the_wheel_plugs_into_pypi_certbot(
    tmp_path: Path,
) -> None:
    tree = copy_tree(tmp_path / "tree")
    # pip upgraded, as ./dev does: a current pip relays the build backend's warnings.
    tools = venv(tmp_path / "tools", "--upgrade", "pip", "build", "twine")
    dist = tmp_path / "dist"
    build = cli.run(
        [tools / "python", "-m", "build", "--outdir", dist, tree],
        env=system_env(),
        cwd="/",
        timeout=900,
        check=True,
    )
    # Neither a build nor an editable install (./dev's) with today's setuptools warns of anything
    # of the project's making (they once printed "License classifiers are deprecated" three
    # times, and "Editable installation" for the flat layout).
    editable = cli.run(
        [tools / "pip", "install", "--no-deps", "-e", tree],
        env=system_env(),
        cwd="/",
        timeout=900,
        check=True,
    )
    output = build.stdout + build.stderr + editable.stdout + editable.stderr
    assert project_warnings(output) == []
    v = version()
    built = {p.name for p in dist.iterdir()}
    assert built == {f"certbot_fanout-{v}-py3-none-any.whl", f"certbot_fanout-{v}.tar.gz"}, built
    check = cli.run(
        [tools / "twine", "check", "--strict", *sorted(dist.iterdir())],
        env=system_env(),
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert check.stdout.count("PASSED") == 2, check.stdout

    wheel = next(dist.glob("*.whl"))
    app = venv(tmp_path / "app", wheel)
    out = certbot_plugins(app / "certbot", tmp_path / "certbot")
    assert "* fanout" in out, out
    assert (
        cli.run(
            [app / "certbot-fanout", "--version"],
            env=system_env(),
            cwd="/",
            timeout=RUN_TIMEOUT,
            check=True,
        ).stdout.strip()
        == f"certbot-fanout {v}"
    )


# --------------------------------------------------------------------------- snap

SNAP_DIR = PROJECT / "contrib" / "snap"


def test_snap_recipe_is_a_certbot_plugin_snap() -> None:
    recipe = yaml.safe_load((SNAP_DIR / "snapcraft.yaml").read_text())
    assert recipe["name"] == PACKAGE and recipe["confinement"] == "strict"
    slot = recipe["slots"]["certbot"]
    assert (slot["interface"], slot["content"]) == ("content", "certbot-1")
    assert slot["read"] == ["$SNAP/lib/python3.12/site-packages"], "core24's Python"
    plug = recipe["plugs"]["certbot-metadata"]
    assert (plug["interface"], plug["content"]) == ("content", "metadata-1")
    assert plug["target"] == "$SNAP/certbot-shared"
    install_requires = configparser.ConfigParser()
    install_requires.read(PROJECT / "setup.cfg")
    assert "PyYAML" in install_requires["options"]["install_requires"], "bundled by the snap"
    for script in (SNAP_DIR / "hooks" / "post-refresh", *sorted((SNAP_DIR / "local").iterdir())):
        assert os.access(script, os.X_OK), script
        cli.run(["sh", "-n", script], env=system_env(), cwd="/", timeout=RUN_TIMEOUT, check=True)


def fake_snaps(tmp_path: Path) -> dict[str, str]:
    """A stand-in for /snap/certbot/current (Debian's python3, which has PyYAML and
    cryptography) and /snap/certbot-fanout/current (this checkout's certbot_fanout in a
    lib/python3.12/site-packages), as the wrapper's overrides."""
    certbot = tmp_path / "certbot"
    (certbot / "bin").mkdir(parents=True)
    (certbot / "bin" / "python3").symlink_to(DEBIAN_PYTHON)
    fanout = tmp_path / "certbot-fanout"
    site = fanout / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    (site / "certbot_fanout").symlink_to(PROJECT / "certbot_fanout")
    (fanout / "share" / "certbot-fanout").mkdir(parents=True)
    for script in ("certbot-fanout", "deploy-hook"):
        (fanout / "share" / "certbot-fanout" / script).symlink_to(SNAP_DIR / "local" / script)
    return system_env(CERTBOT_FANOUT_CERTBOT_SNAP=str(certbot), CERTBOT_FANOUT_SNAP=str(fanout))


def test_snap_wrapper_and_hook_run_the_command_on_certbots_python(tmp_path: Path) -> None:
    env = fake_snaps(tmp_path)
    wrapper = SNAP_DIR / "local" / "certbot-fanout"
    proc = cli.run([wrapper, "--version"], env=env, cwd="/", timeout=RUN_TIMEOUT, check=True)
    assert proc.stdout.strip() == f"certbot-fanout {version()}"
    shipped = str(PROJECT / "contrib" / "consumers.yaml")
    proc = cli.run(
        [wrapper, "--config", shipped, "check", "--no-probe"],
        env=env,
        cwd="/",
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert proc.stdout.startswith("OK:"), proc.stdout
    hook = SNAP_DIR / "local" / "deploy-hook"
    hook_env = {**env, "CERTBOT_FANOUT_CONFIG": shipped, "RENEWED_LINEAGE": "/nonexistent/live/x"}
    proc = cli.run([hook], env=hook_env, cwd="/", timeout=RUN_TIMEOUT, check=True)
    assert (proc.stdout, proc.stderr) == ("", "")
    gone = {**hook_env, "CERTBOT_FANOUT_SNAP": str(tmp_path / "removed")}
    proc = cli.run([hook], env=gone, cwd="/", timeout=RUN_TIMEOUT, check=True)
    assert (proc.stdout, proc.stderr) == ("", ""), "the snap is gone: a quiet no-op"
    broken = {**env, "CERTBOT_FANOUT_CERTBOT_SNAP": str(tmp_path / "no-certbot")}
    proc = cli.run([wrapper, "--version"], env=broken, cwd="/", timeout=RUN_TIMEOUT)
    assert proc.returncode == 2 and "needs the certbot snap" in proc.stderr


@pytest.mark.parametrize(
    ("certbot_version", "code"), [("5.8.0", 0), ("2.1", 0), ("2.0.9", 1), (None, 0)]
)
def test_snap_post_refresh_needs_the_certbot_setup_cfg_requires(
    tmp_path: Path, certbot_version: str | None, code: int
) -> None:
    snap = tmp_path / "snap"
    (snap / "certbot-shared").mkdir(parents=True)
    shutil.copy(PROJECT / "setup.cfg", snap / "setup.cfg")
    if certbot_version is not None:
        (snap / "certbot-shared" / "certbot-version.txt").write_text(f"{certbot_version}\n")
    env = system_env(SNAP=str(snap), SNAP_DATA=str(tmp_path))
    proc = cli.run([SNAP_DIR / "hooks" / "post-refresh"], env=env, cwd="/", timeout=RUN_TIMEOUT)
    assert proc.returncode == code, proc.stderr
