"""Proof that an endpoint serves a lineage's certificate, from every place a client would reach.

An endpoint is not one socket. Its host name is resolved (A and AAAA) and every address is
probed on its own, since a client may be sent to any of them: ``localhost`` on Debian is
127.0.0.1 *and* ::1, and nginx can serve a different certificate on each. An endpoint with
``family`` checks only that family's addresses. Each probe asks for the lineage's key type
(``probe.fetch_served``'s ``key_type``), so a server holding an ECDSA and an RSA certificate
shows the one this lineage is. A ``federation`` endpoint stands for the places Matrix
federation peers find for a server name (``certbot_fanout.federation``): each is probed with the
name peers check, and must also be trusted for that name, as peers require.

:func:`probe_endpoint` looks once; :func:`poll_endpoint` asks again until every address serves
the current certificate or a deadline passes. The results (:class:`EndpointResult`, one
:class:`AddressResult` per address) carry sentences that name the address, and for federation
the resolution path, that failed.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from certbot_fanout import probe
from certbot_fanout.errors import ProbeError
from certbot_fanout.lineage import (
    CertInfo,
    Lineage,
    cert_info_from_der,
    chain_verdict,
    fingerprint,
)
from certbot_fanout.model import Endpoint, Family, KeyType, address_label

if TYPE_CHECKING:
    from certbot_fanout.federation import Resolution

PROBE_ATTEMPT_TIMEOUT = 10.0
# How long a stale answer is asked again before it is believed, after a reload and in status.
SETTLE_SECONDS = 1.0
FIRST_RETRY_DELAY = 0.02
MAX_RETRY_DELAY = 0.5
# At most this many addresses are probed per name: a name with more is reported, not probed.
MAX_ADDRESSES = 16

_FAMILIES = {Family.IPV4: socket.AF_INET, Family.IPV6: socket.AF_INET6}
_KEY_NAMES = {KeyType.RSA: "RSA", KeyType.ECDSA: "ECDSA"}


@dataclass(frozen=True)
class AddressResult:
    """What one address of an endpoint served."""

    host: str  # the name (or literal) this address is one of
    address: str  # an IP literal
    port: int
    server_name: str | None
    ok: bool
    served: CertInfo | None = None
    error: str | None = None
    legacy_protocol: str | None = None
    stale: bool = False  # it served a certificate other than the lineage's
    warning: str | None = None  # it passes, but deserves a look (a chain out of order, say)
    # What it is an address of, in words, when that is not the address itself: the endpoint
    # (``localhost:443``), or for federation the path and the role ("the well-known at ...").
    via: str = ""
    # It must serve the lineage's certificate (False: a well-known's server with another
    # name's certificate, judged only as trusted or not): what status counts for expiry.
    own: bool = True

    @property
    def label(self) -> str:
        return address_label(self.address, self.port)


@dataclass(frozen=True)
class EndpointResult:
    endpoint: Endpoint
    server_name: str | None
    ok: bool
    seconds: float = 0.0
    attempts: int = 0
    served: CertInfo | None = None  # the first address's that is not current, else the lineage's
    error: str | None = None
    legacy_protocol: str | None = None  # "TLSv1" or "TLSv1.1": only those could be spoken
    addresses: tuple[AddressResult, ...] = ()
    key_type: KeyType | None = None  # the key type asked for (the lineage's)
    resolution: str | None = None  # a federation endpoint: the path its peers take
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.endpoint.label


@dataclass(frozen=True)
class _Target:
    """A name and port to resolve and probe, what to send as SNI, and what is asked of it."""

    host: str
    port: int
    server_name: str | None
    trust: probe.Trust | None = None
    compare: bool = True  # must serve the lineage's certificate (else: only be trusted)
    context: str = ""  # what to put before the address in a message ("" for a literal)


@dataclass(frozen=True)
class _Plan:
    targets: tuple[_Target, ...]
    resolution: str | None = None
    warnings: tuple[str, ...] = ()


def addresses(host: str, port: int, family: Family | None, timeout: float) -> list[str]:
    """Every address ``host`` resolves to (in resolver order, each once), or only ``family``'s.

    Raises:
        ProbeError: the name does not resolve, or has no address of that family.
    """
    found = [host] if _literal(host) else _resolve(host, port, timeout)
    if family is not None:
        wanted = _FAMILIES[family]
        found = [a for a in found if _family_of(a) == wanted]
        if not found:
            raise ProbeError(f"{address_label(host, port)}: {host} has no {family.value} address")
    return found[:MAX_ADDRESSES]


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    # getaddrinfo has no timeout of its own; the resolver's (resolv.conf) bounds it. No
    # AI_ADDRCONFIG: it hides ::1 on a host whose only IPv6 address is loopback.
    del timeout
    where = address_label(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ProbeError(f"{where}: cannot resolve {host}: {e.strerror}") from None
    except UnicodeError:
        raise ProbeError(f"{where}: cannot resolve {host}: not a valid name") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def probe_endpoint(
    ep: Endpoint,
    lineage: Lineage,
    fetch: probe.Fetch,
    timeout: float,
    done: Mapping[tuple[str, str, int], AddressResult] | None = None,
) -> EndpointResult:
    """One look at every address of ``ep``: ok when each serves the lineage's certificate
    (and, unless turned off, its chain). Addresses already in ``done`` (current in an earlier
    look) are not asked again."""
    server_name = ep.server_name or lineage.default_server_name
    try:
        plan = _plan(ep, server_name, lineage, timeout)
    except ProbeError as e:
        return _unresolved(ep, server_name, lineage, e)
    return probe_plan(ep, plan, lineage, fetch, timeout, done)


def _unresolved(
    ep: Endpoint, server_name: str | None, lineage: Lineage, e: ProbeError
) -> EndpointResult:
    error = f"{ep.label}: {e}" if ep.federation is not None else str(e)
    key_type = lineage.cert.key_type
    return EndpointResult(ep, server_name, False, attempts=1, error=error, key_type=key_type)


def probe_plan(
    ep: Endpoint,
    plan: _Plan,
    lineage: Lineage,
    fetch: probe.Fetch,
    timeout: float,
    done: Mapping[tuple[str, str, int], AddressResult] | None = None,
) -> EndpointResult:
    """One look at the targets of ``plan`` (``ep`` resolved): every address of each."""
    server_name = ep.server_name or lineage.default_server_name
    results: list[AddressResult] = []
    errors: list[str] = []
    for target in plan.targets:
        try:
            # Via the consumer's host, that host resolves the name (and picks the address).
            found = (
                (target.host,)
                if ep.via_host
                else addresses(target.host, target.port, ep.family, timeout)
            )
        except ProbeError as e:
            errors.append(_in_context(target, str(e)))
            continue
        for address in found:
            key = (target.host, address, target.port)
            earlier = (done or {}).get(key)
            result = earlier or _probe_address(ep, target, address, lineage, fetch, timeout)
            results.append(result)
            if result.error:
                errors.append(result.error)
    return _endpoint_result(ep, server_name, lineage, plan, tuple(results), errors)


def _endpoint_result(
    ep: Endpoint,
    server_name: str | None,
    lineage: Lineage,
    plan: _Plan,
    results: tuple[AddressResult, ...],
    errors: list[str],
) -> EndpointResult:
    ok = bool(results) and not errors
    if not results and not errors:
        errors.append(f"{ep.label}: no address to probe")
    stale = next((r.served for r in results if not r.ok and r.served is not None), None)
    legacy = next((r.legacy_protocol for r in results if r.legacy_protocol), None)
    return EndpointResult(
        ep,
        server_name,
        ok,
        attempts=1,
        served=lineage.cert if ok else stale,
        error="; ".join(errors) if errors else None,
        legacy_protocol=legacy,
        addresses=results,
        key_type=lineage.cert.key_type,
        resolution=plan.resolution,
        warnings=plan.warnings + tuple(r.warning for r in results if r.warning),
    )


def _plan(ep: Endpoint, server_name: str | None, lineage: Lineage, timeout: float) -> _Plan:
    if ep.federation is None:
        context = "" if _literal(ep.host) else ep.label
        return _Plan((_Target(ep.host, ep.port, server_name, context=context),))
    # Imported only when a federation endpoint is checked: the hook's start-up is unchanged.
    from certbot_fanout import federation

    resolution = federation.resolve(ep.federation, timeout=timeout, ca_file=ep.ca_file)
    return _federation_plan(ep, resolution, lineage)


def _federation_plan(ep: Endpoint, resolution: Resolution, lineage: Lineage) -> _Plan:
    """The places peers connect to (each must serve the lineage's certificate, trusted for the
    name they check), and the well-known's HTTPS endpoints (trusted; and current when the
    lineage's certificate is for that name)."""
    context = f"{ep.label} ({resolution.path})"
    targets = [
        _Target(
            t.host,
            t.port,
            t.cert_name if not _literal(t.cert_name) else None,
            probe.Trust(t.cert_name, ep.ca_file),
            context=context,
        )
        for t in resolution.targets
    ]
    for t in resolution.well_known:
        where = f"{context}: the well-known at https://{t.cert_name}/.well-known/matrix/server"
        targets.append(
            _Target(
                t.host,
                t.port,
                t.cert_name,
                probe.Trust(t.cert_name, ep.ca_file),
                compare=covers(lineage.cert.names, t.cert_name),
                context=where,
            )
        )
    return _Plan(tuple(targets), resolution.path, tuple(resolution.warnings))


def covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate for ``names`` is one for ``host`` (one-label wildcards too)."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _in_context(target: _Target, message: str) -> str:
    return f"{target.context}: {message}" if target.context else message


def _probe_address(
    ep: Endpoint,
    target: _Target,
    address: str,
    lineage: Lineage,
    fetch: probe.Fetch,
    timeout: float,
) -> AddressResult:
    """What ``address`` serves for ``target``, judged against the lineage."""
    base = AddressResult(
        target.host,
        address,
        target.port,
        target.server_name,
        False,
        via=target.context,
        own=target.compare,
    )
    where = _in_context(target, f"{base.label} (SNI {target.server_name}{_asked(lineage)})")
    try:
        got = fetch(
            address,
            target.port,
            target.server_name,
            timeout,
            ep.starttls,
            key_type=lineage.cert.key_type,
            trust=target.trust,
        )
    except ProbeError as e:
        return replace(base, error=_in_context(target, str(e)))
    base = replace(base, legacy_protocol=got.legacy_protocol)
    served = cert_info_from_der(got.leaf)
    stale = target.compare and fingerprint(got.leaf) != lineage.cert.fingerprint
    problem = _problem(target, got, served, lineage, stale)
    if problem:
        return replace(base, served=served, error=f"{where} {problem}", stale=stale)
    if target.compare and ep.check_chain:
        verdict = chain_verdict(got.chain, lineage, datetime.datetime.now(datetime.UTC))
        if verdict.problem:
            return replace(base, served=served, error=f"{where} {verdict.problem}")
        if verdict.warning:
            base = replace(base, warning=f"{base.label}: {verdict.warning}")
    return replace(base, ok=True, served=served)


def _problem(
    target: _Target, got: probe.Served, served: CertInfo, lineage: Lineage, stale: bool
) -> str | None:
    expected = lineage.cert
    if stale:
        return (
            f"serves {served.describe()}; expected serial {expected.serial}, not after "
            f"{expected.not_after:%Y-%m-%d %H:%M:%S} UTC, SHA-256 {expected.fingerprint}"
            + _offered(got, lineage)
        )
    if got.trust_error:
        name = target.trust.name if target.trust else target.server_name
        return f"presents a certificate federation peers refuse for {name}: {got.trust_error}"
    return None


def _asked(lineage: Lineage) -> str:
    key = lineage.cert.key_type
    return f", asked for {_KEY_NAMES[key]}" if key else ""


def _offered(got: probe.Served, lineage: Lineage) -> str:
    key = lineage.cert.key_type
    if key is None or got.key_type_offered:
        return ""
    return f" (it offers no {_KEY_NAMES[key]} certificate)"


def poll_endpoint(
    ep: Endpoint,
    lineage: Lineage,
    fetch: probe.Fetch,
    deadline: float,
    sleep: Callable[[float], None] = time.sleep,
) -> EndpointResult:
    """Probe ``ep`` until every address serves the lineage's certificate or ``deadline`` (on
    the monotonic clock) passes: at least once, and once more at the deadline, backing off from
    20 ms to 0.5 s between looks. An address found current is not asked again."""
    start = time.monotonic()
    delay = FIRST_RETRY_DELAY
    attempts = 0
    done: dict[tuple[str, str, int], AddressResult] = {}
    plan: _Plan | None = None  # a federation name is resolved once, then its places asked
    server_name = ep.server_name or lineage.default_server_name
    while True:
        attempts += 1
        timeout = min(max(deadline - time.monotonic(), 1.0), PROBE_ATTEMPT_TIMEOUT)
        result = None
        if plan is None:
            try:
                plan = _plan(ep, server_name, lineage, timeout)
            except ProbeError as e:
                result = _unresolved(ep, server_name, lineage, e)
        if plan is not None:
            result = probe_plan(ep, plan, lineage, fetch, timeout, done)
        assert result is not None
        done.update(((a.host, a.address, a.port), a) for a in result.addresses if a.ok)
        now = time.monotonic()
        if result.ok or now >= deadline:
            error = result.error
            if error and now - start >= 1.0:
                error += f" (still after {now - start:.1f} s, {attempts} attempts)"
            return replace(result, seconds=now - start, attempts=attempts, error=error)
        sleep(min(delay, deadline - now))
        delay = min(delay * 2, MAX_RETRY_DELAY)
