"""certbot-fanout(1) is generated from build_parser(): every command and option is in it, and
it renders without a single groff warning."""

from __future__ import annotations

import argparse
import datetime
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from certbot_fanout import __version__
from certbot_fanout._manpage import escape, main, render_manpage
from certbot_fanout.cli import build_parser

DATE = datetime.date(2026, 1, 2)


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` (itself first), with the sub-command names leading to it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def subcommands() -> list[str]:
    return [path[-1] for path, _ in walk(build_parser()) if path]


def option_strings() -> set[str]:
    return {o for _, p in walk(build_parser()) for a in p._actions for o in a.option_strings}


def positionals() -> set[str]:
    return {
        str(a.metavar or a.dest)
        for _, p in walk(build_parser())
        for a in p._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    }


@pytest.fixture(scope="module")
def page() -> str:
    return render_manpage(date=DATE)


def rendered(page: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The page as man shows it, one paragraph a line (no wrapping to split an option)."""
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    path = tmp_path_factory.mktemp("man") / "certbot-fanout.1"
    path.write_text(page)
    env = {**os.environ, "MANWIDTH": "2000", "LC_ALL": "C.UTF-8"}
    env.pop("MAN_KEEP_FORMATTING", None)  # not a terminal: plain text, no overstriking
    proc = subprocess.run(
        ["man", "-l", str(path)], capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout


def test_there_is_something_to_check() -> None:
    assert {"deploy", "check", "status", "discover", "presets", "demo"} <= set(subcommands())
    assert {"--config", "--quiet", "--prometheus", "--no-probe", "--path"} <= option_strings()


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_a_section(page: str, name: str) -> None:
    assert f'.SS "{escape(name)}"' in page
    assert f'.B "certbot\\-fanout {escape(name)}"' in page, "and a synopsis line"


@pytest.mark.parametrize("option", sorted(option_strings()))
def test_every_option_string_is_documented(page: str, option: str) -> None:
    assert f"\\fB{escape(option)}\\fR" in page


def test_every_positional_is_documented(page: str) -> None:
    for name in positionals():
        assert f"\\fI{escape(name)}\\fR" in page


def test_each_subcommand_documents_its_own_options_in_its_section(page: str) -> None:
    top = {o for a in build_parser()._actions for o in a.option_strings}
    sections = page.split('.SS "')
    for path, parser in walk(build_parser()):
        if not path:
            continue
        section = next(s for s in sections if s.startswith(f'{escape(path[-1])}"'))
        for action in parser._actions:
            if set(action.option_strings) & top or not action.option_strings:
                continue
            assert f"\\fB{escape(action.option_strings[-1])}\\fR" in section, (path, action)


def test_the_rendered_page_shows_every_command_and_option(
    page: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = rendered(page, tmp_path_factory)
    for name in subcommands():
        assert f"certbot-fanout {name}" in text
    for option in option_strings():
        assert option in text, option
    assert "/etc/certbot-fanout/consumers.yaml" in text
    assert "\\" not in text, "no roff escape leaks into the output"


def test_header_names_the_version_and_date(page: str) -> None:
    first = page.splitlines()[0]
    assert first.startswith('.TH CERTBOT\\-FANOUT 1 "2026-01-02"')
    assert f"certbot\\-fanout {escape(__version__)}" in first


def test_man_renders_it_without_warnings(
    page: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The same invocation lintian uses for its groff-message tag.
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    path = tmp_path_factory.mktemp("man") / "certbot-fanout.1"
    path.write_text(page)
    proc = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_groff_renders_it_without_warnings(page: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(
        ["groff", "-ww", "-man", "-Tutf8", "-z"], input=page, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_text_that_looks_like_roff_is_escaped() -> None:
    parser = argparse.ArgumentParser(prog="certbot-fanout", description=".dot\n\n'quote")
    parser.add_argument("--x", help="a \\ backslash")
    page = render_manpage(parser, date=DATE)
    assert "\n\\&.dot\n" in page and "\n\\&'quote\n" in page
    assert "a \\e backslash" in page


def test_date_comes_from_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert '"2023-11-14"' in render_manpage().splitlines()[0]


def test_main_prints_the_page() -> None:
    out = io.StringIO()
    assert main(["--date", "2026-01-02"], out) == 0
    assert out.getvalue() == render_manpage(date=DATE)


def test_module_runs_as_a_program() -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767312000"}  # 2026-01-02
    proc = subprocess.run(
        [sys.executable, "-m", "certbot_fanout._manpage"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert proc.stdout == render_manpage(date=DATE)
