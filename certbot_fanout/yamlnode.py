"""A generic, bounded reader of YAML node graphs: every rejection with its place.

Validation walks the composed YAML node graph rather than constructed Python objects, so each
error can name the file, line, column and key path, duplicate keys can be caught (PyYAML keeps
the last one silently), and alias expansion is bounded before anything is built from it.

This module knows YAML, not the map: :func:`decode` and :func:`compose` turn bytes into a node
graph within bounds (encoding, nesting, characters), :class:`Path` says where a node is, and
:class:`Reader` hands out typed values (mappings with duplicate and merge keys handled, lists,
strings, numbers, booleans), counting the nodes it visits and tracking the depth from the path;
:func:`suggest` words the "did you mean" of a rejection; :func:`unfilled_fields` finds the
placeholders (``"<fill in: WHAT>"``) a writer of maps left for the admin, each at its place. The
schema of the map is in :mod:`certbot_fanout.schema`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from certbot_fanout.errors import ConfigError

__all__ = [
    "BOOL_TAG",
    "FLOAT_TAG",
    "INT_TAG",
    "MAX_DEPTH",
    "MAX_NODES",
    "NULL_TAG",
    "PLACEHOLDER_PREFIX",
    "PLACEHOLDER_SUFFIX",
    "STR_TAG",
    "Items",
    "Node",
    "Origin",
    "Path",
    "Reader",
    "ScalarNode",
    "SequenceNode",
    "YAMLError",
    "compose",
    "decode",
    "placeholder",
    "suggest",
    "unfilled_fields",
]

# Bounds that keep a hostile or broken file from costing more than a moment.
MAX_NODES = 20_000
MAX_DEPTH = 40
# libyaml words some syntax errors tersely; the pure-Python parser says more, but re-parsing a
# large document with it takes seconds, so only documents up to this size get its wording.
MAX_REPARSE_CHARS = 64 << 10

INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
STR_TAG = "tag:yaml.org,2002:str"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"

YAMLError = yaml.YAMLError

_TAG_NAMES = {
    INT_TAG: "a number",
    FLOAT_TAG: "a number",
    STR_TAG: "a string",
    BOOL_TAG: "a boolean",
    NULL_TAG: "nothing (null)",
    "tag:yaml.org,2002:timestamp": "a date",
}

_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)

# libyaml builds the node graph ~15x faster (and caps nesting at 1000 levels); the node
# graph and its marks are the same.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NOT_SCALAR = object()

# A mapping as read: each key with its key node and value node.
Items = dict[str, tuple[Node, Node]]


# -- from bytes to nodes ------------------------------------------------------------------


def decode(raw: bytes, source: str) -> str:
    """The text of a document read as bytes: UTF-8 (a leading byte order mark is fine).

    Raises:
        ConfigError: another encoding, or bytes that are not UTF-8, with their line and column.
    """
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(
                f"the file is {encoding} (it starts with a {encoding} byte order mark); "
                "save it as UTF-8",
                source,
                1,
                1,
            )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            f"not valid UTF-8: byte 0x{raw[e.start]:02x} (byte offset {e.start}); "
            "save the file as UTF-8",
            source,
            line,
            column,
        ) from None


def compose(text: str, source: str) -> Node | None:
    """The node graph of ``text`` (None for an empty document); ``source`` names it in messages.

    Raises:
        ConfigError: a syntax error, a character YAML does not allow, or nesting too deep.
    """
    try:
        return _compose(text, source)
    except RecursionError:
        raise _nesting_error(source, None) from None
    except yaml.reader.ReaderError as e:
        raise _character_error(text, source, e) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if e.context:
            problem = f"{e.context}: {problem}"
        line, col = _position(mark)
        raise ConfigError(f"YAML syntax error: {problem}", source, line, col) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", source) from None


def _compose(text: str, source: str) -> Node | None:
    """libyaml's node graph, or on an error the pure-Python parser's (see :func:`_reparse`)."""
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.MarkedYAMLError as e:
        if e.problem and "maximum nesting depth" in e.problem:
            raise _nesting_error(source, e.problem_mark) from None
        return _reparse(text, e)
    except yaml.YAMLError as e:
        return _reparse(text, e)


def _reparse(text: str, error: yaml.YAMLError) -> Node | None:
    """Parse again with the pure-Python parser, which words its errors more helpfully; or
    raise libyaml's ``error`` where that parser is too slow (a big document) or fails in
    its own way (it calls chr() on an out-of-range \\U escape)."""
    if len(text) > MAX_REPARSE_CHARS:
        raise error
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (ValueError, OverflowError):
        raise error from None


def _position(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark else (0, 0)


def _nesting_error(source: str, mark: yaml.Mark | None) -> ConfigError:
    line, col = _position(mark)
    return ConfigError(f"nested too deeply (over {MAX_DEPTH} levels)", source, line, col)


def _character_error(text: str, source: str, e: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML does not allow (a NUL, a control character), with line and column."""
    position = max(0, min(e.position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
    what = "a NUL character" if code == 0 else f"the control character U+{code:04X}"
    hint = " (UTF-16 without a byte order mark? save the file as UTF-8)" if code == 0 else ""
    return ConfigError(f"{what} is not allowed in YAML{hint}", source, line, column)


# -- where a node is ----------------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    """Where a node is in the document: the keys and list indexes from the root.

    ``Path() / "consumers" / "web" / "files" / 0`` reads ``consumers.web.files[0]``; its
    :attr:`depth` is the number of steps, which bounds how deep the reader may go.
    """

    steps: tuple[str | int, ...] = ()

    def __truediv__(self, step: str | int) -> Path:
        return Path((*self.steps, step))

    @property
    def depth(self) -> int:
        return len(self.steps)

    def key(self, index: int) -> str | None:
        """The key at step ``index`` (0 is the top level), or None if there is none there."""
        if index < len(self.steps):
            step = self.steps[index]
            if isinstance(step, str):
                return step
        return None

    def __str__(self) -> str:
        text = ""
        for step in self.steps:
            if isinstance(step, int):
                text += f"[{step}]"
            else:
                text = f"{text}.{step}" if text else step
        return text


@dataclass(frozen=True)
class Origin:
    """Where text composed apart from the document (say, a preset's expansion) came from.

    An error about one of its nodes points at ``node``, the place in the document that asked
    for the text, and ends with what ``note`` says for the path of the node at fault.
    """

    node: Node
    note: Callable[[Path], str]


# -- the reader ---------------------------------------------------------------------------


class Reader:
    """Walks a node graph, counting nodes so that aliases cannot explode.

    Each accessor takes the node and its :class:`Path`, visits it (counting it, and checking
    its depth: the path's, plus one for each merge it came through) and returns a typed value,
    or raises a :class:`ConfigError` at the node's line and column.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = 0
        self._scalars = yaml.SafeLoader("")
        self._origins: dict[str, Origin] = {}  # a composed text's name -> where it came from

    # -- errors and bounds ----------------------------------------------------------------

    def error(self, node: Node | None, path: Path, message: str) -> ConfigError:
        """A rejection of ``node`` (at ``path``), at its line and column."""
        origin = self._origins.get(node.start_mark.name) if node is not None else None
        if origin is not None:
            message += origin.note(path)
            node = origin.node
        line, col = _position(node.start_mark if node is not None else None)
        return ConfigError(_visible(message), self.source, line, col, _visible(str(path)))

    def visit(self, node: Node, path: Path, merges: int = 0) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(
                node,
                path,
                f"the document expands to more than {MAX_NODES} nodes "
                "(runaway YAML aliases?); refusing to read it",
            )
        if path.depth + merges > MAX_DEPTH:
            raise self.error(
                node, path, f"nested deeper than {MAX_DEPTH} levels (recursive alias?)"
            )

    def include(self, text: str, name: str, origin: Origin) -> Node | None:
        """Compose ``text``, which is not part of the document, as ``name``; errors about its
        nodes point at ``origin``.

        Raises:
            YAMLError: ``text`` is not YAML.
        """
        self._origins[name] = origin
        loader = yaml.SafeLoader(text)
        loader.name = name
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()

    # -- words about nodes ----------------------------------------------------------------

    def describe(self, node: Node) -> str:
        """What kind of node it is: "a mapping", "a list", "a string", ..."""
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")

    def shown(self, node: Node) -> str:
        """A scalar as written (quoted, shortened), or what kind of node it is."""
        if isinstance(node, ScalarNode):
            return repr(_short(node.value))
        return self.describe(node)

    # -- collections ----------------------------------------------------------------------

    def mapping(self, node: Node, path: Path, what: str) -> Items:
        """A mapping's keys (strings, each once) with their nodes; merge keys (``<<``) add
        the keys of the mappings they name where the mapping has none of its own."""
        return self._mapping(node, path, what, 0)

    def _mapping(self, node: Node, path: Path, what: str, merges: int) -> Items:
        self.visit(node, path, merges)
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        # Merged mappings are walked once per merge: their keys count against the bound too.
        self.nodes += len(node.value)
        self.visit(node, path, merges)
        result: Items = {}
        merged: Items = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                for k, pair in self._merged(value_node, path, merges + 1).items():
                    merged.setdefault(k, pair)
                continue
            key = self._key(key_node, path)
            if key in result:
                first = result[key][0].start_mark.line + 1
                raise self.error(
                    key_node, path / key, f"duplicate key '{key}' (first set on line {first})"
                )
            result[key] = (key_node, value_node)
        for k, pair in merged.items():
            result.setdefault(k, pair)
        return result

    def _merged(self, value_node: Node, path: Path, merges: int) -> Items:
        """The keys a merge key brings: of one mapping, or of each in a list (the first wins)."""
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        merged: Items = {}
        for source in sources:
            for k, pair in self._mapping(source, path, "a mapping to merge", merges).items():
                merged.setdefault(k, pair)
        return merged

    def _key(self, key_node: Node, path: Path) -> str:
        if not isinstance(key_node, ScalarNode) or key_node.tag != STR_TAG:
            raise self.error(key_node, path, f"keys must be strings, got {self.describe(key_node)}")
        return str(key_node.value)

    def check_keys(
        self,
        items: Mapping[str, tuple[Node, Node]],
        allowed: Iterable[str],
        path: Path,
        required: Iterable[str] = (),
        node: Node | None = None,
    ) -> None:
        """Refuse a key not in ``allowed`` (suggesting the nearest) and a missing ``required``
        one (at ``node``, the mapping)."""
        allowed = tuple(allowed)
        for key, (key_node, _) in items.items():
            if key not in allowed:
                hint = suggest(key, allowed)
                suggestion = f"; {hint}" if hint else f"; known keys: {', '.join(allowed)}"
                shown = f"'{key}'" if key.isprintable() else f"{key!r} (with invisible characters)"
                raise self.error(key_node, path / key, f"unknown key {shown}{suggestion}")
        for key in required:
            if key not in items:
                raise self.error(node, path, f"missing required key '{key}'")

    def sequence(self, node: Node, path: Path, what: str) -> list[Node]:
        self.visit(node, path)
        if not isinstance(node, SequenceNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        return list(node.value)

    # -- scalars --------------------------------------------------------------------------

    def scalar(self, node: Node, path: Path) -> object:
        """The value of a scalar with a plain tag (an object no value equals, for a
        collection)."""
        self.visit(node, path)
        if not isinstance(node, ScalarNode):
            return _NOT_SCALAR
        if node.tag not in _TAG_NAMES:
            raise self.error(node, path, f"unsupported YAML tag {node.tag}")
        try:
            return self._scalars.construct_object(node)
        except Exception:  # PyYAML's constructors fail in many ways (e.g. KeyError for !!bool x)
            raise self.error(
                node, path, f"{_short(node.value)!r} is not {_TAG_NAMES[node.tag]}"
            ) from None

    def string(self, node: Node, path: Path, what: str = "a string") -> str:
        """A string of characters (no NUL, no lone surrogate)."""
        value = self.scalar(node, path)
        if node.tag != STR_TAG or not isinstance(value, str):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        if "\0" in value:
            raise self.error(node, path, "contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, from an escape such as "\ud800"
            raise self.error(
                node,
                path,
                f"contains {value[e.start]!r}, which is not a character (a lone surrogate)",
            ) from None
        return value

    def number(
        self, node: Node, path: Path, low: float, high: float, what: str = "a number"
    ) -> float:
        """A number more than ``low`` and at most ``high``."""
        value = self.scalar(node, path)
        if node.tag not in (INT_TAG, FLOAT_TAG) or not isinstance(value, int | float):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        if not low < value <= high:
            raise self.error(
                node, path, f"expected more than {low:g} and at most {high:g}, got {value}"
            )
        return float(value)

    def boolean(self, node: Node, path: Path) -> bool:
        value = self.scalar(node, path)
        if node.tag != BOOL_TAG or not isinstance(value, bool):
            raise self.error(node, path, f"expected true or false, got {self.describe(node)}")
        return value


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``did you mean 'NEAREST'?`` for the choice nearest to a mistyped ``word`` (at least
    ``cutoff`` alike, as :func:`difflib.get_close_matches` measures it), else ``""``."""
    hint = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"did you mean '{hint[0]}'?" if hint else ""


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _visible(text: str) -> str:
    """``text`` with every character a terminal would hide or act on (ESC, a BOM, a lone
    surrogate) written as an escape, so an error message cannot be garbled or fail to print."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
