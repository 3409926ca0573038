"""Telling someone when a consumer starts failing, and when it recovers: ``notify:``.

Certbot ignores a deploy hook's exit code, so a failed deploy has to reach a person on its own.
After a run (a deploy, or ``status --repair``), :func:`notify_changes` compares each consumer's
state (failing or not) with what each of its notifiers was last told, in a small record beside
the state file (:func:`record_path`), and sends each notifier ONE message listing every consumer
whose state changed for it: a consumer that starts failing, and one that recovers. A run that
changes nothing sends nothing, so a timer does not mail the same failure twice a day.

The record is advanced per notifier, and only for a notifier that delivered: one that failed,
hung or could not be reached is reported (in :class:`NotifyReport`) and gets the same changes
again on the next run. A consumer that failed and recovered before any message got through is
not announced at all.

Notifiers: ``mail`` (an RFC 5322 message on the stdin of ``sendmail -t -oi``), ``webhook`` (the
JSON document POSTed over HTTPS, TLS verified against the system's CAs or ``ca_file``, no proxy
from the environment, bounded in time and in what is read back, optional headers from a file
only root can read) and ``command`` (argv, the JSON document on its stdin). Commands and sendmail
run through :func:`certbot_fanout.commands.run_command`: found and trusted like a reload, in
their own process group, killed at their timeout.

A message holds what was expected and what was served (certificate objects), the error and the
consumer's notes; never key material: any PEM private key in a message's text (a command's
output quoted in an error) is cut out before it is sent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import email.message
import email.utils
import functools
import http.client
import json
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certbot_fanout import __version__, commands, files, state, trust
from certbot_fanout.errors import FanoutError, LockError, PlacementError
from certbot_fanout.escape import printable
from certbot_fanout.lock import run_lock
from certbot_fanout.model import DEFAULT_SENDMAIL, Consumer, Notify, Webhook
from certbot_fanout.render_common import ISO_FORMAT, cert_document, endpoint_document

if TYPE_CHECKING:
    from certbot_fanout.deploy import DeployResult
    from certbot_fanout.lineage import CertInfo
    from certbot_fanout.status import StatusReport
    from certbot_fanout.verify import EndpointResult

logger = logging.getLogger(__name__)

NOTIFY_JSON_VERSION = 1
# The local MTA's sendmail, as the Unix convention has it (the map's `sendmail:` replaces it).
SENDMAIL = DEFAULT_SENDMAIL
# Seconds sendmail and a notify command may take; a webhook has its own `timeout:`.
MAIL_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
# How long a run waits for another run's notifications to be done with the record.
LOCK_TIMEOUT = 150.0
MAX_RESPONSE_BYTES = 64 << 10  # read of a webhook's answer
MAX_HEADERS_BYTES = 16 << 10  # a headers_file
_MAX_RECORD_BYTES = 4 << 20
_SHOWN_RESPONSE = 200  # characters of a refusing webhook's answer quoted in the error

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# A PEM private key, whole or cut short by an output tail at either end.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|\A.*?-----END[A-Z0-9 ]*PRIVATE KEY-----",
    re.S,
)
KEY_REMOVED = "[private key removed]"


# -- what a run saw -------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One consumer at the end of a run: failing or not, and what shows why."""

    consumer: Consumer
    failing: bool
    expected: CertInfo | None = None
    failed_stage: str | None = None
    error: str | None = None
    problems: tuple[str, ...] = ()
    endpoints: tuple[EndpointResult, ...] = ()

    @property
    def name(self) -> str:
        return self.consumer.name


def from_deploy(result: DeployResult) -> tuple[Observation, ...]:
    """Each consumer of a deploy: failing when it failed (a dry run shows nothing)."""
    from certbot_fanout.deploy import Outcome

    if result.dry_run:
        return ()
    return tuple(
        Observation(
            consumer=c.consumer,
            failing=c.outcome is Outcome.FAILED,
            expected=result.expected,
            failed_stage=c.failed_stage.value if c.failed_stage else None,
            error=c.error,
            endpoints=c.endpoints,
        )
        for c in result.consumers
    )


def from_status(report: StatusReport) -> tuple[Observation, ...]:
    """Each consumer of a status: failing when CRITICAL or UNKNOWN (a stale certificate served
    or on disk, a failed probe, expiry within the critical window, an unreadable lineage); a
    WARNING (a mode that drifted, expiry within the warning window) is not a failure.

    A consumer with no files and no endpoints shows status nothing to judge: only a deploy
    (its reload) can say it failed, so status never reports it recovered."""
    from certbot_fanout.status import Level

    return tuple(
        Observation(
            consumer=c.consumer,
            failing=c.level >= Level.CRITICAL,
            expected=report.lineages.get(c.certificate),
            error="; ".join(c.problems) if c.level >= Level.CRITICAL else None,
            problems=c.problems,
            endpoints=c.endpoints,
        )
        for c in report.consumers
        if c.level >= Level.CRITICAL or c.files or c.endpoints
    )


# -- what was told --------------------------------------------------------------------------


def record_path(state_path: str) -> str:
    """Where the record of what each notifier was told lives: beside the state file
    (``state.json`` -> ``state.notify.json``)."""
    root, ext = os.path.splitext(state_path)
    return f"{root if ext == '.json' else state_path}.notify.json"


def load_record(path: str) -> dict[str, frozenset[str]]:
    """Each notifier's key -> the consumers it was last told are failing; empty (with a
    warning) when the record is missing, unreadable or not one."""
    doc = state.read_json(path, _MAX_RECORD_BYTES, "notification record")
    if doc is None:
        return {}
    try:
        record = {
            str(key): frozenset(str(name) for name in item["failing"])
            for key, item in doc["notifiers"].items()
            if isinstance(item["failing"], list)
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        logger.warning("%s is not a certbot-fanout notification record; ignoring it", path)
        return {}
    return record


def save_record(path: str, record: dict[str, frozenset[str]], labels: dict[str, str]) -> None:
    """Write the record atomically, mode 0600 (a webhook's URL may hold a token).

    Raises:
        PlacementError: it cannot be written.
    """
    doc = {
        "version": 1,
        "notifiers": {
            key: {"label": labels.get(key, ""), "failing": sorted(names)}
            for key, names in sorted(record.items())
        },
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    files.place(files.Desired(path=path, uid=os.geteuid(), gid=os.getegid(), mode=0o600, data=data))


# -- the result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One notifier's message of this run: the consumers it told of, and why it failed."""

    notifier: str  # in words: "mail to root@example.org", "webhook https://host/path"
    failing: tuple[str, ...]
    recovered: tuple[str, ...]
    error: str | None = None  # None: delivered

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class NotifyReport:
    deliveries: tuple[Delivery, ...] = ()
    error: str | None = None  # nothing could be sent or recorded (the record's lock or file)

    @property
    def problems(self) -> tuple[str, ...]:
        """Each failure in a sentence, for stderr or a log (escaped)."""
        found = [
            printable(f"{d.notifier}: not delivered, will retry on the next run: {d.error}")
            for d in self.deliveries
            if d.error is not None
        ]
        if self.error is not None:
            found.append(printable(self.error))
        return tuple(found)


# -- the notifiers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """What one notifier is sent: a subject, a text body and the JSON document."""

    subject: str
    text: str
    document: dict[str, Any]

    @property
    def json_bytes(self) -> bytes:
        return (json.dumps(self.document, indent=2) + "\n").encode()


@dataclass(frozen=True)
class _Notifier:
    key: str  # what the record knows it by: its kind and where it sends
    label: str
    send: Callable[[Message], None]  # raises FanoutError (or OSError) when not delivered


def notifiers(notify: Notify) -> tuple[_Notifier, ...]:
    """The notifiers a ``notify:`` block names, each with its key in the record."""
    found = []
    if notify.mail:
        found.append(
            _Notifier(
                "mail " + json.dumps([list(notify.mail), list(notify.sendmail)]),
                f"mail to {', '.join(notify.mail)}",
                functools.partial(send_mail, to=notify.mail, sendmail=notify.sendmail),
            )
        )
    if notify.webhook is not None:
        hook = notify.webhook
        found.append(
            _Notifier(
                "webhook " + json.dumps([hook.url, hook.headers_file, hook.ca_file]),
                f"webhook {url_label(hook.url)}",
                functools.partial(post_webhook, hook=hook),
            )
        )
    if notify.command is not None:
        argv = notify.command
        found.append(
            _Notifier(
                "command " + json.dumps(list(argv)),
                f"command {argv[0]}",
                functools.partial(send_command, argv=argv),
            )
        )
    return tuple(found)


def url_label(url: str) -> str:
    """A webhook's URL without its query (which may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def send_mail(message: Message, to: Sequence[str], sendmail: Sequence[str]) -> None:
    """An RFC 5322 message (text body) on sendmail's stdin; sendmail -t reads the recipients
    from its To: header."""
    mail = email.message.EmailMessage()
    mail["To"] = ", ".join(to)
    mail["Subject"] = message.subject
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = email.utils.make_msgid("certbot-fanout")
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    mail.set_content(message.text)
    commands.run_command(sendmail, MAIL_TIMEOUT, "sendmail", stdin=mail.as_bytes())


def send_command(message: Message, argv: Sequence[str]) -> None:
    """The command, with the JSON document on its stdin; exit 0 is delivered."""
    commands.run_command(argv, COMMAND_TIMEOUT, "notify command", stdin=message.json_bytes)


def read_headers(path: str) -> list[tuple[str, str]]:
    """The ``Name: value`` lines of a webhook's headers_file (blank and ``#`` lines skipped),
    which must be a regular file that only root can change and no one else can read.

    Raises:
        FanoutError: it is not such a file, or a line is not a header; never quoting a value.
    """
    problem = trust.path_problem(path)
    if problem is not None:
        raise FanoutError(f"headers_file {path} is not used: {problem}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FanoutError(f"headers_file {path}: {e.strerror}") from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FanoutError(f"headers_file {path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o077:
            raise FanoutError(
                f"headers_file {path} must be owned by root and readable by no one else "
                f"(it is mode {stat.S_IMODE(st.st_mode):04o}): chown root: and chmod 600 it"
            )
        raw = f.read(MAX_HEADERS_BYTES + 1)
    if len(raw) > MAX_HEADERS_BYTES:
        raise FanoutError(f"headers_file {path} is larger than {MAX_HEADERS_BYTES} bytes")
    headers = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME.match(name) or not value.strip().isprintable():
            raise FanoutError(f"headers_file {path}, line {number}: expected 'Name: value'")
        if name.lower() in _RESERVED_HEADERS:
            raise FanoutError(f"headers_file {path}, line {number}: {name} is set by the request")
        headers.append((name, value.strip()))
    return headers


def post_webhook(message: Message, hook: Webhook) -> None:
    """POST the JSON document; a 2xx answer is delivered. TLS is verified (the system's CAs,
    or only ``ca_file``); no proxy, no redirect; the whole exchange ends by the timeout."""
    extra = read_headers(hook.headers_file) if hook.headers_file else []
    parts = urllib.parse.urlsplit(hook.url)
    try:
        context = ssl.create_default_context(cafile=hook.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise FanoutError(f"ca_file {hook.ca_file}: {e}") from None
    conn = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, timeout=hook.timeout, context=context
    )
    # Each socket operation is bounded by the timeout; this cuts the whole exchange there too
    # (a server that drips its answer a byte at a time).
    timer = threading.Timer(hook.timeout, _cut, (conn,))
    timer.daemon = True
    start = time.monotonic()
    timer.start()
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.putrequest("POST", target, skip_accept_encoding=True)
        body = message.json_bytes
        for name, value in [
            ("Content-Type", "application/json"),
            ("User-Agent", f"certbot-fanout/{__version__}"),
            ("Content-Length", str(len(body))),
            *extra,
        ]:
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        answer = response.read(MAX_RESPONSE_BYTES)
    except (OSError, http.client.HTTPException) as e:
        if time.monotonic() - start >= hook.timeout:
            raise FanoutError(f"no answer within {hook.timeout:g} s") from None
        raise FanoutError(f"{type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        conn.close()
    if not 200 <= response.status < 300:
        shown = answer[:_SHOWN_RESPONSE].decode("utf-8", "replace").strip()
        raise FanoutError(
            f"answered {response.status} {response.reason}" + (f": {shown}" if shown else "")
        )


def _cut(conn: http.client.HTTPSConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# -- the message ----------------------------------------------------------------------------


def scrub(text: str) -> str:
    """``text`` with every PEM private key in it (whole or cut short) replaced."""
    return _PRIVATE_KEY.sub(KEY_REMOVED, text) if "PRIVATE KEY" in text else text


def compose(changes: Sequence[Observation], run: str, host: str, now: float) -> Message:
    """The message for one notifier: every change it is told of, failures first."""
    ordered = sorted(changes, key=lambda o: (not o.failing, o.name))
    failing = [o.name for o in ordered if o.failing]
    recovered = [o.name for o in ordered if not o.failing]
    words = []
    if failing:
        words.append(f"FAILING {', '.join(failing)}")
    if recovered:
        words.append(f"recovered {', '.join(recovered)}")
    subject = f"certbot-fanout on {host}: {'; '.join(words)}"
    when = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(ISO_FORMAT)
    document = {
        "version": NOTIFY_JSON_VERSION,
        "host": host,
        "run": run,
        "time": when,
        "summary": subject,
        "changes": [_change_document(o) for o in ordered],
    }
    return Message(subject, _text(ordered, run, host, when), document)


def _change_document(o: Observation) -> dict[str, Any]:
    return {
        "name": o.name,
        "certificate": o.consumer.certificate,
        "state": "failing" if o.failing else "recovered",
        "failed_stage": o.failed_stage,
        "error": scrub(o.error) if o.error is not None else None,
        "problems": [scrub(p) for p in o.problems],
        "notes": o.consumer.notes,
        "expected": cert_document(o.expected),
        "endpoints": [_scrubbed(endpoint_document(e)) for e in o.endpoints],
    }


def _scrubbed(document: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's document with its error texts scrubbed (they quote a peer's words)."""
    document["error"] = scrub(document["error"]) if document["error"] else document["error"]
    for address in document["addresses"]:
        if address["error"]:
            address["error"] = scrub(address["error"])
    return document


def _text(ordered: Sequence[Observation], run: str, host: str, when: str) -> str:
    lines = [f"certbot-fanout on {host}, after `{run}` at {when}:", ""]
    for o in ordered:
        lines.extend(_change_lines(o))
        lines.append("")
    lines.append(
        "certbot-fanout sends this when a consumer starts failing and when it recovers, "
        "not on every run. `certbot-fanout status` shows every consumer now."
    )
    return "\n".join(lines) + "\n"


def _change_lines(o: Observation) -> list[str]:
    word = "FAILING" if o.failing else "RECOVERED"
    lines = [f"{word}: {o.name} (certificate {o.consumer.certificate})"]
    if o.failing:
        if o.failed_stage:
            lines.append(f"  failed at {o.failed_stage}: {printable(scrub(o.error or ''))}")
        lines.extend(f"  problem: {printable(scrub(p))}" for p in o.problems)
    lines.append(f"  expected: {_cert_words(o.expected)}")
    for e in o.endpoints:
        verdict = "ok" if e.ok else f"NOT OK: {printable(scrub(e.error or 'failed'))}"
        lines.append(f"  {printable(e.label)}: served {_cert_words(e.served)}; {verdict}")
    if o.consumer.notes:
        lines.append("  notes:")
        lines.extend(f"    {printable(line)}" for line in o.consumer.notes.splitlines())
    return lines


def _cert_words(info: CertInfo | None) -> str:
    if info is None:
        return "nothing readable"
    return (
        f"{printable(info.subject)}, serial {info.serial}, not after "
        f"{info.not_after.strftime(ISO_FORMAT)}, sha256 {info.fingerprint}"
    )


# -- the run --------------------------------------------------------------------------------


def wanted(consumers: Iterable[Consumer]) -> bool:
    """Whether any of ``consumers`` has someone to tell (cheap: callers import this module
    only when a map has a ``notify:`` block, and check this first)."""
    return any(c.notify for c in consumers)


def notify_changes(
    observations: Sequence[Observation],
    state_path: str,
    run: str,
    *,
    now: float | None = None,
    host: str | None = None,
) -> NotifyReport:
    """Send each notifier of these consumers one message about those whose state changed for
    it since it was last told, and record what each notifier that delivered was told. Never
    raises for a notifier's failure: the report says what was not delivered."""
    groups: dict[str, _Plan] = {}
    for o in observations:
        for n in notifiers(o.consumer.notify) if o.consumer.notify else ():
            groups.setdefault(n.key, (n, []))[1].append(o)
    if not groups:
        return NotifyReport()
    path = record_path(state_path)
    try:
        _make_parent(path)
        with run_lock(f"{path}.lock", LOCK_TIMEOUT):
            return _notify_locked(groups, path, run, now, host)
    except (LockError, OSError) as e:
        return NotifyReport(error=f"notifications not sent (will retry on the next run): {e}")


def _make_parent(path: str) -> None:
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory) and os.geteuid() == 0:
        os.makedirs(directory, mode=0o755, exist_ok=True)


_Plan = tuple[_Notifier, list[Observation]]


def _notify_locked(
    groups: dict[str, _Plan], path: str, run: str, now: float | None, host: str | None
) -> NotifyReport:
    record = load_record(path)
    plans = [plan for plan in (_changes(g, record) for g in groups.values()) if plan[1]]
    if not plans:
        return NotifyReport()
    errors = _send_all(plans, run, time.time() if now is None else now, host)
    deliveries = []
    for (notifier, changes), error in zip(plans, errors, strict=True):
        failing = tuple(o.name for o in changes if o.failing)
        recovered = tuple(o.name for o in changes if not o.failing)
        deliveries.append(Delivery(notifier.label, failing, recovered, error))
        if error is None:  # only what was delivered is recorded as told
            told = record.get(notifier.key, frozenset())
            record[notifier.key] = (told | set(failing)) - set(recovered)
    if not any(d.ok for d in deliveries):
        return NotifyReport(tuple(deliveries))
    try:
        save_record(path, record, {n.key: n.label for n, _ in groups.values()})
    except PlacementError as e:
        return NotifyReport(
            tuple(deliveries),
            error=f"cannot write {path} (the next run will send these again): {e}",
        )
    return NotifyReport(tuple(deliveries))


def _changes(group: _Plan, record: dict[str, frozenset[str]]) -> _Plan:
    """The consumers whose state differs from what this notifier was last told."""
    notifier, seen = group
    told = record.get(notifier.key, frozenset())
    return notifier, [o for o in seen if o.failing != (o.name in told)]


def _send_all(plans: list[_Plan], run: str, now: float, host: str | None) -> list[str | None]:
    """Every notifier's message at once: the slowest bounds the run, not their sum."""
    host_name = host or socket.gethostname()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(plans)) as pool:
        futures = [
            pool.submit(_deliver, notifier, compose(changes, run, host_name, now))
            for notifier, changes in plans
        ]
        return [f.result() for f in futures]


def _deliver(notifier: _Notifier, message: Message) -> str | None:
    """None when delivered, else why not; a bug in a notifier is a failure, not a crash."""
    try:
        notifier.send(message)
    except (FanoutError, OSError, ValueError) as e:
        return str(e)
    except Exception as e:  # a notifier must never cost the run its result
        logger.debug("notifier %s crashed", notifier.label, exc_info=True)
        return f"internal error: {type(e).__name__}: {e}"
    logger.info("notified %s", notifier.label)
    return None


def summary_lines(report: NotifyReport) -> list[str]:
    """What was sent, one line per notifier (escaped), for -v and the plugin's log."""
    lines = []
    for d in report.deliveries:
        told = [*(f"{n} failing" for n in d.failing), *(f"{n} recovered" for n in d.recovered)]
        verdict = "sent" if d.ok else "NOT SENT"
        lines.append(printable(f"notify: {d.notifier}: {verdict} ({', '.join(told)})"))
    return lines


def notify_deploy(result: DeployResult, state_path: str, run: str = "") -> NotifyReport:
    """:func:`notify_changes` for a deploy's consumers; never raises (a bug in a notifier
    must not change the deploy's result)."""
    return _safely(lambda: from_deploy(result), state_path, run or f"deploy {result.certificate}")


def notify_status(
    report: StatusReport, state_path: str, run: str = "status --repair"
) -> NotifyReport:
    """:func:`notify_changes` for a status report's consumers; never raises."""
    return _safely(lambda: from_status(report), state_path, run)


def _safely(
    observe: Callable[[], Sequence[Observation]], state_path: str, run: str
) -> NotifyReport:
    try:
        return notify_changes(observe(), state_path, run)
    except Exception as e:  # never the run's result: a bug here is reported, not raised
        logger.debug("notify crashed", exc_info=True)
        return NotifyReport(error=f"internal error: {type(e).__name__}: {e} (run with --debug)")
