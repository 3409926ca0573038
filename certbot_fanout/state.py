"""When each consumer was last deployed and last verified: a small JSON file, written atomically.

``status`` shows these times and exports them as metrics. The file is a record, not a source of
truth: a missing, unreadable or corrupt state file is an empty record (with a warning), and a
state file that cannot be written (say, ``status`` run by an unprivileged monitoring user) never
fails the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certbot_fanout import files
from certbot_fanout.errors import PlacementError

logger = logging.getLogger(__name__)

DEFAULT_STATE_PATH = "/var/lib/certbot-fanout/state.json"
STATE_ENV = "CERTBOT_FANOUT_STATE"
_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class ConsumerRecord:
    certificate: str
    last_deployed: float | None = None  # files placed or service reloaded, and all verified
    last_verified: float | None = None  # every endpoint served the current certificate
    sha256: str | None = None  # the certificate last deployed
    # Set when a run began to deploy to a consumer that only a reload can prove done (it has
    # no endpoints), cleared when that run finished with it: still set, that run died.
    pending: bool = False
    # The host it was deployed on (the map's name; None: this host). A record of another host
    # is not this consumer's once the map moves it.
    host: str | None = None


def default_state_path() -> str:
    """``$CERTBOT_FANOUT_STATE`` if set, else /var/lib/certbot-fanout/state.json."""
    return os.environ.get(STATE_ENV) or DEFAULT_STATE_PATH


def read_json(path: str, max_bytes: int, what: str) -> Any:
    """The JSON document of a small record file (the state file, the notification record),
    or None when it is missing, unreadable (with a warning) or not JSON within ``max_bytes``
    (with a warning naming it as ``what``)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.warning("cannot read %s %s: %s", what, path, e.strerror)
        return None
    try:
        if len(raw) > max_bytes:
            raise ValueError("too large")
        return json.loads(raw)
    except ValueError:
        logger.warning("%s is not a certbot-fanout %s; ignoring it", path, what)
        return None


def load_state(path: str) -> dict[str, ConsumerRecord]:
    """The records by consumer name; empty when there is no usable state file."""
    doc = read_json(path, _MAX_BYTES, "state file")
    if doc is None:
        return {}
    try:
        records = {
            name: ConsumerRecord(
                certificate=str(item["certificate"]),
                last_deployed=_number(item.get("last_deployed")),
                last_verified=_number(item.get("last_verified")),
                sha256=item.get("sha256") if isinstance(item.get("sha256"), str) else None,
                pending=item.get("pending") is True,
                host=item.get("host") if isinstance(item.get("host"), str) else None,
            )
            for name, item in doc["consumers"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        logger.warning("state file %s is not a certbot-fanout state file; ignoring it", path)
        return {}
    return records


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def save_state(path: str, records: dict[str, ConsumerRecord]) -> None:
    """Write the records atomically (0644, owned by whoever runs this); log, never raise."""
    doc = {
        "version": 1,
        "consumers": {
            name: {
                "certificate": r.certificate,
                "last_deployed": r.last_deployed,
                "last_verified": r.last_verified,
                "sha256": r.sha256,
                **({"pending": True} if r.pending else {}),
                **({"host": r.host} if r.host else {}),
            }
            for name, r in sorted(records.items())
        },
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    directory = os.path.dirname(path)
    try:
        if directory and not os.path.isdir(directory) and os.geteuid() == 0:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        files.place(
            files.Desired(path=path, uid=os.geteuid(), gid=os.getegid(), mode=0o644, data=data)
        )
    except (OSError, PlacementError) as e:
        logger.debug("cannot write state file %s: %s", path, e)


def mark_pending(path: str, certificate: str, names: Sequence[str]) -> frozenset[str]:
    """Note, before a run touches them, the consumers that a crash could leave placed but not
    reloaded (``update_state`` clears the mark); returns those of ``names`` still marked by a
    run that never finished."""
    if not names:
        return frozenset()
    records = load_state(path)
    died = frozenset(name for name in names if name in records and records[name].pending)
    if len(died) < len(names):
        for name in names:
            old = records.get(name, ConsumerRecord(certificate))
            records[name] = dataclasses.replace(old, certificate=certificate, pending=True)
        save_state(path, records)
    return died


def update_state(
    path: str,
    certificate: str,
    deployed: dict[str, str],
    verified: list[str],
    now: float,
    finished: Sequence[str] = (),
    hosts: Mapping[str, str | None] | None = None,
) -> None:
    """Record that the consumers in ``deployed`` (name -> certificate SHA-256) were deployed and
    those in ``verified`` were proven current, at ``now``, and that the run is done with those
    in ``finished``; ``hosts`` names the host each lives on (absent: this host). Also removes
    the temporary files a killed writer of ``path`` left (by writing it, or when there is
    nothing to write, on its own)."""
    records = load_state(path)
    done = [name for name in finished if name in records and records[name].pending]
    if not deployed and not verified and not done:
        files.remove_leftovers(path)
        return
    for name in {*deployed, *verified, *done}:
        old = records.get(name, ConsumerRecord(certificate))
        records[name] = ConsumerRecord(
            certificate=certificate if name in deployed or name in verified else old.certificate,
            last_deployed=now if name in deployed else old.last_deployed,
            last_verified=now if name in verified else old.last_verified,
            sha256=deployed.get(name, old.sha256),
            pending=old.pending and name not in finished,
            host=(hosts or {}).get(name, old.host),
        )
    save_state(path, records)
