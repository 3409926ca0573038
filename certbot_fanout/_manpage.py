"""certbot-fanout(1), rendered from the command line's own argparse definitions.

``python3 -m certbot_fanout._manpage`` prints the page as roff. The Debian package runs it at
build time, so the page lists exactly the sub-commands and options of
:func:`certbot_fanout.cli.build_parser` and cannot drift from them. Only argparse is needed:
nothing here imports certbot, PyYAML or cryptography.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from certbot_fanout import __doc__ as _package_summary
from certbot_fanout import __version__
from certbot_fanout.cli import build_parser
from certbot_fanout.model import CONFIG_ENV, DEFAULT_CONFIG_PATH

PROG = "certbot-fanout"

# Facts the parser cannot know: where things live, and what else to read. Every path here is
# also named in an option's help text or in docs/ (the map, deploy and monitoring pages).
_ENVIRONMENT = (
    (
        "RENEWED_LINEAGE",
        "set by certbot for deploy hooks: the live/NAME directory to deploy when neither "
        "--cert-name nor --lineage is given (and, with no command at all, the reason to deploy)",
    ),
    (CONFIG_ENV, "the consumer map, when --config is not given"),
    ("CERTBOT_FANOUT_STATE", "the state file, when --state-file is not given"),
)
_FILES = (
    (DEFAULT_CONFIG_PATH, "the consumer map"),
    (
        "/etc/letsencrypt/renewal-hooks/deploy/certbot-fanout",
        "the deploy hook installed by the Debian package: `certbot-fanout deploy --quiet` for "
        "each renewed certificate",
    ),
    ("/var/lib/certbot-fanout/state.json", "when each consumer was last deployed and verified"),
    ("/run/certbot-fanout.lock", "keeps runs one at a time"),
)
_SEE_ALSO = (
    ".BR certbot (1),",
    ".BR systemd.timer (5),",
    "and the documentation in docs/ (on Debian: /usr/share/doc/certbot\\-fanout/docs/): "
    "map.md for the consumer map and the presets, deploy.md for every command and its exit "
    "codes, monitoring.md for status, check and discover.",
)


def escape(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped (an option's dashes stay ASCII when
    rendered, and searchable), `quoted spans` set in bold."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)


def _text_line(text: str) -> str:
    # A line starting with a dot or quote would be read as a request.
    return "\\&" + text if text.startswith((".", "'")) else text


def _paragraphs(text: str | None) -> list[str]:
    """Blank-line separated paragraphs, each re-joined into one line (argparse's texts are
    wrapped by hand for --help; roff fills them itself)."""
    if not text:
        return []
    chunks = re.split(r"\n\s*\n", text.strip())
    return [" ".join(line.strip() for line in chunk.splitlines()) for chunk in chunks]


def _emit_paragraphs(lines: list[str], text: str | None) -> None:
    for i, paragraph in enumerate(_paragraphs(text)):
        if i:
            lines.append(".PP")
        lines.append(_text_line(escape(paragraph)))


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    # Wide enough that argparse never wraps a usage line: roff does the filling.
    return argparse.HelpFormatter(parser.prog, width=1_000_000)


def _usage(parser: argparse.ArgumentParser, actions: Sequence[argparse.Action]) -> str:
    """The usage line for ``actions`` (after the program name), as roff: an option and its
    argument, ``[--warn-days N]``, are never split across lines."""
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, actions, parser._mutually_exclusive_groups, prefix="")
    usage = formatter.format_help().strip().removeprefix(parser.prog).strip()
    return re.sub(r"\[[^][]*\]", lambda m: m[0].replace(" ", "\\ "), escape(usage))


def _subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, one-line help) for every sub-command, in definition order."""
    found: list[tuple[str, argparse.ArgumentParser, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, sub, helps.get(name, "")))
    return found


def _documented(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)


def _item(formatter: argparse.HelpFormatter, action: argparse.Action) -> list[str]:
    """One ``.TP`` entry: the option strings (or the positional's name), then its help."""
    if action.option_strings:
        names = ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            default = formatter._get_default_metavar_for_optional(action)
            names += f" \\fI{escape(formatter._format_args(action, default))}\\fR"
    else:
        default = formatter._get_default_metavar_for_positional(action)
        names = f"\\fI{escape(formatter._metavar_formatter(action, default)(1)[0])}\\fR"
    help_text = formatter._expand_help(action) if action.help else ""
    return [".TP", names, *([_text_line(escape(" ".join(help_text.split())))] if help_text else [])]


def _common_option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def render_manpage(
    parser: argparse.ArgumentParser | None = None, date: datetime.date | None = None
) -> str:
    """certbot-fanout(1) as roff.

    Args:
        parser: the parser to document; default :func:`certbot_fanout.cli.build_parser`.
        date: the page's date; default $SOURCE_DATE_EPOCH (set by dpkg-buildpackage from
            debian/changelog, so the page is reproducible), else today.

    Returns:
        The page, ready for ``man -l``.
    """
    parser = parser or build_parser()
    lines = [
        *_head(parser, date or _page_date()),
        *_description(parser),
        *_options(parser),
        *_commands(parser),
        *_exit_status(parser),
        *_facts(),
    ]
    return "\n".join(lines) + "\n"


def _page_date() -> datetime.date:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch) if epoch else _now(), tz=datetime.UTC)
    return when.date()


def _own_actions(
    sub: argparse.ArgumentParser, common: set[str], documented: bool = False
) -> list[argparse.Action]:
    """A sub-command's actions other than the options every command takes."""
    return [
        a
        for a in sub._actions
        if not set(a.option_strings) & common and (not documented or _documented(a))
    ]


def _head(parser: argparse.ArgumentParser, date: datetime.date) -> list[str]:
    """The title, NAME and SYNOPSIS: the top-level usage, then each sub-command's."""
    summary = (_package_summary or "").strip().rstrip(".")
    summary = summary[:1].lower() + summary[1:]
    lines = [
        f'.TH CERTBOT\\-FANOUT 1 "{date.isoformat()}" "{escape(PROG)} {escape(__version__)}" '
        '"User Commands"',
        '.\\" Generated by `python3 -m certbot_fanout._manpage` from the argparse parser of',
        '.\\" certbot_fanout/cli.py: edit that, not this.',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{escape(PROG)} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        f".B {escape(PROG)}",
        _usage(parser, parser._actions),
    ]
    common = _common_option_strings(parser)
    for name, sub, _ in _subcommands(parser):
        usage = _usage(sub, _own_actions(sub, common))
        lines += [".br", f'.B "{escape(PROG)} {escape(name)}"', *([usage] if usage else [])]
    return lines


def _description(parser: argparse.ArgumentParser) -> list[str]:
    lines = [".SH DESCRIPTION"]
    _emit_paragraphs(lines, parser.description)
    return lines


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """The options every command takes (the top-level parser's)."""
    lines = [
        ".SH OPTIONS",
        "These options may be given before or after the command; every command takes them.",
    ]
    top = _formatter(parser)
    for action in parser._actions:
        if _documented(action):
            lines += _item(top, action)
    return lines


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    """One subsection per sub-command: its description, its own options, its exit codes."""
    lines = [".SH COMMANDS"]
    common = _common_option_strings(parser)
    for name, sub, one_line in _subcommands(parser):
        lines += [f'.SS "{escape(name)}"']
        _emit_paragraphs(lines, sub.description or one_line)
        formatter = _formatter(sub)
        for action in _own_actions(sub, common, documented=True):
            lines += _item(formatter, action)
        if sub.epilog and sub.epilog != parser.epilog:
            lines.append(".PP")
            _emit_paragraphs(lines, sub.epilog)
    return lines


def _exit_status(parser: argparse.ArgumentParser) -> list[str]:
    lines = [".SH EXIT STATUS"]
    _emit_paragraphs(lines, parser.epilog)
    return [*lines, ".PP", "Each other command states its own exit codes above."]


def _facts() -> list[str]:
    """ENVIRONMENT, FILES and SEE ALSO: what the parser cannot know."""
    lines = [".SH ENVIRONMENT"]
    for variable, meaning in _ENVIRONMENT:
        lines += [".TP", f".B {escape(variable)}", _text_line(escape(meaning))]
    lines.append(".SH FILES")
    for path, meaning in _FILES:
        lines += [".TP", f".I {escape(path)}", _text_line(escape(meaning))]
    return [*lines, ".SH SEE ALSO", *_SEE_ALSO]


def _now() -> float:
    return datetime.datetime.now(tz=datetime.UTC).timestamp()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Print certbot-fanout(1) as roff; returns the exit code."""
    cli = argparse.ArgumentParser(
        prog="python3 -m certbot_fanout._manpage",
        description="Print the certbot-fanout(1) manual page (roff) generated from the CLI.",
    )
    cli.add_argument(
        "--date",
        type=datetime.date.fromisoformat,
        help="the page's date, YYYY-MM-DD (default: $SOURCE_DATE_EPOCH, else today)",
    )
    args = cli.parse_args(argv)
    (out or sys.stdout).write(render_manpage(date=args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
