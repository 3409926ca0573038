"""``discover --write-map`` on a host with containers: one consumer per container whose mounts
carry the certificate (``container: {name: ...}``, the mounted files, the published ports, the
reload left to fill in), the files it mounts not written again as copies of their own, and a
replica that mounts the same files left out with what to do instead.

The report is what ``discover`` found in a real directory, with the containers' finds that
``discover_containers`` would add (a dockerd is in the integration tests)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from certbot_fanout.config import parse_config
from certbot_fanout.discover import (
    ContainerFind,
    DiscoverReport,
    Find,
    FindKind,
    Listener,
    discover,
)
from certbot_fanout.mapwriter import Owner, plan_map
from certbot_fanout.model import Config, ContainerSpec
from certbot_fanout.render_discover import render_discover_map
from tests.support.lineages import LineageFactory

NAME = "containers.writemap.test"
KEYS = "/srv/filled-in"


def _report(lineages: LineageFactory, root: Path) -> DiscoverReport:
    """Three copies under ``root``: one under a directory mount of container web, one a
    single-file mount of containers edge and edge-2 (replicas), one no container mounts."""
    live, _ = lineages.issue(NAME)
    fullchain = (live / "fullchain.pem").read_bytes()
    for sub in ("web", "edge", "loose"):
        (root / sub).mkdir(parents=True)
        (root / sub / "fullchain.pem").write_bytes(fullchain)
    (root / "no-proc").mkdir()
    report = discover(
        Config("<none>", ()),
        str(lineages.config_dir),
        [NAME],
        roots=[str(root)],
        proc_net=str(root / "no-proc"),
        service_configs={},
    )
    assert {f.where for f in report.finds} == {
        str(root / sub / "fullchain.pem") for sub in ("web", "edge", "loose")
    }
    copy = {f.where: f.copy for f in report.finds}
    served = report.lineages[NAME].cert

    def mounted(
        container: str,
        source: str,
        inside: str,
        *,
        single: bool = False,
        ports: tuple[str, ...] = (),
    ) -> ContainerFind:
        return ContainerFind(
            container=container,
            ident="0123456789ab",
            source=source,
            inside=inside,
            certificate=NAME,
            served=served,
            current=True,
            single_file=single,
            seen_current=True,
            ports=ports,
            copy=copy[source],
        )

    web, edge = str(root / "web" / "fullchain.pem"), str(root / "edge" / "fullchain.pem")
    containers = (
        mounted("web", web, "/certs/fullchain.pem", ports=("0.0.0.0:8443->443/tcp",)),
        mounted("edge", edge, "/tls/cert.pem", single=True, ports=("[::1]:9443->443/tcp",)),
        mounted("edge-2", edge, "/tls/cert.pem", single=True),
    )
    return dataclasses.replace(report, containers=containers)


def _fill(text: str) -> str:
    """Each key path to fill in set to a path of its own under KEYS, each container's reload
    to a signal, and any other reload to the command ``true``."""
    keys = iter(range(1, 100))
    text = re.sub(r'path: "<fill in: [^"]*>"', lambda _: f'path: "{KEYS}/{next(keys)}.pem"', text)
    text = re.sub(r'reload: "<fill in: how the container [^"]*>"', "reload: {signal: HUP}", text)
    return re.sub(r'reload: "<fill in: [^"]*>"', 'reload: ["true"]', text)


def test_a_first_map_has_a_consumer_for_each_container_and_none_for_its_mounted_copies(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    report = _report(lineages, root)

    first = plan_map(report)
    text = render_discover_map(first)
    config = parse_config(_fill(text), "written")

    consumers = {c.name: c for c in config.consumers}
    assert sorted(consumers) == ["copy", "edge", "web"], text
    web, edge, loose = consumers["web"], consumers["edge"], consumers["copy"]
    assert web.container == ContainerSpec(name="web")
    assert [(f.path, [p.value for p in f.content]) for f in web.files] == [
        (str(root / "web" / "fullchain.pem"), ["fullchain"]),
        (f"{KEYS}/1.pem", ["privkey"]),
    ]
    assert [(e.host, e.port) for e in web.verify] == [("127.0.0.1", 8443)]
    assert web.service_reload is not None and web.service_reload.signal == "HUP"
    assert edge.container == ContainerSpec(name="edge")
    assert [(e.host, e.port) for e in edge.verify] == [("::1", 9443)]
    assert "single-file bind mount" in edge.notes and "inplace: true" in edge.notes
    assert loose.container is None  # a copy no container mounts is a copy, as before
    assert [f.path for f in loose.files] == [str(root / "loose" / "fullchain.pem")]
    # The mounted copies are the containers' files, not consumers of their own.
    placed = [f.path for c in config.consumers for f in c.files if KEYS not in f.path]
    assert len(placed) == len(set(placed)) == 3
    (replica,) = first.left_out
    assert replica.where == "container edge-2" and "consumer edge" in replica.why
    assert "container: {label: ...}" in replica.why
    assert [c.kind for c in report.finds] == [FindKind.FILE] * 3


def test_the_reload_of_a_container_is_left_to_fill_in(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    report = _report(lineages, tmp_path / "srv")

    text = render_discover_map(plan_map(report))

    web = text[text.index("  web:") :]
    reload = next(line for line in web.splitlines() if line.lstrip().startswith("reload:"))
    assert "<fill in: how the container reloads: {signal: HUP}" in reload, text
    assert 'container: {name: "web"}' in web


def test_what_a_containers_processes_listen_on_is_the_containers_not_a_service_here(
    lineages: LineageFactory, tmp_path: Path
) -> None:
    report = _report(lineages, tmp_path / "srv")
    served = report.lineages[NAME].cert
    web = dataclasses.replace(report.containers[0], namespace="mnt:[4026532001]")

    def listening(port: int) -> Find:
        return Find(
            kind=FindKind.LISTENER,
            where=f"127.0.0.1:{port}",
            certificate=NAME,
            served=served,
            current=True,
            listener=Listener("127.0.0.1", port, None),
        )

    report = dataclasses.replace(
        report,
        finds=(*report.finds, listening(7443), listening(7444)),
        containers=(web, *report.containers[1:]),
    )
    owners = {
        7443: Owner("nginx", "mnt:[4026532001]"),  # nginx in container web
        7444: Owner("nginx", "mnt:[4026531841]"),  # nginx of this host
    }

    consumers = {c.name: c for c in plan_map(report, owners).consumers}

    assert [(e.host, e.port) for e in consumers["web"].verify] == [
        ("127.0.0.1", 7443),
        ("127.0.0.1", 8443),
    ]
    assert [e.port for e in consumers["nginx"].verify] == [7444]  # the host's own, as before
