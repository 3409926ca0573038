"""The examples people copy from must stay valid: README's snippets and contrib's map."""

from __future__ import annotations

import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_fanout.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = ("matrix-synapse", "postgres")


@pytest.fixture
def accounts() -> Iterator[None]:
    """The service accounts the examples name, created for the test where missing."""
    created = []
    for name in ACCOUNTS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
                pytest.skip(f"account {name} is missing and only root can create it")
            subprocess.run(["useradd", "--system", "--user-group", name], check=True)
            created.append(name)
    yield
    for name in created:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def readme_consumer_snippets() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b for b in blocks if b.startswith("  ") and "certificate:" in b]


def test_readme_has_consumer_examples() -> None:
    assert len(readme_consumer_snippets()) >= 4


@pytest.mark.usefixtures("accounts")
@pytest.mark.parametrize(
    "snippet", readme_consumer_snippets(), ids=lambda s: s.split(":")[0].strip()
)
def test_readme_consumer_examples_parse(snippet: str) -> None:
    config = parse_config("version: 1\nconsumers:\n" + snippet, "README.md")
    assert config.consumers


@pytest.mark.usefixtures("accounts")
def test_contrib_map_loads_with_no_consumer_and_every_commented_example_parses() -> None:
    path = ROOT / "contrib" / "consumers.yaml"
    assert load_config(str(path)).consumers == ()
    lines = path.read_text().splitlines()
    start = lines.index("consumers: {}")
    examples = [line[1:] for line in lines[start:] if line.startswith("#  ")]
    active = [line for line in lines if not line.startswith("#") and "consumers: {}" not in line]
    config = parse_config("\n".join([*active, "consumers:", *examples]) + "\n", str(path))
    assert [c.name for c in config.consumers] == ["nginx", "synapse", "haproxy", "postgresql"]
