"""certbot-fanout as a real Certbot deploy hook, against real Pebble, nginx and HAProxy.

Every test gets its own Certbot dirs (with a lineage issued by Pebble), its own nginx and
HAProxy on loopback serving copies of that lineage, and a consumer map for both.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.integration import (
    CERT_NAME,
    by_name,
    file_state,
    hook_command,
    lineage_files,
    lineage_fingerprint,
    log_text,
)
from tests.support.maps import config_text
from tests.support.proc import Account, write_owned
from tests.support.stack import (
    Certbot,
    HAProxy,
    Nginx,
    children,
    free_port,
    served_fingerprint,
    settled_workers,
)

# A reload is asynchronous (HAProxy re-executes its master: up to ~200 ms before the new
# worker exists); a check that no reload happened waits this long before comparing workers.
RELOAD_GRACE = 0.75


# --------------------------------------------------------------------------- helpers


def assert_owner_mode(path: Path, uid: int, gid: int, mode: int) -> None:
    st = path.lstat()
    assert not path.is_symlink(), f"{path} is a symlink"
    assert path.is_file(), f"{path} is not a regular file"
    got = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    assert got == (uid, gid, mode), f"{path}: uid/gid/mode {got[:2]} {got[2]:04o}"


@dataclass
class Site:
    """One lineage, nginx and HAProxy serving copies of it, and the consumer map for both."""

    certbot: Certbot
    nginx: Nginx
    haproxy: HAProxy
    fanout: Path
    config: Path
    lock: Path
    account: Account
    nginx_cert: Path
    nginx_key: Path
    haproxy_pem: Path

    @property
    def live(self) -> Path:
        return self.certbot.lineage(CERT_NAME)

    @property
    def placed(self) -> tuple[Path, ...]:
        return self.nginx_cert, self.nginx_key, self.haproxy_pem

    @property
    def hook_command(self) -> str:
        return hook_command(self.fanout, self.lock)

    def config_text(self, extra_consumers: str = "") -> str:
        user = self.account.name
        q = json.dumps  # a JSON string or list is valid YAML flow syntax
        consumers = f"""\
  nginx:
    certificate: {CERT_NAME}
    files:
      - {{path: {q(str(self.nginx_cert))}, content: fullchain, owner: {user}, group: {user}, mode: "0644"}}
      - {{path: {q(str(self.nginx_key))}, content: privkey, owner: root, group: {user}, mode: "0640"}}
    test: {q(self.nginx.test_argv())}
    reload: {q(self.nginx.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.nginx.port}}}
  haproxy:
    certificate: {CERT_NAME}
    files:
      - {{path: {q(str(self.haproxy_pem))}, content: [fullchain, privkey]}}
    test: {q(self.haproxy.check_argv())}
    reload: {q(self.haproxy.reload_argv())}
    verify:
      - {{host: 127.0.0.1, port: {self.haproxy.port}, server_name: {CERT_NAME}}}
"""  # noqa: E501
        return config_text(consumers, extra_consumers, verify_timeout=20)

    def write_config(self, text: str | None = None) -> None:
        self.config.write_text(self.config_text() if text is None else text)

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`certbot-fanout deploy --cert-name NAME --config-dir <certbot's>` plus args."""
        argv = [
            str(self.fanout),
            "deploy",
            "--cert-name",
            CERT_NAME,
            "--config-dir",
            str(self.certbot.config_dir),
            "--config",
            str(self.config),
            "--lock-file",
            str(self.lock),
            *args,
        ]
        return run(argv)

    def served(self) -> tuple[str, str]:
        """SHA-256 of the leaf that (nginx, HAProxy) serve right now."""
        return (
            served_fingerprint("127.0.0.1", self.nginx.port, CERT_NAME),
            served_fingerprint("127.0.0.1", self.haproxy.port, CERT_NAME),
        )

    def lineage_fingerprint(self) -> str:
        return lineage_fingerprint(self.certbot)

    def log(self) -> str:
        return log_text(self.certbot)

    def workers(self) -> tuple[set[int], set[int]]:
        """(nginx, HAProxy) worker PIDs, once any reload has drained its old workers."""
        return settled_workers(self.nginx.pid), settled_workers(self.haproxy.pid)

    def reloaded_workers(self, before: tuple[set[int], set[int]]) -> tuple[set[int], set[int]]:
        """Wait until both daemons run new workers (fails if either was not reloaded)."""
        nginx = settled_workers(self.nginx.pid, replacing=before[0])
        return nginx, settled_workers(self.haproxy.pid, replacing=before[1])

    def assert_not_reloaded(self, before: tuple[set[int], set[int]]) -> None:
        time.sleep(RELOAD_GRACE)
        now = children(self.nginx.pid), children(self.haproxy.pid)
        assert now == before, f"a daemon was reloaded: workers {before} -> {now}"


@pytest.fixture
def site(
    certbot: Certbot,
    start_nginx: Callable[..., Nginx],
    start_haproxy: Callable[..., HAProxy],
    web_account: Account,
    fanout_bin: Path,
    tmp_path: Path,
) -> Site:
    """nginx and HAProxy serving hand-made copies of the freshly issued lineage. The copies are
    root:root 0644 on purpose: certbot-fanout must fix owner and mode, not only content."""
    fullchain, privkey = lineage_files(certbot)
    nginx_dir, haproxy_dir = tmp_path / "nginx", tmp_path / "haproxy"
    (nginx_dir / "tls").mkdir(parents=True)
    (haproxy_dir / "certs").mkdir(parents=True)
    nginx_cert, nginx_key = nginx_dir / "tls" / "fullchain.pem", nginx_dir / "tls" / "privkey.pem"
    haproxy_pem = haproxy_dir / "certs" / "site.pem"
    for path, data in (
        (nginx_cert, fullchain),
        (nginx_key, privkey),
        (haproxy_pem, fullchain + privkey),
    ):
        write_owned(path, data, 0, 0, 0o644)
    nginx = start_nginx(nginx_dir, nginx_cert, nginx_key)
    haproxy = start_haproxy(haproxy_dir, haproxy_pem)
    s = Site(
        certbot=certbot,
        nginx=nginx,
        haproxy=haproxy,
        fanout=fanout_bin,
        config=tmp_path / "consumers.yaml",
        lock=tmp_path / "fanout.lock",
        account=web_account,
        nginx_cert=nginx_cert,
        nginx_key=nginx_key,
        haproxy_pem=haproxy_pem,
    )
    assert certbot.extra_env["CERTBOT_FANOUT_CONFIG"] == str(s.config)
    s.write_config()
    fp = s.lineage_fingerprint()
    assert s.served() == (fp, fp), "nginx/HAProxy do not serve the issued lineage at start"
    return s


def consumer_line(stdout: str, name: str) -> str:
    """The text report's line for consumer ``name``."""
    for line in stdout.splitlines():
        if re.match(rf"\s+{re.escape(name)}\s", line):
            return line
    raise AssertionError(f"no line for consumer {name} in:\n{stdout}")


# --------------------------------------------------------------------------- tests


def test_certbot_renew_hook_deploys_to_real_nginx_and_haproxy(site: Site) -> None:
    """A real `certbot renew --deploy-hook certbot-fanout` reaches both daemons: files placed
    with the configured owner/group/mode, configs tested, daemons reloaded, new cert served."""
    old = site.lineage_fingerprint()
    workers_before = site.workers()

    result = site.certbot.renew("--deploy-hook", site.hook_command)

    assert result.returncode == 0
    new = site.lineage_fingerprint()
    assert new != old, "certbot did not renew the lineage"
    assert site.served() == (new, new)
    site.reloaded_workers(workers_before)  # both were really reloaded (new worker PIDs)

    live = site.live
    fullchain, privkey = (live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes()
    assert site.nginx_cert.read_bytes() == fullchain
    assert site.nginx_key.read_bytes() == privkey
    assert site.haproxy_pem.read_bytes() == fullchain + privkey
    _, web_uid, web_gid = site.account
    assert_owner_mode(site.nginx_cert, web_uid, web_gid, 0o644)
    assert_owner_mode(site.nginx_key, 0, web_gid, 0o640)
    assert_owner_mode(site.haproxy_pem, 0, 0, 0o600)  # default for content holding privkey

    log = site.log()
    assert f"Running deploy-hook command: {site.hook_command}" in log
    assert "reported error code" not in log, log[-3000:]
    port_n, port_h = site.nginx.port, site.haproxy.port
    assert re.search(
        rf"^\s+nginx\s+ok\s+placed 2 of 2 files, tested, reloaded.*verified 127\.0\.0\.1:{port_n}",
        log,
        re.MULTILINE,
    ), log[-3000:]
    assert re.search(
        rf"^\s+haproxy\s+ok\s+placed 1 of 1 file, tested, reloaded.*verified 127\.0\.0\.1:{port_h}",
        log,
        re.MULTILINE,
    ), log[-3000:]
    assert "all 2 consumers ok" in log


def test_second_deploy_with_nothing_changed_touches_nothing(site: Site) -> None:
    """Idempotence: a repeat deploy changes no file (same inode, mtime) and reloads nothing
    (same nginx/HAProxy master and worker PIDs)."""
    masters = site.nginx.pid, site.haproxy.pid
    initial_workers = site.workers()

    first = site.deploy("--json")  # the hand-made copies have the wrong owner and mode
    assert first.returncode == 0, first.stdout + first.stderr
    assert all(c["reloaded"] for c in json.loads(first.stdout)["consumers"])
    # The copies only had the wrong owner/mode, so the old workers already served the right
    # cert: wait for the reloads to finish (this also shows the worker check sees a reload).
    workers = site.reloaded_workers(initial_workers)
    before = {p: file_state(p) for p in site.placed}

    second = site.deploy("--json")

    assert second.returncode == 0, second.stdout + second.stderr
    report = json.loads(second.stdout)
    assert report["ok"] is True
    consumers = by_name(report)
    assert set(consumers) == {"nginx", "haproxy"}
    for name, c in consumers.items():
        assert c["outcome"] == "ok", (name, c)
        assert c["files"], (name, c)
        assert not any(f["changed"] for f in c["files"]), (name, c["files"])
        assert c["reloaded"] is False, (name, c)
        assert c["tested"] is False, (name, c)
        assert c["endpoints"], (name, c)
        assert all(e["ok"] for e in c["endpoints"]), (name, c)
    assert {p: file_state(p) for p in site.placed} == before
    assert (site.nginx.pid, site.haproxy.pid) == masters
    site.assert_not_reloaded(workers)


def test_one_failing_consumer_does_not_stop_the_others(site: Site) -> None:
    """A consumer whose reload exits 1 and one whose endpoint is dead: exit 1, both named with
    the reason; nginx and HAProxy are still deployed, reported ok, and serve the new cert."""
    dead_port = free_port()
    site.write_config(
        site.config_text(
            f"""\
  broken-reload:
    certificate: {CERT_NAME}
    reload: ["/bin/sh", "-c", "echo boom >&2; exit 1"]
    notes: the reload script of broken-reload is known to be flaky
  dead-port:
    certificate: {CERT_NAME}
    verify:
      - {{host: 127.0.0.1, port: {dead_port}}}
    verify_timeout: 1
"""
        )
    )
    old = site.lineage_fingerprint()
    site.certbot.renew()  # no hook: the deploy below is the one under test
    new = site.lineage_fingerprint()
    assert new != old

    result = site.deploy()

    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    broken = consumer_line(out, "broken-reload")
    assert "FAILED" in broken, broken
    assert "failed at reload" in broken, broken
    assert "exited 1" in broken, broken
    assert "boom" in broken, broken
    assert "the reload script of broken-reload is known to be flaky" in out
    dead = consumer_line(out, "dead-port")
    assert "FAILED" in dead, dead
    assert re.search(rf"127\.0\.0\.1:{dead_port}: connection refused", out), out
    for name in ("nginx", "haproxy"):
        line = consumer_line(out, name)
        assert re.match(rf"\s+{name}\s+ok\s+placed", line), line
    assert re.search(
        r"2 of 4 consumers FAILED \((broken-reload, dead-port|dead-port, broken-reload)\)", out
    ), out
    assert "Traceback" not in result.stderr
    assert site.served() == (new, new)


def test_dry_run_after_renewal_changes_nothing(site: Site) -> None:
    """`deploy --dry-run` after a renewal: exit 0, says it is a dry run and what it would
    place, leaves every placed file byte-identical (same inode) and reloads nothing: the old
    cert is still served."""
    old = site.lineage_fingerprint()
    site.certbot.renew()
    new = site.lineage_fingerprint()
    assert new != old
    before = {p: file_state(p) for p in site.placed}
    workers = site.workers()

    result = site.deploy("--dry-run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run" in result.stdout
    for path in site.placed:
        assert f"would place {path}" in result.stdout, result.stdout
    assert {p: file_state(p) for p in site.placed} == before
    assert site.served() == (old, old)
    site.assert_not_reloaded(workers)


def test_rejected_config_through_certbot_touches_nothing(site: Site) -> None:
    """An unquoted mode given to the hook via certbot: certbot still exits 0, its log holds the
    hook's file:line:col message and no traceback, and no consumer file is touched."""
    good = site.config_text()
    assert good.count('mode: "0640"') == 1
    bad = good.replace('mode: "0640"', "mode: 0640")
    site.write_config(bad)
    line_no, line = next((i, t) for i, t in enumerate(bad.splitlines(), 1) if "mode: 0640" in t)
    col = line.index("mode: 0640") + len("mode: ") + 1
    old = site.lineage_fingerprint()
    before = {p: file_state(p) for p in site.placed}
    workers = site.workers()

    result = site.certbot.renew("--deploy-hook", site.hook_command)

    assert result.returncode == 0
    assert site.lineage_fingerprint() != old, "certbot did not renew the lineage"
    log = site.log()
    assert f"Running deploy-hook command: {site.hook_command}" in log
    assert "Hook 'deploy-hook' reported error code 2" in log, log[-3000:]
    where = f"{site.config}:{line_no}:{col}: consumers.nginx.files[1].mode: "
    assert where + "expected an octal string in quotes" in log, log[-3000:]
    assert "Traceback" not in log
    assert {p: file_state(p) for p in site.placed} == before
    assert site.served() == (old, old)
    site.assert_not_reloaded(workers)
