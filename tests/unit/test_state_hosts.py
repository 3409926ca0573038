"""The state file knows the host each consumer was deployed on (issue 15), and ``status`` does
not credit a consumer with a deploy made on another host before the map moved it."""

from __future__ import annotations

from pathlib import Path

from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.config import parse_config
from certbot_fanout.state import load_state, update_state
from certbot_fanout.status import StatusOptions, check_status

CERT = "example.org"


def test_the_host_is_recorded_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    update_state(
        path, CERT, {"web-a": "ab" * 32, "local": "cd" * 32}, [], 1000.0, hosts={"web-a": "a"}
    )
    records = load_state(path)
    assert (records["web-a"].host, records["local"].host) == ("a", None)
    update_state(path, CERT, {}, ["web-a"], 2000.0)  # a later verify keeps the host
    assert load_state(path)["web-a"].host == "a"


def test_status_ignores_a_record_made_on_another_host(ca: ThrowawayCA, tmp_path: Path) -> None:
    write_lineage(str(tmp_path / "le"), CERT, ca.issue([CERT]))
    config = parse_config(
        f"version: 1\nconsumers:\n  web:\n    certificate: {CERT}\n"
        f"    files: [{{path: {tmp_path}/web.pem, content: fullchain}}]\n",
        str(tmp_path / "consumers.yaml"),
    )
    state = str(tmp_path / "state.json")
    options = StatusOptions(config_dir=str(tmp_path / "le"), probe=False)
    update_state(state, CERT, {"web": "ab" * 32}, [], 1000.0, hosts={"web": "old-host"})
    [moved] = check_status(config, state, options).consumers
    assert moved.record is None
    update_state(state, CERT, {"web": "ab" * 32}, [], 2000.0, hosts={"web": None})
    [here] = check_status(config, state, options).consumers
    assert here.record is not None and here.record.last_deployed == 2000.0
