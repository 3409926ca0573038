"""The ``certbot-fanout`` command: parse, call the library, map outcomes to exit codes.

Only the standard library, the package's ``__version__`` and ``model`` are imported at module
level: ``--help`` and the deploy hook start fast, and the hook path never imports ``certbot`` or
``acme``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from certbot_fanout import __version__
from certbot_fanout.model import (
    CONFIG_ENV,
    DEFAULT_CERTBOT_DIR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_CRIT_DAYS,
    DEFAULT_JOBS,
    DEFAULT_KNOWN_HOSTS,
    DEFAULT_WARN_DAYS,
)

if TYPE_CHECKING:
    from certbot_fanout.discover import DiscoverReport
    from certbot_fanout.model import Config, Consumer
    from certbot_fanout.notify import NotifyReport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATUS_UNKNOWN = 3  # status follows the monitoring-plugins convention: a usage error is UNKNOWN

HOOK_ENV = "RENEWED_LINEAGE"

logger = logging.getLogger("certbot_fanout")

_DESCRIPTION = """\
Deploy a renewed Certbot certificate to every service that uses it: place its files with the
right owner and mode, test and reload each service, then connect to it like a client and prove
it serves the new certificate.

As a deploy hook, run it bare: `certbot renew --deploy-hook certbot-fanout`; with
$RENEWED_LINEAGE set and no sub-command it deploys that lineage.
"""

_EPILOG = """\
exit codes (deploy): 0 every consumer placed, reloaded and verified (or none uses the
certificate); 1 at least one consumer failed, the others were still done; 2 usage, config or
lineage error: nothing was changed.
"""


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Sub-commands take the same options as the top level; SUPPRESS keeps a sub-command's
    # unset option from overwriting one given before the sub-command.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"the consumer map (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        default=default(DEFAULT_CERTBOT_DIR),
        help=f"Certbot's configuration directory (default: {DEFAULT_CERTBOT_DIR})",
    )
    parser.add_argument(
        "--lock-file",
        metavar="FILE",
        default=default(None),
        help="lock that keeps runs one at a time (default: /run/certbot-fanout.lock for root)",
    )
    parser.add_argument(
        "--state-file",
        metavar="FILE",
        default=default(None),
        help="when each consumer was last deployed and verified (default: "
        "$CERTBOT_FANOUT_STATE, else /var/lib/certbot-fanout/state.json)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="show every placed file and what the tool does",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log everything, with tracebacks",
    )


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors exit with its own command's code for one (``status``, a
    monitoring check, says UNKNOWN); the top-level parser knows its sub-commands' parsers."""

    def __init__(self, *args: Any, usage_exit_code: int = EXIT_USAGE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_exit_code = usage_exit_code
        self.commands: dict[str, _Parser] = {}

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")

    def parse_command_line(self, argv: Sequence[str]) -> argparse.Namespace:
        """``parse_args``, except that arguments no parser took are refused by the parser of
        the sub-command they were given with (and so with its usage exit code)."""
        args, extras = self.parse_known_args(argv)
        if extras:
            parser = self.commands.get(args.command or "", self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return args


def build_parser() -> _Parser:
    parser = _Parser(
        prog="certbot-fanout",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_command(name: str, **kwargs: Any) -> _Parser:
        command: _Parser = commands.add_parser(name, **kwargs)
        parser.commands[name] = command
        return command

    deploy = add_command(
        "deploy",
        help="deploy one lineage to its consumers",
        description="Deploy one lineage to every consumer of it: place, test, reload, verify.",
        epilog=_EPILOG,
    )
    _common_options(deploy, top=False)
    which = deploy.add_mutually_exclusive_group()
    which.add_argument(
        "--cert-name", metavar="NAME", help="the lineage live/NAME under --config-dir"
    )
    which.add_argument(
        "--lineage",
        metavar="DIR",
        help="the lineage directory itself (default: $RENEWED_LINEAGE, as set by certbot)",
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="print the plan; change, run and probe nothing"
    )
    deploy.add_argument(
        "--force", action="store_true", help="rewrite every file and reload every consumer"
    )
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing when no consumer uses the certificate (for deploy hooks)",
    )
    deploy.add_argument(
        "--jobs",
        type=_positive_int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"consumers handled at once (default: {DEFAULT_JOBS})",
    )

    check = add_command(
        "check",
        help="preflight: find what would make a deploy fail on this host; changes nothing",
        description="Check the map and this host: the map is valid, each lineage reads, every "
        "file's owner can reach it, no key is readable by others, test and reload programs "
        "exist, link targets can be followed, and every address of every endpoint accepts a "
        "connection.",
        epilog="exit codes: 0 nothing found; 1 problems found (each listed, with what to do); "
        '2 usage error, or a map that still holds a "<fill in: ...>" (each one named).',
    )
    _common_options(check, top=False)
    check.add_argument(
        "--no-probe", action="store_true", help="do not connect to the verify endpoints"
    )

    status = add_command(
        "status",
        usage_exit_code=STATUS_UNKNOWN,
        help="prove every consumer is current now; a monitoring check (exit 0-3)",
        description="For every consumer of every certificate in the map: are its files the "
        "lineage's current content, owner and mode, and does each endpoint serve the current "
        "certificate (and when does it expire)? Changes nothing unless --repair.",
        epilog="exit codes (monitoring-plugins convention): 0 OK; 1 WARNING (expiry within "
        "--warn-days, a file's owner, group or mode drifted); 2 CRITICAL (a stale certificate "
        "served or on disk, a failed probe, expiry within --crit-days); 3 UNKNOWN (the "
        "map or a lineage cannot be read).",
    )
    _common_options(status, top=False)
    status.add_argument("--json", action="store_true", help="print the result as JSON")
    status.add_argument(
        "--prometheus",
        metavar="FILE",
        help="also write node_exporter textfile-collector metrics to FILE (atomically)",
    )
    status.add_argument(
        "--repair",
        action="store_true",
        help="redeploy every consumer that drifted, then report the state after the repair",
    )
    status.add_argument(
        "--warn-days",
        type=_positive_float,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=f"WARNING when what is served expires within N days (default: {DEFAULT_WARN_DAYS:g})",
    )
    status.add_argument(
        "--crit-days",
        type=_positive_float,
        default=DEFAULT_CRIT_DAYS,
        metavar="N",
        help=f"CRITICAL when what is served expires within N days (default: {DEFAULT_CRIT_DAYS:g})",
    )
    status.add_argument(
        "--no-probe", action="store_true", help="check files and expiry only; connect to nothing"
    )

    discover = add_command(
        "discover",
        help="find services and copies that carry a certificate but are not in the map",
        description="Look for what carries a lineage's certificate but is missing from the "
        "map, or is stale: listening TCP sockets (probed with the lineage's name as SNI, "
        "STARTTLS by well-known port), certificate paths in the configuration of common "
        "services, and PEM files under /etc, /var/lib, /opt, /srv, /usr/local/etc and each "
        "--path. Prints a map entry to paste for each find the map does not cover.",
        epilog="exit codes: 0 nothing unmapped or stale; 1 something to review, or a budget "
        "ran out before everything was looked at; 2 usage, config or lineage error.",
    )
    _common_options(discover, top=False)
    discover.add_argument(
        "--cert-name",
        metavar="NAME",
        action="append",
        default=[],
        help="look for this lineage (repeatable; default: every certificate in the map)",
    )
    discover.add_argument(
        "--path",
        metavar="DIR",
        action="append",
        default=[],
        help="also scan this directory for PEM files (repeatable)",
    )
    discover.add_argument(
        "--probe-budget",
        type=_budget_seconds,
        metavar="SECONDS",
        help="time for probing the listeners, root's and system accounts' first (default: 20)",
    )
    discover.add_argument(
        "--scan-budget",
        type=_budget_seconds,
        metavar="SECONDS",
        help="time for reading service configurations and scanning files (default: 40)",
    )
    discover.add_argument(
        "--host",
        metavar="NAME",
        help="look on this host of the map's hosts: (over ssh; its PEM files, for now) "
        "instead of this one",
    )
    discover.add_argument(
        "--write-map",
        metavar="FILE",
        help="also write a first map of everything found to FILE (a new file, mode 0600; "
        "never overwritten): one consumer per service, with the fields discover could not "
        'know left as "<fill in: ...>" for check to name',
    )

    presets = add_command(
        "presets",
        help="list the presets and print what each expands to",
        description="List the built-in presets (preset: NAME on a consumer) and print the "
        "fields each fills in; any field set on the consumer replaces the preset's. Each "
        "preset is printed as a complete consumer entry, named after the preset and indented "
        "to paste under `consumers:` in a map; with NAME, the whole output can be pasted. "
        "With NAME and --map, a whole map (`version: 1`, `consumers:`) to write to a file, "
        "e.g. `certbot-fanout presets nginx --certificate example.org --map > "
        f"{DEFAULT_CONFIG_PATH}`.",
    )
    _common_options(presets, top=False)
    presets.add_argument("name", nargs="?", help="show only this preset")
    presets.add_argument(
        "--certificate",
        default="example.org",
        metavar="NAME",
        help="lineage name to show in the paths (default: example.org)",
    )
    presets.add_argument(
        "--map",
        action="store_true",
        help="print a whole map (version: 1, consumers:) with this one consumer",
    )

    hosts = add_command(
        "hosts",
        help="pin the ssh host key of a host in the map (hosts trust HOST)",
        description="hosts trust HOST: connect to HOST as a run would (ssh_config applies) "
        "without authenticating, show the fingerprints of the key it presents, and after you "
        "confirm (or with --yes) pin it in the host's known_hosts file (default "
        f"{DEFAULT_KNOWN_HOSTS}); a run refuses any host whose key is not pinned there.",
        epilog="exit codes: 0 pinned (or already pinned); 1 not confirmed, or the host's key "
        "could not be read; 2 usage or config error.",
    )
    _common_options(hosts, top=False)
    hosts.add_argument(
        "action", choices=("trust",), metavar="ACTION", help="trust: pin the host's key"
    )
    hosts.add_argument("host", metavar="HOST", help="a host name from the map's hosts:")
    hosts.add_argument("--yes", action="store_true", help="pin without asking")

    receive = add_command(
        "receive",
        help="a target's end of a least-privilege host (mode: receive), run by sshd",
        description="Run by sshd as the forced command of the controller's key "
        '(command="certbot-fanout receive",restrict in authorized_keys): hands this host\'s '
        "map's certificate names to the controller, takes the lineages it sends (only those), "
        "and deploys each to this map's consumers, answering with the deploy's JSON. Speaks "
        "a binary protocol on stdin and stdout: not for a terminal.",
        epilog="exit codes: 0 the controller closed the channel; 1 it broke the exchange; "
        "2 this host's map cannot be read.",
    )
    _common_options(receive, top=False)

    demo = add_command(
        "demo",
        help="a self-contained demonstration (no root, no network, leaves nothing)",
        description="Build a throwaway CA and lineage, start three loopback TLS services, "
        "renew, and deploy with the real code path: two turn to the new certificate, and the "
        "third, which reads a copy nobody wrote down, is caught.",
    )
    _common_options(demo, top=False)
    return parser


def _parse(parser: _Parser, argv: Sequence[str]) -> argparse.Namespace | int:
    """The parsed command line, or the exit code when argparse ends it: a usage error (the
    command's code for one), or 0 after --help/--version."""
    try:
        return parser.parse_command_line(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE


MAX_DAYS = 99999  # --warn-days and --crit-days; a certificate lives for months, not centuries
MAX_BUDGET = 3600  # discover's --probe-budget and --scan-budget, in seconds


def _budget_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_BUDGET:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected seconds above 0, up to {MAX_BUDGET}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= MAX_DAYS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a number of days from 0 to {MAX_DAYS}, got {text!r}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected at least 1")
    return value


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    env = os.environ if environ is None else environ
    out = stdout or sys.stdout
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _parse(parser, args_list)
    if isinstance(args, int):
        return args

    _setup_logging(args.verbose, args.debug)
    if args.command is None:
        args = _bare(parser, args_list, env)
        if isinstance(args, int):
            return args

    from certbot_fanout.errors import FanoutError

    # status is a monitoring check: whatever ends it early is UNKNOWN, never WARNING.
    status = args.command == "status"
    try:
        return _COMMANDS[args.command](args, env, out)
    except FanoutError as e:
        print(f"certbot-fanout: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("certbot-fanout: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `certbot-fanout presets | head`
        _discard(sys.stdout)
        return STATUS_UNKNOWN if status else EXIT_FAILED
    except Exception as e:
        if status:
            return _status_internal_error(e, args.debug, out)
        if args.debug:
            raise
        print(
            f"certbot-fanout: internal error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _status_internal_error(error: Exception, debug: bool, out: TextIO) -> int:
    """A bug (or a failing output stream) in ``status`` is UNKNOWN, on one line, never the
    WARNING an exit 1 would mean (which the shipped systemd unit counts as success); with
    --debug the traceback goes to stderr and the exit code stays UNKNOWN."""
    import traceback

    from certbot_fanout.escape import printable

    if debug:
        traceback.print_exception(error, file=sys.stderr)
    line = (
        f"UNKNOWN: internal error: {printable(f'{type(error).__name__}: {error}')} "
        "(run with --debug for the traceback, and please report it)\n"
    )
    for stream in (out, sys.stderr):
        # The stream that failed may fail again (a full disk, an ASCII-only terminal): the
        # exit code must still say UNKNOWN, without a traceback about the report.
        try:
            stream.write(line.encode("ascii", "backslashreplace").decode("ascii"))
            stream.flush()
            break
        except (OSError, ValueError):
            _discard(stream)
            continue
    return STATUS_UNKNOWN


def _discard(stream: TextIO) -> None:
    """Point a stream that cannot be written at /dev/null, so that what is still buffered in
    it cannot fail again when the interpreter flushes it at exit (exit code 120)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _bare(
    parser: _Parser, args_list: list[str], env: Mapping[str, str]
) -> argparse.Namespace | int:
    """No sub-command: a deploy hook's run (``$RENEWED_LINEAGE`` set) deploys; else usage."""
    if env.get(HOOK_ENV):
        return _parse(parser, [*args_list, "deploy"])
    parser.print_usage(sys.stderr)
    print(
        "certbot-fanout: error: give a sub-command (see --help); "
        f"run bare only as a certbot deploy hook, with ${HOOK_ENV} set",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _setup_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("certbot-fanout: %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _presets(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    """The catalogue; with NAME, one consumer entry to paste under ``consumers:`` (all of the
    output is YAML); with NAME and --map, a whole map that ``check`` reads as it stands."""
    from certbot_fanout.presets import PRESETS, usable_certificate

    def usage(message: str) -> int:
        print(f"certbot-fanout: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if args.name and args.name not in PRESETS:
        return usage(f"unknown preset {args.name!r}; known: {', '.join(PRESETS)}")
    if args.map and not args.name:
        return usage("--map prints a map for one preset: give its NAME (presets lists them)")
    cert = args.certificate
    if not usable_certificate(cert):
        return usage(
            f"--certificate: expected a lineage name (letters, digits and . _ - + @), got {cert!r}"
        )
    from certbot_fanout.schema import synapse_server_name

    server_name = synapse_server_name()
    if args.name:
        preset = PRESETS[args.name]
        out.write(f"# preset: {preset.name}  (for certificate: {cert})\n# {preset.summary}\n")
        if args.map:
            out.write(
                "# A whole map with this one consumer. Create the directories of its files, then "
                "run: certbot-fanout check (with --config FILE for a map elsewhere)\n"
            )
            out.write(preset.whole_map(cert, server_name))
        else:
            out.write("# Paste under `consumers:` in the map (--map prints a whole map).\n")
            out.write(preset.entry(cert, server_name))
        return EXIT_OK
    width = max(len(p) for p in PRESETS)
    for preset in PRESETS.values():
        out.write(f"{preset.name:<{width}}  {preset.summary}\n")
    for preset in PRESETS.values():
        out.write(f"\n# preset: {preset.name}  (for certificate: {cert})\n")
        out.write(preset.entry(cert, server_name))
    return EXIT_OK


def _discover(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from certbot_fanout.discover import Budgets, discover
    from certbot_fanout.model import Config
    from certbot_fanout.render_discover import render_discover_text

    path = _config_path(args, env)
    if args.host and args.write_map:
        from certbot_fanout.errors import FanoutError

        raise FanoutError("--write-map writes a first map of this host; it cannot go with --host")
    if args.write_map:
        from certbot_fanout.mapwriter import refuse_existing

        refuse_existing(args.write_map)  # before the scan, not after it
    if os.path.exists(path) or args.config or not (args.cert_name or args.write_map):
        config = _load_map(args, env, _certbot_dirs(args))
    else:  # looking for a certificate, or writing a first map, before any map exists is fine
        config = Config(path, ())
    budgets = Budgets(
        listeners=args.probe_budget or Budgets.listeners, files=args.scan_budget or Budgets.files
    )
    if args.host:
        from certbot_fanout.discover_remote import discover_on_host

        report = discover_on_host(
            config, args.config_dir, args.host, args.cert_name, args.path, budgets
        )
    else:
        from certbot_fanout.discover_containers import with_containers

        report = discover(config, args.config_dir, args.cert_name, args.path, budgets=budgets)
        report = with_containers(report, config, args.config_dir)
    out.write(render_discover_text(report))
    if args.write_map:
        _write_first_map(args, report, out)
    return EXIT_OK if _discovered_all_is_well(report) else EXIT_FAILED


def _discovered_all_is_well(report: DiscoverReport) -> bool:
    """Every find mapped and current, no container stale inside, no process on an old copy,
    and the look complete (a look cut short is never a clean bill)."""
    if not report.complete or report.views:
        return False
    if any(not f.mapped or not f.current for f in report.finds):
        return False
    return all(c.mapped and c.current and c.seen_current is not False for c in report.containers)


def _write_first_map(args: argparse.Namespace, report: DiscoverReport, out: TextIO) -> None:
    """``discover --write-map FILE``: the first map of what was found, as a new file."""
    import shlex

    from certbot_fanout.mapwriter import listener_owners, plan_map, write_new_file
    from certbot_fanout.render_discover import render_discover_map

    ports = {f.listener.port for f in report.finds if f.listener is not None}
    config_dir = None if args.config_dir == DEFAULT_CERTBOT_DIR else str(args.config_dir)
    first = plan_map(report, listener_owners(ports), config_dir)
    write_new_file(args.write_map, render_discover_map(first))
    dir_option = f" --config-dir {shlex.quote(config_dir)}" if config_dir else ""
    print(
        f"wrote a first map to {shlex.quote(args.write_map)}: {len(first.consumers)} "
        f"consumers, {first.unfilled} fields to fill in; then run: certbot-fanout check "
        f"--config {shlex.quote(args.write_map)}{dir_option}",
        file=out,
    )
    for left in first.left_out:
        print(f"  left out of the map: {left.where!a}: {left.why}", file=out)


def _check(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from certbot_fanout.check import run_checks
    from certbot_fanout.errors import ConfigError, ConfigNotFound, UnfinishedMap, UntrustedConfig
    from certbot_fanout.render_check import render_check_text

    try:
        config = _load_map(args, env, _certbot_dirs(args))
    except UnfinishedMap as e:  # a map still being written: what is left, a usage error
        for field in e.fields:
            print(f"UNFINISHED: {field}", file=out)
        print(
            f"the map is not finished: {len(e.fields)} fields still hold a placeholder; "
            "fill each in, then run check again",
            file=out,
        )
        return EXIT_USAGE
    except ConfigNotFound as e:
        print(f"PROBLEM: {e}", file=out)
        return EXIT_FAILED
    except UntrustedConfig as e:  # refused, as by every command
        print(f"PROBLEM: {e}", file=out)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"PROBLEM: the map is not valid: {e}", file=out)
        return EXIT_FAILED
    report = run_checks(config, args.config_dir, probe=not args.no_probe)
    out.write(render_check_text(report, config.source))
    return EXIT_FAILED if report.problems else EXIT_OK


def _config_path(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    from certbot_fanout.config import default_config_path

    return str(args.config or default_config_path(env))


def _load_map(
    args: argparse.Namespace, env: Mapping[str, str], certbot_dirs: Sequence[str]
) -> Config:
    """The map, or (when there is none) one message, the same in every command, that says
    which file was looked for, why that one, and how to begin writing it."""
    from certbot_fanout.config import load_config
    from certbot_fanout.errors import ConfigNotFound

    path = _config_path(args, env)
    try:
        return load_config(path, certbot_dirs=certbot_dirs)
    except ConfigNotFound:
        raise ConfigNotFound(_no_map_message(path, args, env), path) from None


def _no_map_message(path: str, args: argparse.Namespace, env: Mapping[str, str]) -> str:
    import shlex

    if args.config:
        origin = "named by --config"
    elif env.get(CONFIG_ENV):
        origin = f"named by ${CONFIG_ENV}"
    else:
        origin = f"the default path; --config FILE or ${CONFIG_ENV} names another"
    directory = os.path.dirname(os.path.abspath(path))
    mkdir = "" if os.path.isdir(directory) else f"  mkdir -p {shlex.quote(directory)}\n"
    check = "certbot-fanout check" + (f" --config {shlex.quote(path)}" if args.config else "")
    return (
        f"config file not found: no consumer map there yet ({origin})\n"
        "To begin one, write a whole map for a preset there (`certbot-fanout presets` lists "
        "them):\n"
        f"{mkdir}"
        f"  certbot-fanout presets NAME --certificate CERT --map > {shlex.quote(path)}\n"
        "or let discover find what already uses a certificate, with an entry to paste for "
        "each find:\n"
        "  certbot-fanout discover --cert-name CERT\n"
        f"then see whether a deploy would work: {check}"
    )


def _certbot_dirs(args: argparse.Namespace, live: str | None = None) -> tuple[str, ...]:
    """Certbot's config dirs, whose own directories no consumer file may be placed in:
    --config-dir, and the one a lineage (``DIR/live/NAME``, as certbot's hook gives it) is in."""
    dirs = [str(args.config_dir)]
    if live is not None and os.path.basename(os.path.dirname(live)) == "live":
        dirs.append(os.path.dirname(os.path.dirname(live)))
    return tuple(dirs)  # the schema drops repeats (schema._owned_dirs)


def _state_path(args: argparse.Namespace) -> str:
    from certbot_fanout.state import default_state_path

    return str(args.state_file or default_state_path())


def _status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    """Exit codes of the monitoring-plugins convention; anything unreadable is UNKNOWN."""
    import time

    from certbot_fanout import files
    from certbot_fanout.errors import FanoutError, UntrustedConfig
    from certbot_fanout.render_status import (
        render_status_json,
        render_status_prometheus,
        render_status_text,
    )
    from certbot_fanout.status import Level, StatusOptions, check_and_repair, check_status

    options = StatusOptions(
        config_dir=args.config_dir,
        warn_days=args.warn_days,
        crit_days=args.crit_days,
        probe=not args.no_probe,
    )
    try:
        config = _load_map(args, env, _certbot_dirs(args))
        state_path = _state_path(args)
        if args.repair:
            report = check_and_repair(config, state_path, options, args.lock_file)
        else:
            report = check_status(config, state_path, options)
    except UntrustedConfig as e:  # refused with exit 2, as by every command: CRITICAL
        print(f"CRITICAL: {e}", file=out)
        return int(Level.CRITICAL)
    except FanoutError as e:
        print(f"UNKNOWN: {e}", file=out)
        return int(Level.UNKNOWN)
    if args.prometheus:
        data = render_status_prometheus(report, time.time()).encode()
        try:
            files.place(
                files.Desired(
                    path=os.path.abspath(args.prometheus),
                    uid=os.geteuid(),
                    gid=os.getegid(),
                    mode=0o644,
                    data=data,
                )
            )
        except FanoutError as e:
            print(f"certbot-fanout: cannot write metrics: {e}", file=sys.stderr)
    out.write(render_status_json(report) if args.json else render_status_text(report))
    out.flush()
    # Only a repair run tells anyone (the timer's): a plain status is a monitoring system's
    # check, which does its own alerting and may run as a user who cannot keep the record.
    if args.repair and not args.no_probe and _notifies(config.consumers):
        from certbot_fanout.notify import notify_status

        _notify_report(notify_status(report, state_path), args.verbose)
    return int(report.level)


def _deploy(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from certbot_fanout.deploy import DeployOptions, deploy_lineage
    from certbot_fanout.errors import FanoutError
    from certbot_fanout.lineage import lineage_dir
    from certbot_fanout.render_deploy import render_deploy_json, render_deploy_text

    if args.lineage:
        live = args.lineage
    elif args.cert_name:
        live = lineage_dir(args.config_dir, args.cert_name)
    elif env.get(HOOK_ENV):
        live = env[HOOK_ENV]
    else:
        raise FanoutError(
            "deploy needs a certificate: --cert-name NAME, --lineage DIR, "
            f"or ${HOOK_ENV} (set by certbot for deploy hooks)"
        )
    live = os.path.abspath(live)
    config = _load_map(args, env, _certbot_dirs(args, live))
    options = DeployOptions(force=args.force, dry_run=args.dry_run, jobs=args.jobs)
    result = deploy_lineage(
        config, live, options, lock_path=args.lock_file, state_path=_state_path(args)
    )
    if result is None:
        if args.quiet:
            return EXIT_OK
        print(
            f"certbot-fanout: no consumer in {config.source} uses certificate "
            f"{os.path.basename(live)}; nothing to do",
            file=out,
        )
        return EXIT_OK
    out.write(
        render_deploy_json(result)
        if args.json
        else render_deploy_text(result, verbose=args.verbose)
    )
    out.flush()
    if not args.dry_run and _notifies(c.consumer for c in result.consumers):
        from certbot_fanout.notify import notify_deploy

        _notify_report(notify_deploy(result, _state_path(args)), args.verbose)
    return EXIT_FAILED if result.failed else EXIT_OK


def _notifies(consumers: Iterable[Consumer]) -> bool:
    """Whether the map names anyone to tell about these (notify is imported only then)."""
    return any(c.notify for c in consumers)


def _notify_report(report: NotifyReport, verbose: bool) -> None:
    """What a notifier could not deliver, on stderr (stdout and the exit code are the run's);
    with -v, what was sent too."""
    from certbot_fanout.notify import summary_lines

    for line in summary_lines(report) if verbose else ():
        print(f"certbot-fanout: {line}", file=sys.stderr)
    for line in report.problems:
        print(f"certbot-fanout: notify: {line}", file=sys.stderr)


def _receive(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    import contextlib

    from certbot_fanout.receive import ReceiveOptions, serve

    config = _load_map(args, env, _certbot_dirs(args))
    options = ReceiveOptions(str(args.config_dir), args.lock_file, _state_path(args))
    frames = sys.stdout.buffer
    # stdout carries the frames: whatever else would be printed goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        return serve(config, options, sys.stdin.buffer, frames)


def _hosts(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from certbot_fanout import hostkeys
    from certbot_fanout.errors import ConfigError
    from certbot_fanout.escape import printable
    from certbot_fanout.remote import HostError

    config = _load_map(args, env, _certbot_dirs(args))
    try:
        host = config.host(args.host)
    except KeyError:
        known = ", ".join(h.name for h in config.hosts) or "none"
        raise ConfigError(
            f"no host {args.host!r} in the map (hosts: {known})", config.source
        ) from None
    try:
        learnt = hostkeys.scan(host)
    except HostError as e:
        print(f"certbot-fanout: {e}", file=sys.stderr)
        return EXIT_FAILED
    for line in learnt.fingerprints:
        print(f"{host.name}: {printable(line)}", file=out)
    if hostkeys.pinned(host, learnt):
        print(f"{host.name}: already pinned in {host.known_hosts}", file=out)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "certbot-fanout: not pinned: confirm on a terminal, or pass --yes once you "
                "have checked the fingerprints",
                file=sys.stderr,
            )
            return EXIT_FAILED
        answer = input(f"Pin this key for {host.name} in {host.known_hosts}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("certbot-fanout: not pinned", file=sys.stderr)
            return EXIT_FAILED
    hostkeys.pin(host, learnt)
    print(f"{host.name}: pinned in {host.known_hosts}", file=out)
    return 0


def _demo(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from certbot_fanout.demo import run_demo

    return run_demo(out, lambda argv: main(argv, environ={}, stdout=out))


# Each sub-command's handler: the parsed arguments, the environment and the output in, the
# exit code out. build_parser defines the same names.
_Handler = Callable[[argparse.Namespace, Mapping[str, str], TextIO], int]
_COMMANDS: dict[str, _Handler] = {
    "deploy": _deploy,
    "check": _check,
    "status": _status,
    "discover": _discover,
    "presets": _presets,
    "hosts": _hosts,
    "receive": _receive,
    "demo": _demo,
}
