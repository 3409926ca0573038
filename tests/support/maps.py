"""Builders for consumer maps (schema version 1) that several tests write the same way.

``flow`` quotes a value for YAML flow syntax (a JSON string or list is valid YAML);
``config_text`` wraps consumer entries (YAML text) in a version 1 map; ``write_map`` writes a
map given as a document (JSON is YAML) to ``consumers.yaml`` in a directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

flow = json.dumps  # a JSON string or list is valid YAML flow syntax


def config_text(*consumers: str, verify_timeout: int | None = None) -> str:
    """A version 1 map of ``consumers`` (YAML entries) with a 30 s reload timeout and, if
    given, a default verify timeout."""
    verify = "" if verify_timeout is None else f"  verify_timeout: {verify_timeout}\n"
    return f"version: 1\ndefaults:\n  reload_timeout: 30\n{verify}consumers:\n" + "".join(consumers)


def write_map(directory: Path, consumer_map: dict[str, Any]) -> Path:
    """``consumer_map`` as DIRECTORY/consumers.yaml (directory made); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "consumers.yaml"
    config.write_text(json.dumps(consumer_map, indent=2))
    return config
