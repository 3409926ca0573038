"""The consumer map: YAML in, frozen dataclasses out, every rejection precise.

Validation walks the composed YAML node graph rather than constructed Python objects, so each
error can name the file, line, column and key path, duplicate keys can be caught (PyYAML keeps
the last one silently), and alias expansion is bounded before anything is built from it.
"""

from __future__ import annotations

import difflib
import enum
import grp
import ipaddress
import os
import pwd
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from certbot_fanout.errors import ConfigError, ConfigNotFound
from certbot_fanout.model import DEFAULT_CERTBOT_DIR, Dialect
from certbot_fanout.presets import CERTIFICATE_RE, PRESETS

DEFAULT_CONFIG_PATH = "/etc/certbot-fanout/consumers.yaml"
# Certbot's own directories under its config dir: never a place for a consumer's file.
CERTBOT_OWNED = ("live", "archive", "keys", "renewal", "accounts")
CONFIG_ENV = "CERTBOT_FANOUT_CONFIG"
SUPPORTED_VERSION = 1

DEFAULT_RELOAD_TIMEOUT = 60.0
DEFAULT_VERIFY_TIMEOUT = 60.0
MAX_TIMEOUT = 86400.0

# Bounds that keep a hostile or broken file from costing more than a moment.
MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 20_000
MAX_DEPTH = 40
# libyaml words some syntax errors tersely; the pure-Python parser says more, but re-parsing a
# large document with it takes seconds, so only documents up to this size get its wording.
MAX_REPARSE_CHARS = 64 << 10

_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)

# libyaml builds the node graph ~15x faster (and caps nesting at 1000 levels); the node
# graph and its marks are the same.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MODE_RE = re.compile(r"^0?[0-7]{3}$")

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

_TAG_NAMES = {
    _INT_TAG: "a number",
    _FLOAT_TAG: "a number",
    _STR_TAG: "a string",
    _BOOL_TAG: "a boolean",
    _NULL_TAG: "nothing (null)",
    "tag:yaml.org,2002:timestamp": "a date",
}


class Part(enum.Enum):
    """A piece of the lineage that a placed file can hold."""

    CERT = "cert"
    CHAIN = "chain"
    FULLCHAIN = "fullchain"
    PRIVKEY = "privkey"


@dataclass(frozen=True)
class FileSpec:
    """One file a consumer reads: a copy of some lineage parts, or a symlink into live/."""

    path: str
    content: tuple[Part, ...]
    owner: int
    group: int
    mode: int
    link: bool = False
    owner_name: str = "root"
    group_name: str = "root"

    @property
    def holds_key(self) -> bool:
        return Part.PRIVKEY in self.content


@dataclass(frozen=True)
class Endpoint:
    """A place where the consumer must serve the lineage's certificate (and its chain)."""

    host: str
    port: int
    server_name: str | None = None
    starttls: Dialect | None = None
    check_chain: bool = True

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Consumer:
    """A service that terminates TLS with one lineage's certificate."""

    name: str
    certificate: str
    files: tuple[FileSpec, ...] = ()
    test: tuple[str, ...] | None = None
    reload: tuple[str, ...] | None = None
    verify: tuple[Endpoint, ...] = ()
    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    notes: str = ""


@dataclass(frozen=True)
class Config:
    """A validated consumer map."""

    source: str
    consumers: tuple[Consumer, ...]

    def consumers_for(self, certificate: str) -> tuple[Consumer, ...]:
        return tuple(c for c in self.consumers if c.certificate == certificate)

    @property
    def certificates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.certificate for c in self.consumers))


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    """``$CERTBOT_FANOUT_CONFIG`` if set and non-empty, else the system path."""
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str, *, certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,)) -> Config:
    """Read and validate a consumer map.

    ``certbot_dirs`` are Certbot's configuration directories (``--config-dir``): a file placed
    in their ``live/``, ``archive/``, ``keys/``, ``renewal/`` or ``accounts/`` is refused.

    Raises:
        ConfigNotFound: there is no file at ``path``.
        ConfigError: the file cannot be read or does not follow schema version 1.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigNotFound(
            "config file not found (set --config or $CERTBOT_FANOUT_CONFIG)", path
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file is larger than {MAX_CONFIG_BYTES} bytes", path)
    return parse_config(decode_config(raw, path), path, certbot_dirs=certbot_dirs)


def decode_config(raw: bytes, source: str) -> str:
    """The text of a map read as bytes: UTF-8 (a leading byte order mark is fine).

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


def parse_config(
    text: str,
    source: str = "<config>",
    *,
    certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,),
) -> Config:
    """Validate a consumer map given as text; ``source`` names it in messages.

    ``certbot_dirs``: as for :func:`load_config`.
    """
    try:
        try:
            root = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.MarkedYAMLError as e:
            if e.problem and "maximum nesting depth" in e.problem:
                raise _nesting_error(source, e.problem_mark) from None
            root = _reparse(text, e)
        except yaml.YAMLError as e:
            root = _reparse(text, e)
    except RecursionError:
        raise _nesting_error(source, None) from None
    except yaml.reader.ReaderError as e:
        raise _character_error(text, source, e) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if e.context:
            problem = f"{e.context}: {problem}"
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError(f"YAML syntax error: {problem}", source, line, col) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", source) from None
    if root is None:
        raise ConfigError(
            "the document is empty; expected a mapping with 'version: 1' and 'consumers'", source
        )
    if isinstance(certbot_dirs, str):  # one directory given bare: not its characters
        certbot_dirs = (certbot_dirs,)
    return _Reader(source, certbot_dirs).config(root)


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


def _nesting_error(source: str, mark: yaml.Mark | None) -> ConfigError:
    line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
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


K = TypeVar("K")


class _Reader:
    """Walks the node graph, counting nodes so that aliases cannot explode."""

    def __init__(self, source: str, certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,)) -> None:
        self.source = source
        self.owned = _owned_dirs(certbot_dirs)
        self.nodes = 0
        self.paths: dict[str, str] = {}
        self._scalars = yaml.SafeLoader("")
        self._presets: dict[str, Node] = {}  # "<preset NAME>" -> the user's `preset:` value

    # -- plumbing -------------------------------------------------------------------------

    def error(self, node: Node | None, path: str, message: str) -> ConfigError:
        if node is not None and node.start_mark.name in self._presets:
            # A preset's value is wrong here (say, its service user does not exist): point at
            # the `preset:` line, and say where the value came from.
            field = path.split(".")[2].split("[")[0] if path.count(".") >= 2 else "it"
            message += (
                f" (from preset {node.start_mark.name[8:-1]}: install that service first, "
                f"or set '{field}' yourself)"
            )
            node = self._presets[node.start_mark.name]
        line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (0, 0)
        return ConfigError(_visible(message), self.source, line, col, _visible(path))

    def visit(self, node: Node, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(
                node,
                path,
                f"the document expands to more than {MAX_NODES} nodes "
                "(runaway YAML aliases?); refusing to read it",
            )
        if depth > MAX_DEPTH:
            raise self.error(
                node, path, f"nested deeper than {MAX_DEPTH} levels (recursive alias?)"
            )

    def describe(self, node: Node) -> str:
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

    def mapping(self, node: Node, path: str, depth: int, what: str) -> dict[str, tuple[Node, Node]]:
        self.visit(node, path, depth)
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        # Merged mappings are walked once per merge: their keys count against the bound too.
        self.nodes += len(node.value)
        self.visit(node, path, depth)
        result: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    for k, pair in self.mapping(
                        source, path, depth + 1, "a mapping to merge"
                    ).items():
                        merged.setdefault(k, pair)
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR_TAG:
                raise self.error(
                    key_node, path, f"keys must be strings, got {self.describe(key_node)}"
                )
            key = str(key_node.value)
            if key in result:
                first = result[key][0].start_mark.line + 1
                raise self.error(
                    key_node, _join(path, key), f"duplicate key '{key}' (first set on line {first})"
                )
            result[key] = (key_node, value_node)
        for k, pair in merged.items():
            result.setdefault(k, pair)
        return result

    def check_keys(
        self,
        items: Mapping[str, tuple[Node, Node]],
        allowed: Iterable[str],
        path: str,
        required: Iterable[str] = (),
        node: Node | None = None,
    ) -> None:
        allowed = tuple(allowed)
        for key, (key_node, _) in items.items():
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                known = ", ".join(allowed)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {known}"
                shown = f"'{key}'" if key.isprintable() else f"{key!r} (with invisible characters)"
                raise self.error(key_node, _join(path, key), f"unknown key {shown}{suggestion}")
        for key in required:
            if key not in items:
                raise self.error(node, path, f"missing required key '{key}'")

    def scalar(self, node: Node, path: str, depth: int) -> object:
        self.visit(node, path, depth)
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

    def string(self, node: Node, path: str, depth: int, what: str = "a string") -> str:
        value = self.scalar(node, path, depth)
        if node.tag != _STR_TAG or not isinstance(value, str):
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

    def number(self, node: Node, path: str, depth: int, low: float, high: float) -> float:
        value = self.scalar(node, path, depth)
        if node.tag not in (_INT_TAG, _FLOAT_TAG) or not isinstance(value, int | float):
            raise self.error(node, path, f"expected a number of seconds, got {self.describe(node)}")
        if not low < value <= high:
            raise self.error(
                node, path, f"expected more than {low:g} and at most {high:g}, got {value}"
            )
        return float(value)

    def boolean(self, node: Node, path: str, depth: int) -> bool:
        value = self.scalar(node, path, depth)
        if node.tag != _BOOL_TAG or not isinstance(value, bool):
            raise self.error(node, path, f"expected true or false, got {self.describe(node)}")
        return value

    def sequence(self, node: Node, path: str, depth: int, what: str) -> list[Node]:
        self.visit(node, path, depth)
        if not isinstance(node, SequenceNode):
            raise self.error(node, path, f"expected {what}, got {self.describe(node)}")
        return list(node.value)

    # -- schema ---------------------------------------------------------------------------

    def config(self, root: Node) -> Config:
        top = self.mapping(root, "", 0, "a mapping with 'version: 1' and 'consumers'")
        self.check_keys(top, ("version", "defaults", "consumers"), "", ("version",), root)
        version_node = top["version"][1]
        version = self.scalar(version_node, "version", 1)
        if version_node.tag == _STR_TAG and version == str(SUPPORTED_VERSION):
            raise self.error(
                version_node,
                "version",
                f"expected the number {SUPPORTED_VERSION}, got the string {version!r}; "
                f"write `version: {SUPPORTED_VERSION}` without quotes",
            )
        if version_node.tag != _INT_TAG or version != SUPPORTED_VERSION:
            raise self.error(
                version_node,
                "version",
                f"unsupported config version {self.shown(version_node)}; "
                f"this certbot-fanout reads version {SUPPORTED_VERSION}",
            )
        reload_timeout, verify_timeout = DEFAULT_RELOAD_TIMEOUT, DEFAULT_VERIFY_TIMEOUT
        if "defaults" in top:
            defaults_node = top["defaults"][1]
            defaults = self.mapping(defaults_node, "defaults", 1, "a mapping")
            self.check_keys(defaults, ("reload_timeout", "verify_timeout"), "defaults")
            if "reload_timeout" in defaults:
                reload_timeout = self.number(
                    defaults["reload_timeout"][1], "defaults.reload_timeout", 2, 0, MAX_TIMEOUT
                )
            if "verify_timeout" in defaults:
                verify_timeout = self.number(
                    defaults["verify_timeout"][1], "defaults.verify_timeout", 2, 0, MAX_TIMEOUT
                )
        consumers: list[Consumer] = []
        if "consumers" in top:
            consumers_node = top["consumers"][1]
            if not (isinstance(consumers_node, ScalarNode) and consumers_node.tag == _NULL_TAG):
                items = self.mapping(
                    consumers_node, "consumers", 1, "a mapping of consumer names to consumers"
                )
                for name, (key_node, value_node) in items.items():
                    path = _join("consumers", name)
                    if not _NAME_RE.match(name):
                        raise self.error(
                            key_node,
                            path,
                            f"consumer name '{name}' may hold only letters, digits, . _ and -",
                        )
                    consumers.append(
                        self.consumer(name, value_node, path, reload_timeout, verify_timeout)
                    )
        return Config(source=self.source, consumers=tuple(consumers))

    def consumer(
        self, name: str, node: Node, path: str, reload_timeout: float, verify_timeout: float
    ) -> Consumer:
        items = self.mapping(node, path, 2, "a mapping describing the consumer")
        self.check_keys(
            items,
            (
                "certificate",
                "files",
                "test",
                "reload",
                "verify",
                "reload_timeout",
                "verify_timeout",
                "notes",
                "preset",
            ),
            path,
            ("certificate",),
            node,
        )
        cert_node = items["certificate"][1]
        certificate = self.string(cert_node, f"{path}.certificate", 3, "a certbot lineage name")
        if not certificate or "/" in certificate or certificate in (".", ".."):
            raise self.error(
                cert_node,
                f"{path}.certificate",
                f"expected a lineage name (a directory under live/), got {certificate!r}",
            )
        if "preset" in items:
            for key, pair in self.preset(items["preset"][1], f"{path}.preset", certificate):
                items.setdefault(key, pair)

        def opt(key: str, read: Callable[[Node, str], K], default: K) -> K:
            return read(items[key][1], f"{path}.{key}") if key in items else default

        no_files: tuple[FileSpec, ...] = ()
        no_endpoints: tuple[Endpoint, ...] = ()
        files = opt("files", self.files, no_files)
        verify = opt("verify", self.endpoints, no_endpoints)
        return Consumer(
            name=name,
            certificate=certificate,
            files=files,
            test=opt("test", self.command, None),
            reload=opt("reload", self.command, None),
            verify=verify,
            reload_timeout=opt(
                "reload_timeout", lambda n, p: self.number(n, p, 3, 0, MAX_TIMEOUT), reload_timeout
            ),
            verify_timeout=opt(
                "verify_timeout", lambda n, p: self.number(n, p, 3, 0, MAX_TIMEOUT), verify_timeout
            ),
            notes=opt("notes", lambda n, p: self.string(n, p, 3), "").strip(),
        )

    def preset(
        self, node: Node, path: str, certificate: str
    ) -> Iterable[tuple[str, tuple[Node, Node]]]:
        """The fields of a preset, as YAML nodes, for the consumer to take where it has none."""
        name = self.string(node, path, 3, "a preset name")
        preset = PRESETS.get(name)
        if preset is None:
            hint = difflib.get_close_matches(name, list(PRESETS), n=1)
            extra = f"did you mean '{hint[0]}'? " if hint else ""
            raise self.error(
                node,
                path,
                f"unknown preset '{name}'; {extra}known presets: {', '.join(PRESETS)} "
                "(certbot-fanout presets shows what each sets)",
            )
        if not CERTIFICATE_RE.match(certificate):
            raise self.error(
                node,
                path,
                f"preset {name} puts the certificate name into file paths, so with a preset "
                f"it may hold only letters, digits and . _ - + @, not {certificate!r}; "
                "set the consumer's fields without a preset",
            )
        label = f"<preset {name}>"
        self._presets[label] = node
        loader = yaml.SafeLoader(preset.expand(certificate))
        loader.name = label
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as e:  # a preset that the name still broke: never a crash
            raise self.error(node, path, f"preset {name} does not expand: {e}") from None
        finally:
            loader.dispose()
        assert root is not None, f"preset {name} is empty"
        return self.mapping(root, path, 3, "a preset").items()

    def certbot_owned(self, file_path: str) -> str | None:
        """The certbot-owned directory that holds (or is) ``file_path``, if any.

        Compared as written and with symlinks resolved, so neither a symlinked config dir nor
        a symlink on the way into it hides the place.
        """
        candidates = [file_path]
        resolved = os.path.join(os.path.realpath(os.path.dirname(file_path)), "")
        candidates.append(resolved + os.path.basename(file_path))
        for candidate in candidates:
            for owned in self.owned:
                if candidate == owned or candidate.startswith(owned + "/"):
                    return owned
        return None

    def files(self, node: Node, path: str) -> tuple[FileSpec, ...]:
        return tuple(
            self.file(item, f"{path}[{i}]")
            for i, item in enumerate(self.sequence(node, path, 3, "a list of files"))
        )

    def file(self, node: Node, path: str) -> FileSpec:
        items = self.mapping(node, path, 4, "a mapping with 'path' and 'content'")
        self.check_keys(
            items,
            ("path", "content", "owner", "group", "mode", "link"),
            path,
            ("path", "content"),
            node,
        )
        path_node = items["path"][1]
        file_path = self.string(path_node, f"{path}.path", 5, "an absolute path")
        if not os.path.isabs(file_path):
            raise self.error(
                path_node, f"{path}.path", f"expected an absolute path, got {file_path!r}"
            )
        components = file_path.split("/")
        if file_path.endswith("/") or "." in components or ".." in components or "//" in file_path:
            raise self.error(
                path_node, f"{path}.path", f"expected a plain path to a file, got {file_path!r}"
            )
        owner_dir = self.certbot_owned(file_path)
        if owner_dir:
            raise self.error(
                path_node,
                f"{path}.path",
                f"{file_path} is inside {owner_dir}: certbot owns {owner_dir} and rewrites "
                "it on every renewal; certbot-fanout must not write there (place the copy "
                "elsewhere, or use link: true for a symlink into live/)",
            )
        if file_path in self.paths:
            raise self.error(
                path_node,
                f"{path}.path",
                f"{file_path} is already placed by {self.paths[file_path]}; "
                "each path may be placed by one entry only",
            )
        self.paths[file_path] = path

        content = self.content(items["content"][1], f"{path}.content")
        link = self.boolean(items["link"][1], f"{path}.link", 5) if "link" in items else False
        if link and len(content) != 1:
            raise self.error(
                items["content"][1],
                f"{path}.content",
                "a link points at one file of live/: expected one of "
                "cert, chain, fullchain, privkey, not a list",
            )
        if link and "mode" in items:
            raise self.error(
                items["mode"][0],
                f"{path}.mode",
                "a symlink has no mode of its own; drop 'mode' or 'link'",
            )

        owner, owner_name = 0, "root"
        if "owner" in items:
            owner, owner_name = self.account(items["owner"][1], f"{path}.owner", user=True)
        group, group_name = 0, "root"
        if "group" in items:
            group, group_name = self.account(items["group"][1], f"{path}.group", user=False)

        mode = 0o600 if Part.PRIVKEY in content else 0o644
        if "mode" in items:
            mode = self.mode(items["mode"][1], f"{path}.mode")
        return FileSpec(
            path=file_path,
            content=content,
            owner=owner,
            group=group,
            mode=mode,
            link=link,
            owner_name=owner_name,
            group_name=group_name,
        )

    def content(self, node: Node, path: str) -> tuple[Part, ...]:
        parts = (
            [node]
            if isinstance(node, ScalarNode)
            else self.sequence(node, path, 5, "a content part or a list of them")
        )
        if not parts:
            raise self.error(node, path, "expected at least one content part")
        result: list[Part] = []
        for i, part_node in enumerate(parts):
            part_path = path if part_node is node else f"{path}[{i}]"
            word = self.string(part_node, part_path, 6, "cert, chain, fullchain or privkey")
            try:
                part = Part(word)
            except ValueError:
                hint = difflib.get_close_matches(word, [p.value for p in Part], n=1, cutoff=0.5)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.error(
                    part_node,
                    part_path,
                    f"unknown content '{word}': expected cert, chain, fullchain or privkey{extra}",
                ) from None
            if part in result:
                raise self.error(part_node, part_path, f"'{word}' is listed twice")
            result.append(part)
        return tuple(result)

    def account(self, node: Node, path: str, *, user: bool) -> tuple[int, str]:
        kind = "user" if user else "group"
        value = self.scalar(node, path, 5)
        if node.tag == _INT_TAG and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < 2**32 - 1:
                raise self.error(node, path, f"{kind} id {value} is out of range")
            return value, str(value)
        name = self.string(node, path, 5, f"a {kind} name or numeric id")
        try:
            if user:
                return pwd.getpwnam(name).pw_uid, name
            return grp.getgrnam(name).gr_gid, name
        except KeyError:
            hint = "create it first, or use a numeric id" if user else "create it, or use a gid"
            raise self.error(node, path, f"unknown {kind} '{name}' on this host ({hint})") from None

    def mode(self, node: Node, path: str) -> int:
        value = self.scalar(node, path, 5)
        if node.tag == _INT_TAG:
            text = str(node.value)
            example = text if _MODE_RE.match(text) else "0640"
            raise self.error(
                node,
                path,
                f'expected an octal string in quotes, such as "{example}"; unquoted, '
                f"YAML reads {text} as the number {value}",
            )
        word = self.string(node, path, 5, 'an octal string such as "0640"')
        if not _MODE_RE.match(word):
            raise self.error(
                node,
                path,
                f'expected an octal mode such as "0640" (permission bits only), got {word!r}',
            )
        return int(word, 8)

    def command(self, node: Node, path: str) -> tuple[str, ...]:
        if isinstance(node, SequenceNode):
            words = tuple(
                self.string(w, f"{path}[{i}]", 4, "a word of the command")
                for i, w in enumerate(self.sequence(node, path, 3, "a list of words"))
            )
        else:
            text = self.string(node, path, 3, "a command: a string or a list of words")
            try:
                words = tuple(shlex.split(text))
                # Split again, only to find shell operators, also those stuck to a word.
                lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                shell = [t for t in lexer if t and set(t) <= set("();<>|&")]
            except ValueError as e:
                raise self.error(node, path, f"cannot split the command into words: {e}") from None
            if shell:
                raise self.error(
                    node,
                    path,
                    f"commands run without a shell, so '{shell[0]}' would be passed as a word; "
                    "use a script, or a list such as [sh, -c, '...']",
                )
        if not words or not words[0]:
            raise self.error(node, path, "expected a command, got an empty one")
        return words

    def endpoints(self, node: Node, path: str) -> tuple[Endpoint, ...]:
        return tuple(
            self.endpoint(item, f"{path}[{i}]")
            for i, item in enumerate(self.sequence(node, path, 3, "a list of endpoints"))
        )

    def endpoint(self, node: Node, path: str) -> Endpoint:
        items = self.mapping(node, path, 4, "a mapping with 'host' and 'port'")
        self.check_keys(
            items,
            ("host", "port", "server_name", "starttls", "check_chain"),
            path,
            ("host", "port"),
            node,
        )
        starttls = None
        if "starttls" in items:
            starttls_node = items["starttls"][1]
            word = self.string(starttls_node, f"{path}.starttls", 5, "a STARTTLS protocol")
            try:
                starttls = Dialect(word)
            except ValueError:
                known = ", ".join(d.value for d in Dialect)
                hint = difflib.get_close_matches(word, [d.value for d in Dialect], n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.error(
                    starttls_node,
                    f"{path}.starttls",
                    f"unknown STARTTLS protocol '{word}': expected one of {known}{extra}",
                ) from None
        check_chain = True
        if "check_chain" in items:
            check_chain = self.boolean(items["check_chain"][1], f"{path}.check_chain", 5)
        host = self.string(items["host"][1], f"{path}.host", 5, "a host name or address")
        if not host or any(c.isspace() for c in host):
            raise self.error(items["host"][1], f"{path}.host", f"expected a host, got {host!r}")
        if "/" in host or (":" in host and not _is_ipv6(host)):
            raise self.error(
                items["host"][1],
                f"{path}.host",
                f"expected a host name or address, got {host!r}: no scheme, port or path "
                "(the port goes in 'port'; an IPv6 address goes without brackets)",
            )
        port_node = items["port"][1]
        port = self.scalar(port_node, f"{path}.port", 5)
        if port_node.tag != _INT_TAG or not isinstance(port, int) or not 0 < port < 65536:
            raise self.error(
                port_node, f"{path}.port", f"expected a port 1-65535, got {self.shown(port_node)}"
            )
        server_name = None
        if "server_name" in items:
            server_name = self.string(
                items["server_name"][1], f"{path}.server_name", 5, "a DNS name"
            )
            if not server_name or any(c.isspace() or c in "/:" for c in server_name):
                raise self.error(
                    items["server_name"][1],
                    f"{path}.server_name",
                    f"expected a DNS name (no scheme, port or path), got {server_name!r}",
                )
        return Endpoint(
            host=host,
            port=port,
            server_name=server_name,
            starttls=starttls,
            check_chain=check_chain,
        )


_NOT_SCALAR = object()


def _owned_dirs(certbot_dirs: Iterable[str]) -> tuple[str, ...]:
    """Every certbot-owned directory under each config dir, as given and resolved."""
    owned: dict[str, None] = {}
    for config_dir in certbot_dirs:
        if not config_dir:
            continue
        for base in (os.path.abspath(config_dir), os.path.realpath(config_dir)):
            for name in CERTBOT_OWNED:
                owned[os.path.join(base, name)] = None
    return tuple(owned)


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _visible(text: str) -> str:
    """``text`` with every character a terminal would hide or act on (ESC, a BOM, a lone
    surrogate) written as an escape, so an error message cannot be garbled or fail to print."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
