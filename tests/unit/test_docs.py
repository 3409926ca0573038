"""The docs people read and copy from must stay true, and findable.

Every YAML example in README.md and docs/*.md is read by the real map loader (a whole map, a
consumer entry to paste under ``consumers:``, or a consumer's fields); every JSON example
parses; the README stays under 10 KB and links every page of docs/; every relative link in
them resolves, to a heading where it names one; and contrib's map loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from certbot_fanout.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_PAGES = sorted(DOCS.glob("*.md"))
PAGES = [README, *DOC_PAGES]
README_LIMIT = 10_000  # bytes: the README is the front door, the reference lives in docs/

FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)

# What goes around an example, by the indentation of its first line, so that the real loader
# reads it as a whole map.
WRAPPERS = {
    0: "",  # a whole map
    2: "version: 1\nconsumers:\n",  # consumer entries
    4: "version: 1\nconsumers:\n  example:\n    certificate: example.org\n",  # a consumer's fields
}


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def examples(language: str) -> list[tuple[Path, int, str]]:
    """Every fenced block in ``language``: its page, the line its text starts on, its text."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m[1] == language:
                found.append((page, text.count("\n", 0, m.start(2)) + 1, m[2]))
    return found


def example_id(example: tuple[Path, int, str]) -> str:
    return f"{rel(example[0])}:{example[1]}"


def as_map(line: int, block: str) -> str:
    """``block`` inside its wrapper, padded with blank lines so that the loader's line numbers
    are the page's."""
    first = next(
        (t for t in block.splitlines() if t.strip() and not t.lstrip().startswith("#")), ""
    )
    indent = len(first) - len(first.lstrip(" "))
    assert indent in WRAPPERS, f"a YAML example indented by {indent}: {first!r}"
    wrapper = WRAPPERS[indent]
    return wrapper + "\n" * max(0, line - 1 - wrapper.count("\n")) + block


def prose(text: str) -> str:
    """The page without its fenced blocks (a `#` there is a comment, not a heading)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(page.read_text())):
        slug = anchor(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [
        t
        for t in LINK.findall(prose(page.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", t)  # http:, https:, mailto:, man:
    ]


def test_there_are_examples_to_check() -> None:
    assert DOC_PAGES, "docs/ holds the reference"
    maps = [e for e in examples("yaml") if e[0] == README]
    assert maps, "the README shows a first map"
    consumers = [e for e in examples("yaml") if "certificate:" in e[2]]
    assert len(consumers) >= 4


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize("example", examples("yaml"), ids=example_id)
def test_every_yaml_example_is_read_by_the_loader(example: tuple[Path, int, str]) -> None:
    page, line, block = example
    config = parse_config(as_map(line, block), rel(page))
    assert config.consumers


@pytest.mark.parametrize("example", examples("json"), ids=example_id)
def test_every_json_example_parses(example: tuple[Path, int, str]) -> None:
    assert isinstance(json.loads(example[2]), dict)


def test_the_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move reference into docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    assert [rel(p) for p in DOC_PAGES if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no such heading in {rel(dest)}")
    assert broken == []


def test_the_debian_package_installs_the_docs() -> None:
    listed = (ROOT / "contrib" / "debian" / "certbot-fanout.docs").read_text().split()
    assert "README.md" in listed
    assert "docs" in listed, "every page of docs/, which the README links"


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
