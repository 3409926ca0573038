"""The examples people copy from must stay valid: README's snippets and contrib's map."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certbot_fanout.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def readme_consumer_snippets() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b for b in blocks if b.startswith("  ") and "certificate:" in b]


def test_readme_has_consumer_examples() -> None:
    assert len(readme_consumer_snippets()) >= 4


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize(
    "snippet", readme_consumer_snippets(), ids=lambda s: s.split(":")[0].strip()
)
def test_readme_consumer_examples_parse(snippet: str) -> None:
    config = parse_config("version: 1\nconsumers:\n" + snippet, "README.md")
    assert config.consumers


@pytest.mark.usefixtures("service_accounts")
def test_contrib_map_loads_with_no_consumer_and_every_commented_example_parses() -> None:
    path = ROOT / "contrib" / "consumers.yaml"
    assert load_config(str(path)).consumers == ()
    lines = path.read_text().splitlines()
    start = lines.index("consumers: {}")
    examples = [line[1:] for line in lines[start:] if line.startswith("#  ")]
    active = [line for line in lines if not line.startswith("#") and "consumers: {}" not in line]
    config = parse_config("\n".join([*active, "consumers:", *examples]) + "\n", str(path))
    assert [c.name for c in config.consumers] == ["nginx", "synapse", "haproxy", "postgresql"]
