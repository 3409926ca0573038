"""A consumer's ``container:`` and ``process:``, ``reload:`` as a mapping, and a file's
``inplace`` (issue 16): what each accepts, and what it refuses, with the place and why."""

from __future__ import annotations

import pytest

from certbot_fanout.config import parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import (
    DEFAULT_ENGINE_SOCKET,
    Consumer,
    ContainerSpec,
    ProcessSpec,
    ServiceReload,
)

SOURCE = "/etc/certbot-fanout/consumers.yaml"
FILES = "    files:\n      - {path: /srv/tls/fullchain.pem, content: fullchain}\n"


def _consumer(body: str, hosts: str = "") -> Consumer:
    text = f"version: 1\n{hosts}consumers:\n  web:\n    certificate: example.org\n{body}"
    return parse_config(text, SOURCE).consumers[0]


def _refused(body: str, hosts: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        _consumer(body, hosts)
    return str(info.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("{name: traefik}", ContainerSpec(name="traefik")),
        ('{label: "com.example.tls=1"}', ContainerSpec(label="com.example.tls=1")),
        ("{label: com.example.tls}", ContainerSpec(label="com.example.tls")),
        ("{compose_service: web}", ContainerSpec(compose_service="web")),
        (
            "{name: mail, engine: /run/podman/podman.sock}",
            ContainerSpec(name="mail", engine="/run/podman/podman.sock"),
        ),
    ],
)
def test_a_container_by_name_label_or_compose_service(given: str, expected: ContainerSpec) -> None:
    consumer = _consumer(f"    container: {given}\n{FILES}    reload: {{signal: HUP}}\n")
    assert consumer.container == expected
    assert consumer.service_reload == ServiceReload(signal="HUP")
    assert consumer.reload is None and consumer.has_reload


def test_the_default_engine_is_dockers_socket_and_the_selector_is_shown_in_words() -> None:
    spec = _consumer("    container: {compose_service: web}\n").container
    assert spec is not None and spec.engine == DEFAULT_ENGINE_SOCKET == "/var/run/docker.sock"
    assert spec.selector == {"compose_service": "web"} and spec.shown == "compose service web"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("{signal: hup}", ServiceReload(signal="HUP")),
        ("{signal: SIGUSR1}", ServiceReload(signal="USR1")),
        ("{exec: [nginx, -s, reload]}", ServiceReload(exec=("nginx", "-s", "reload"))),
        ("{restart: true}", ServiceReload(restart=True)),
    ],
)
def test_reload_as_a_mapping(given: str, expected: ServiceReload) -> None:
    consumer = _consumer(f"    container: {{name: web}}\n    reload: {given}\n")
    assert consumer.service_reload == expected


def test_a_reload_command_still_works_beside_a_container() -> None:
    consumer = _consumer("    container: {name: web}\n    reload: [systemctl, reload, x]\n")
    assert consumer.reload == ("systemctl", "reload", "x") and consumer.service_reload is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("{unit: postgresql@15-main}", ProcessSpec(unit="postgresql@15-main")),
        ("{pid_file: /run/nginx.pid}", ProcessSpec(pid_file="/run/nginx.pid")),
        ("{name: dovecot}", ProcessSpec(name="dovecot")),
    ],
)
def test_a_process_by_unit_pid_file_or_name(given: str, expected: ProcessSpec) -> None:
    consumer = _consumer(f"    process: {given}\n{FILES}")
    assert consumer.process == expected


def test_inplace_on_a_file() -> None:
    body = "    files:\n      - {path: /srv/x.pem, content: fullchain, inplace: true}\n"
    assert _consumer(body).files[0].inplace
    assert not _consumer(FILES).files[0].inplace


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("    container: {}\n", "expected exactly one of name, label or compose_service"),
        (
            "    container: {name: a, label: b}\n",
            "expected exactly one of name, label or compose_service; it gives name and label",
        ),
        ("    container: {name: 'a b'}\n", "expected a container's name, got 'a b'"),
        ("    container: {label: '=x'}\n", "expected KEY or KEY=VALUE"),
        ("    container: {name: a, engine: docker.sock}\n", "absolute path of the engine's unix"),
        ("    container: {name: a, socket: /x}\n", "socket"),
        ("    container: web\n", "a mapping with name, label or compose_service"),
        ("    process: {}\n", "expected exactly one of unit, pid_file or name"),
        ("    process: {pid_file: run/x.pid}\n", "expected an absolute path"),
        ("    process: {name: a-very-long-command}\n", "only 15 characters of a command name"),
        (
            "    container: {name: a}\n    process: {name: b}\n",
            "give 'container' or 'process', not both",
        ),
        ("    reload: {signal: HUP}\n", "acts on the consumer's 'container:' or 'process:'"),
        ("    process: {name: b}\n    reload: {restart: true}\n", "acts on a container"),
        ("    container: {name: a}\n    reload: {signal: KILL}\n", "a signal name such as HUP"),
        ("    container: {name: a}\n    reload: {signal: NOPE}\n", "got 'NOPE'"),
        ("    container: {name: a}\n    reload: {restart: false}\n", "reloads nothing"),
        ("    container: {name: a}\n    reload: {exec: []}\n", "expected a command"),
        ("    container: {name: a}\n    reload: {}\n", "exactly one of signal, exec or restart"),
        (
            "    files:\n      - {path: /srv/x.pem, content: fullchain, link: true, "
            "inplace: true}\n",
            "a link has none",
        ),
    ],
)
def test_what_is_refused_and_why(body: str, words: str) -> None:
    assert words in _refused(body)


def test_a_container_on_another_host_but_not_a_process_or_an_inplace_file() -> None:
    hosts = "hosts:\n  mx1: root@mx1.example.org\n"
    consumer = _consumer("    host: mx1\n    container: {name: a}\n", hosts)
    assert consumer.host == "mx1" and consumer.container == ContainerSpec(name="a")
    refused = _refused("    host: mx1\n    process: {name: a}\n", hosts)
    assert "the process view is checked on this host only, not on mx1" in refused
    receive = "hosts:\n  mx1: {ssh: root@mx1.example.org, mode: receive}\n"
    assert "container" in _refused("    host: mx1\n    container: {name: a}\n", receive)
    body = "    host: mx1\n    files:\n      - {path: /x.pem, content: cert, inplace: true}\n"
    assert "inplace is for a file on this host, not on mx1" in _refused(body, hosts)
