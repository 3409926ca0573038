"""The Certbot installer ``fanout`` (certbot_fanout/plugin.py) inside a real Certbot, against
real Pebble and a real nginx: pip's certbot 5.8 from the venv and Debian's certbot 2.1 with the
plugin on its PYTHONPATH.

Every consumer's test and reload command also appends a line to a counter file, so a test can
tell exactly how many times a consumer was tested and reloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from certbot_fanout._pki import ThrowawayCA
from tests.support import integration as helpers
from tests.support.integration import (
    CERT_NAME,
    SH,
    FileState,
    WebConsumer,
    clone_certbot,
    hook_command,
    lineage_files,
    lineage_fingerprint,
    log_text,
    renewal_params,
    self_made,
    write_copies,
)
from tests.support.maps import config_text
from tests.support.stack import Certbot, Nginx, Pebble

PROJECT = Path(__file__).resolve().parents[2]
DEBIAN_CERTBOT = "/usr/bin/certbot"
DEBIAN_PYTHON = "/usr/bin/python3"
PLUGIN_LOGGER = "certbot_fanout.plugin"


# --------------------------------------------------------------------------- helpers


def file_state(path: Path) -> FileState:
    """What a test compares: bytes, inode, mtime, owner and mode (not ctime)."""
    return helpers.file_state(path, ctime=False)


def plugin_log_lines(certbot: Certbot) -> list[str]:
    """What the plugin itself logged (its logger's name is in certbot's log format)."""
    return [line for line in log_text(certbot).splitlines() if f":{PLUGIN_LOGGER}:" in line]


class Web(WebConsumer):
    """A real nginx whose cert and key are the consumer's own copies (root-owned)."""

    def config_text(self, extra_consumers: str = "") -> str:
        """A map with this consumer and ``extra_consumers``."""
        return config_text(self.yaml(), extra_consumers, verify_timeout=20)


StartWeb = Callable[[bytes, bytes], Web]


@pytest.fixture
def start_web(start_nginx: Callable[..., Nginx], tmp_path: Path) -> StartWeb:
    """start_web(fullchain_pem, key_pem): nginx serving copies of those bytes."""

    def start(fullchain: bytes, key: bytes) -> Web:
        cert_path, key_path = write_copies(tmp_path / "nginx" / "tls", fullchain, key)
        nginx = start_nginx(tmp_path / "nginx", cert_path, key_path)
        counter = tmp_path / "consumer-events"
        return Web("nginx", CERT_NAME, nginx, cert_path, key_path, counter, verify_timeout=None)

    return start


def assert_report(certbot: Certbot, pattern: str) -> None:
    """The plugin logged a per-consumer report line matching ``pattern``."""
    lines = plugin_log_lines(certbot)
    assert any(re.search(pattern, line) for line in lines), (
        f"no plugin log line matches {pattern!r}; plugin lines:\n" + "\n".join(lines)
    )


# --------------------------------------------------------------------------- fixtures


def clone_reconfigured(reconfigured: Certbot, tmp_path: Path, env_config: Path) -> Certbot:
    clone = clone_certbot(
        reconfigured, tmp_path / "certbot", {"CERTBOT_FANOUT_CONFIG": str(env_config)}
    )
    assert renewal_params(clone)["fanout_config"] == str(clone.basedir / "fanout.yaml")
    return clone


@pytest.fixture
def with_installer(reconfigured: Certbot, tmp_path: Path) -> Certbot:
    """A private lineage whose renewal conf has `installer = fanout` and
    `fanout_config = BASEDIR/fanout.yaml`; $CERTBOT_FANOUT_CONFIG names a file that does not
    exist, so only the saved option can lead the plugin to its config."""
    return clone_reconfigured(reconfigured, tmp_path, tmp_path / "no-such-config.yaml")


def fanout_config(certbot: Certbot) -> Path:
    return certbot.basedir / "fanout.yaml"


def _plugin_source(tmp: Path) -> Path:
    """A copy of the project's packaging inputs, so that pip's build leaves the tree alone."""
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(
        PROJECT / "certbot_fanout",
        src / "certbot_fanout",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, src / name)
    return src


@pytest.fixture(scope="session")
def debian_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project installed with Debian's pip into a --target dir for PYTHONPATH (its
    dependencies, PyYAML and cryptography, come from Debian)."""
    for binary in (DEBIAN_CERTBOT, DEBIAN_PYTHON):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"Debian's certbot not installed ({binary} is not executable)")
    work = tmp_path_factory.mktemp("debian-plugin")
    target = work / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [
            DEBIAN_PYTHON,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",  # Debian's setuptools; nothing downloaded
            "--target",
            str(target),
            str(_plugin_source(work)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "certbot_fanout" / "plugin.py").is_file()
    return target


def debian_certbot(
    pebble: Pebble, basedir: Path, plugin_dir: Path | None, env_config: Path | None = None
) -> Certbot:
    env = {"PYTHONPATH": str(plugin_dir) if plugin_dir else ""}
    if env_config is not None:
        env["CERTBOT_FANOUT_CONFIG"] = str(env_config)
    return Certbot(pebble, basedir, certbot_argv=[DEBIAN_CERTBOT], extra_env=env)


# --------------------------------------------------------------------------- 1. plugins


def _assert_lists_fanout(out: str) -> None:
    """`certbot plugins` has an entry `* fanout`: an Installer from certbot_fanout.plugin."""
    block = re.search(r"^\* fanout\n(.+\n)+", out, re.MULTILINE)
    assert block is not None, out
    entry = block.group(0)
    assert "certbot_fanout.plugin:Installer" in entry, entry
    interfaces = re.search(r"^Interfaces: (.+)$", entry, re.MULTILINE)
    assert interfaces is not None and "Installer" in interfaces.group(1), entry


def test_certbot_58_plugins_lists_fanout(pebble: Pebble, tmp_path: Path) -> None:
    """pip's certbot (the venv's) finds the `fanout` installer through its entry point."""
    certbot = Certbot(pebble, tmp_path / "certbot")
    version = certbot.run("--version").stdout
    assert version.startswith("certbot 5."), version

    result = certbot.run("plugins")

    _assert_lists_fanout(result.stdout)


def test_debian_certbot_21_plugins_lists_fanout(
    pebble: Pebble, debian_plugin_dir: Path, tmp_path: Path
) -> None:
    """Debian's certbot 2.1 lists `fanout` with the --target dir on PYTHONPATH, and not
    without it (so the listing comes from that install)."""
    without = debian_certbot(pebble, tmp_path / "bare", None)
    version = without.run("--version").stdout
    assert version.startswith("certbot 2."), version
    assert "* fanout" not in without.run("plugins").stdout

    result = debian_certbot(pebble, tmp_path / "certbot", debian_plugin_dir).run("plugins")

    _assert_lists_fanout(result.stdout)


# --------------------------------------------------------------------------- 2. install


def test_install_deploys_lineage_to_real_nginx(
    certbot: Certbot, start_web: StartWeb, ca: ThrowawayCA, tmp_path: Path
) -> None:
    """`certbot install --cert-name NAME -i fanout --fanout-config FILE` (5.8) copies the
    lineage to nginx's files, tests and reloads nginx once, and nginx then serves the lineage
    instead of the self-made certificate it served before."""
    fullchain, key, old_fp = self_made(ca)
    web = start_web(fullchain, key)
    assert web.served() == old_fp
    new_fp = lineage_fingerprint(certbot)
    assert new_fp != old_fp
    config = tmp_path / "fanout.yaml"  # not $CERTBOT_FANOUT_CONFIG: only the option finds it
    config.write_text(web.config_text())
    assert not Path(certbot.extra_env["CERTBOT_FANOUT_CONFIG"]).exists()

    result = certbot.run(
        "install", "--cert-name", CERT_NAME, "-i", "fanout", "--fanout-config", str(config)
    )

    assert result.returncode == 0
    assert web.served() == new_fp
    assert (web.cert.read_bytes(), web.key.read_bytes()) == lineage_files(certbot)
    assert web.events() == ["test", "reload"], "deployed more or less than once"
    assert_report(certbot, r"\bnginx\s+ok\s+placed 2 of 2 files, tested, reloaded")
    assert "deployed to 1 consumer" in result.stdout + result.stderr


# --------------------------------------------------------------------------- 3. reconfigure


def test_reconfigure_then_renew_deploys_through_renew_deploy(
    certbot: Certbot, start_web: StartWeb, tmp_path: Path
) -> None:
    """After `certbot reconfigure -i fanout --fanout-config FILE` (5.8) a forced `certbot renew`
    with no deploy hook redeploys to nginx through the installer, nginx serves the renewed
    certificate, and renewal/NAME.conf still holds installer and fanout_config."""
    web = start_web(*lineage_files(certbot))
    old_fp = lineage_fingerprint(certbot)
    assert web.served() == old_fp
    config = tmp_path / "fanout.yaml"
    config.write_text(web.config_text())
    before = {p: file_state(p) for p in web.placed}

    certbot.run(
        "reconfigure", "--cert-name", CERT_NAME, "-i", "fanout", "--fanout-config", str(config)
    )

    params = renewal_params(certbot)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params
    assert "renew_hook" not in params, params
    assert web.events() == [], "reconfigure's dry run ran a consumer command"
    assert {p: file_state(p) for p in web.placed} == before

    result = certbot.renew()

    assert result.returncode == 0
    new_fp = lineage_fingerprint(certbot)
    assert new_fp != old_fp, "certbot did not renew the lineage"
    assert web.served() == new_fp
    assert (web.cert.read_bytes(), web.key.read_bytes()) == lineage_files(certbot)
    assert web.events() == ["test", "reload"]
    log = log_text(certbot)
    assert "deploy-hook" not in log
    assert_report(certbot, r"\bnginx\s+ok\s+placed 2 of 2 files, tested, reloaded")
    params = renewal_params(certbot)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params


# --------------------------------------------------------------------------- 4. failed reload


def test_failing_reload_makes_renew_fail_and_names_the_consumer(
    with_installer: Certbot, start_web: StartWeb
) -> None:
    """A consumer whose reload exits 1: `certbot renew` exits non-zero and its stderr and log
    name the consumer, the stage and the command's own message; the healthy nginx consumer is
    still deployed."""
    certbot = with_installer
    web = start_web(*lineage_files(certbot))
    broken = f"""\
  broken-reload:
    certificate: {CERT_NAME}
    reload: ["{SH}", "-c", "echo boom >&2; exit 1"]
"""
    fanout_config(certbot).write_text(web.config_text(broken))
    old_fp = lineage_fingerprint(certbot)

    result = certbot.renew(check=False)

    assert result.returncode != 0, result.stdout + result.stderr
    new_fp = lineage_fingerprint(certbot)
    assert new_fp != old_fp
    failure = re.compile(r"broken-reload failed at reload: .*exited 1.*boom")
    assert failure.search(result.stderr), result.stderr
    assert failure.search(log_text(certbot)), log_text(certbot)[-3000:]
    assert_report(certbot, r"\bbroken-reload\s+FAILED\s+failed at reload: .*boom")
    assert_report(certbot, r"\bnginx\s+ok\s+placed 2 of 2 files, tested, reloaded")
    assert web.served() == new_fp
    assert renewal_params(certbot).get("installer") == "fanout"


# --------------------------------------------------------------------------- 5. dry run


def test_renew_dry_run_touches_no_consumer(
    with_installer: Certbot, start_web: StartWeb, ca: ThrowawayCA
) -> None:
    """`certbot renew --dry-run` with installer fanout: every consumer file keeps its bytes,
    inode and mtime, no test or reload runs, and nginx keeps serving the certificate it served
    (a self-made one, so that any deploy would have changed it)."""
    certbot = with_installer
    fullchain, key, old_fp = self_made(ca)
    web = start_web(fullchain, key)
    fanout_config(certbot).write_text(web.config_text())
    lineage_fp = lineage_fingerprint(certbot)
    assert web.served() == old_fp != lineage_fp
    before = {p: file_state(p) for p in web.placed}

    result = certbot.run("renew", "--dry-run", "--no-random-sleep-on-renew")

    assert result.returncode == 0
    assert "simulated renewal" in (result.stdout + result.stderr).lower()
    assert {p: file_state(p) for p in web.placed} == before
    assert web.events() == []
    assert web.served() == old_fp
    assert lineage_fingerprint(certbot) == lineage_fp
    assert renewal_params(certbot).get("installer") == "fanout"


# --------------------------------------------------------------------------- 6. Debian 2.1


def test_debian_certbot_21_run_and_renew_reach_nginx(
    pebble: Pebble,
    debian_plugin_dir: Path,
    start_web: StartWeb,
    ca: ThrowawayCA,
    tmp_path: Path,
) -> None:
    """Debian's certbot 2.1: `certbot run -a manual ... -i fanout --fanout-config FILE` for two
    names issues and deploys once to nginx (which then serves the lineage, not its self-made
    cert), records `installer = fanout` and `fanout_config` in renewal/NAME.conf, and a forced
    `certbot renew` reaches nginx again through the installer (no deploy hook)."""
    fullchain, key, old_fp = self_made(ca)
    web = start_web(fullchain, key)
    config = tmp_path / "fanout.yaml"
    config.write_text(web.config_text())
    certbot = debian_certbot(
        pebble, tmp_path / "debian", debian_plugin_dir, tmp_path / "no-such-config.yaml"
    )

    certbot.run(
        "run",
        "-a",
        "manual",
        "--manual-auth-hook",
        "/bin/true",
        "--preferred-challenges",
        "http",
        "-d",
        CERT_NAME,
        "-d",
        f"www.{CERT_NAME}",  # deploy_cert is called per name: the plugin must deploy once
        "-i",
        "fanout",
        "--fanout-config",
        str(config),
        "--agree-tos",
        "--register-unsafely-without-email",
    )

    first = lineage_fingerprint(certbot)
    assert first != old_fp
    assert web.served() == first
    assert (web.cert.read_bytes(), web.key.read_bytes()) == lineage_files(certbot)
    assert web.events() == ["test", "reload"]
    assert_report(certbot, r"\bnginx\s+ok\s+placed 2 of 2 files, tested, reloaded")
    params = renewal_params(certbot)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params

    certbot.renew()

    second = lineage_fingerprint(certbot)
    assert second != first, "certbot did not renew the lineage"
    assert web.served() == second
    assert web.events() == ["test", "reload"] * 2
    assert "deploy-hook" not in log_text(certbot)
    params = renewal_params(certbot)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params


# --------------------------------------------------------------------------- 7. broken config


def test_broken_config_on_renew_keeps_installer_and_fails_with_location(
    with_installer: Certbot, start_web: StartWeb
) -> None:
    """Invalid YAML in the consumer map at renewal: `certbot renew` exits non-zero naming
    file:line:col, touches no consumer, and renewal/NAME.conf keeps `installer = fanout` (so
    the next renewal deploys once the file is fixed)."""
    certbot = with_installer
    web = start_web(*lineage_files(certbot))
    config = fanout_config(certbot)
    good = web.config_text()
    bad_line = f"  broken: {{certificate: {CERT_NAME}: y}}"
    config.write_text(good + bad_line + "\n")
    line_no = len(good.splitlines()) + 1
    col = bad_line.index(": y") + 1  # the second ':' in a flow mapping is the error
    where = f"{config}:{line_no}:{col}: YAML syntax error"
    old_fp = lineage_fingerprint(certbot)
    before = {p: file_state(p) for p in web.placed}

    result = certbot.renew(check=False)

    assert result.returncode != 0, result.stdout + result.stderr
    assert where in result.stderr, result.stderr
    assert where in log_text(certbot)
    assert lineage_fingerprint(certbot) != old_fp  # renewed; only the deploy failed
    params = renewal_params(certbot)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params
    assert {p: file_state(p) for p in web.placed} == before
    assert web.events() == []
    assert web.served() == old_fp

    config.write_text(good)  # fixed: the next renewal deploys through the kept installer
    certbot.renew()
    assert web.served() == lineage_fingerprint(certbot)


# --------------------------------------------------------------------------- 8. hook + installer


def test_hook_and_installer_deploy_once(
    reconfigured: Certbot, start_web: StartWeb, fanout_bin: Path, tmp_path: Path
) -> None:
    """Installer fanout plus `--deploy-hook certbot-fanout`: certbot runs the hook first, which
    places, tests and reloads; the plugin's renew_deploy then finds the files current and nginx
    serving the new certificate, and reloads nothing: one test and one reload in all.

    Known product bug (fails in most runs): the plugin's "files current" check probes once; for
    ~100 ms after the hook's `nginx -s reload` nginx's old worker still accepts beside the new
    one, so that probe may meet the old certificate and the plugin reloads again."""
    certbot = clone_reconfigured(reconfigured, tmp_path, tmp_path / "certbot" / "fanout.yaml")
    config = fanout_config(certbot)
    assert certbot.extra_env["CERTBOT_FANOUT_CONFIG"] == str(config)  # the hook's config
    web = start_web(*lineage_files(certbot))
    config.write_text(web.config_text())
    hook = hook_command(fanout_bin, tmp_path / "lock")
    old_fp = lineage_fingerprint(certbot)

    result = certbot.renew("--deploy-hook", hook)

    assert result.returncode == 0
    new_fp = lineage_fingerprint(certbot)
    assert new_fp != old_fp
    assert web.served() == new_fp
    assert web.events() == ["test", "reload"], "deployed more than once:\n" + "\n".join(
        plugin_log_lines(certbot)
    )
    log = log_text(certbot)
    assert f"Running deploy-hook command: {hook}" in log
    hook_report = re.search(r"nginx\s+ok\s+placed 2 of 2 files, tested, reloaded", log)
    assert hook_report is not None, log[-3000:]
    assert_report(certbot, r"\bnginx\s+ok\s+files current, verified 127\.0\.0\.1:")
    plugin_start = log.index(next(ln for ln in plugin_log_lines(certbot) if "files current" in ln))
    assert hook_report.start() < plugin_start, "the plugin deployed before the hook"
    assert renewal_params(certbot).get("installer") == "fanout"
