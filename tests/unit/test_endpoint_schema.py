"""The map's endpoint entries for issue 14: ``family``, ``{federation: NAME}`` with its
``ca_file``, what each refuses, and the synapse preset's federation endpoint, which it adds only
when Debian's matrix-synapse package has recorded a server name only root could write."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from certbot_fanout.config import parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import Endpoint, Family
from certbot_fanout.presets import PRESETS
from certbot_fanout.schema import synapse_server_name

SOURCE = "/etc/certbot-fanout/consumers.yaml"


def _verify(*entries: str) -> tuple[Endpoint, ...]:
    body = "".join(f"      - {e}\n" for e in entries)
    text = "version: 1\nconsumers:\n  web:\n    certificate: example.org\n    verify:\n" + body
    return parse_config(text, SOURCE).consumers[0].verify


def _refused(entry: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _verify(entry)
    return info.value


def test_family_narrows_an_endpoint_and_its_absence_means_every_address() -> None:
    every, v4, v6 = _verify(
        "{host: localhost, port: 443}",
        "{host: localhost, port: 443, family: ipv4}",
        "{host: localhost, port: 443, family: ipv6}",
    )
    assert (every.family, v4.family, v6.family) == (None, Family.IPV4, Family.IPV6)


def test_an_unknown_family_is_refused_with_what_to_write() -> None:
    error = _refused("{host: localhost, port: 443, family: inet6}")
    assert error.key_path == "consumers.web.verify[0].family"
    assert "expected ipv4 or ipv6, got 'inet6'" in error.message
    assert "leave 'family' out to check every address" in error.message


@pytest.mark.parametrize(
    "name",
    [
        "example.org",
        "matrix.example.org:8448",
        "198.18.0.11",
        "198.18.0.11:443",
        "[::1]",
        "[2001:db8::1]:8448",
    ],
)
def test_a_federation_endpoint_takes_a_matrix_server_name(name: str) -> None:
    (ep,) = _verify(f'{{federation: "{name}", ca_file: /etc/ssl/private-ca.pem, family: ipv4}}')
    assert ep.federation == name and ep.host == name and ep.port == 0
    assert ep.ca_file == "/etc/ssl/private-ca.pem" and ep.family is Family.IPV4
    assert ep.label == f"federation {name}"


@pytest.mark.parametrize(
    "name",
    [
        "https://example.org",
        "example.org/",
        "example.org:",
        "example.org:0",
        "example.org:70000",
        "[::1",
        "[example.org]:8448",
        "::1",
        "exa mple.org",
        "-example.org",
        "",
    ],
)
def test_a_federation_endpoint_refuses_what_is_not_a_server_name(name: str) -> None:
    error = _refused(f'{{federation: "{name}"}}')
    assert error.key_path == "consumers.web.verify[0].federation"
    assert "expected a Matrix server name" in error.message


def test_a_federation_endpoint_has_no_host_port_or_starttls() -> None:
    error = _refused("{federation: example.org, port: 8448}")
    assert error.key_path == "consumers.web.verify[0].port"
    assert "unknown key 'port'" in error.message


def test_a_relative_ca_file_is_refused() -> None:
    error = _refused("{federation: example.org, ca_file: ca.pem}")
    assert error.key_path == "consumers.web.verify[0].ca_file"
    assert "expected an absolute path, got 'ca.pem'" in error.message


def _server_name_file(directory: Path, text: str, mode: int = 0o644) -> Path:
    path = directory / "server_name.yaml"
    path.write_text(text)
    os.chown(path, 0, 0)
    path.chmod(mode)
    return path


@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the server_name file is trusted only when root owns it: run as root")
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o755)
    return tmp_path


def test_the_synapse_server_name_is_read_from_debians_file(root_dir: Path) -> None:
    path = _server_name_file(root_dir, "# written by debconf\nserver_name: example.org\n")
    assert synapse_server_name(str(path)) == "example.org"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("server_name: example.org\n", 0o666),  # anyone could have written it
        ("server_name: https://example.org\n", 0o644),  # not a server name
        ("server_name: [a, b]\n", 0o644),
        ("- server_name\n", 0o644),
        ("server_name: 'x\n", 0o644),  # not YAML
    ],
)
def test_a_server_name_file_not_to_be_trusted_gives_no_name(
    root_dir: Path, text: str, mode: int
) -> None:
    assert synapse_server_name(str(_server_name_file(root_dir, text, mode))) is None


def test_no_server_name_file_gives_no_name(tmp_path: Path) -> None:
    assert synapse_server_name(str(tmp_path / "missing.yaml")) is None


def test_the_synapse_preset_adds_a_federation_endpoint_only_for_a_known_name() -> None:
    synapse = PRESETS["synapse"]
    assert "federation" not in synapse.expand("matrix.example.org")
    expanded = synapse.expand("matrix.example.org", "example.org")
    assert expanded.endswith("  - {host: 127.0.0.1, port: 8448}\n  - {federation: example.org}\n")
    text = "version: 1\nconsumers:\n" + textwrap.indent(
        synapse.entry("matrix.example.org", "example.org").replace(
            "owner: matrix-synapse, group: matrix-synapse", "owner: root, group: root"
        ),
        "",
    )
    verify = parse_config(text, SOURCE).consumers[0].verify
    assert [e.label for e in verify] == ["127.0.0.1:8448", "federation example.org"]
    assert all(
        "federation" not in p.expand("x", "example.org")
        for p in PRESETS.values()
        if p.name != "synapse"
    )
