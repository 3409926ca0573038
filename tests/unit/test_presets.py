"""Presets expand as docs/map.md documents, and every field the user sets wins."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import pytest

from certbot_fanout.cli import main
from certbot_fanout.config import load_config, parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import Consumer, Part
from certbot_fanout.presets import PRESETS, Preset

ROOT = Path(__file__).resolve().parents[2]
CERT = "svc.example.org"


def expand(preset: str, extra: str = "") -> Consumer:
    text = f"version: 1\nconsumers:\n  svc:\n    certificate: {CERT}\n    preset: {preset}\n{extra}"
    return parse_config(text, "t.yaml").consumers[0]


def readme_rows() -> dict[str, list[str]]:
    page = (ROOT / "docs" / "map.md").read_text()
    section = page.split("\n## Presets", 1)[1].split("\n## ", 1)[0]
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


def presets_output(*argv: str) -> str:
    out = io.StringIO()
    assert main(["presets", *argv], environ={}, stdout=out) == 0
    return out.getvalue()


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_map_output_is_a_map_check_reads_as_it_stands(name: str, tmp_path: Path) -> None:
    path = tmp_path / "consumers.yaml"
    path.write_text(presets_output(name, "--certificate", CERT, "--map"))
    out = io.StringIO()
    argv = ["check", "--no-probe", "--config", str(path), "--config-dir", str(tmp_path / "le")]
    code = main(argv, environ={}, stdout=out)
    lines = out.getvalue().splitlines()
    # The map is valid: what check finds is about this host (no such lineage here, no such
    # directories or programs), never the map itself.
    assert code in (0, 1), lines
    assert not any("the map is not valid" in line for line in lines), lines
    assert re.match(rf"^(OK: |\d+ problem\(s\) in ){re.escape(str(path))}", lines[-1]), lines
    assert f"PROBLEM: certificate {CERT}: " in lines[0], "the lineage is a host finding"
    consumer = load_config(str(path)).consumers
    assert [(c.name, c.certificate) for c in consumer] == [(name, CERT)]
    assert consumer[0] == replace(expand(name), name=name), "the same as preset: NAME"


@pytest.mark.usefixtures("service_accounts")
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_entry_pastes_under_consumers(name: str) -> None:
    text = presets_output(name, "--certificate", CERT)
    config = parse_config("version: 1\nconsumers:\n" + text, "pasted.yaml")
    assert config.consumers == (replace(expand(name), name=name),)


@pytest.mark.usefixtures("service_accounts")
def test_every_entry_of_the_catalogue_pastes_and_the_certificate_is_quoted_when_needed() -> None:
    text = presets_output("--certificate", "1.0")
    entries = text.split("\n# preset: ")[1:]
    assert len(entries) == len(PRESETS)
    for name, entry in zip(PRESETS, entries, strict=True):
        config = parse_config(f"version: 1\nconsumers:\n#{entry}", "pasted.yaml")
        assert [(c.name, c.certificate) for c in config.consumers] == [(name, "1.0")]


def test_presets_refuses_what_it_cannot_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--map"], environ={}, stdout=io.StringIO()) == 2
    assert "--map prints a map for one preset: give its NAME" in capsys.readouterr().err
    for bad in ("a b", "..", 'x"y', "a/b"):
        assert main(["presets", "nginx", "--certificate", bad], environ={}) == 2
        assert "--certificate: expected a lineage name" in capsys.readouterr().err


def test_readme_shows_what_presets_prints() -> None:
    page = (ROOT / "docs" / "map.md").read_text()
    (shown,) = re.findall(r"```yaml\n(# preset: postfix .*?)```", page, re.S)
    assert shown == presets_output("postfix", "--certificate", "mail.example.org")
