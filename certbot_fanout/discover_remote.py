"""``discover --host NAME``: what carries a lineage's certificate on another host of the map.

The host's agent walks the usual directories there (the same bounded, symlink-safe walk as
here, :func:`certbot_fanout.fswalk.scan_pems`) and sends back, for each small PEM file, its
path, owner, group, mode, whether it holds a key, and its first certificate (never a key);
this side matches the certificates against the lineages and the map's consumers on that host.
Its listening sockets (from its /proc/net) are probed from the host itself, through the
connection, as ``via: host`` endpoints are; its services' configurations are matched there
(the texts never leave it), and only the paths they name come back, then what each file
holds.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from certbot_fanout.configscan import MAX_CONFIG_ENTRIES
from certbot_fanout.discover import (
    MAX_ENTRIES,
    SCAN_ROOTS,
    SERVICE_CONFIGS,
    Budgets,
    DiscoverReport,
    Find,
    FindKind,
    Probed,
    Reference,
    copy_from_scan,
    listeners,
    match,
    read_lineages,
)
from certbot_fanout.errors import ConfigError, FanoutError
from certbot_fanout.fswalk import NEVER_SCAN
from certbot_fanout.lineage import Lineage, cert_info
from certbot_fanout.model import DEFAULT_HOST_JOBS, Config
from certbot_fanout.procnet import Socket

if TYPE_CHECKING:
    from certbot_fanout import remote

MAX_FOUND = 2000  # PEM files one answer may list (each with one certificate: ~3 KB)
LISTENERS_TIMEOUT = 10.0


def discover_on_host(
    config: Config,
    config_dir: str,
    host: str,
    cert_names: Iterable[str] = (),
    extra_paths: Iterable[str] = (),
    budgets: Budgets | None = None,
) -> DiscoverReport:
    """Look for what carries the lineages' certificates on host ``host``: its listeners, the
    paths its services' configurations name, and its PEM files.

    Raises:
        ConfigError: no such host in the map, or it is in receive mode.
        FanoutError: no lineage to look for, or the host could not be reached or scanned.
    """
    start = time.monotonic()
    try:
        target = config.host(host)
    except KeyError:
        known = ", ".join(h.name for h in config.hosts) or "none"
        raise ConfigError(f"no host {host!r} in the map (hosts: {known})", config.source) from None
    if target.mode == "receive":
        raise ConfigError(
            f"host {host} is in receive mode: its key runs only `certbot-fanout receive`; run "
            "discover there",
            config.source,
        )
    lineages, notes = read_lineages(config, config_dir, cert_names)
    budgets = budgets or Budgets()
    looked = _look(config, host, lineages, [*SCAN_ROOTS, *extra_paths], budgets)
    answer, probed = looked.scan, looked.probed
    seen = {f.where for f in looked.named}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        scanned = (_find(config, host, lineages, i) for i in answer["found"])
        files = [f for f in scanned if f is not None and f.where not in seen]
    shortfalls = [s for s in (probed.shortfall, looked.named_shortfall) if s]
    if answer.get("stopped"):
        shortfalls.append(_stopped(answer["stopped"], int(answer.get("read", 0))))
    return DiscoverReport(
        lineages=lineages,
        finds=(*probed.finds, *looked.named, *files),
        notes=tuple(notes),
        seconds=time.monotonic() - start,
        scanned_files=int(answer.get("read", 0)),
        listeners=looked.sockets - probed.unprobed,
        checked_at=datetime.datetime.now(datetime.UTC),
        shortfalls=tuple(shortfalls),
        host=host,
    )


class _Looked(NamedTuple):
    scan: dict[str, Any]  # the PEM scan's answer
    probed: Probed  # the listeners, probed from the host
    sockets: int  # how many listening sockets it has
    named: list[Find]  # what the services' configurations name
    named_shortfall: str | None  # where the configurations' walk stopped


def _look(
    config: Config,
    host: str,
    lineages: Mapping[str, Lineage],
    roots: list[str],
    budgets: Budgets,
) -> _Looked:
    """Over one connection to ``host``: its listening sockets, each probed from the host
    itself (through the connection, as ``via: host``), the paths its services' configurations
    name, then its PEM files in the file budget's time left."""
    from certbot_fanout import remote, remote_receive

    args = {
        "roots": roots,
        "never": list(NEVER_SCAN),
        "max_entries": MAX_ENTRIES,
        "max_found": MAX_FOUND,
    }
    consumers = [c for c in config.consumers if c.host == host]
    with remote.Hosts(
        config.hosts, consumers, DEFAULT_HOST_JOBS, remote_receive.session_for
    ) as hosts:
        try:
            session = hosts.session(host)
            found = session.call("listeners", {}, LISTENERS_TIMEOUT)
            sockets = [Socket(str(a), int(p), None if u is None else int(u)) for a, p, u in found]
            probed = listeners(
                config, lineages, sockets, budgets.listeners, session.fetch_through, host
            )
            started = time.monotonic()
            named = _named(config, host, lineages, session, budgets.files)
            left = max(1.0, budgets.files - (time.monotonic() - started))
            answer = session.call("scan_pems", {**args, "seconds": left}, left)
        except remote.RemoteFailure as e:
            raise FanoutError(f"host {host}: the look failed: {e.message}") from None
        except (KeyError, TypeError, ValueError):
            raise FanoutError(f"host {host}: an answer of its agent came back garbled") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("found"), list):
        raise FanoutError(f"host {host}: its scan's answer is not a list of files")
    return _Looked(answer, probed, len(sockets), *named)


def _named(
    config: Config,
    host: str,
    lineages: Mapping[str, Lineage],
    session: remote.Session,
    seconds: float,
) -> tuple[list[Find], str | None]:
    """The certificate paths the services' configurations on ``host`` name (the texts stay
    there: the host matches each service's pattern), then what each of those files holds."""
    services = {
        name: [list(spec.globs), spec.pattern.pattern, int(spec.pattern.flags)]
        for name, spec in SERVICE_CONFIGS.items()
    }
    args = {"services": services, "max_entries": MAX_CONFIG_ENTRIES, "seconds": seconds}
    answer = session.call("references", args, seconds)
    first: dict[str, Reference] = {}
    for service, conf, line, path in answer["references"]:
        first.setdefault(str(path), Reference(str(service), str(conf), int(line)))
    items = session.call("pems", {"paths": list(first)}, seconds) if first else []
    finds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for item in items:
            reference = first.get(str(item.get("path")))
            find = _find(config, host, lineages, item)
            if find is not None and reference is not None:
                finds.append(dataclasses.replace(find, kind=FindKind.CONFIG, reference=reference))
    stopped = answer.get("stopped")
    shortfall = f"the service configurations were read only up to {stopped}" if stopped else None
    return finds, shortfall


def _find(config: Config, host: str, lineages: Mapping[str, Lineage], item: Any) -> Find | None:
    """A file the host's scan listed, if its first certificate is one of the lineages'."""
    try:
        info = cert_info(x509.load_der_x509_certificate(base64.b64decode(item["der"])))
        path = str(item["path"])
        copy = copy_from_scan(item)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    lineage = match(info, lineages)
    if lineage is None:
        return None
    mapped = next(
        (
            c.name
            for c in config.consumers
            if c.host == host and any(spec.path == path for spec in c.files)
        ),
        None,
    )
    return Find(
        kind=FindKind.FILE,
        where=path,
        certificate=lineage.name,
        served=info,
        current=info.fingerprint == lineage.cert.fingerprint,
        mapped_by=mapped,
        copy=copy,
        host=host,
    )


def _stopped(stopped: Mapping[str, Any], read: int) -> str:
    why = {
        "entry": f"its budget of {MAX_ENTRIES} entries ran out",
        "time": "its time budget ran out; raise it with --scan-budget",
        "found": f"it listed {MAX_FOUND} PEM files, the most one answer holds",
    }.get(str(stopped.get("why")), "a bound was reached")
    text = f"the file scan stopped in {stopped.get('in')} after {read} files ({why})"
    left = [str(r) for r in stopped.get("left") or ()]
    return text + (f"; not reached: {', '.join(left)}" if left else "")
