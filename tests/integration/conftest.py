"""Fixtures for the integration tests: one real Pebble per module, a private Certbot per test,
and nginx / HAProxy started by the test and stopped by PID when it ends."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .stack import HAPROXY_BIN, NGINX_BIN, PEBBLE_BIN, Certbot, HAProxy, Nginx, Pebble

CERT_NAME = "web.fanout.test"
FANOUT = Path(sys.prefix) / "bin" / "certbot-fanout"


def _require_binary(path: str, what: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.skip(f"{what} not installed ({path} is not executable)")


@pytest.fixture(scope="session")
def root() -> None:
    """Skip unless root: the tests chown files and run nginx and HAProxy on loopback."""
    if os.geteuid() != 0:
        pytest.skip("needs root: places files with other owners and runs nginx/HAProxy")


@pytest.fixture(scope="session")
def fanout_bin() -> Path:
    if not os.access(FANOUT, os.X_OK):
        pytest.skip(f"{FANOUT} missing: install the project into the venv (pip install -e .)")
    return FANOUT


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One real ACME server for the whole module."""
    _require_binary(PEBBLE_BIN, "pebble")
    server = Pebble(tmp_path_factory.mktemp("pebble"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def issued(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Certbot:
    """A lineage issued once per module by the real Certbot; tests get private clones of it."""
    template = Certbot(pebble, tmp_path_factory.mktemp("certbot-template"))
    template.issue(CERT_NAME)
    return template


def clone_certbot(template: Certbot, basedir: Path, extra_env: dict[str, str]) -> Certbot:
    """A Certbot with its own config/work/logs dirs holding a copy of the template's lineage
    and account; the absolute paths in renewal/*.conf are rewritten to the copy, so that
    `certbot renew` renews the copy. (Saves a ~2.4 s issuance per test.)"""
    clone = Certbot(template.pebble, basedir, extra_env=extra_env)
    shutil.copytree(template.config_dir, clone.config_dir, symlinks=True)
    old, new = f"{template.basedir}/", f"{clone.basedir}/"
    for conf in (clone.config_dir / "renewal").glob("*.conf"):
        text = conf.read_text()
        assert old in text, f"{conf} does not name {old}; certbot changed its layout?"
        conf.write_text(text.replace(old, new))
    return clone


@pytest.fixture
def certbot(issued: Certbot, tmp_path: Path) -> Certbot:
    """A real Certbot with its own dirs and a freshly issued lineage CERT_NAME; its hooks
    see CERTBOT_FANOUT_CONFIG=tmp_path/consumers.yaml (the path `write_config` writes)."""
    env = {"CERTBOT_FANOUT_CONFIG": str(tmp_path / "consumers.yaml")}
    return clone_certbot(issued, tmp_path / "certbot", env)


@pytest.fixture
def start_nginx(root: None, request: pytest.FixtureRequest) -> Callable[..., Nginx]:
    """Start a real nginx; it is stopped by PID when the test ends."""
    _require_binary(NGINX_BIN, "nginx")

    def start(prefix: Path, cert: Path, key: Path) -> Nginx:
        daemon = Nginx(prefix, cert, key, server_name=CERT_NAME)
        request.addfinalizer(daemon.stop)
        daemon.start()
        return daemon

    return start


@pytest.fixture
def start_haproxy(root: None, request: pytest.FixtureRequest) -> Callable[..., HAProxy]:
    """Start a real HAProxy master-worker; it is stopped by PID when the test ends."""
    _require_binary(HAPROXY_BIN, "haproxy")

    def start(workdir: Path, combined_pem: Path) -> HAProxy:
        daemon = HAProxy(workdir, combined_pem)
        request.addfinalizer(daemon.stop)
        daemon.start()
        return daemon

    return start


def _account(name: str) -> tuple[str, int, int] | None:
    try:
        entry = pwd.getpwnam(name)
        group = grp.getgrnam(name)
    except KeyError:
        return None
    return name, entry.pw_uid, group.gr_gid


@pytest.fixture(scope="session")
def web_account(root: None) -> Iterator[tuple[str, int, int]]:
    """(name, uid, gid) of a non-root service account: www-data, else a temporary system user."""
    name = "fanout-www"
    existing = _account("www-data") or _account(name)  # fanout-www: left by a killed run
    if existing is not None:
        yield existing
        return
    if shutil.which("useradd") is None:
        pytest.skip("no www-data user and no useradd to create one")
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "-s",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    try:
        created = _account(name)
        assert created is not None, f"useradd did not create {name}"
        yield created
    finally:
        subprocess.run(["userdel", name], check=False)
