"""The Matrix federation test bed: a real Synapse and a real nginx on hosts of their own in a
``netns.TestNetwork``, a dnsmasq that answers for their names, and a certbot-shaped lineage
from a private CA that both serve.

What runs where:

- the controller namespace: dnsmasq (198.18.0.2:53) and every client, above all
  ``certbot-fanout deploy|status`` (``FederationBed.cli``) and the bed's own ``openssl
  s_client`` checks; its resolver is that dnsmasq;
- host 1, ``SYNAPSE_HOST`` (198.18.0.11, 2001:2::11): Synapse as its service user, TLS
  federation listeners on 8448 and ``SRV_PORT`` on both addresses;
- host 2, ``WEB_HOST`` (198.18.0.12, 2001:2::12): nginx on 443 serving
  ``https://SERVER/.well-known/matrix/server`` (or a 404, as a scene says).

Every name is under ``example.test``: ``SERVER`` is the Matrix server name, ``DELEGATED`` the
name a well-known delegates to (both are in the lineage's certificate), ``SRV_TARGET`` a host
name only an SRV record points at. A scene (``FederationBed.scene``) says which names resolve
to which host, which SRV records exist, what the well-known says (and its Cache-Control), and
which version of the lineage each service serves; it restarts dnsmasq, reloads nginx and sends
Synapse SIGHUP only where something changed, and returns once both serve what it asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from certbot_fanout._pki import Issued, ThrowawayCA

from .cli import run
from .lineages import LineageFactory
from .maps import write_map
from .netns import Dnsmasq, Host, NetnsServed, Srv, TestNetwork, in_netns, served_in
from .proc import Account, read_pid, tail, terminate, wait_pidfile, write_owned
from .stack import NGINX_BIN, Nginx, NginxServer, nginx_quote, pem_fingerprint, settled_workers
from .synapse_env import Synapse, clean_env

SERVER = "example.test"
DELEGATED = "hs.example.test"
SRV_TARGET = "synapse.example.test"
FED_PORT = 8448
SRV_PORT = 8449  # a port only an SRV record names
HTTPS_PORT = 443
SYNAPSE_HOST, WEB_HOST = "synapse", "web"
READY_TIMEOUT = 90.0
SERVE_TIMEOUT = 20.0


def _nginx_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _wait_served(
    netns: str,
    targets: Sequence[tuple[str, int, str]],
    fingerprint: str,
    alive: Callable[[], bool],
    logs: Callable[[], str],
    timeout: float = SERVE_TIMEOUT,
) -> None:
    """Until every (address, port, SNI) in ``targets`` serves ``fingerprint``, seen from
    ``netns``; RuntimeError with ``logs()`` if the daemon dies or the time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    pending = list(targets)
    while pending:
        address, port, sni = pending[0]
        try:
            got = served_in(netns, address, port, sni, timeout=5).fingerprint
            if got == fingerprint:
                pending.pop(0)
                continue
            last = f"serves {got}"
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            last = exc
        if not alive() or time.monotonic() > deadline:
            state = "exited" if not alive() else f"not serving within {timeout:g} s"
            raise RuntimeError(f"[{address}]:{port} {state} (last: {last})\n{logs()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- Synapse


class NetnsSynapse(Synapse):
    """Synapse on ``host`` of ``network``: TLS federation listeners on ``ports`` at every
    address of the host, run as ``account`` through ``ip netns exec``."""

    label = "synapse"

    def __init__(
        self,
        python: Path,
        workdir: Path,
        account: Account,
        server_name: str,
        cert_path: Path,
        key_path: Path,
        *,
        network: TestNetwork,
        host: Host,
        ports: Sequence[int] = (FED_PORT, SRV_PORT),
    ) -> None:
        super().__init__(python, workdir, account, server_name, cert_path, key_path)
        self.network, self.host, self.ports = network, host, tuple(ports)
        self.port = self.ports[0]

    def write_config(self) -> None:
        super().write_config()
        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        config["listeners"] = [
            {
                "port": port,
                "bind_addresses": list(self.host.addresses),
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            }
            for port in self.ports
        ]
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        if self.running:
            raise RuntimeError("synapse already running")
        try:
            self._start_once()
        except BaseException:
            self.stop()
            raise

    def _start_once(self) -> None:
        self._proc = self.network.spawn(
            self.host.netns,
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            self.console_path,
            user=self.account,
            cwd=self.workdir,
            env=clean_env(),
        )
        expected = pem_fingerprint(self.cert_path.read_bytes())
        _wait_served(
            self.network.controller,
            self.targets(),
            expected,
            lambda: self.running,
            self.logs,
            READY_TIMEOUT,
        )

    def targets(self) -> list[tuple[str, int, str]]:
        return [(a, p, self.server_name) for p in self.ports for a in self.host.addresses]

    def logs(self) -> str:
        return f"{tail(self.console_path)}\n--- homeserver.log tail:\n{tail(self.log_path)}"

    def hup(self) -> None:
        """SIGHUP: Synapse re-reads its certificate."""
        os.kill(self.pid, signal.SIGHUP)


# --------------------------------------------------------------------------- nginx


@dataclass(frozen=True)
class WellKnown:
    """What ``/.well-known/matrix/server`` answers: ``body`` (a JSON document; None: 404)
    and its Cache-Control header (None: none)."""

    body: Mapping[str, Any] | None = None
    cache_control: str | None = None


class NetnsNginx(Nginx):
    """nginx in a private prefix on ``host`` of ``network``: one TLS server on 443 at every
    address of the host, answering the Matrix well-known as ``well_known`` says."""

    def __init__(
        self,
        prefix: Path,
        cert_path: Path,
        key_path: Path,
        *,
        network: TestNetwork,
        host: Host,
        server_name: str,
    ) -> None:
        listen = tuple(f"[{a}]" if ":" in a else a for a in host.addresses)
        server = NginxServer(listen, ((Path(cert_path), Path(key_path)),))
        super().__init__(prefix, cert_path, key_path, HTTPS_PORT, server_name, (server,))
        self.network, self.host = network, host
        self.well_known = WellKnown()

    def _location(self) -> str:
        wk = self.well_known
        if wk.body is None:
            return "return 404;"
        header = (
            f"add_header Cache-Control {nginx_quote(wk.cache_control)} always;\n            "
            if wk.cache_control
            else ""
        )
        body = _nginx_string(json.dumps(wk.body))
        return f"default_type application/json;\n            {header}return 200 {body};"

    def _server_block(self, server: NginxServer) -> str:
        """The one server: the certificate, and the well-known as ``well_known`` says."""
        (cert, key), *_ = server.pairs
        listens = "\n".join(f"        listen {a}:{self.port} ssl;" for a in server.addresses)
        return f"""    server {{
{listens}
        server_name {self.server_name};
        ssl_certificate {nginx_quote(str(Path(cert).resolve()))};
        ssl_certificate_key {nginx_quote(str(Path(key).resolve()))};
        location = /.well-known/matrix/server {{
            {self._location()}
        }}
        location / {{
            return 404;
        }}
    }}
"""

    def targets(self) -> list[tuple[str, int, str]]:
        return [(a, self.port, self.server_name) for a in self.host.addresses]

    def start(self) -> None:
        if self.running:
            raise RuntimeError("nginx already running")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.pid_file.unlink(missing_ok=True)
        self._launched = True
        with open(self.launch_log, "wb") as out:
            rc = subprocess.call(
                self.host.argv([NGINX_BIN, *self._flags()]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
            )
        self._pid = wait_pidfile(self.pid_file, 2.0 if rc == 0 else 0.0, self.comm)
        if rc != 0 or self._pid is None:
            raise RuntimeError(f"nginx failed to start (exit {rc}):\n{self.logs()}")
        _wait_served(
            self.network.controller,
            self.targets(),
            pem_fingerprint(self.cert_path.read_bytes()),
            lambda: self.running,
            self.logs,
        )

    def reload(self) -> None:
        """Rewrite the config, ``nginx -s reload``, and wait until the old worker is gone."""
        self.write_config()
        before = frozenset(settled_workers(self.pid))
        run(self.reload_argv(), timeout=30, check=True)
        settled_workers(self.pid, replacing=before)

    def stop(self) -> None:
        if not self._launched:
            return
        for pid in {p for p in (read_pid(self.pid_file, self.comm), self._pid) if p}:
            terminate(pid)
        self._pid, self._launched = None, False


# --------------------------------------------------------------------------- the bed


@dataclass(frozen=True)
class Scene:
    """One arrangement of the bed (see ``FederationBed.scene``)."""

    names: Mapping[str, str]  # DNS name -> host label (A and AAAA: that host's addresses)
    srv: Sequence[Srv] = ()
    well_known: WellKnown = field(default_factory=WellKnown)
    synapse_serves: int = -1  # index into FederationBed.versions (-1: the current one)
    web_serves: int = -1


@dataclass
class FederationBed:
    """The bed's parts; ``scene`` arranges them, ``cli`` runs certbot-fanout among them."""

    network: TestNetwork
    dns: Dnsmasq
    synapse: NetnsSynapse
    nginx: NetnsNginx
    account: Account
    ca: ThrowawayCA
    ca_file: Path
    lineages: LineageFactory
    live: Path
    versions: list[Issued]  # every version of the lineage, the current one last
    workdir: Path
    _dns_state: tuple[object, ...] | None = None

    @property
    def hosts(self) -> dict[str, Host]:
        return self.network.hosts

    @property
    def config_dir(self) -> Path:
        return self.lineages.config_dir

    @property
    def current(self) -> Issued:
        return self.versions[-1]

    def fingerprint(self, version: int = -1) -> str:
        return pem_fingerprint(self.versions[version].cert_pem)

    def scene(self, scene: Scene) -> None:
        """Arrange DNS, the well-known and what each service serves, as ``scene`` says."""
        self.serve_dns(scene.names, scene.srv)
        self.serve_web(scene.well_known, self.versions[scene.web_serves])
        self.serve_synapse(self.versions[scene.synapse_serves])

    def serve_dns(self, names: Mapping[str, str], srv: Sequence[Srv] = ()) -> None:
        state = (tuple(sorted(names.items())), tuple(srv))
        if state == self._dns_state:
            return
        self._dns_state = None
        self.dns.serve({n: self.hosts[label].addresses for n, label in names.items()}, srv)
        self._dns_state = state

    def _place(self, cert: Path, key: Path, issued: Issued, owner: Account | None) -> bool:
        """Write the service's copies of ``issued``; whether they changed."""
        if (
            cert.exists()
            and cert.read_bytes() == issued.fullchain_pem
            and key.read_bytes() == issued.key_pem
        ):
            return False
        uid, gid = (owner.uid, owner.gid) if owner else (0, 0)
        write_owned(cert, issued.fullchain_pem, uid, gid, 0o644)
        write_owned(key, issued.key_pem, uid, gid, 0o600)
        return True

    def serve_web(self, well_known: WellKnown, issued: Issued) -> None:
        nginx = self.nginx
        changed = self._place(nginx.cert_path, nginx.key_path, issued, None)
        if changed or well_known != nginx.well_known:
            nginx.well_known = well_known
            nginx.reload()
        _wait_served(
            self.network.controller,
            nginx.targets(),
            pem_fingerprint(issued.cert_pem),
            lambda: nginx.running,
            nginx.logs,
        )

    def serve_synapse(self, issued: Issued) -> None:
        syn = self.synapse
        expected = pem_fingerprint(issued.cert_pem)
        changed = self._place(syn.cert_path, syn.key_path, issued, self.account)
        if changed or not self._serves(syn.targets(), expected):
            syn.hup()
        _wait_served(
            self.network.controller, syn.targets(), expected, lambda: syn.running, syn.logs
        )

    def _serves(self, targets: Sequence[tuple[str, int, str]], fingerprint: str) -> bool:
        try:
            return all(
                served_in(self.network.controller, a, p, n).fingerprint == fingerprint
                for a, p, n in targets
            )
        except AssertionError:
            return False

    def served(self, address: str, port: int, server_name: str) -> NetnsServed:
        """What ``address``:``port`` serves for ``server_name``, verified against the CA,
        seen from the controller."""
        return served_in(self.network.controller, address, port, server_name, ca_file=self.ca_file)

    def run(
        self, argv: Sequence[str | Path], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in the controller namespace (``cli.run``)."""
        return run(in_netns(self.network.controller, argv), timeout=timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m certbot_fanout ARGS`` in the controller namespace (this
        interpreter, so the package under test)."""
        return self.run([sys.executable, "-m", "certbot_fanout", *args])

    def write_map(self, consumers: Mapping[str, Any], name: str) -> Path:
        directory = self.workdir / "maps" / name
        return write_map(directory, {"version": 1, "consumers": dict(consumers)})

    def deploy(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "deploy", "--config", str(config), "--lineage", str(self.live),
            "--lock-file", str(config.parent / "fanout.lock"), *args,
        )  # fmt: skip

    def status(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "status", "--config", str(config), "--config-dir", str(self.config_dir),
            "--lock-file", str(config.parent / "fanout.lock"), *args,
        )  # fmt: skip


@contextlib.contextmanager
def federation_bed(
    workdir: Path, synapse_python: Path, account: Account, ca: ThrowawayCA
) -> Iterator[FederationBed]:
    """Build the bed in ``workdir`` (a directory every user can traverse): the network, its
    two hosts, dnsmasq, a lineage ``SERVER`` with two versions (names ``SERVER`` and
    ``DELEGATED``), Synapse and nginx serving the current one; everything is stopped and
    removed afterwards, also when building fails half-way."""
    lineages = LineageFactory(ca, workdir / "letsencrypt")
    lineages.config_dir.mkdir(mode=0o755)
    live, first = lineages.issue(SERVER, DELEGATED)
    _, second = lineages.renew(SERVER, DELEGATED)
    ca_file = workdir / "ca.pem"
    ca_file.write_bytes(ca.root_pem)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(TestNetwork())
        syn_host, web_host = network.add_host(SYNAPSE_HOST), network.add_host(WEB_HOST)
        dns = Dnsmasq(network, workdir / "dns")
        stack.callback(dns.stop)
        tls = {}
        for label, owner in ((SYNAPSE_HOST, account), (WEB_HOST, None)):
            d = workdir / f"{label}-tls"
            d.mkdir(mode=0o755)
            uid, gid = (owner.uid, owner.gid) if owner else (0, 0)
            write_owned(d / "fullchain.pem", second.fullchain_pem, uid, gid, 0o644)
            write_owned(d / "privkey.pem", second.key_pem, uid, gid, 0o600)
            tls[label] = (d / "fullchain.pem", d / "privkey.pem")
        synapse = NetnsSynapse(
            synapse_python, workdir / "synapse", account, SERVER, *tls[SYNAPSE_HOST],
            network=network, host=syn_host,
        )  # fmt: skip
        synapse.generate_config()
        nginx = NetnsNginx(
            workdir / "nginx", *tls[WEB_HOST], network=network, host=web_host, server_name=SERVER
        )
        stack.enter_context(nginx)
        stack.enter_context(synapse)
        yield FederationBed(
            network=network,
            dns=dns,
            synapse=synapse,
            nginx=nginx,
            account=account,
            ca=ca,
            ca_file=ca_file,
            lineages=lineages,
            live=live,
            versions=[first, second],
            workdir=workdir,
        )
