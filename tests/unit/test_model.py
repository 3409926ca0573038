"""The model module stays a model: it imports no I/O, YAML or network module.

Every import of ``certbot_fanout/model.py`` is read with :mod:`ast` (not by importing it) and
must name one of a few standard modules that define data; anything else (``yaml``, ``socket``,
``os``, another module of the package) fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import certbot_fanout.model

MODEL = Path(certbot_fanout.model.__file__)

# What a module of frozen dataclasses, enums and constants may need, and nothing more.
ALLOWED = frozenset({"__future__", "enum", "dataclasses", "typing", "collections.abc"})


def imported_modules(source: str) -> list[str]:
    """Every module the source imports (relative imports as dots plus their module), and
    every dynamic import it spells (``__import__``, ``importlib``), as ``<dynamic>``."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Name) and node.id == "__import__":
            modules.append("<dynamic>")
    return modules


def forbidden(source: str) -> list[str]:
    return [module for module in imported_modules(source) if module not in ALLOWED]


def test_the_model_imports_only_data_modules() -> None:
    source = MODEL.read_text(encoding="utf-8")
    assert imported_modules(source), "the scan found no import at all: is it reading the file?"
    assert forbidden(source) == []


@pytest.mark.parametrize(
    ("line", "module"),
    [
        ("import yaml", "yaml"),
        ("import socket", "socket"),
        ("import os.path", "os.path"),
        ("from certbot_fanout import probe", "certbot_fanout"),
        ("from certbot_fanout.probe import Fetch", "certbot_fanout.probe"),
        ("from . import probe", "."),
        ("from .config import load_config", ".config"),
        ("from yaml.nodes import Node", "yaml.nodes"),
        ("from collections import OrderedDict", "collections"),
        ("if TYPE_CHECKING:\n    import ssl", "ssl"),
        ("def f() -> None:\n    import pwd", "pwd"),
        ("socket = __import__('socket')", "<dynamic>"),
    ],
)
def test_an_added_import_is_caught(line: str, module: str) -> None:
    # The model as it is, plus one import: the check must name exactly that one.
    source = MODEL.read_text(encoding="utf-8") + "\n" + line + "\n"
    assert forbidden(source) == [module]
