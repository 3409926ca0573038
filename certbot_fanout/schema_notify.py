"""The map's ``notify:`` block (in ``defaults`` and per consumer): YAML nodes in, a
:class:`certbot_fanout.model.Notify` out, every rejection with its place.

``mail`` (a list of plain addresses) with an optional ``sendmail`` command, ``webhook`` (an
``https://`` URL, an optional ``headers_file`` and ``ca_file``, a ``timeout``) and ``command``
(argv). Files are only checked to be absolute paths here: whether a headers_file is root's
alone is checked when it is read, so a file that changed later fails that notifier, not the map.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable

from certbot_fanout.model import MAX_WEBHOOK_TIMEOUT, Notify, Webhook
from certbot_fanout.yamlnode import Node, Path, Reader

NOTIFY_KEYS = ("mail", "sendmail", "webhook", "command")
WEBHOOK_KEYS = ("url", "headers_file", "timeout", "ca_file")
# A mail address as notify sends to it: no display name, no comments, nothing a header could be
# split on; the domain a DNS name.
_MAIL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})$")

Command = Callable[[Node, Path], tuple[str, ...]]


def read_notify(reader: Reader, node: Node, path: Path, command: Command) -> Notify:
    """``notify:``: mail, a webhook and a command, each optional; ``{}`` for nobody (a
    consumer's block replaces the defaults' whole block). ``command`` reads a command the way
    the map's test and reload are read."""
    items = reader.mapping(
        node, path, "a mapping with any of mail, webhook and command ({} for nobody)"
    )
    reader.check_keys(items, NOTIFY_KEYS, path)
    mail: tuple[str, ...] = ()
    if "mail" in items:
        mail = _addresses(reader, items["mail"][1], path / "mail")
    sendmail = Notify().sendmail
    if "sendmail" in items:
        if not mail:
            raise reader.error(
                items["sendmail"][0], path / "sendmail", "'sendmail' is only used with 'mail'"
            )
        sendmail = command(items["sendmail"][1], path / "sendmail")
    webhook = None
    if "webhook" in items:
        webhook = _webhook(reader, items["webhook"][1], path / "webhook")
    argv = None
    if "command" in items:
        argv = command(items["command"][1], path / "command")
    return Notify(mail=mail, sendmail=sendmail, webhook=webhook, command=argv)


def _addresses(reader: Reader, node: Node, path: Path) -> tuple[str, ...]:
    addresses = reader.sequence(node, path, "a list of mail addresses")
    if not addresses:
        raise reader.error(node, path, "expected at least one mail address")
    found: list[str] = []
    for i, item in enumerate(addresses):
        address = reader.string(item, path / i, "a mail address")
        if not _MAIL_RE.match(address):
            raise reader.error(
                item,
                path / i,
                "expected a plain mail address such as root@example.org (no name, no angle "
                f"brackets), got {address!r}",
            )
        found.append(address)
    return tuple(dict.fromkeys(found))


def _webhook(reader: Reader, node: Node, path: Path) -> Webhook:
    items = reader.mapping(node, path, "a mapping with 'url'")
    reader.check_keys(items, WEBHOOK_KEYS, path, ("url",), node)
    url = _https_url(reader, items["url"][1], path / "url")
    headers_file = ca_file = None
    if "headers_file" in items:
        headers_file = _absolute(reader, items["headers_file"][1], path / "headers_file")
    if "ca_file" in items:
        ca_file = _absolute(reader, items["ca_file"][1], path / "ca_file")
    timeout = Webhook(url).timeout
    if "timeout" in items:
        timeout = reader.number(
            items["timeout"][1], path / "timeout", 0, MAX_WEBHOOK_TIMEOUT, "a number of seconds"
        )
    return Webhook(url=url, headers_file=headers_file, timeout=timeout, ca_file=ca_file)


def _https_url(reader: Reader, node: Node, path: Path) -> str:
    url = reader.string(node, path, "an https:// URL")
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme == "https" and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not one
        usable = False
    if not usable:
        raise reader.error(node, path, f"expected an https:// URL (TLS is verified), got {url!r}")
    if parts.username is not None or parts.fragment or not url.isprintable() or " " in url:
        raise reader.error(
            node,
            path,
            "expected a plain https:// URL: no user or password in it (send a token from "
            "headers_file), no fragment, no spaces",
        )
    return url


def _absolute(reader: Reader, node: Node, path: Path) -> str:
    value = reader.string(node, path, "an absolute path")
    if not os.path.isabs(value):
        raise reader.error(node, path, f"expected an absolute path, got {value!r}")
    return value
