"""A remote consumer's endpoints (issue 15): until probing through the ssh connection is built,
its host's loopback is never probed on this host's loopback, which would prove nothing about
it; any other address is probed from here, as clients reach it."""

from __future__ import annotations

import pytest

from certbot_fanout import deploy, probe
from certbot_fanout.errors import ProbeError
from certbot_fanout.model import Dialect, KeyType


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
