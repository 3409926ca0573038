"""The installer plugin's contract with Certbot, driven the way Certbot drives it.

The end-to-end runs with real certbot (5.x and Debian's 2.1) are in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from certbot import errors, interfaces

from certbot_fanout.lineage import fingerprint, read_lineage
from certbot_fanout.plugin import DEPLOYED_TITLE, Installer
from certbot_fanout.probe import fetch_leaf
from tests.support.lineages import LineageFactory
from tests.support.services import Service

NAME = "plugin.test"


def plugin(config: Path) -> Installer:
    return Installer(SimpleNamespace(fanout_config=str(config)), "fanout")


def map_text(tmp_path: Path, reload: str = "echo reload >> {counter}", test: str = "true") -> str:
    (tmp_path / "svc").mkdir(exist_ok=True)
    counter = tmp_path / "reloads"
    return f"""\
version: 1
consumers:
  web:
    certificate: {NAME}
    files:
      - {{path: {tmp_path}/svc/fullchain.pem, content: fullchain}}
      - {{path: {tmp_path}/svc/privkey.pem, content: privkey}}
    test: [sh, -c, "{test}"]
    reload: [sh, -c, "{reload.format(counter=counter)}"]
    verify:
      - {{host: 127.0.0.1, port: 443, server_name: www.{NAME}}}
"""


def reloads(tmp_path: Path) -> int:
    counter = tmp_path / "reloads"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def without_verify(text: str) -> str:
    return text.split("    verify:")[0]


def test_is_an_installer_and_a_renew_deployer(tmp_path: Path) -> None:
    p = plugin(tmp_path / "absent.yaml")
    assert isinstance(p, interfaces.Installer)
    assert isinstance(p, interfaces.RenewDeployer)
    assert isinstance(p, interfaces.GenericUpdater)
    assert p.supported_enhancements() == []
    with pytest.raises(errors.PluginError, match="supports no enhancements"):
        p.enhance("x.test", "redirect")


def test_prepare_never_raises_for_a_missing_or_broken_map(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    plugin(tmp_path / "absent.yaml").prepare()
    plugin(write_config("version: 1\nconsumers: [\n")).prepare()


def test_a_missing_map_names_the_plugins_own_option_and_how_to_begin(tmp_path: Path) -> None:
    absent, live = tmp_path / "absent.yaml", tmp_path / "live" / NAME
    lineage = SimpleNamespace(cert_path=f"{live}/cert.pem")
    with pytest.raises(errors.PluginError) as err:
        plugin(absent).renew_deploy(lineage)  # type: ignore[arg-type]
    message = str(err.value)
    assert f"no consumer map at {absent} (--fanout-config FILE names another)" in message
    assert f"certbot-fanout presets NAME --certificate CERT --map > {absent}" in message
    assert "--config " not in message


def test_get_all_names(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    p = plugin(write_config(map_text(tmp_path)))
    assert set(p.get_all_names()) == {NAME, f"www.{NAME}"}


def test_install_flow_deploys_once_per_lineage(
    lineages: LineageFactory, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue(NAME, f"www.{NAME}")
    p = plugin(write_config(without_verify(map_text(tmp_path))))
    p.prepare()
    for name in (NAME, f"www.{NAME}"):  # certbot: deploy_cert then save() per name
        p.deploy_cert(
            name,
            f"{live}/cert.pem",
            f"{live}/privkey.pem",
            f"{live}/chain.pem",
            f"{live}/fullchain.pem",
        )
        p.save()
    assert reloads(tmp_path) == 0, "nothing happens before the final save"
    p.save(DEPLOYED_TITLE)
    p.restart()
    assert reloads(tmp_path) == 1
    assert (tmp_path / "svc" / "privkey.pem").read_bytes() == (live / "privkey.pem").read_bytes()


def test_renew_deploy_then_rollback_puts_files_back(
    lineages: LineageFactory, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue(NAME)
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "fullchain.pem").write_bytes(b"hand-made\n")
    p = plugin(write_config(without_verify(map_text(tmp_path))))
    p.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]
    p.restart()
    assert reloads(tmp_path) == 1
    assert (tmp_path / "svc" / "fullchain.pem").read_bytes() != b"hand-made\n"
    p.rollback_checkpoints()
    assert (tmp_path / "svc" / "fullchain.pem").read_bytes() == b"hand-made\n"
    assert not (tmp_path / "svc" / "privkey.pem").exists()


def test_failed_consumer_raises_a_plugin_error_naming_it(
    lineages: LineageFactory, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue(NAME)
    text = without_verify(map_text(tmp_path, reload="echo boom >&2; exit 1"))
    p = plugin(write_config(text))
    with pytest.raises(errors.PluginError) as err:
        p.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(f"certbot-fanout: {NAME}: 1 of 1 consumer failed: web failed at")
    assert "exited 1; output: boom" in message


def test_broken_map_surfaces_at_renew_deploy_with_its_position(
    lineages: LineageFactory, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue(NAME)
    config = write_config("version: 1\nconsumers:\n  web:\n    certificat: x\n")
    p = plugin(config)
    p.prepare()
    with pytest.raises(errors.PluginError, match=rf"{config}:4:5: consumers.web.certificat"):
        p.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]


def test_certbots_own_config_dir_is_off_limits_to_the_map(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    certbot_dir = tmp_path / "le"
    (certbot_dir / "live" / NAME).mkdir(parents=True)
    text = map_text(tmp_path).replace(f"{tmp_path}/svc/privkey.pem", f"{certbot_dir}/live/x.pem")
    config = write_config(text)
    installer = Installer(
        SimpleNamespace(fanout_config=str(config), config_dir=str(certbot_dir)), "fanout"
    )
    lineage = SimpleNamespace(cert_path=f"{certbot_dir}/live/{NAME}/cert.pem")
    with pytest.raises(errors.PluginError, match=rf"{config}:\d+:\d+: .*certbot owns"):
        installer.renew_deploy(lineage)  # type: ignore[arg-type]


def test_unused_lineage_is_quietly_fine(
    lineages: LineageFactory, write_config: Callable[[str], Path]
) -> None:
    live, _ = lineages.issue("other.test")
    p = plugin(write_config("version: 1\n"))
    p.renew_deploy(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]


def test_config_test_runs_every_test_command(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    plugin(write_config(map_text(tmp_path))).config_test()
    failing = plugin(write_config(map_text(tmp_path, test="echo bad config >&2; exit 1")))
    with pytest.raises(errors.MisconfigurationError, match=r"web: test .* exited 1; output: bad"):
        failing.config_test()


def test_plugin_is_the_only_module_that_imports_certbot() -> None:
    package = Path(__file__).resolve().parents[2] / "certbot_fanout"
    importers = sorted(
        path.name
        for path in package.glob("*.py")
        for line in path.read_text().splitlines()
        if line.startswith(("import certbot", "from certbot ", "from certbot.", "import acme"))
        or line.startswith(("from acme", "    from certbot.", "    import certbot"))
    )
    assert set(importers) == {"plugin.py"}


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_generic_updates_repair_drift_and_fail_when_it_stays_broken(
    lineages: LineageFactory,
    start_service: Callable[[str, Path], Service],
    tmp_path: Path,
    write_config: Callable[[str], Path],
) -> None:
    live, _ = lineages.issue(NAME)
    svc = start_service("web", live)
    block = (
        f"  web:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {svc.cert}, content: fullchain}}\n"
        f"      - {{path: {svc.key}, content: privkey}}\n"
        f"    reload: {svc.reload_argv()!r}\n"
        f"    verify: [{{host: 127.0.0.1, port: {svc.port}, server_name: {NAME}}}]\n"
        "    verify_timeout: 2\n"
    )
    config = write_config("version: 1\nconsumers:\n" + block)
    p = plugin(config)
    renewed = SimpleNamespace(cert_path=f"{live}/cert.pem")
    p.generic_updates(renewed)  # type: ignore[arg-type]
    assert svc.reloads() == 0, "nothing drifted, nothing redeployed"

    lineages.renew(NAME)  # a renewal whose deploy never reached this consumer
    p.generic_updates(renewed)  # type: ignore[arg-type]
    assert svc.reloads() == 1
    served = fetch_leaf("127.0.0.1", svc.port, NAME, 5)
    assert fingerprint(served) == read_lineage(str(live)).cert.fingerprint

    lineages.renew(NAME)
    config.write_text(config.read_text().replace(repr(svc.reload_argv()), "['true']"))
    with pytest.raises(errors.PluginError) as err:
        p.generic_updates(renewed)  # type: ignore[arg-type]
    assert str(err.value).startswith("certbot-fanout: still broken after repair: web: ")
    assert "serves subject CN=plugin.test" in str(err.value)


def test_generic_updates_do_not_fail_a_current_short_lived_certificate(
    lineages: LineageFactory,
    start_service: Callable[[str, Path], Service],
    write_config: Callable[[str], Path],
) -> None:
    live, _ = lineages.issue(NAME, days=6)  # a 6-day certificate: CRITICAL for status, not drift
    svc = start_service("web", live)
    config = write_config(
        f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n"
        f"    verify: [{{host: 127.0.0.1, port: {svc.port}, server_name: {NAME}}}]\n"
    )
    plugin(config).generic_updates(SimpleNamespace(cert_path=f"{live}/cert.pem"))  # type: ignore[arg-type]
