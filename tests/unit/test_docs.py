"""The docs people read and copy from must stay true, and findable.

Every YAML example in README.md and docs/*.md is read by the real map loader (a whole map, a
consumer entry to paste under ``consumers:``, or a consumer's fields); every JSON example
parses and has the keys of the document a real deploy, status or notification renders; the
README stays under 10 KB and links every page of docs/; every relative link in them resolves,
to a heading where it names one; and contrib's map loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout.config import load_config, parse_config
from certbot_fanout.deploy import deploy
from certbot_fanout.lineage import read_lineage
from certbot_fanout.notify import compose, from_deploy
from certbot_fanout.render_deploy import render_deploy_document
from certbot_fanout.render_status import render_status_document
from certbot_fanout.status import check_status
from tests.support.lineages import LineageFactory
from tests.support.services import Service

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


PASSWORD_FILE = re.compile(r"^\s*(?:- )?password_file: (/\S+)", re.M)


@pytest.fixture(scope="session")
def documented_password_files() -> Iterator[None]:
    """The keystore password files the examples name, created where missing (root's, 0600,
    with any missing directory above) and removed again; skipped when this is not root."""
    wanted = sorted(
        {Path(p) for _, _, block in examples("yaml") for p in PASSWORD_FILE.findall(block)}
    )
    missing = [p for p in wanted if not p.exists()]
    if missing and os.geteuid() != 0:
        pytest.skip(f"{', '.join(map(str, missing))} missing, and only root can create them")
    made: list[Path] = []
    try:
        for path in missing:
            for directory in reversed(path.parents):
                if not directory.exists():
                    directory.mkdir(mode=0o755)
                    made.append(directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"an example password\n")
            os.close(fd)
            made.append(path)
        yield
    finally:
        for path in reversed(made):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


@pytest.mark.usefixtures("service_accounts", "documented_password_files")
@pytest.mark.parametrize("example", examples("yaml"), ids=example_id)
def test_every_yaml_example_is_read_by_the_loader(example: tuple[Path, int, str]) -> None:
    page, line, block = example
    config = parse_config(as_map(line, block), rel(page))
    assert config.consumers


@pytest.mark.parametrize("example", examples("json"), ids=example_id)
def test_every_json_example_parses(example: tuple[Path, int, str]) -> None:
    assert isinstance(json.loads(example[2]), dict)


def shape_problems(shown: object, real: object, where: str) -> list[str]:
    """How the keys of an example differ from a real document's. An object that shows the key
    ``"..."`` elides the rest of its keys; the first item of a list stands for every item."""
    if isinstance(shown, dict) and isinstance(real, dict):
        keys = set(shown) - {"..."}
        problems = [f"{where}.{k}: shown, but no document has it" for k in sorted(keys - set(real))]
        if "..." not in shown:
            problems += [
                f"{where}.{k}: in the document, not shown" for k in sorted(set(real) - keys)
            ]
        for k in sorted(keys & set(real)):
            problems += shape_problems(shown[k], real[k], f"{where}.{k}")
        return problems
    if isinstance(shown, list) and isinstance(real, list) and shown and real:
        return shape_problems(shown[0], real[0], f"{where}[0]")
    if isinstance(shown, dict) != isinstance(real, dict) and None not in (shown, real):
        return [f"{where}: shown as {type(shown).__name__}, the document has {type(real).__name__}"]
    return []


@pytest.fixture
def real_documents(
    lineages: LineageFactory, start_service: Callable[[str, Path], Service]
) -> dict[str, dict[str, Any]]:
    """A deploy's, a status's, a certificate's and a notification's JSON, from a real deploy
    to a real service under the certificate names the examples use."""
    documents: dict[str, dict[str, Any]] = {}
    for name, kind in (("example.org", "deploy"), ("matrix.example.org", "status")):
        live, _ = lineages.issue(name)
        svc = start_service(name, live)
        lineages.renew(name)
        config = parse_config(
            f"version: 1\nconsumers:\n  nginx:\n    certificate: {name}\n    files:\n"
            f"      - {{path: {svc.cert}, content: fullchain}}\n"
            f"      - {{path: {svc.key}, content: privkey}}\n"
            f"    reload: {svc.reload_argv()!r}\n"
            f"    verify: [{{host: 127.0.0.1, port: {svc.port}, server_name: {name}}}]\n"
        )
        result = deploy(config, read_lineage(str(live)))
        assert not result.failed, render_deploy_document(result)
        if kind == "deploy":
            documents[kind] = render_deploy_document(result)
            documents["certificate"] = documents[kind]["expected"]
            message = compose(from_deploy(result), f"deploy {name}", "host", 0.0)
            documents["notification"] = message.document
        else:
            documents[kind] = render_status_document(check_status(config, None))
    return documents


def _document_of(shown: dict[str, Any]) -> str:
    if "dry_run" in shown:
        return "deploy"
    if "exit_code" in shown:
        return "status"
    if "changes" in shown:
        return "notification"
    assert "sha256" in shown, "a JSON example that is no document of certbot-fanout"
    return "certificate"


@pytest.mark.parametrize("example", examples("json"), ids=example_id)
def test_every_json_example_has_the_keys_of_the_real_document(
    example: tuple[Path, int, str], real_documents: dict[str, dict[str, Any]]
) -> None:
    shown = json.loads(example[2])
    kind = _document_of(shown)
    assert shape_problems(shown, real_documents[kind], kind) == []


def test_the_shape_check_sees_a_missing_an_extra_and_an_elided_key() -> None:
    real = {"a": 1, "b": [{"c": 2, "d": 3}]}
    assert shape_problems({"a": 1, "b": [{"c": 2, "d": 3}]}, real, "x") == []
    assert shape_problems({"a": 1, "b": [{"c": 2, "...": "..."}]}, real, "x") == []
    assert shape_problems({"a": 1, "b": [{"c": 2}]}, real, "x") == [
        "x.b[0].d: in the document, not shown"
    ]
    assert shape_problems({"a": 1, "z": 0, "...": ""}, real, "x") == [
        "x.z: shown, but no document has it"
    ]


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
