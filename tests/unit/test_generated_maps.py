"""Generated malformed maps: valid maps, mutated at random, and text and bytes from nowhere.

The property: reading a map either succeeds, and then what was read is a valid map (checked
field by field, not trusted), or fails with the project's ConfigError naming the source and a
line:column; never any other exception, and always within the time bound. A mutation that
cannot be valid (a required key dropped, a port of 0, ...) must fail. Through the command line
(a subset), a refused map exits 2, without a traceback, and writes nothing.

Profiles are in tests/conftest.py: "dev" (default) and "ci" (--hypothesis-profile=ci), under
which this module runs over 10,000 generated maps; the module counts them and fails if fewer ran.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.cli import main
from certbot_fanout.config import MAX_CONFIG_BYTES, decode_config, parse_config
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import MAX_TIMEOUT, Config
from tests.support.tally import record

AREA = "generated maps (Hypothesis)"
SOURCE = "generated.yaml"
TIME_LIMIT = 2.0
CERTBOT_DIR = "/nonexistent/letsencrypt"
DEST = "/nonexistent/dest"
# Messages that have no place in the document by nature.
WITHOUT_PLACE = re.compile(r"^the document is empty")
# Fewest maps each profile must have tried in this module, counted below.
MINIMUM = {"dev": 200, "ci": 10_000}

COUNT: Counter[str] = Counter()
SLOWEST = [0.0]  # the longest any one case took, in seconds
PROPERTY_TESTS = 5


@pytest.fixture(scope="module", autouse=True)
def enough_cases_ran() -> Iterator[None]:
    yield
    profile = settings._current_profile  # Hypothesis has no public getter
    total = COUNT["cases"]
    record(
        AREA,
        cases=total,
        rejected=COUNT["rejected"],
        accepted=COUNT["accepted"],
        cli_runs=COUNT["cli"],
        tracebacks=COUNT["tracebacks"],
        files_touched=COUNT["files touched"],
        max_seconds=max(SLOWEST),
    )
    ran = {k for k in COUNT if k.startswith("ran: ")}
    if profile in MINIMUM and len(ran) == PROPERTY_TESTS:  # the whole module ran
        assert total >= MINIMUM[profile], (profile, dict(COUNT))


# -- valid maps ---------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_.-]{0,7}", fullmatch=True)
MODES = st.sampled_from(["0644", "0600", "0640", "600", "0400", "0755"])
PARTS = ["cert", "chain", "fullchain", "privkey"]


@st.composite
def file_entries(draw: st.DrawFn, consumer: str, index: int) -> dict[str, Any]:
    content = draw(st.lists(st.sampled_from(PARTS), min_size=1, max_size=3, unique=True))
    entry: dict[str, Any] = {
        "path": f"{DEST}/{consumer}-{index}.pem",
        "content": content[0] if len(content) == 1 and draw(st.booleans()) else content,
    }
    if draw(st.booleans()):
        entry["owner"] = draw(st.sampled_from(["root", 0, 65534, "nobody"]))
    if draw(st.booleans()):
        entry["group"] = draw(st.sampled_from(["root", 0, "nogroup"]))
    if draw(st.booleans()):
        entry["mode"] = draw(MODES)
    return entry


@st.composite
def endpoints(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "host": draw(st.sampled_from(["127.0.0.1", "::1", "localhost", "example.org"])),
        "port": draw(st.integers(1, 65535)),
    }
    if draw(st.booleans()):
        entry["server_name"] = draw(st.sampled_from(["example.org", "mail.example.org"]))
    if draw(st.booleans()):
        entry["starttls"] = draw(st.sampled_from(["smtp", "imap", "postgres", "xmpp"]))
    if draw(st.booleans()):
        entry["check_chain"] = draw(st.booleans())
    return entry


@st.composite
def valid_maps(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1}
    if draw(st.booleans()):
        doc["defaults"] = {"reload_timeout": draw(st.integers(1, 600))}
    consumers: dict[str, Any] = {}
    for name in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        consumer: dict[str, Any] = {"certificate": "example.org"}
        consumer["files"] = [draw(file_entries(name, i)) for i in range(draw(st.integers(0, 3)))]
        if draw(st.booleans()):
            consumer["reload"] = draw(st.sampled_from(["true", ["true"], "systemctl reload x"]))
        if draw(st.booleans()):
            consumer["test"] = ["true", "--flag"]
        if draw(st.booleans()):
            consumer["verify"] = [draw(endpoints()) for _ in range(draw(st.integers(1, 2)))]
        if draw(st.booleans()):
            consumer["verify_timeout"] = draw(st.floats(0.5, 600))
        if draw(st.booleans()):
            consumer["notes"] = draw(st.text(max_size=20))
        consumers[name] = consumer
    doc["consumers"] = consumers
    return doc


def dump(doc: Any, flow: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False, allow_unicode=True)


# -- mutations ----------------------------------------------------------------------------------

Path_ = tuple[Any, ...]


def key_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place in the document: mapping keys and list indexes."""
    found: list[Path_] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.append((*prefix, key))
            found += key_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.append((*prefix, i))
            found += key_paths(value, (*prefix, i))
    return found


def walk(doc: Any) -> Iterator[Any]:
    """Every value inside ``doc``."""
    values = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else []
    for value in values:
        yield value
        yield from walk(value)


def parent_of(doc: Any, path: Path_) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


REQUIRED = {"version", "certificate", "path", "content", "host", "port"}
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(min_size=1, max_size=4), st.integers(), max_size=2),
)
BAD_VALUES: dict[str, list[Any]] = {
    "port": [0, 65536, -1, "http", 1.5, "443", None, [443], 2**70],
    "mode": [416, "9999", "0o640", "rwx", "04755", "1777", "", None, 6.4, ["0640"]],
    "owner": [-1, 2**32, "cf-no-such-user", 1.5, [0], None, ""],
    "group": [-5, 2**40, "cf-no-such-group", True, {"gid": 0}],
    "path": [
        "relative.pem",
        f"{DEST}/../x.pem",
        f"{DEST}/dir/",
        f"{CERTBOT_DIR}/live/example.org/cert.pem",
        f"{CERTBOT_DIR}/archive/x.pem",
        f"{CERTBOT_DIR}/keys",
        "",
        123,
    ],
    "host": ["", " ", "a b", "http://x", "x:1", "a\0b", 7],
    "starttls": ["smpt", "https", "", 25, True],
    "reload": [[], "", "a && b", "a | b", "'open", 5, [["x"]]],
    "test": [[], "a; b", {"x": 1}],
    "content": ["fulchain", [], ["cert", "cert"], 3],
    "certificate": ["", "a/b", "..", 5, None],
    "version": [2, "1", 1.0, None, True],
    "reload_timeout": [0, -1, MAX_TIMEOUT + 1, "60", float("inf")],
    "verify_timeout": [0, -3.5, 10**9, [1], float("nan")],
    "server_name": ["", "a b", "https://x", 5],
    "check_chain": ["yes!", 0, None],
    "link": ["true", 2],
}


@dataclass
class Mutant:
    kind: str
    text: str | None = None
    data: bytes | None = None
    must_fail: bool = False

    def bytes(self) -> bytes:
        return self.data if self.data is not None else (self.text or "").encode("utf-8")


@st.composite
def structural_mutants(draw: st.DrawFn) -> Mutant:
    doc = draw(valid_maps())
    flow = draw(st.booleans())
    paths = key_paths(doc)
    kind = draw(
        st.sampled_from(
            ["drop", "wrong type", "bad value", "unknown key", "deep nesting", "duplicate key"]
        )
    )
    must_fail = False
    if kind == "drop":
        droppable = [p for p in paths if p[-1] in REQUIRED and isinstance(p[-1], str)]
        path = draw(st.sampled_from(droppable))
        del parent_of(doc, path)[path[-1]]
        must_fail = True
    elif kind == "wrong type":
        path = draw(st.sampled_from(paths))
        parent_of(doc, path)[path[-1]] = draw(ANY_VALUE)
    elif kind == "bad value":
        candidates = [p for p in paths if isinstance(p[-1], str) and p[-1] in BAD_VALUES]
        if candidates:
            path = draw(st.sampled_from(candidates))
            parent_of(doc, path)[path[-1]] = draw(st.sampled_from(BAD_VALUES[path[-1]]))
            must_fail = True
    elif kind == "unknown key":
        mappings = [doc] + [v for v in walk(doc) if isinstance(v, dict)]
        target = draw(st.sampled_from(mappings))
        key = draw(st.sampled_from(["reloda", "sni", "mod", "files_", "owner_name", "x"]))
        if key not in target:
            target[key] = 1  # unknown everywhere, and no consumer is just a number
            must_fail = True
    elif kind == "deep nesting":
        path = draw(st.sampled_from(paths))
        value = parent_of(doc, path)[path[-1]]
        for _ in range(draw(st.integers(41, 120))):
            value = [value]
        parent_of(doc, path)[path[-1]] = value
        must_fail = True
    text = dump(doc, flow)
    if kind == "duplicate key":
        lines = text.splitlines(keepends=True)
        keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*(- )?[a-z_]+: ", line)]
        if keyed and not flow:
            i = draw(st.sampled_from(keyed))
            line = lines[i]
            indent = re.match(r"^\s*(- )?", line)
            assert indent is not None
            lines.insert(i + 1, " " * len(indent.group(0)) + line[len(indent.group(0)) :])
            if not line.rstrip().endswith(":"):  # a scalar value: the copy is a whole entry
                must_fail = True
            text = "".join(lines)
    return Mutant(kind, text=text, must_fail=must_fail)


@st.composite
def spliced_mutants(draw: st.DrawFn) -> Mutant:
    data = bytearray(dump(draw(valid_maps()), draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "overwrite", "delete", "truncate"]))
        chunk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from(
                    [b"\x00", b"\xff", b"\xef\xbb\xbf", b"\t", b"&a ", b"*a", b"<<: ", b"{", b"]"]
                ),
            )
        )
        if op == "insert":
            data[at:at] = chunk
        elif op == "overwrite":
            data[at : at + len(chunk)] = chunk
        elif op == "delete":
            del data[at : at + len(chunk)]
        else:
            del data[at:]
    return Mutant("bytes spliced", data=bytes(data))


YAML_TOKENS = [*"ab01:-[]{},&*!<>|'\"# \n\t.?%@`~\\/", "version", "consumers", "\x00", "\ufeff"]
YAMLISH = st.lists(st.sampled_from(YAML_TOKENS), max_size=80).map("".join)


# -- the property -------------------------------------------------------------------------------


def _valid(config: Config) -> None:
    """A map the loader accepted really is valid: check what it holds, not that it loaded."""
    for consumer in config.consumers:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", consumer.name)
        assert consumer.certificate and "/" not in consumer.certificate
        assert consumer.certificate not in (".", "..")
        assert 0 < consumer.reload_timeout <= MAX_TIMEOUT
        assert 0 < consumer.verify_timeout <= MAX_TIMEOUT
        for spec in consumer.files:
            parts = spec.path.split("/")
            assert spec.path.startswith("/") and ".." not in parts and "." not in parts
            assert not spec.path.startswith(CERTBOT_DIR + "/")
            assert 0 <= spec.mode <= 0o777
            assert 0 <= spec.owner < 2**32 - 1 and 0 <= spec.group < 2**32 - 1
            assert spec.content and len(set(spec.content)) == len(spec.content)
        for command in (consumer.test, consumer.reload):
            assert command is None or (command and command[0])
        for endpoint in consumer.verify:
            assert 1 <= endpoint.port <= 65535
            assert endpoint.host and not any(c.isspace() or c == "/" for c in endpoint.host)
    paths = [f.path for c in config.consumers for f in c.files]
    assert len(paths) == len(set(paths))


def read(mutant: Mutant) -> tuple[Config | ConfigError, float]:
    """Load as load_config does; anything but a Config or a ConfigError propagates (fails)."""
    data = mutant.bytes()
    started = time.monotonic()
    try:
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError("too large", SOURCE)
        result: Config | ConfigError = parse_config(
            decode_config(data, SOURCE), SOURCE, certbot_dirs=(CERTBOT_DIR,)
        )
    except ConfigError as e:
        result = e
    return result, time.monotonic() - started


def check_property(mutant: Mutant, test: str) -> Config | ConfigError:
    COUNT["cases"] += 1
    COUNT[f"ran: {test}"] += 1
    result, seconds = read(mutant)
    SLOWEST.append(max(SLOWEST.pop(), seconds))
    COUNT["rejected" if isinstance(result, ConfigError) else "accepted"] += 1
    COUNT[mutant.kind] += 1
    assert seconds < TIME_LIMIT, (seconds, mutant.kind)
    if isinstance(result, ConfigError):
        rendered = str(result)
        assert result.source == SOURCE
        if not WITHOUT_PLACE.match(result.message):
            assert result.line >= 1 and result.column >= 1, rendered
            assert rendered.startswith(f"{SOURCE}:{result.line}:{result.column}: "), rendered
        rendered.encode("utf-8")  # printable as it stands
    else:
        assert not mutant.must_fail, ("a map that cannot be valid was accepted", mutant)
        _valid(result)
    return result


@given(structural_mutants())
def test_structural_mutations(mutant: Mutant) -> None:
    check_property(mutant, "structural")


@given(spliced_mutants())
def test_bytes_spliced_into_valid_maps(mutant: Mutant) -> None:
    check_property(mutant, "spliced")


@given(st.one_of(YAMLISH, st.text(max_size=300)))
def test_random_text(text: str) -> None:
    check_property(Mutant("random text", text=text), "text")


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    check_property(Mutant("random bytes", data=data), "bytes")


# -- through the command line ----------------------------------------------------------------------


@dataclass
class Place:
    root: Path
    certbot_dir: Path
    dest: Path


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Place:
    root = tmp_path_factory.mktemp("generated")
    issued = ThrowawayCA("generated maps").issue(["example.org"])
    write_lineage(str(root / "letsencrypt"), "example.org", issued)
    (root / "dest").mkdir()
    (root / "run").mkdir()
    return Place(root, root / "letsencrypt", root / "dest")


def _tree(top: Path) -> dict[str, tuple[int, bytes]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = path.lstat()
            body = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found[str(path)] = (st_.st_mode, body)
    return found


@given(mutant=st.one_of(structural_mutants(), spliced_mutants()))
def test_refused_maps_through_the_command_line(place: Place, mutant: Mutant) -> None:
    COUNT["cases"] += 1
    COUNT["ran: cli"] += 1
    data = mutant.bytes()
    raw = data.replace(DEST.encode(), bytes(place.dest)).replace(
        CERTBOT_DIR.encode(), bytes(place.certbot_dir)
    )
    config = place.root / "run" / "consumers.yaml"
    config.write_bytes(raw)
    loaded, _ = read(Mutant(mutant.kind, data=raw))
    if not isinstance(loaded, ConfigError):
        COUNT["cli skipped (valid)"] += 1
        return  # a valid map would really deploy: that is not this test
    before = _tree(place.root)
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "deploy",
                "--config",
                str(config),
                "--cert-name",
                "example.org",
                "--config-dir",
                str(place.certbot_dir),
                "--lock-file",
                str(place.root / "run" / "lock"),
                "--state-file",
                str(place.root / "run" / "state.json"),
            ],
            environ={},
            stdout=out,
        )
    seconds = time.monotonic() - started
    after = _tree(place.root)
    touched = sum(before.get(k) != after.get(k) for k in before.keys() | after.keys())
    text = out.getvalue() + err.getvalue()
    COUNT["cli"] += 1
    COUNT["tracebacks"] += int("Traceback" in text)
    COUNT["files touched"] += touched
    SLOWEST.append(max(SLOWEST.pop(), seconds))
    assert code == 2, (code, text)
    assert "Traceback" not in text
    assert touched == 0
    assert seconds < TIME_LIMIT
    assert err.getvalue().startswith(f"certbot-fanout: error: {config}"), text
