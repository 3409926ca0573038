"""Fixtures for the integration tests: one real Pebble per module, a private Certbot per test,
and nginx / HAProxy started by the test and stopped by PID when it ends."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.hostworld import World
from tests.support.integration import (
    CERT_NAME,
    clone_certbot,
    renewal_params,
    require_binary,
    service_account,
)
from tests.support.lineages import LineageFactory
from tests.support.proc import Account, find_account
from tests.support.sshhosts import SshHosts
from tests.support.stack import HAPROXY_BIN, NGINX_BIN, PEBBLE_BIN, Certbot, HAProxy, Nginx, Pebble
from tests.support.synapse_env import (
    SYNAPSE_REQUIREMENT,
    SYNAPSE_USER,
    SYNAPSE_VENV,
    SynapseVenvError,
    ensure_synapse_venv,
)

FANOUT = Path(sys.prefix) / "bin" / "certbot-fanout"


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
    require_binary(PEBBLE_BIN, "pebble")
    with Pebble(tmp_path_factory.mktemp("pebble")) as server:
        yield server


@pytest.fixture(scope="module")
def issued(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Certbot:
    """A lineage issued once per module by the real Certbot; tests get private clones of it."""
    template = Certbot(pebble, tmp_path_factory.mktemp("certbot-template"))
    template.issue(CERT_NAME)
    return template


@pytest.fixture(scope="module")
def reconfigured(issued: Certbot, tmp_path_factory: pytest.TempPathFactory) -> Certbot:
    """A copy of the module's lineage on which `certbot reconfigure -i fanout --fanout-config
    BASEDIR/fanout.yaml` (5.8) ran once; tests clone it (clone_certbot moves the path along)."""
    template = clone_certbot(issued, tmp_path_factory.mktemp("certbot-reconfigured"), {})
    config = template.basedir / "fanout.yaml"
    config.write_text("version: 1\nconsumers: {}\n")
    template.run(
        "reconfigure", "--cert-name", CERT_NAME, "-i", "fanout", "--fanout-config", str(config)
    )
    params = renewal_params(template)
    assert params.get("installer") == "fanout", params
    assert params.get("fanout_config") == str(config), params
    return template


@pytest.fixture
def certbot(issued: Certbot, tmp_path: Path) -> Certbot:
    """A real Certbot with its own dirs and a freshly issued lineage CERT_NAME; its hooks
    see CERTBOT_FANOUT_CONFIG=tmp_path/consumers.yaml (the path `write_config` writes)."""
    env = {"CERTBOT_FANOUT_CONFIG": str(tmp_path / "consumers.yaml")}
    return clone_certbot(issued, tmp_path / "certbot", env)


@pytest.fixture
def start_nginx(root: None, request: pytest.FixtureRequest) -> Callable[..., Nginx]:
    """Start a real nginx; it is stopped by PID when the test ends."""
    require_binary(NGINX_BIN, "nginx")

    def start(prefix: Path, cert: Path, key: Path) -> Nginx:
        daemon = Nginx(prefix, cert, key, server_name=CERT_NAME)
        request.addfinalizer(daemon.stop)
        daemon.start()
        return daemon

    return start


@pytest.fixture
def start_haproxy(root: None, request: pytest.FixtureRequest) -> Callable[..., HAProxy]:
    """Start a real HAProxy master-worker; it is stopped by PID when the test ends."""
    require_binary(HAPROXY_BIN, "haproxy")

    def start(workdir: Path, combined_pem: Path) -> HAProxy:
        daemon = HAProxy(workdir, combined_pem)
        request.addfinalizer(daemon.stop)
        daemon.start()
        return daemon

    return start


@pytest.fixture(scope="session")
def web_account(root: None) -> Iterator[Account]:
    """A non-root service account: www-data, else a temporary system user fanout-www."""
    existing = find_account("www-data")
    if existing is not None:
        yield existing
        return
    yield from service_account("fanout-www")  # also one left by a killed run


@pytest.fixture(scope="module")
def synapse_python(root: None) -> Path:
    """The Python of the Synapse venv (built once, cached), or a skip saying why not."""
    try:
        return ensure_synapse_venv()
    except SynapseVenvError as e:
        pytest.skip(f"cannot provide the Synapse venv {SYNAPSE_VENV} ({SYNAPSE_REQUIREMENT}): {e}")


@pytest.fixture(scope="module")
def synapse_account(root: None) -> Iterator[Account]:
    """The system account the tests run Synapse as."""
    yield from service_account(SYNAPSE_USER)


# -- ssh test hosts (issue 15) -------------------------------------------------------------


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SshHosts]:
    """Two ssh test hosts: a (with a user svc that b lacks) and b."""
    with SshHosts(tmp_path / "ssh") as made:
        made.add_host("a", users=("svc",))
        made.add_host("b")
        yield made


@pytest.fixture
def world(hosts: SshHosts, tmp_path: Path, lineages: LineageFactory) -> World:
    """A map over every host of ``hosts`` (a module may give its own), and a lineage."""
    return World(hosts, tmp_path, lineages)
