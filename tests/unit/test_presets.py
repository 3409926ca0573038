"""Presets expand as the README documents, and every field the user sets wins."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from certbot_fanout.cli import main
from certbot_fanout.config import Consumer, Part, parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.presets import PRESETS, Preset

ROOT = Path(__file__).resolve().parents[2]
CERT = "svc.example.org"


def expand(preset: str, extra: str = "") -> Consumer:
    text = f"version: 1\nconsumers:\n  svc:\n    certificate: {CERT}\n    preset: {preset}\n{extra}"
    return parse_config(text, "t.yaml").consumers[0]


def readme_rows() -> dict[str, list[str]]:
    section = (ROOT / "README.md").read_text().split("### Presets", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in PRESETS:
            rows[cells[0]] = cells
    return rows


def describe_file(path: str, owner: str, group: str, mode: int) -> str:
    return f"`{path.replace(CERT, 'NAME')}`"


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_expands_as_the_readme_documents(name: str) -> None:
    consumer = expand(name)
    row = readme_rows()[name]
    files_cell, test_cell, reload_cell, verify_cell = row[1:]
    assert consumer.files, f"preset {name} places no file"
    for spec in consumer.files:
        assert CERT in spec.path
        assert f"`{spec.path.replace(CERT, 'NAME')}`" in files_cell
        assert f"{spec.owner_name}:{spec.group_name} {spec.mode:04o}" in files_cell
        if spec.holds_key:
            assert spec.mode & 0o007 == 0, "a preset never makes a key readable by others"
    if consumer.test:
        assert test_cell == f"`{' '.join(consumer.test)}`"
    else:
        assert test_cell == ""
    if consumer.reload:
        shown = " ".join(w if " " not in w else f"'{w}'" for w in consumer.reload)
        assert reload_cell.startswith(f"`{shown}`")
    else:
        assert reload_cell.startswith("none")
    listed = [
        f"{ep.port} {ep.starttls.value}" if ep.starttls else str(ep.port) for ep in consumer.verify
    ]
    assert verify_cell == ", ".join(listed)
    assert all(ep.host == "127.0.0.1" for ep in consumer.verify)


def test_readme_documents_every_preset() -> None:
    assert set(readme_rows()) == set(PRESETS)


@pytest.mark.usefixtures("service_accounts")
def test_specific_expansions() -> None:
    postfix = expand("postfix")
    assert postfix.files[0].content == (Part.PRIVKEY, Part.FULLCHAIN)
    assert [e.starttls and e.starttls.value for e in postfix.verify] == ["smtp"]
    haproxy = expand("haproxy")
    assert haproxy.files[0].content == (Part.FULLCHAIN, Part.PRIVKEY)
    lighttpd = expand("lighttpd")
    assert lighttpd.reload is None
    assert lighttpd.files[-1].content == (Part.PRIVKEY,), "lighttpd's key is written last"
    coturn = expand("coturn")
    assert coturn.reload is not None and "USR2" in coturn.reload
    prosody = expand("prosody")
    assert [e.port for e in prosody.verify] == [5222, 5269]
    assert "refuses a key readable by others" in expand("postgresql").notes


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_field_the_user_sets_wins(name: str, tmp_path: Path) -> None:
    extra = (
        f"    files: [{{path: {tmp_path}/mine.pem, content: cert, owner: nobody}}]\n"
        "    test: [my-test]\n"
        "    reload: my-reload --now\n"
        "    verify: [{host: '::1', port: 9999}]\n"
        "    verify_timeout: 7\n"
        "    reload_timeout: 8\n"
        "    notes: mine\n"
    )
    consumer = expand(name, extra)
    assert [f.path for f in consumer.files] == [f"{tmp_path}/mine.pem"]
    assert consumer.files[0].owner_name == "nobody"
    assert consumer.test == ("my-test",)
    assert consumer.reload == ("my-reload", "--now")
    assert [(e.host, e.port) for e in consumer.verify] == [("::1", 9999)]
    assert (consumer.verify_timeout, consumer.reload_timeout) == (7, 8)
    assert consumer.notes == "mine"


@pytest.mark.usefixtures("service_accounts")
def test_one_overridden_field_keeps_the_others() -> None:
    consumer = expand("nginx", "    verify: [{host: 127.0.0.1, port: 8443}]\n")
    assert [e.port for e in consumer.verify] == [8443]
    assert consumer.reload == ("systemctl", "reload", "nginx")
    assert len(consumer.files) == 2


def test_unknown_preset_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        expand("ngnix")
    assert (err.value.line, err.value.column, err.value.key_path) == (5, 13, "consumers.svc.preset")
    assert "unknown preset 'ngnix'; did you mean 'nginx'?" in err.value.message


def test_missing_service_user_points_at_the_preset_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A preset naming a user this host lacks: the error names the preset and the field to set.
    template = (
        "files:\n  - {path: /srv/{certificate}.pem, content: cert, owner: fanout-nobody-here}\n"
    )
    monkeypatch.setitem(PRESETS, "ghost", Preset("ghost", "a service not installed", template))
    text = "version: 1\nconsumers:\n  svc:\n    certificate: x.test\n    preset: ghost\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.yaml")
    assert (err.value.line, err.value.column) == (5, 13)
    assert err.value.key_path == "consumers.svc.files[0].owner"
    assert "unknown user 'fanout-nobody-here'" in err.value.message
    assert "from preset ghost: install that service first, or set 'files' yourself" in (
        err.value.message
    )


def test_presets_command_lists_and_expands() -> None:
    out = io.StringIO()
    assert main(["presets"], environ={}, stdout=out) == 0
    text = out.getvalue()
    for name in PRESETS:
        assert re.search(rf"^{re.escape(name)} +\S", text, re.M), name
        assert f"# preset: {name}  (for certificate: example.org)" in text
    assert '/etc/nginx/tls/example.org/privkey.pem", content: privkey' in text

    out = io.StringIO()
    assert main(["presets", "postfix", "--certificate", "mail.test"], environ={}, stdout=out) == 0
    assert "/etc/postfix/tls/mail.test.pem" in out.getvalue()
    assert "nginx" not in out.getvalue()
    assert main(["presets", "nope"], environ={}, stdout=io.StringIO()) == 2
