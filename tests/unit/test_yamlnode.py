"""The generic YAML-node reader: paths, the depth it tracks, merges and its bounds."""

from __future__ import annotations

import pytest

from certbot_fanout.errors import ConfigError
from certbot_fanout.yamlnode import MAX_DEPTH, MAX_NODES, Origin, Path, Reader, compose, suggest

SOURCE = "doc.yaml"


@pytest.mark.parametrize(
    ("path", "shown", "depth"),
    [
        (Path(), "", 0),
        (Path() / "version", "version", 1),
        (Path() / "consumers" / "mail.example.org", "consumers.mail.example.org", 2),
        (Path() / "consumers" / "web" / "files" / 0, "consumers.web.files[0]", 4),
        (
            Path() / "consumers" / "web" / "files" / 1 / "content" / 0,
            "consumers.web.files[1].content[0]",
            6,
        ),
    ],
)
def test_a_path_reads_as_written_and_its_depth_is_its_steps(
    path: Path, shown: str, depth: int
) -> None:
    assert str(path) == shown
    assert path.depth == depth


def test_a_path_gives_its_keys_by_step_not_by_its_words() -> None:
    path = Path() / "consumers" / "mail.example.org" / "files" / 0
    assert path.key(1) == "mail.example.org"
    assert path.key(2) == "files"
    assert path.key(3) is None  # an index
    assert path.key(9) is None


def _chain(levels: int) -> str:
    """A mapping ``top`` whose value merges a chain of ``levels`` mappings, each merging the
    one before."""
    lines = ["m0: &m0 {leaf: 1}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, levels)]
    lines.append(f"top: {{<<: *m{levels - 1}}}")
    return "\n".join(lines) + "\n"


def _read_chain(at: Path, levels: int) -> None:
    root = compose(_chain(levels), SOURCE)
    assert root is not None
    reader = Reader(SOURCE)
    top = reader.mapping(root, Path(), "a mapping")["top"][1]
    reader.mapping(top, at, "a mapping")


@pytest.mark.parametrize("at", [Path() / "top", Path() / "a" / "b" / "c" / 0 / "d"])
def test_depth_is_the_paths_plus_one_per_merge(at: Path) -> None:
    # No caller says how deep it is: the reader counts the path's steps and the merges.
    _read_chain(at, MAX_DEPTH - at.depth)
    with pytest.raises(ConfigError) as info:
        _read_chain(at, MAX_DEPTH - at.depth + 1)
    assert info.value.message == f"nested deeper than {MAX_DEPTH} levels (recursive alias?)"
    assert info.value.key_path == str(at)


def test_the_node_bound_counts_merged_keys() -> None:
    wide = "{" + ", ".join(f"k{i}: {i}" for i in range(1000)) + "}"
    text = f"w: &w {wide}\n" + "".join(f"c{i}: {{<<: *w}}\n" for i in range(30))
    root = compose(text, SOURCE)
    assert root is not None
    reader = Reader(SOURCE)
    items = reader.mapping(root, Path(), "a mapping")

    def read_each() -> None:
        for key, (_, value) in items.items():
            reader.mapping(value, Path() / key, "a mapping")

    with pytest.raises(ConfigError) as info:
        read_each()
    assert f"more than {MAX_NODES} nodes" in info.value.message


def test_an_included_text_points_at_its_origin_and_adds_its_note() -> None:
    root = compose("use: thing\n", SOURCE)
    assert root is not None
    reader = Reader(SOURCE)
    use = reader.mapping(root, Path(), "a mapping")["use"][1]
    origin = Origin(node=use, note=lambda path: f" (via {path.key(0)})")
    included = reader.include("port: x\n", "<thing>", origin)
    assert included is not None
    port = reader.mapping(included, Path() / "use", "a mapping")["port"][1]
    with pytest.raises(ConfigError) as info:
        reader.boolean(port, Path() / "use" / "port")
    error = info.value
    assert (error.source, error.line, error.column) == (SOURCE, 1, 6)
    assert error.key_path == "use.port"
    assert error.message == "expected true or false, got a string (via use)"


def test_suggest_names_the_nearest_choice_or_nothing() -> None:
    assert suggest("verfy", ["files", "verify"]) == "did you mean 'verify'?"
    assert suggest("zzz", ["files", "verify"]) == ""
    assert suggest("fulchin", ["fullchain"], cutoff=0.9) == ""
