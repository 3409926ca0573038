"""Shared fixtures, the integration marker, and the rule that CI runs every integration test.

Tests under tests/integration/ are marked ``integration`` automatically. With
CERTBOT_FANOUT_REQUIRE_INTEGRATION=1 (set by ./dev test and CI), a skipped test (unit or
integration), or a run in which no integration test passed, fails the session.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings

from certbot_fanout._pki import ThrowawayCA
from tests.support.lineages import LineageFactory
from tests.support.proc import ensure_account, ensure_group, find_account
from tests.support.public import PublicInstall, install_public, public_dir
from tests.support.services import Service, start_service_fixture

# Hypothesis profiles. "dev" (the default) keeps each property module to a few seconds; "ci"
# (pytest --hypothesis-profile=ci) runs each property test 2,600 times, which makes
# tests/unit/test_generated_maps.py try over 10,000 generated maps (it counts them). A map is
# read in milliseconds and the loader must refuse any input within seconds, so the deadline is
# generous but real; print_blob lets a failure found in CI be replayed with @reproduce_failure.
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=timedelta(seconds=2),
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "ci",
    max_examples=2600,
    deadline=timedelta(seconds=2),
    derandomize=False,
    print_blob=True,
)
settings.load_profile("dev")

REQUIRE_ENV = "CERTBOT_FANOUT_REQUIRE_INTEGRATION"
INTEGRATION_DIR = Path(__file__).parent / "integration"

_skipped: list[str] = []
_passed: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)
    elif report.when == "call" and report.passed and "integration" in report.keywords:
        _passed.append(report.nodeid)


def _strict() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _strict() and exitstatus == 0 and (_skipped or not _passed):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _strict():
        return
    if _skipped:
        terminalreporter.write_line(
            f"{REQUIRE_ENV}=1: {len(_skipped)} test(s) were skipped; every test must run here:",
            red=True,
        )
        for nodeid in _skipped:
            terminalreporter.write_line(f"  {nodeid}", red=True)
    elif not _passed:
        terminalreporter.write_line(
            f"{REQUIRE_ENV}=1: no integration test passed in this run", red=True
        )


@pytest.fixture(scope="session", autouse=True)
def private_state_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs under test (and the hooks certbot starts) keep their state out of /var/lib."""
    previous = os.environ.get("CERTBOT_FANOUT_STATE")
    os.environ["CERTBOT_FANOUT_STATE"] = str(tmp_path_factory.mktemp("state") / "state.json")
    yield
    if previous is None:
        del os.environ["CERTBOT_FANOUT_STATE"]
    else:
        os.environ["CERTBOT_FANOUT_STATE"] = previous


@pytest.fixture(scope="session")
def ca() -> ThrowawayCA:
    return ThrowawayCA("certbot-fanout tests")


@pytest.fixture
def lineages(ca: ThrowawayCA, tmp_path: Path) -> LineageFactory:
    config_dir = tmp_path / "letsencrypt"
    config_dir.mkdir()
    return LineageFactory(ca, config_dir)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a consumer map (text) to a file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "consumers.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temp dir that every user can traverse (pytest's own tmp_path base is 0700)."""
    path = public_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def public_install() -> Iterator[PublicInstall]:
    """The package under test, copied where every user can read it, for tests that run
    certbot-fanout as another user (the checkout itself may be in a 0700 home)."""
    path = public_dir()
    try:
        yield install_public(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def etc_dir() -> Iterator[Path]:
    """A temporary directory under the real /etc (where discover looks), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="certbot-fanout-test-", dir="/etc"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[str, Path], Service]]:
    """start(label, live_dir): a loopback TLS service serving copies of the lineage's files."""
    yield from start_service_fixture(tmp_path)


SERVICE_ACCOUNTS = (
    "matrix-synapse",
    "postgres",
    "mysql",
    "prosody",
    "ejabberd",
    "turnserver",
    "mosquitto",
    "tomcat",
)
SERVICE_GROUPS = ("Debian-exim",)


@pytest.fixture(scope="session")
def service_accounts() -> Iterator[None]:
    """The service users and groups that presets and documented examples name, created
    where missing (as root) and removed again; skipped when some are missing and this is not
    root."""
    missing = [n for n in SERVICE_ACCOUNTS if find_account(n) is None]
    missing += [n for n in SERVICE_GROUPS if not _group_exists(n)]
    if missing and os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing)} missing, and only root can create them")
    with contextlib.ExitStack() as stack:
        for name in SERVICE_ACCOUNTS:
            stack.enter_context(ensure_account(name))
        for name in SERVICE_GROUPS:
            stack.enter_context(ensure_group(name))
        yield


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
