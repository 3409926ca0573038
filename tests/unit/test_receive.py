"""``certbot-fanout receive`` (issue 15, the target's end of a ``mode: receive`` host), spoken
to over pipes: its hello names only its own map's lineages; a lineage handed over is checked
and deployed by that map; anything else is refused with a reason and nothing placed."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest

from certbot_fanout import wire
from certbot_fanout._pki import Issued, ThrowawayCA
from certbot_fanout.config import parse_config
from certbot_fanout.model import Config
from certbot_fanout.receive import ReceiveOptions, serve

CERT = "example.org"


def _config(tmp_path: Path, files: str | None = None) -> Config:
    """A map whose one consumer places ``files`` (default: a key and a full chain) in out/."""
    files = files or (
        f'      - {{path: {tmp_path}/out/key.pem, content: privkey, mode: "0600"}}\n'
        f"      - {{path: {tmp_path}/out/fullchain.pem, content: fullchain}}\n"
    )
    text = f"version: 1\nconsumers:\n  web:\n    certificate: {CERT}\n    files:\n{files}"
    return parse_config(text, str(tmp_path / "consumers.yaml"))


def _pems(issued: Issued) -> dict[str, str]:
    parts = {
        "cert": issued.cert_pem,
        "chain": issued.chain_pem,
        "fullchain": issued.fullchain_pem,
        "privkey": issued.key_pem,
    }
    return {k: base64.b64encode(v).decode() for k, v in parts.items()}


def _exchange(
    tmp_path: Path, *requests: dict[str, Any], config: Config | None = None
) -> list[dict[str, Any]]:
    inp = io.BytesIO()
    for request in requests:
        wire.write_frame(inp, request)
    inp.seek(0)
    (tmp_path / "out").mkdir(mode=0o755, exist_ok=True)
    out = io.BytesIO()
    options = ReceiveOptions(str(tmp_path / "le"), str(tmp_path / "lock"), None)
    assert serve(config or _config(tmp_path), options, inp, out) == 0
    out.seek(0)
    answers = []
    while (frame := wire.read_frame(out)) is not None:
        answers.append(frame)
    return answers


def _deploy(args: dict[str, Any], ident: int = 1) -> dict[str, Any]:
    return {"id": ident, "op": "deploy", "args": args}


def test_the_hello_names_the_maps_lineages_and_a_lineage_is_deployed_by_that_map(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    issued = ca.issue([CERT])
    hello, answer = _exchange(tmp_path, _deploy({"certificate": CERT, "pems": _pems(issued)}))
    assert (hello["hello"], hello["mode"], hello["certificates"]) == (
        wire.PROTOCOL,
        "receive",
        [CERT],
    )
    assert answer["ok"], answer
    [consumer] = answer["result"]["consumers"]
    assert consumer["outcome"] == "ok", consumer
    key = tmp_path / "out" / "key.pem"
    assert key.read_bytes() == issued.key_pem
    assert os.stat(key).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"certificate": "other.org"}, "has no consumer of 'other.org'; nothing was placed"),
        ({"certificate": CERT, "pems": {"cert": "eA=="}}, "exactly the parts"),
        ("key-mismatch", "privkey.pem does not match cert.pem"),
        ("not-base64", "not base64"),
    ],
)
def test_what_the_map_does_not_use_or_a_broken_lineage_is_refused(
    ca: ThrowawayCA, tmp_path: Path, args: Any, words: str
) -> None:
    issued = ca.issue([CERT])
    if args == "key-mismatch":
        args = {
            "certificate": CERT,
            "pems": {**_pems(issued), "privkey": _pems(ca.issue([CERT]))["privkey"]},
        }
    elif args == "not-base64":
        args = {"certificate": CERT, "pems": {**_pems(issued), "cert": "%%%"}}
    _, answer = _exchange(tmp_path, _deploy(args))
    assert answer["ok"] is False
    assert words in answer["error"]["message"]
    assert list((tmp_path / "out").iterdir()) == []


def test_only_deploy_is_answered(tmp_path: Path) -> None:
    _, answer = _exchange(tmp_path, {"id": 7, "op": "run", "args": {"argv": ["id"]}})
    assert answer["id"] == 7 and answer["ok"] is False
    assert "receive does only 'deploy'" in answer["error"]["message"]


def test_a_map_that_links_into_live_is_refused(ca: ThrowawayCA, tmp_path: Path) -> None:
    linked = f"      - {{path: {tmp_path}/out/cert.pem, content: fullchain, link: true}}\n"
    request = _deploy({"certificate": CERT, "pems": _pems(ca.issue([CERT]))})
    _, answer = _exchange(tmp_path, request, config=_config(tmp_path, linked))
    assert answer["ok"] is False
    assert "link into live/example.org" in answer["error"]["message"]
    assert list((tmp_path / "out").iterdir()) == []
