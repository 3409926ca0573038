"""Placeholders: a value left for the admin to write (``"<fill in: WHAT>"``), which
``discover --write-map`` writes and the loader names, each at its place, until it is filled in.
"""

from __future__ import annotations

from certbot_fanout.errors import ConfigError
from certbot_fanout.yamlnode import (
    MAX_DEPTH,
    MAX_NODES,
    STR_TAG,
    Node,
    Path,
    ScalarNode,
    SequenceNode,
    _visible,
)

__all__ = ["PLACEHOLDER_PREFIX", "PLACEHOLDER_SUFFIX", "placeholder", "unfilled_fields"]

# A value left for the admin to write (discover --write-map writes these): "<fill in: WHAT>".
PLACEHOLDER_PREFIX = "<fill in: "
PLACEHOLDER_SUFFIX = ">"


def placeholder(what: str) -> str:
    """The placeholder for a field the admin must fill in; ``what`` says with what."""
    return f"{PLACEHOLDER_PREFIX}{what}{PLACEHOLDER_SUFFIX}"


def unfilled_fields(root: Node, source: str) -> tuple[ConfigError, ...]:
    """Each string value of the document that is still a placeholder, as an error at its
    place and key path saying what to fill in (the walk is bounded like the reader's)."""
    found: list[ConfigError] = []
    stack: list[tuple[Node, Path]] = [(root, Path())]
    visited = 0
    while stack and visited < MAX_NODES:
        node, path = stack.pop()
        visited += 1
        if isinstance(node, ScalarNode):
            value = node.value
            if node.tag == STR_TAG and isinstance(value, str) and _is_placeholder(value):
                what = value[len(PLACEHOLDER_PREFIX) : -len(PLACEHOLDER_SUFFIX)].strip()
                line, column = node.start_mark.line + 1, node.start_mark.column + 1
                found.append(
                    ConfigError(
                        _visible(f"fill in {what}"), source, line, column, _visible(str(path))
                    )
                )
            continue
        if path.depth >= MAX_DEPTH:
            continue
        if isinstance(node, SequenceNode):
            children = [(item, path / i) for i, item in enumerate(node.value)]
        else:  # a mapping: its values under their (string) keys
            children = [
                (value_node, path / str(key_node.value))
                for key_node, value_node in node.value
                if isinstance(key_node, ScalarNode)
            ]
        stack.extend(reversed(children))
    return tuple(found)


def _is_placeholder(value: str) -> bool:
    return value.startswith(PLACEHOLDER_PREFIX) and value.endswith(PLACEHOLDER_SUFFIX)
