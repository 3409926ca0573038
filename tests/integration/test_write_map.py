"""From nothing to a working map: ``discover --write-map`` on a host with nginx and Synapse.

A real Pebble and Certbot issue the certificate; a real nginx and a real Synapse each serve
their own copy of it. The host's view is a private mount namespace whose ``/etc`` (an overlay,
so the machine's own is untouched) holds the nginx site and ``homeserver.yaml`` where Debian
keeps them. ``discover --write-map`` writes the first map there: one consumer per service
(recognised by its configuration and by the process on its port), its found files, the
presets' commands, the listeners as endpoints, and each key path it could not know marked.
``check`` names each marked field (exit 2); once they are filled in, ``check`` and
``deploy --dry-run`` accept the map.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.integration import lineage_files, require_binary
from tests.support.proc import Account, public_tempdir, write_owned
from tests.support.stack import NGINX_BIN, Certbot, Nginx, Pebble
from tests.support.synapse_env import (
    Synapse,
)
from tests.support.tally import record

pytestmark = pytest.mark.integration

MATRIX = "matrix.writemap.test"
DISCOVER_TIMEOUT = 120


def _run(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _discover_in_host_view(
    workdir: Path, nginx: Nginx, synapse: Synapse, argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a private mount namespace whose /etc is an overlay holding nginx's
    site (/etc/nginx/sites-enabled/matrix) and Synapse's /etc/matrix-synapse/homeserver.yaml."""
    upper, work = workdir / "etc-upper", workdir / "etc-work"
    (upper / "nginx" / "sites-enabled").mkdir(parents=True)
    (upper / "matrix-synapse").mkdir()
    work.mkdir()
    (upper / "nginx" / "sites-enabled" / "matrix").write_text(nginx.conf_path.read_text())
    (upper / "matrix-synapse" / "homeserver.yaml").write_text(synapse.config_path.read_text())
    script = (
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={shlex.quote(str(upper))},"
        f"workdir={shlex.quote(str(work))} /etc && exec timeout -s ABRT {DISCOVER_TIMEOUT} "
        + shlex.join(argv)
    )
    # A hang (say, a FIFO under /etc) ends with the traceback of where discover was.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def _fill_in(text: str, keys: dict[str, Path]) -> tuple[str, list[str]]:
    """The map with each consumer's marked key path set to ``keys[consumer]``, and what was
    still marked after that (nothing, if discover marked only the key paths)."""
    document: dict[str, Any] = yaml.safe_load(text)
    for name, consumer in document["consumers"].items():
        for spec in consumer.get("files", []):
            if str(spec["path"]).startswith("<fill in: "):
                spec["path"] = str(keys[name])
    left = [line for line in yaml.safe_dump(document).splitlines() if "<fill in: " in line]
    return yaml.safe_dump(document, sort_keys=False), left


def test_discover_writes_a_map_that_check_and_deploy_accept_once_filled_in(
    root: None,
    fanout_bin: Path,
    pebble: Pebble,
    synapse_python: Path,
    synapse_account: Account,
) -> None:
    require_binary(NGINX_BIN, "nginx")
    require_binary("/usr/bin/unshare", "unshare (util-linux)")
    with public_tempdir("certbot-fanout-writemap-") as host:
        certbot = Certbot(pebble, host / "certbot")
        certbot.issue(MATRIX)
        acct = synapse_account
        nginx_tls, synapse_tls = host / "nginx-tls", host / "synapse-tls"
        for d in (nginx_tls, synapse_tls):
            d.mkdir(mode=0o755)
        fullchain, privkey = lineage_files(certbot, MATRIX)
        write_owned(nginx_tls / "fullchain.pem", fullchain, 0, 0, 0o644)
        write_owned(nginx_tls / "privkey.pem", privkey, 0, 0, 0o600)
        write_owned(synapse_tls / "fullchain.pem", fullchain, acct.uid, acct.gid, 0o644)
        write_owned(synapse_tls / "privkey.pem", privkey, acct.uid, acct.gid, 0o600)
        nginx = Nginx(
            host / "nginx",
            nginx_tls / "fullchain.pem",
            nginx_tls / "privkey.pem",
            server_name=MATRIX,
        )
        synapse = Synapse(
            synapse_python,
            host / "synapse",
            acct,
            MATRIX,
            synapse_tls / "fullchain.pem",
            synapse_tls / "privkey.pem",
        )
        synapse.generate_config()
        private = host / "admin"
        private.mkdir(mode=0o700)  # the map's directory: root's alone
        written = private / "consumers.yaml"
        common = ["--config-dir", str(certbot.config_dir)]
        with nginx, synapse:
            found = _discover_in_host_view(
                host,
                nginx,
                synapse,
                [str(fanout_bin), "discover", *common, "--cert-name", MATRIX,
                 "--path", str(nginx_tls), "--path", str(synapse_tls), "--write-map", str(written)],
            )  # fmt: skip
            assert found.returncode == 1, found.stdout + found.stderr  # all of it to review
            assert written.exists(), found.stdout + found.stderr
            text = written.read_text()
            st = written.stat()
            first: dict[str, Any] = yaml.safe_load(text)
            consumers = first["consumers"]
            check = _run([str(fanout_bin), "check", "--config", str(written), *common])
            unfinished = [ln for ln in check.stdout.splitlines() if ln.startswith("UNFINISHED:")]

            filled, left = _fill_in(
                text, {"nginx": nginx_tls / "privkey.pem", "synapse": synapse_tls / "privkey.pem"}
            )
            written.write_text(filled)
            checked = _run([str(fanout_bin), "check", "--config", str(written), *common])
            planned = _run(
                [str(fanout_bin), "deploy", "--config", str(written), *common,
                 "--cert-name", MATRIX, "--dry-run"]
            )  # fmt: skip
        record(
            "discover entries",
            cases=1,
            first_maps_refused=int(checked.returncode != 0 or planned.returncode != 0),
        )

        assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.geteuid())
        assert sorted(consumers) == ["nginx", "synapse"], text
        nginx_map, synapse_map = consumers["nginx"], consumers["synapse"]
        assert nginx_map["certificate"] == synapse_map["certificate"] == MATRIX
        assert nginx_map["files"][0]["path"] == str(nginx_tls / "fullchain.pem")
        assert synapse_map["files"][0]["path"] == str(synapse_tls / "fullchain.pem")
        assert synapse_map["files"][0]["owner"] == acct.name
        assert nginx_map["reload"] == ["systemctl", "reload", "nginx"], "the nginx preset's"
        assert synapse_map["reload"] == ["systemctl", "reload", "matrix-synapse"]
        assert nginx_map["verify"] == [{"host": "127.0.0.1", "port": nginx.port}]
        assert synapse_map["verify"] == [{"host": "127.0.0.1", "port": synapse.port}]
        assert check.returncode == 2, check.stdout + check.stderr
        assert [ln.split(": ")[2] for ln in unfinished] == [
            "consumers.nginx.files[1].path",
            "consumers.synapse.files[1].path",
        ], check.stdout
        assert all("fill in the path of the private key" in ln for ln in unfinished)
        assert left == []
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert planned.returncode == 0, planned.stdout + planned.stderr
