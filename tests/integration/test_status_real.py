"""`certbot-fanout status`, `check` and `discover`, and the plugin's renew-time drift repair,
against real things: lineages issued and renewed by a real Certbot against Pebble, served by
real nginx, HAProxy and PostgreSQL 15, and the real CLI run as a subprocess.

The fleet: one lineage (CERT_NAME) with three consumers, `web` (nginx), `haproxy` and
`postgres`. A forced `certbot renew` without any hook leaves nginx and HAProxy serving the old
certificate; deploying to `postgres` alone keeps one consumer healthy, so the report must tell
stale from current.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certbot_fanout._pki import ThrowawayCA
from tests.support.cli import explain, run
from tests.support.daemons_db import (
    INITDB_BIN,
    PG_CTL_BIN,
    RUNUSER_BIN,
    PostgreSQL,
    missing_binaries,
)
from tests.support.integration import (
    CERT_NAME,
    WebConsumer,
    by_name,
    clone_certbot,
    lineage_files,
    lineage_fingerprint,
    log_text,
    pem_serial,
    renewal_params,
    require_binary,
    self_made,
    write_copies,
)
from tests.support.maps import config_text
from tests.support.monitoring import (
    Fanout,
    HAProxyConsumer,
    PostgresConsumer,
    sections,
    table_rows,
)
from tests.support.proc import account, chown_to, public_tempdir
from tests.support.public import PublicInstall
from tests.support.stack import OPENSSL_BIN, PEBBLE_BIN, Certbot, HAProxy, Nginx, Pebble

CONSUMERS = ("web", "haproxy", "postgres")
CONSUMER_KEYS = {
    "name",
    "certificate",
    "status",
    "problems",
    "files",
    "endpoints",
    "expires",
    "days_left",
    "last_deployed",
    "last_verified",
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def serial_of(pem_path: Path) -> str:
    """The serial as certbot-fanout prints it (uppercase hex)."""
    return pem_serial(pem_path.read_bytes())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def postgres(root: None, issued: Certbot) -> Iterator[PostgreSQL]:
    """One real PostgreSQL 15 per module, started on copies of the module's lineage (which every
    test's clone starts with); each test deploys its own lineage to it first."""
    missing = missing_binaries(INITDB_BIN, PG_CTL_BIN, RUNUSER_BIN, OPENSSL_BIN)
    if missing:
        pytest.skip(f"PostgreSQL 15 or its tools not installed: {', '.join(missing)}")
    with public_tempdir("certbot-fanout-status-pg-") as base:
        tls = base / "tls"
        tls.mkdir(mode=0o755)
        cert, key = write_copies(tls, *lineage_files(issued))
        for path in (cert, key):
            chown_to(path, account("postgres"))
        pg = PostgreSQL(base / "daemon", cert, key)
        pg.initdb()
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()


@dataclass
class Fleet:
    certbot: Certbot
    fanout: Fanout
    web: WebConsumer
    haproxy: HAProxyConsumer
    postgres: PostgresConsumer
    tmp: Path

    def renew_without_hook(self) -> tuple[str, str]:
        """A real forced `certbot renew` with no hook and no installer, then a deploy to
        `postgres` only. Returns (old, new) certificate fingerprints."""
        old = lineage_fingerprint(self.certbot)
        self.certbot.renew()
        new = lineage_fingerprint(self.certbot)
        assert new != old, "certbot did not renew the lineage"
        only = self.tmp / "postgres-only.yaml"
        only.write_text(config_text(self.postgres.yaml()))
        deployed = self.fanout.run("deploy", "--cert-name", CERT_NAME, config=only)
        assert deployed.returncode == 0, explain(deployed)
        return old, new


@pytest.fixture
def fleet(
    certbot: Certbot,
    start_nginx: Callable[..., Nginx],
    start_haproxy: Callable[..., HAProxy],
    postgres: PostgreSQL,
    fanout_bin: Path,
    tmp_path: Path,
) -> Fleet:
    """nginx, HAProxy and PostgreSQL serving the test's lineage, after a real, forced
    `certbot-fanout deploy` (so every consumer has a last deploy on record)."""
    fullchain, key = lineage_files(certbot)
    cert_path, key_path = write_copies(tmp_path / "nginx" / "tls", fullchain, key)
    nginx = start_nginx(tmp_path / "nginx", cert_path, key_path)
    hap_dir = tmp_path / "haproxy"
    hap_dir.mkdir()
    pem = hap_dir / "site.pem"
    pem.write_bytes(fullchain + key)
    pem.chmod(0o600)
    haproxy = start_haproxy(hap_dir, pem)
    fleet = Fleet(
        certbot=certbot,
        fanout=Fanout(
            fanout_bin,
            tmp_path / "fanout.yaml",
            certbot.config_dir,
            tmp_path / "state.json",
            tmp_path / "fanout.lock",
        ),
        web=WebConsumer("web", CERT_NAME, nginx, cert_path, key_path, tmp_path / "web-events"),
        haproxy=HAProxyConsumer("haproxy", CERT_NAME, haproxy),
        postgres=PostgresConsumer("postgres", CERT_NAME, postgres),
        tmp=tmp_path,
    )
    fleet.fanout.config.write_text(
        config_text(fleet.web.yaml(), fleet.haproxy.yaml(), fleet.postgres.yaml())
    )
    deployed = fleet.fanout.run("deploy", "--cert-name", CERT_NAME, "--force")
    assert deployed.returncode == 0, explain(deployed)
    return fleet


def assert_status_shape(doc: dict[str, Any]) -> None:
    """The documented shape of `status --json`."""
    assert doc["version"] == 1
    assert doc["status"] in ("OK", "WARNING", "CRITICAL", "UNKNOWN")
    assert doc["exit_code"] == ["OK", "WARNING", "CRITICAL", "UNKNOWN"].index(str(doc["status"]))
    consumers = by_name(doc)
    assert sorted(consumers) == sorted(CONSUMERS)
    for c in consumers.values():
        assert set(c) >= CONSUMER_KEYS, sorted(c)
        assert c["certificate"] == CERT_NAME
        assert isinstance(c["problems"], list)
        assert all(isinstance(p, str) for p in c["problems"])
        assert isinstance(c["files"], list) and c["files"]
        for f in c["files"]:
            assert {"path", "changed", "reasons"} <= set(f), f
        assert isinstance(c["endpoints"], list) and len(c["endpoints"]) == 1
        for e in c["endpoints"]:
            assert {"host", "port", "server_name", "ok", "served", "error"} <= set(e), e
        assert isinstance(c["expires"], str) and ISO_UTC.match(c["expires"]), c["expires"]
        assert isinstance(c["days_left"], float | int) and c["days_left"] > 0
        for when in ("last_deployed", "last_verified"):
            value = c[when]
            assert isinstance(value, str) and ISO_UTC.match(value), (c["name"], when, value)


# --------------------------------------------------------------------------- 1. exit codes


def test_status_ok_after_deploy_then_critical_naming_stale_consumers_after_hookless_renew(
    fleet: Fleet,
) -> None:
    """After a good deploy `status` exits 0 (text and JSON). After a real forced `certbot
    renew` without any hook, nginx and HAProxy still serve the old certificate: `status` exits
    2, names both as CRITICAL with the old serial they serve and their drifted files, and lists
    `postgres` (deployed alone) as OK. JSON has the documented shape in both states."""
    ok = fleet.fanout.run("status")

    assert ok.returncode == 0, explain(ok)
    assert ok.stdout.splitlines()[0] == "OK: 3 of 3 consumers OK", ok.stdout
    rows = table_rows(ok.stdout)
    assert {name: rows[name][-1] for name in CONSUMERS} == dict.fromkeys(CONSUMERS, "OK")
    code, doc = fleet.fanout.status_json()
    assert (code, doc["status"], doc["exit_code"]) == (0, "OK", 0)
    assert_status_shape(doc)
    assert all(c["problems"] == [] for c in by_name(doc).values())

    old_serial = serial_of(fleet.certbot.lineage(CERT_NAME) / "cert.pem")
    old, new = fleet.renew_without_hook()
    assert fleet.web.served() == old
    assert fleet.haproxy.served(old) == old
    assert fleet.postgres.served() == new

    stale = fleet.fanout.run("status")

    assert stale.returncode == 2, explain(stale)
    text = stale.stdout
    assert text.splitlines()[0] == "CRITICAL: 2 CRITICAL (web, haproxy); 1 of 3 consumers OK"
    rows = table_rows(text)
    assert rows["web"][2:4] == ["2 DRIFTED", "1 of 1 WRONG"], rows["web"]
    assert rows["haproxy"][2:4] == ["1 DRIFTED", "1 of 1 WRONG"], rows["haproxy"]
    assert rows["postgres"][2:4] == ["current", "1 current"], rows["postgres"]
    assert [rows[n][-1] for n in CONSUMERS] == ["CRITICAL", "CRITICAL", "OK"]
    for name, port in (("web", fleet.web.nginx.port), ("haproxy", fleet.haproxy.haproxy.port)):
        served_line = f"{name}: 127.0.0.1:{port} (SNI {CERT_NAME}, asked for ECDSA) serves subject"
        assert served_line in text, text
        assert f"serial {old_serial}," in text
    assert f"{fleet.web.cert}: content differs" in text, text
    assert not any(line.startswith("postgres:") for line in text.splitlines()), text

    code, doc = fleet.fanout.status_json()

    assert (code, doc["status"], doc["exit_code"]) == (2, "CRITICAL", 2)
    assert_status_shape(doc)
    consumers = by_name(doc)
    assert {n: c["status"] for n, c in consumers.items()} == {
        "web": "CRITICAL",
        "haproxy": "CRITICAL",
        "postgres": "OK",
    }
    for name in ("web", "haproxy"):
        (endpoint,) = consumers[name]["endpoints"]
        assert endpoint["ok"] is False
        assert endpoint["served"]["sha256"] == old
        assert all(f["changed"] for f in consumers[name]["files"])
    (pg_endpoint,) = consumers["postgres"]["endpoints"]
    assert pg_endpoint["ok"] is True
    assert pg_endpoint["served"]["sha256"] == new
    assert consumers["postgres"]["problems"] == []


def test_status_warns_and_goes_critical_at_expiry_thresholds(fleet: Fleet) -> None:
    """Thresholds relative to the real certificate's remaining days (read from `--json`):
    warn-days below it exits 0; warn-days above it exits 1 (WARNING, naming the expiry);
    crit-days above it exits 2."""
    code, doc = fleet.fanout.status_json()
    assert code == 0, doc
    days = min(float(c["days_left"]) for c in by_name(doc).values())
    assert days > 2, days
    below, above = f"{days - 1:.3f}", f"{days + 1:.3f}"

    fine = fleet.fanout.run("status", "--warn-days", below, "--crit-days", "1")
    warn = fleet.fanout.run("status", "--warn-days", above, "--crit-days", "1")
    crit = fleet.fanout.run("status", "--warn-days", f"{days + 2:.3f}", "--crit-days", above)

    assert fine.returncode == 0, explain(fine)
    assert warn.returncode == 1, explain(warn)
    summary = "WARNING: 3 WARNING (web, haproxy, postgres); 0 of 3 consumers OK"
    assert warn.stdout.splitlines()[0] == summary, warn.stdout
    assert re.search(
        r"^web: the certificate served expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in [\d.]+ days\)$",
        warn.stdout,
        re.MULTILINE,
    ), warn.stdout
    assert crit.returncode == 2, explain(crit)
    assert crit.stdout.startswith("CRITICAL: 3 CRITICAL (web, haproxy, postgres)"), crit.stdout


def test_status_unknown_when_the_map_cannot_be_read(
    certbot: Certbot,
    fanout_bin: Path,
    tmp_path: Path,
    public_tmp: Path,
    public_install: PublicInstall,
) -> None:
    """Exit 3 (UNKNOWN), with a reason and no traceback: the map is a directory; the map is
    invalid YAML; the map names a lineage that is not there; and the map is a root-only file
    read by an unprivileged monitoring user (nobody)."""
    fanout = Fanout(
        fanout_bin, tmp_path / "x", certbot.config_dir, tmp_path / "state", tmp_path / "lock"
    )
    directory = tmp_path / "consumers.d"
    directory.mkdir()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: 1\nconsumers: {web: [\n")
    no_lineage = tmp_path / "no-lineage.yaml"
    no_lineage.write_text("version: 1\nconsumers:\n  web: {certificate: missing.fanout.test}\n")

    results = {
        path: fanout.run("status", config=path) for path in (directory, bad_yaml, no_lineage)
    }

    for proc in results.values():
        assert proc.returncode == 3, explain(proc)
        assert proc.stdout.startswith("UNKNOWN: "), explain(proc)
        assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{directory}: is a directory" in results[directory].stdout
    assert f"{bad_yaml}:3:1: YAML syntax error" in results[bad_yaml].stdout
    assert "missing.fanout.test" in results[no_lineage].stdout

    secret = public_tmp / "consumers.yaml"
    secret.write_text(f"version: 1\nconsumers:\n  web: {{certificate: {CERT_NAME}}}\n")
    secret.chmod(0o600)
    argv = [
        RUNUSER_BIN,
        "-u",
        "nobody",
        "--",
        *public_install.argv(),
        *fanout.argv("status", config=secret)[1:],
    ]
    argv[argv.index("--state-file") + 1] = str(public_tmp / "state.json")
    as_nobody = run(argv, timeout=60)

    assert as_nobody.returncode == 3, explain(as_nobody)
    assert as_nobody.stdout.startswith(f"UNKNOWN: {secret}"), explain(as_nobody)
    assert "Traceback" not in as_nobody.stdout + as_nobody.stderr


# --------------------------------------------------------------------------- 2. formats


def test_status_prometheus_file_parses_and_is_replaced_atomically(fleet: Fleet) -> None:
    """`status --prometheus FILE` on a fleet with two stale consumers: the file parses with
    prometheus_client, every sample carries consumer and certificate labels, the per-consumer
    values say who is stale, and a second run replaces the file by rename (new inode) leaving
    no temporary file beside it."""
    fleet.renew_without_hook()
    metrics_dir = fleet.tmp / "textfile"
    metrics_dir.mkdir()
    prom = metrics_dir / "certbot_fanout.prom"

    first = fleet.fanout.run("status", "--prometheus", str(prom))

    assert first.returncode == 2, explain(first)
    assert os.listdir(metrics_dir) == [prom.name]
    families = list(text_string_to_metric_families(prom.read_text()))
    samples = [s for fam in families for s in fam.samples]
    assert samples
    for sample in samples:
        assert set(sample.labels) >= {"consumer", "certificate"}, sample
        assert sample.labels["certificate"] == CERT_NAME
        assert sample.labels["consumer"] in CONSUMERS
    values = {(s.name, s.labels["consumer"]): s.value for s in samples}
    assert {n: values[("certbot_fanout_consumer_ok", n)] for n in CONSUMERS} == {
        "web": 0,
        "haproxy": 0,
        "postgres": 1,
    }
    assert values[("certbot_fanout_consumer_status", "web")] == 2
    assert values[("certbot_fanout_files_current", "postgres")] == 1
    assert values[("certbot_fanout_files_current", "haproxy")] == 0
    for name in CONSUMERS:
        assert values[("certbot_fanout_served_cert_expiry_timestamp_seconds", name)] > time.time()
        assert values[("certbot_fanout_last_deploy_timestamp_seconds", name)] <= time.time()
    inode = prom.stat().st_ino

    again = fleet.fanout.run("status", "--prometheus", str(prom), "--json")

    assert again.returncode == 2, explain(again)
    assert prom.stat().st_ino != inode, "the metrics file was rewritten in place"
    assert os.listdir(metrics_dir) == [prom.name]
    assert prom.stat().st_mode & 0o777 == 0o644
    list(text_string_to_metric_families(prom.read_text()))


# --------------------------------------------------------------------------- 3. repair


def test_status_repair_brings_stale_consumers_back(fleet: Fleet) -> None:
    """`status --repair` after a hookless renewal redeploys exactly the two stale consumers:
    nginx and HAProxy then serve the new certificate (seen by our own TLS client), PostgreSQL
    still does (openssl s_client -starttls postgres), the report after repair is OK (exit 0) and
    names what was repaired; a plain `status` afterwards is OK too."""
    old, new = fleet.renew_without_hook()
    pg_key_inode = fleet.postgres.pg.key_file.stat().st_ino
    before_events = fleet.web.events()

    repaired = fleet.fanout.run("status", "--repair")

    assert repaired.returncode == 0, explain(repaired)
    summary = repaired.stdout.splitlines()[0]
    assert summary == "OK: 3 of 3 consumers OK; repaired: web, haproxy", repaired.stdout
    assert fleet.web.served() == new
    assert fleet.haproxy.served(new) == new
    assert fleet.postgres.served() == new
    assert fleet.postgres.pg.key_file.stat().st_ino == pg_key_inode, "postgres was redeployed"
    assert fleet.web.events() == [*before_events, "test", "reload"]
    fullchain, key = lineage_files(fleet.certbot)
    assert fleet.web.cert.read_bytes() == fullchain
    assert fleet.web.key.read_bytes() == key
    assert fleet.haproxy.haproxy.combined_pem.read_bytes() == fullchain + key

    code, doc = fleet.fanout.status_json()
    assert (code, doc["status"]) == (0, "OK")
    assert doc["repaired"] == []
    code, doc = fleet.fanout.status_json("--repair")
    assert (code, doc["repaired"]) == (0, []), "a second repair found something to do"
    assert old != new


# --------------------------------------------------------------------------- 4. certbot renew


def renewal_installer(certbot: Certbot) -> str | None:
    return renewal_params(certbot).get("installer")


@dataclass
class Drifted:
    certbot: Certbot
    web: WebConsumer
    config: Path
    stale_fp: str


@pytest.fixture
def make_drifted(
    reconfigured: Certbot,
    start_nginx: Callable[..., Nginx],
    ca: ThrowawayCA,
    tmp_path: Path,
) -> Callable[..., Drifted]:
    """A private clone of the reconfigured lineage and a real nginx consumer of it that served
    the lineage, then was changed by hand to serve another certificate (files + reload)."""

    def make(reload: list[str] | None = None, verify_timeout: float = 20) -> Drifted:
        certbot = clone_certbot(reconfigured, tmp_path / "certbot", {})
        cert, key = write_copies(tmp_path / "nginx" / "tls", *lineage_files(certbot))
        nginx = start_nginx(tmp_path / "nginx", cert, key)
        web = WebConsumer(
            "web", CERT_NAME, nginx, cert, key, tmp_path / "web-events", reload, verify_timeout
        )
        assert web.served() == lineage_fingerprint(certbot)
        config = certbot.basedir / "fanout.yaml"
        config.write_text(config_text(web.yaml()))
        fullchain, other_key, stale_fp = self_made(ca)
        web.drift_to(fullchain, other_key)
        assert web.served() == stale_fp
        return Drifted(certbot, web, config, stale_fp)

    return make


def test_plain_renew_with_nothing_due_repairs_a_drifted_consumer(
    make_drifted: Callable[..., Drifted],
) -> None:
    """`installer = fanout` on the lineage; nginx's copies were overwritten by hand and nginx
    reloaded onto another certificate. A plain `certbot renew` (nothing due) renews nothing, but
    the plugin's GenericUpdater finds the drift and redeploys: certbot exits 0 and nginx serves
    the lineage's certificate again, from copies equal to the lineage's files."""
    drifted = make_drifted()
    certbot, web = drifted.certbot, drifted.web
    current = lineage_fingerprint(certbot)

    result = certbot.run("renew", "--no-random-sleep-on-renew")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "not yet due for renewal" in result.stdout + result.stderr
    assert lineage_fingerprint(certbot) == current, "certbot renewed a lineage that was not due"
    assert web.served() == current
    assert (web.cert.read_bytes(), web.key.read_bytes()) == lineage_files(certbot)
    assert web.events() == ["test", "reload"]
    log = log_text(certbot)
    assert "repaired: web" in log, log[-3000:]
    assert renewal_installer(certbot) == "fanout"


def test_plain_renew_fails_naming_a_consumer_that_stays_broken(
    make_drifted: Callable[..., Drifted],
) -> None:
    """Same drift, but the consumer's reload is `true` (it reloads nothing, like a forgotten
    service): the plugin places the files, nginx keeps serving the other certificate, and
    `certbot renew` (nothing due) exits non-zero with the consumer and the reason in its output
    and log."""
    drifted = make_drifted(reload=["/bin/true"], verify_timeout=3)
    certbot, web = drifted.certbot, drifted.web
    current = lineage_fingerprint(certbot)

    result = certbot.run("renew", "--no-random-sleep-on-renew", check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert lineage_fingerprint(certbot) == current
    assert web.served() == drifted.stale_fp
    assert (web.cert.read_bytes(), web.key.read_bytes()) == lineage_files(certbot)
    broken = re.compile(r"still broken after repair: web: .*127\.0\.0\.1:\d+ .*serves")
    assert broken.search(output), output
    log = log_text(certbot)
    assert broken.search(log), log[-3000:]
    assert renewal_installer(certbot) == "fanout"


# --------------------------------------------------------------------------- 5. check


def test_check_names_real_problems_and_passes_a_clean_nginx(
    certbot: Certbot,
    start_nginx: Callable[..., Nginx],
    fanout_bin: Path,
    public_tmp: Path,
    tmp_path: Path,
) -> None:
    """`certbot-fanout check` against the real host: a key entry with mode "0644" (and a key
    file on disk that is world-readable now), a reload program that does not exist, and owner
    postgres for a file in a 0700 root directory are each reported in a sentence, exit 1. A
    map with only a clean, running nginx consumer exits 0."""
    cert, key = write_copies(tmp_path / "nginx" / "tls", *lineage_files(certbot))
    nginx = start_nginx(tmp_path / "nginx", cert, key)
    web = WebConsumer("web", CERT_NAME, nginx, cert, key, tmp_path / "events")
    leaky = public_tmp / "leaky"
    leaky.mkdir()
    leaky_key = leaky / "privkey.pem"
    leaky_key.write_bytes(lineage_files(certbot)[1])
    leaky_key.chmod(0o644)
    locked = public_tmp / "locked"
    locked.mkdir(mode=0o700)
    problems = f"""\
  leaky:
    certificate: {CERT_NAME}
    files:
      - {{path: {leaky_key}, content: privkey, mode: "0644"}}
  gone:
    certificate: {CERT_NAME}
    reload: fanout-no-such-reloader --now
  pg:
    certificate: {CERT_NAME}
    files:
      - {{path: {locked}/server.crt, content: fullchain, owner: postgres, group: postgres}}
"""
    fanout = Fanout(
        fanout_bin, tmp_path / "fanout.yaml", certbot.config_dir, tmp_path / "s", tmp_path / "l"
    )
    fanout.config.write_text(config_text(web.yaml(), problems))
    clean = tmp_path / "clean.yaml"
    clean.write_text(config_text(web.yaml()))

    found = fanout.run("check")
    passed = fanout.run("check", config=clean)

    assert found.returncode == 1, explain(found)
    lines = found.stdout.splitlines()
    where = sorted(ln.split(": ", 2)[1] for ln in lines if ln.startswith("PROBLEM: "))
    assert where == ["gone", "leaky", "leaky", "pg"], found.stdout
    leaky_lines = [ln for ln in lines if ln.startswith("PROBLEM: leaky: ")]
    assert any(
        f"{leaky_key} holds the private key, and its configured mode 0644 lets every user on "
        "this host read it" in ln
        for ln in leaky_lines
    ), found.stdout
    assert any(
        f"{leaky_key} holds the private key and is readable by every user on this host right "
        "now (mode 0644)" in ln
        for ln in leaky_lines
    ), found.stdout
    assert (
        "PROBLEM: gone: the reload command `fanout-no-such-reloader --now` cannot run: no "
        "program named fanout-no-such-reloader on PATH"
    ) in found.stdout
    assert (
        f"PROBLEM: pg: postgres is to own {locked}/server.crt but could not read it: postgres "
        f"cannot enter {locked} (mode 0700, owner root)"
    ) in found.stdout
    assert not any(ln.startswith("PROBLEM: web:") for ln in lines), found.stdout
    scope = "(4 consumers, 4 files, 1 endpoint)"
    assert f"4 problem(s) in {fanout.config} {scope}\n" in found.stdout, found.stdout
    assert passed.returncode == 0, explain(passed)
    assert passed.stdout == f"OK: {clean} checks out (1 consumer, 2 files, 1 endpoint)\n"


# --------------------------------------------------------------------------- 6. discover


def test_discover_finds_an_unmapped_stale_nginx_and_a_forgotten_copy_under_etc(
    certbot: Certbot,
    start_nginx: Callable[..., Nginx],
    fanout_bin: Path,
    etc_dir: Path,
    tmp_path: Path,
) -> None:
    """After a real renewal: the mapped nginx serves the new certificate; a second nginx that
    nobody wrote down still serves the old one; an old fullchain (and an old fullchain+key PEM)
    lie forgotten under /etc. `discover --cert-name NAME --config-dir DIR` reports the second
    nginx and both files as NOT IN THE MAP and STALE, shows the mapped nginx only under IN THE
    MAP, and prints no key material."""
    old_fullchain, old_key = lineage_files(certbot)
    old_serial = serial_of(certbot.lineage(CERT_NAME) / "cert.pem")
    certbot.renew()
    new_serial = serial_of(certbot.lineage(CERT_NAME) / "cert.pem")
    assert new_serial != old_serial
    cert, key = write_copies(tmp_path / "mapped" / "tls", *lineage_files(certbot))
    mapped = start_nginx(tmp_path / "mapped", cert, key)
    forgotten_cert, forgotten_key = write_copies(
        tmp_path / "forgotten" / "tls", old_fullchain, old_key
    )
    forgotten = start_nginx(tmp_path / "forgotten", forgotten_cert, forgotten_key)
    web = WebConsumer("web", CERT_NAME, mapped, cert, key, tmp_path / "events")
    old_copy = etc_dir / "fullchain.pem"
    old_copy.write_bytes(old_fullchain)
    old_combined = etc_dir / "site.pem"
    old_combined.write_bytes(old_fullchain + old_key)
    old_combined.chmod(0o600)
    fanout = Fanout(
        fanout_bin, tmp_path / "fanout.yaml", certbot.config_dir, tmp_path / "s", tmp_path / "l"
    )
    fanout.config.write_text(config_text(web.yaml()))

    start = time.monotonic()
    found = fanout.run("discover", "--cert-name", CERT_NAME)
    seconds = time.monotonic() - start

    print(f"\ndiscover took {seconds:.2f} s on this host:\n{found.stdout}")
    assert found.returncode == 1, explain(found)
    assert "PRIVATE KEY" not in found.stdout + found.stderr
    assert found.stdout.startswith(f"certbot-fanout discover: {CERT_NAME} ({CERT_NAME}), ")
    assert f"current serial {new_serial}," in found.stdout
    parts = sections(found.stdout)
    unmapped = "\n".join(parts.get("NOT IN THE MAP", []))
    covered = "\n".join(parts.get("IN THE MAP", []))
    assert re.search(
        rf"^  listener\s+127\.0\.0\.1:{forgotten.port}\s+{re.escape(CERT_NAME)} STALE: serial "
        rf"{old_serial},",
        unmapped,
        re.MULTILINE,
    ), found.stdout
    for path in (old_copy, old_combined):
        assert re.search(
            rf"^  file\s+{re.escape(str(path))}\s+{re.escape(CERT_NAME)} STALE: serial "
            rf"{old_serial},",
            unmapped,
            re.MULTILINE,
        ), found.stdout
    mapped_where = f"127.0.0.1:{mapped.port}"
    assert re.search(
        rf"^  listener\s+{re.escape(mapped_where)}\s+.* current: serial {new_serial},.*"
        r"\[consumer web\]$",
        covered,
        re.MULTILINE,
    ), found.stdout
    elsewhere = [
        line
        for title, lines in parts.items()
        if title != "IN THE MAP"
        for line in lines
        if mapped_where in line or f"port: {mapped.port}}}" in line
    ]
    assert elsewhere == [], found.stdout
    assert f"port: {forgotten.port}}}" in "\n".join(parts.get("Paste into the map", []))
    assert seconds < 60, f"discover took {seconds:.1f} s"


# --------------------------------------------------------------------------- 4b. short-lived


SHORT_LIVED_SECONDS = 6 * 86400  # Let's Encrypt's "shortlived" profile: 6-day certificates


@pytest.fixture(scope="module")
def short_lived_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A second real Pebble that issues 6-day certificates."""
    require_binary(PEBBLE_BIN, "pebble")
    with Pebble(tmp_path_factory.mktemp("pebble-short"), SHORT_LIVED_SECONDS) as server:
        yield server


def test_plain_renew_succeeds_for_a_current_short_lived_certificate(
    short_lived_pebble: Pebble, start_nginx: Callable[..., Nginx], tmp_path: Path
) -> None:
    """A 6-day certificate, fresh (not due), deployed to a real nginx that serves it, with
    `installer = fanout`: nothing drifted and nothing can be repaired, so a plain `certbot
    renew` must exit 0. (Expiry within the status thresholds is for `status` to report; it is
    not a deploy failure, and every `certbot renew` twice a day would fail for it.)

    Known product bug (fails): the plugin's generic_updates raises PluginError whenever the
    status level is CRITICAL, and a 6-day certificate is always within the default 7 crit-days,
    so certbot reports "Failed to renew certificate ... still broken after repair: web: the
    certificate served expires ... (in 6.0 days)" and exits 1 on every run."""
    certbot = Certbot(short_lived_pebble, tmp_path / "certbot")
    certbot.issue(CERT_NAME)
    config = certbot.basedir / "fanout.yaml"
    cert, key = write_copies(tmp_path / "nginx" / "tls", *lineage_files(certbot))
    nginx = start_nginx(tmp_path / "nginx", cert, key)
    web = WebConsumer("web", CERT_NAME, nginx, cert, key, tmp_path / "web-events")
    config.write_text(config_text(web.yaml()))
    certbot.run(
        "reconfigure", "--cert-name", CERT_NAME, "-i", "fanout", "--fanout-config", str(config)
    )
    assert renewal_installer(certbot) == "fanout"
    current = lineage_fingerprint(certbot)
    assert web.served() == current

    result = certbot.run("renew", "--no-random-sleep-on-renew", check=False)

    output = result.stdout + result.stderr
    assert "not yet due for renewal" in output, output
    assert lineage_fingerprint(certbot) == current
    assert web.served() == current
    assert web.events() == [], "a current consumer was redeployed"
    assert result.returncode == 0, output
