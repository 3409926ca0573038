"""The map's ``hosts:`` block and a consumer's ``host:`` (issue 15): what each accepts, what it
refuses and where, and what a remote consumer's files carry (owners named, resolved on the
target; the same path on two hosts; no link into live/, which is on this host)."""

from __future__ import annotations

import pytest

from certbot_fanout.config import parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import DEFAULT_KNOWN_HOSTS, REMOTE_ID, Config, Host

SOURCE = "/etc/certbot-fanout/consumers.yaml"
CONSUMER = """\
  web-{host}:
    host: {host}
    certificate: example.org
    files:
      - {{path: /etc/ssl/web/fullchain.pem, content: fullchain, owner: www-data}}
"""


def _map(hosts: str, consumers: str = "") -> Config:
    text = f"version: 1\nhosts:\n{hosts}consumers:\n{consumers or '  {}'}\n"
    if not consumers:
        text = f"version: 1\nhosts:\n{hosts}"
    return parse_config(text, SOURCE)


def _refused(hosts: str, consumers: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _map(hosts, consumers)
    return info.value


def test_a_host_with_every_field_and_a_host_given_by_its_destination_alone() -> None:
    config = _map(
        "  mx1:\n    ssh: root@mx1.example.org\n    port: 2222\n    ssh_config: /etc/fan/ssh\n"
        "    identity_file: /etc/fan/id\n    known_hosts: /etc/fan/kh\n"
        "    python: /usr/bin/python3.11\n    connect_timeout: 4\n"
        "  lb1: deploy@198.51.100.7\n"
    )
    assert config.host("mx1") == Host(
        name="mx1",
        ssh="root@mx1.example.org",
        port=2222,
        ssh_config="/etc/fan/ssh",
        identity_file="/etc/fan/id",
        known_hosts="/etc/fan/kh",
        python="/usr/bin/python3.11",
        connect_timeout=4,
    )
    lb1 = config.host("lb1")
    assert (lb1.ssh, lb1.port, lb1.known_hosts, lb1.python) == (
        "deploy@198.51.100.7",
        None,
        DEFAULT_KNOWN_HOSTS,
        "python3",
    )


@pytest.mark.parametrize(
    ("hosts", "where", "words"),
    [
        ("  mx1: {port: 22}\n", "hosts.mx1", "'ssh'"),
        ("  mx1: {ssh: -oProxyCommand=sh}\n", "hosts.mx1.ssh", "no options"),
        ("  mx1: {ssh: 'root@mx1 rm -rf /'}\n", "hosts.mx1.ssh", "ssh destination"),
        ("  mx1: {ssh: 'root@mx1;reboot'}\n", "hosts.mx1.ssh", "ssh destination"),
        ("  mx1: {ssh: mx1, port: 0}\n", "hosts.mx1.port", "1-65535"),
        ("  mx1: {ssh: mx1, port: '22'}\n", "hosts.mx1.port", "1-65535"),
        ("  mx1: {ssh: mx1, known_hosts: kh}\n", "hosts.mx1.known_hosts", "absolute path"),
        ("  mx1: {ssh: mx1, ssh_config: ./c}\n", "hosts.mx1.ssh_config", "absolute path"),
        ("  mx1: {ssh: mx1, python: 'python3 -S'}\n", "hosts.mx1.python", "program name"),
        ("  mx1: {ssh: mx1, python: '$(id)'}\n", "hosts.mx1.python", "program name"),
        ("  mx1: {ssh: mx1, connect_timeout: 0}\n", "hosts.mx1.connect_timeout", "more than 0"),
        ("  mx1: {ssh: mx1, user: root}\n", "hosts.mx1.user", "unknown key 'user'"),
        ("  'mx 1': {ssh: mx1}\n", "hosts.mx 1", "letters, digits"),
        ("  - mx1\n", "hosts", "mapping of host names"),
    ],
)
def test_a_wrong_host_is_refused_at_its_place(hosts: str, where: str, words: str) -> None:
    error = _refused(hosts)
    assert error.key_path == where, error
    assert words in error.message, error


def test_a_consumer_names_a_host_of_the_map_or_is_refused_with_a_suggestion() -> None:
    error = _refused("  mx1: {ssh: mx1}\n", CONSUMER.format(host="mx2"))
    assert error.key_path == "consumers.web-mx2.host"
    assert "unknown host 'mx2'" in error.message and "mx1" in error.message
    with pytest.raises(ConfigError, match="none: add a 'hosts:' block"):
        parse_config(
            "version: 1\nconsumers:\n  web:\n    host: mx1\n    certificate: example.org\n", SOURCE
        )


def test_a_remote_consumers_owner_is_resolved_on_its_host_not_here() -> None:
    config = _map(
        "  mx1: {ssh: mx1}\n",
        "  web:\n    host: mx1\n    certificate: example.org\n    files:\n"
        "      - {path: /srv/a.pem, content: fullchain, owner: no-such-user-here, group: 7}\n",
    )
    (spec,) = config.consumers[0].files
    assert (spec.owner, spec.owner_name) == (REMOTE_ID, "no-such-user-here")
    assert (spec.group, spec.group_name) == (7, "7")
    assert config.consumers[0].host == "mx1"


def test_the_same_path_may_be_placed_once_per_host() -> None:
    config = _map(
        "  mx1: {ssh: mx1}\n  mx2: {ssh: mx2}\n",
        CONSUMER.format(host="mx1") + CONSUMER.format(host="mx2"),
    )
    assert [c.host for c in config.consumers] == ["mx1", "mx2"]
    error = _refused(
        "  mx1: {ssh: mx1}\n",
        CONSUMER.format(host="mx1") + CONSUMER.format(host="mx1").replace("web-mx1", "other"),
    )
    assert "already placed by consumers.web-mx1.files[0]" in error.message


def test_a_remote_consumer_cannot_link_into_live_which_is_on_this_host() -> None:
    error = _refused(
        "  mx1: {ssh: mx1}\n",
        "  web:\n    host: mx1\n    certificate: example.org\n    files:\n"
        "      - {path: /srv/a.pem, content: fullchain, link: true}\n",
    )
    assert error.key_path == "consumers.web.files[0].link"
    assert "cannot link into live/" in error.message


def test_a_map_without_hosts_has_none_and_its_consumers_are_local() -> None:
    config = parse_config("version: 1\nconsumers:\n  web:\n    certificate: example.org\n", SOURCE)
    assert config.hosts == () and config.consumers[0].host is None


VIA = """\
  web-mx1:
    host: {host}
    certificate: example.org
    files:
      - {{path: /etc/ssl/web/fullchain.pem, content: fullchain}}
    verify:
      - {{host: 127.0.0.1, port: 8443{extra}}}
"""


def test_via_host_is_read_for_a_remote_consumer_and_here_is_the_default() -> None:
    hosts = "  mx1: root@mx1.example.org\n"
    through = _map(hosts, VIA.format(host="mx1", extra=", via: host"))
    assert through.consumers[0].verify[0].via_host is True
    for extra in ("", ", via: here"):
        assert (
            _map(hosts, VIA.format(host="mx1", extra=extra)).consumers[0].verify[0].via_host
            is False
        )


@pytest.mark.parametrize(
    ("consumer", "words"),
    [
        (VIA.format(host="mx1", extra=", via: there"), "expected here or host, got 'there'"),
        (
            VIA.format(host="mx1", extra=", via: host, family: ipv4"),
            "cannot be used with via: host",
        ),
        (
            VIA.replace("    host: {host}\n", "").format(extra=", via: host"),
            "via: host is for a consumer on another host",
        ),
    ],
)
def test_via_is_refused_where_it_cannot_mean_anything(consumer: str, words: str) -> None:
    error = _refused("  mx1: root@mx1.example.org\n", consumer)
    assert words in str(error)


RECEIVE_HOST = "  mx1: {ssh: root@mx1.example.org, mode: receive}\n"


def test_a_receive_host_takes_a_consumer_that_names_its_lineage_and_endpoints() -> None:
    config = _map(
        RECEIVE_HOST,
        "  mail-mx1:\n    host: mx1\n    certificate: example.org\n"
        "    verify: [{host: mx1.example.org, port: 25, starttls: smtp}]\n",
    )
    assert config.host("mx1").mode == "receive"
    [consumer] = config.consumers
    assert (consumer.files, consumer.test, consumer.reload) == ((), None, None)
    assert consumer.verify[0].port == 25


@pytest.mark.parametrize(
    ("hosts", "consumer", "words"),
    [
        ("  mx1: {ssh: root@mx1.example.org, mode: push}\n", "", "expected agent or receive"),
        (RECEIVE_HOST, CONSUMER.format(host="mx1"), "its own map decides the files"),
        (
            RECEIVE_HOST,
            "  m:\n    host: mx1\n    certificate: example.org\n    reload: [true]\n",
            "'reload' cannot be given here",
        ),
        (
            RECEIVE_HOST,
            "  m:\n    host: mx1\n    certificate: example.org\n"
            "    verify: [{host: 127.0.0.1, port: 25, via: host}]\n",
            "nothing can be probed through it",
        ),
    ],
)
def test_a_receive_host_refuses_what_its_own_map_decides(
    hosts: str, consumer: str, words: str
) -> None:
    assert words in str(_refused(hosts, consumer))
