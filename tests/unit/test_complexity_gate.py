"""The CI gate on complexity (.ci/complexity.py) flags what it claims to, and only that."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("radon")

GATE = Path(__file__).resolve().parents[2] / ".ci" / "complexity.py"


def load_gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("complexity_gate", GATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def branches(n: int) -> str:
    """A function of cyclomatic complexity n + 1."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(n))
    return f"def f(x):\n{body}    return -1\n"


def test_a_function_of_complexity_20_fails_and_19_passes(tmp_path: Path) -> None:
    gate = load_gate()
    ok, bad = tmp_path / "ok.py", tmp_path / "bad.py"
    ok.write_text(branches(18))
    bad.write_text(branches(19))
    assert gate.problems([ok]) == []
    [problem] = gate.problems([bad])
    assert "f has cyclomatic complexity 20 (rank C)" in problem
    assert gate.main([str(tmp_path)]) == 1
    bad.unlink()
    assert gate.main([str(tmp_path)]) == 0


def test_an_empty_tree_is_an_error_not_a_pass(tmp_path: Path) -> None:
    assert load_gate().main([str(tmp_path)]) == 2
