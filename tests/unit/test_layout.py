"""The layout of the test suite: every helper lives in ``tests.support`` and is imported from
there (no relative imports, no helpers reached through a ``pythonpath`` setting)."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SUPPORT = TESTS / "support"

# What a test module may import besides tests.support: the standard library, the package
# under test, and the third-party packages the suite uses.
THIRD_PARTY = frozenset(
    {"acme", "certbot", "cryptography", "hypothesis", "prometheus_client", "pytest", "yaml"}
)
ALLOWED = frozenset(sys.stdlib_module_names) | THIRD_PARTY | {"certbot_fanout"}


def suite_modules() -> Iterator[Path]:
    """Every Python file of the suite outside tests/support (test modules, conftests)."""
    for path in sorted(TESTS.rglob("*.py")):
        if not path.is_relative_to(SUPPORT):
            yield path


def offending_imports(path: Path) -> Iterator[str]:
    """Each import in ``path`` of a module that is neither allowed nor under tests.support."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.level:
                yield f"line {node.lineno}: relative import from {'.' * node.level}{names[0]}"
                continue
            if node.module == "tests":
                names = [f"tests.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "tests.support" or name.startswith("tests.support."):
                continue
            if name.split(".")[0] not in ALLOWED:
                yield f"line {node.lineno}: import of {name}"


@pytest.mark.parametrize("path", list(suite_modules()), ids=lambda p: str(p.relative_to(TESTS)))
def test_a_test_module_imports_helpers_only_from_tests_support(path: Path) -> None:
    found = list(offending_imports(path))
    assert not found, f"{path.relative_to(ROOT)}: helpers belong in tests/support: {found}"


def test_the_layout_check_sees_the_imports_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text(
        "from _lineages import LineageFactory\n"
        "from .helpers import explain\n"
        "from tests.integration.stack import Nginx\n"
        "from tests import integration\n"
        "import helpers\n"
        "from tests.support.cli import run\n"
        "from tests.support import cli\n"
        "import certbot_fanout.cli\n"
    )
    assert [line.split(":")[0] for line in offending_imports(bad)] == [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "line 5",
    ]


def test_no_helper_is_left_outside_tests_support() -> None:
    strays = [
        str(path.relative_to(ROOT))
        for path in suite_modules()
        if path.name not in ("__init__.py", "conftest.py") and not path.name.startswith("test_")
    ]
    assert strays == [], "helpers belong in tests/support"


def test_pytest_and_mypy_do_not_put_helper_directories_on_the_path() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pythonpath = config["tool"]["pytest"]["ini_options"].get("pythonpath", [])
    assert not any(entry.startswith("tests") for entry in pythonpath), pythonpath
    assert "mypy_path" not in config["tool"]["mypy"], config["tool"]["mypy"]


def test_every_test_directory_is_a_package() -> None:
    for directory in (TESTS, TESTS / "unit", TESTS / "integration", SUPPORT):
        assert (directory / "__init__.py").is_file(), directory


def test_tests_cite_only_documents_the_repository_has() -> None:
    cited = "DESIGN" + ".md"  # spelled in two parts so that this file does not cite it
    if (ROOT / cited).exists():
        return
    citing = [
        str(path.relative_to(ROOT)) for path in TESTS.rglob("*.py") if cited in path.read_text()
    ]
    assert citing == [], f"{cited} does not exist; cite README.md or docs/, or state the fact"


# Run as `python -m tests.support.MODULE` (sometimes from a public copy, as a service user):
# no pytest, and no certbot_fanout until a function asks for it.
STAND_ALONE = (
    "cli",
    "proc",
    "daemons_db",
    "daemons_mail",
    "daemons_xmpp",
    "synapse_env",
    "netns",
    "hosts",
)


def module_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("name", STAND_ALONE)
def test_the_stand_alone_helpers_import_no_pytest_and_no_package(name: str) -> None:
    imported = module_level_imports(SUPPORT / f"{name}.py")
    assert not imported & {"pytest", "_pytest", "certbot_fanout"}, imported
