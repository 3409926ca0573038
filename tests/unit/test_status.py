"""status: a monitoring check over every consumer, with JSON, Prometheus metrics and repair."""

from __future__ import annotations

import datetime
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certbot_fanout.cli import main
from certbot_fanout.lineage import fingerprint, read_lineage
from certbot_fanout.probe import fetch_leaf
from tests.support.cli import invoke
from tests.support.lineages import LineageFactory
from tests.support.services import Service

NAME = "status.test"
Start = Callable[[str, Path], Service]


def consumer(name: str, svc: Service) -> str:
    return (
        f"  {name}:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {svc.cert}, content: fullchain, owner: {os.getuid()}}}\n"
        f"      - {{path: {svc.key}, content: privkey, owner: {os.getuid()}}}\n"
        f"    reload: {svc.reload_argv()!r}\n"
        f"    verify: [{{host: 127.0.0.1, port: {svc.port}}}]\n    verify_timeout: 5\n"
    )


class Site:
    """Two services, their map, and the CLI pointed at them."""

    def __init__(self, lineages: LineageFactory, start: Start, tmp_path: Path, days: float = 90):
        self.lineages = lineages
        self.tmp = tmp_path
        self.live, _ = lineages.issue(NAME, days=days)
        self.web, self.fed = start("web", self.live), start("federation", self.live)
        self.config = tmp_path / "consumers.yaml"
        self.config.write_text(
            "version: 1\nconsumers:\n"
            + consumer("web", self.web)
            + consumer("federation", self.fed)
        )
        self.common = [
            "--config", str(self.config), "--config-dir", str(lineages.config_dir),
            "--state-file", str(tmp_path / "state.json"), "--lock-file", str(tmp_path / "lock"),
        ]  # fmt: skip

    def run(self, *args: str) -> tuple[int, str]:
        result = invoke([args[0], *self.common, *args[1:]])
        return result.returncode, result.stdout

    def deploy(self) -> None:
        code, out = self.run("deploy", "--cert-name", NAME)
        assert code == 0, out

    def served(self, svc: Service) -> str:
        return fingerprint(fetch_leaf("127.0.0.1", svc.port, NAME, 5))

    def current(self) -> str:
        return read_lineage(str(self.live)).cert.fingerprint


@pytest.fixture
def site(lineages: LineageFactory, start_service: Start, tmp_path: Path) -> Site:
    s = Site(lineages, start_service, tmp_path)
    s.deploy()
    return s


def test_ok_after_a_good_deploy(site: Site, lineages: LineageFactory) -> None:
    lines = site.run("status")[1].splitlines()
    assert next(line for line in lines if line.startswith("web ")).split()[-2] == "never"
    lineages.renew(NAME)
    site.deploy()
    code, out = site.run("status")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "OK: 2 of 2 consumers OK"
    assert lines[1].split() == [
        "CONSUMER", "CERTIFICATE", "FILES", "ENDPOINTS", "EXPIRES", "LAST", "DEPLOYED", "STATE"
    ]  # fmt: skip
    web = next(line for line in lines if line.startswith("web "))
    assert "current" in web and "1 current" in web and web.endswith("OK")
    assert "never" not in web, "the deploy's time is recorded and shown"


def test_a_stale_service_is_critical_and_named_among_healthy_ones(
    site: Site, lineages: LineageFactory
) -> None:
    lineages.renew(NAME)
    full = site.config.read_text()
    site.config.write_text("version: 1\nconsumers:\n" + consumer("federation", site.fed))
    site.deploy()  # the renewal reaches federation only: web is the forgotten one
    site.config.write_text(full)
    code, out = site.run("status")
    assert code == 2, out
    lines = out.splitlines()
    assert lines[0] == "CRITICAL: 1 CRITICAL (web); 1 of 2 consumers OK"
    assert next(line for line in lines if line.startswith("federation ")).endswith("OK")
    assert next(line for line in lines if line.startswith("web ")).endswith("CRITICAL")
    assert any(
        line.startswith("web: 127.0.0.1:") and "serves subject CN=status.test" in line
        for line in lines
    )
    assert any(line.startswith("web: ") and "content differs" in line for line in lines)


def test_drift_levels_and_repair(site: Site, lineages: LineageFactory) -> None:
    lineages.renew(NAME)
    code, out = site.run("status", "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["status"] == "CRITICAL" and doc["exit_code"] == 2
    by_name = {c["name"]: c for c in doc["consumers"]}
    assert by_name["web"]["status"] == "CRITICAL"
    assert [f["reasons"] for f in by_name["web"]["files"]] == [["content differs"]] * 2
    assert by_name["web"]["endpoints"][0]["ok"] is False

    code, out = site.run("status", "--repair")
    assert code == 0, out
    assert "repaired: " in out.splitlines()[0]
    assert site.served(site.web) == site.current() == site.served(site.fed)

    os.chmod(site.web.key, 0o640)
    code, out = site.run("status")
    assert code == 1, out
    assert "web: " in out and "mode 0640, expected 0600" in out


def test_expiry_thresholds(lineages: LineageFactory, start_service: Start, tmp_path: Path) -> None:
    s = Site(lineages, start_service, tmp_path, days=10)
    s.deploy()
    code, out = s.run("status")
    assert code == 1, out
    assert "WARNING: 2 WARNING (web, federation)" in out.splitlines()[0]
    assert "the certificate served expires" in out and "(in 10.0 days)" in out
    assert s.run("status", "--crit-days", "12")[0] == 2
    assert s.run("status", "--warn-days", "5", "--crit-days", "2")[0] == 0


def test_unreadable_config_or_lineage_is_unknown(site: Site, tmp_path: Path) -> None:
    out = io.StringIO()
    assert main(["status", "--config", str(tmp_path / "nope.yaml")], environ={}, stdout=out) == 3
    assert out.getvalue().startswith("UNKNOWN: ")
    assert "config file not found" in out.getvalue()
    (site.live / "cert.pem").unlink()
    code, text = site.run("status")
    assert code == 3
    assert text.startswith("UNKNOWN: 2 UNKNOWN (web, federation)")
    assert "cert.pem: cannot read" in text
    assert main(["status", "--warn-days", "soon"], environ={}, stdout=io.StringIO()) == 3


def test_prometheus_metrics_parse_and_are_labelled(site: Site, tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "certbot_fanout.prom"
    metrics.parent.mkdir()
    assert site.run("status", "--prometheus", str(metrics))[0] == 0
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    assert {
        "certbot_fanout_consumer_ok",
        "certbot_fanout_served_cert_expiry_timestamp_seconds",
        "certbot_fanout_last_deploy_timestamp_seconds",
        "certbot_fanout_check_duration_seconds",
    } <= set(families)
    samples = [s for f in families.values() for s in f.samples]
    assert samples
    for sample in samples:
        assert sample.labels.get("certificate") == NAME, sample
        assert sample.labels.get("consumer") in ("web", "federation"), sample
    ok = {s.labels["consumer"]: s.value for s in families["certbot_fanout_consumer_ok"].samples}
    assert ok == {"web": 1.0, "federation": 1.0}
    expiry = families["certbot_fanout_served_cert_expiry_timestamp_seconds"].samples[0].value
    assert expiry == pytest.approx(read_lineage(str(site.live)).cert.not_after.timestamp(), abs=1)
    assert [p.name for p in metrics.parent.iterdir()] == ["certbot_fanout.prom"]
    # One sample per address of each endpoint, saying which, and the key type asked for.
    per_address = families["certbot_fanout_endpoint_address_ok"].samples
    assert sorted(
        (s.labels["consumer"], s.labels["endpoint"], s.labels["address"]) for s in per_address
    ) == sorted(
        (name, f"127.0.0.1:{svc.port}", f"127.0.0.1:{svc.port}")
        for name, svc in (("web", site.web), ("federation", site.fed))
    )
    assert {(s.labels["key_type"], s.value) for s in per_address} == {("ecdsa", 1.0)}


def test_no_probe_checks_files_only(site: Site, lineages: LineageFactory) -> None:
    site.web.proc.terminate()
    site.web.proc.wait(5)
    assert site.run("status")[0] == 2
    code, out = site.run("status", "--no-probe")
    assert code == 0, out
    assert "not probed" in out


def test_expiry_thresholds_out_of_range_say_the_real_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "consumers.yaml"
    config.write_text("version: 1\n")
    base = ["status", "--config", str(config), "--no-probe"]
    for option in ("--warn-days", "--crit-days"):
        for bad in ("100000", "-1", "nan", "inf"):
            assert main([*base, option, bad], environ={}, stdout=io.StringIO()) == 3
            err = capsys.readouterr().err
            assert f"argument {option}: expected a number of days from 0 to 99999, got '{bad}'" in (
                err
            )
        for good in ("0", "0.5", "99999"):
            out = io.StringIO()
            assert main([*base, option, good], environ={}, stdout=out) == 0, capsys.readouterr()
            assert out.getvalue().startswith("OK: no consumer in the map")


def test_an_expired_certificate_says_how_long_ago(lineages: LineageFactory, tmp_path: Path) -> None:
    from certbot_fanout._pki import write_lineage

    now = datetime.datetime.now(datetime.UTC)
    expired = lineages.ca.issue([NAME], days=2, not_before=now - datetime.timedelta(days=3))
    write_lineage(str(lineages.config_dir), NAME, expired)
    config = tmp_path / "consumers.yaml"
    config.write_text(f"version: 1\nconsumers:\n  web:\n    certificate: {NAME}\n")
    argv = ["status", "--no-probe", "--config", str(config)]
    argv += ["--config-dir", str(lineages.config_dir), "--state-file", str(tmp_path / "state")]
    out = io.StringIO()
    assert main(argv, environ={}, stdout=out) == 2
    text = out.getvalue()
    not_after = now - datetime.timedelta(days=1)
    assert f"web: the certificate expired 1.0 days ago ({not_after:%Y-%m-%d} " in text, text
    (row,) = [line for line in text.splitlines() if line.startswith("web ")]
    assert f"{not_after:%Y-%m-%d} (expired 1 d ago)" in row
    assert "in -" not in text and "(-" not in text

    json_out = io.StringIO()
    assert main([*argv, "--json"], environ={}, stdout=json_out) == 2
    (web,) = json.loads(json_out.getvalue())["consumers"]
    assert -1.01 < web["days_left"] < -0.99, "JSON keeps the number as it is"
    assert any("expired 1.0 days ago" in p for p in web["problems"])
