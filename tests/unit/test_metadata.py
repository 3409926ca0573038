"""The package metadata declares its license the way current setuptools wants (an SPDX
expression, PEP 639), so that installing prints no deprecation warning of ours."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def metadata() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]


def test_no_license_classifier_setuptools_would_warn_about() -> None:
    classifiers = metadata()["classifiers"].strip().splitlines()
    assert classifiers, "the other classifiers stay"
    assert [c for c in classifiers if c.strip().startswith("License ::")] == []


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    meta = metadata()
    # setuptools >= 77 writes License-Expression from this; older ones (Debian 12's 66, which
    # builds the .deb) ignore it and write `license` as the License field: both say MIT.
    assert meta["license_expression"] == "MIT"
    assert meta["license"] == "MIT"
    (license_file,) = meta["license_files"].split()
    assert (ROOT / license_file).read_text().startswith("MIT License")
    # Nothing in pyproject.toml declares it a second, conflicting way.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in pyproject
