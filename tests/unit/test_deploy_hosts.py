"""A remote consumer's endpoints (issue 15): until probing through the ssh connection is built,
its host's loopback is never probed on this host's loopback, which would prove nothing about
it; any other address is probed from here, as clients reach it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from certbot_fanout import deploy, probe
from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Consumer, Dialect, KeyType


def _reached(
    host: str,
    port: int,
    server_name: str | None,
    timeout: float,
    starttls: Dialect | None = None,
    /,
    *,
    key_type: KeyType | None = None,
    trust: probe.Trust | None = None,
) -> probe.Served:
    raise AssertionError(f"probed {host}:{port}")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.4.5", "::1"])
def test_the_loopback_of_a_remote_consumer_is_not_probed_here(address: str) -> None:
    fetch = deploy._not_our_loopback(_reached, "mx1")
    with pytest.raises(ProbeError, match="is the loopback of mx1"):
        fetch(address, 25, None, 1.0, Dialect.SMTP)


@pytest.mark.parametrize("address", ["198.18.0.11", "2001:2::11", "mx1.example.test"])
def test_any_other_address_is_probed_from_here(address: str) -> None:
    fetch = deploy._not_our_loopback(_reached, "mx1")
    with pytest.raises(AssertionError, match=f"probed {address}:443"):
        fetch(address, 443, None, 1.0)


class _Recorder:
    """Stands in for remote.Hosts: what was released, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def release(self, consumer: Consumer) -> None:
        self.log.append(f"release {consumer.name}")


def test_a_run_takes_consumers_host_by_host_releases_each_and_keeps_the_maps_order() -> None:
    consumers = [
        Consumer(name=name, certificate="example.org", host=host)
        for name, host in (("a1", "a"), ("b1", "b"), ("local", None), ("a2", "a"), ("b2", "b"))
    ]
    log: list[str] = []
    places = deploy.Places(deploy.Effects())
    places.hosts = _Recorder(log)  # type: ignore[assignment]

    def work(c: Consumer) -> str:
        log.append(f"work {c.name}")
        return c.name.upper()

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert places.map(pool, work, consumers) == ["A1", "B1", "LOCAL", "A2", "B2"]
    # One worker: a's consumers, then b's, then the local one; each released after its work.
    assert log == [
        "work a1", "release a1", "work a2", "release a2",
        "work b1", "release b1", "work b2", "release b2",
        "work local", "release local",
    ]  # fmt: skip
