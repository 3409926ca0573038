"""The map's schema, version 1: YAML nodes in, the model's frozen values out.

On top of the generic reader of :mod:`certbot_fanout.yamlnode`, this module says what a map
holds: ``version``, ``defaults`` and ``consumers``; each consumer's certificate, preset, files
(their paths, content, owner, group and mode), commands (test, reload) and endpoints (verify);
and how each wrong value is refused (a field still holding a placeholder,
``"<fill in: WHAT>"``, is named as left to fill in). A preset's fields are read by the same
code as the user's, and an error in one points at the consumer's ``preset:`` line.

Reading a map looks at the host, not only at the text: users and groups are looked up by
name, and file paths are compared, as written, against Certbot's own directories (those
directories resolved, the paths not: a symlink a service user makes in its own directory must
not make the whole map invalid; a path that only resolves into them fails its consumer when a
deploy places it, see :attr:`certbot_fanout.files.Desired.keep_out`).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import yaml
from yaml.nodes import MappingNode

from certbot_fanout.errors import ConfigError, UnfinishedMap
from certbot_fanout.model import (
    DEFAULT_CERTBOT_DIR,
    DEFAULT_RELOAD_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    MAX_TIMEOUT,
    REMOTE_ID,
    Config,
    Consumer,
    Dialect,
    Encoding,
    Endpoint,
    Family,
    FileSpec,
    Host,
    Notify,
    Part,
)
from certbot_fanout.presets import CERTIFICATE_RE, PRESETS, SYNAPSE_SERVER_NAME_FILE
from certbot_fanout.schema_hosts import (
    check_receive_consumer,
    consumer_host,
    endpoint_via,
    read_hosts,
)
from certbot_fanout.schema_keystore import (
    KEYSTORE_KEYS,
    WHOLE_FILES,
    read_keystore,
    refuse_link,
    whole_file,
)
from certbot_fanout.schema_notify import read_notify
from certbot_fanout.trust import path_problem
from certbot_fanout.yamlnode import (
    INT_TAG,
    NULL_TAG,
    STR_TAG,
    Items,
    Node,
    Origin,
    Path,
    Reader,
    ScalarNode,
    SequenceNode,
    YAMLError,
    suggest,
    unfilled_fields,
)

SUPPORTED_VERSION = 1
# Certbot's own directories under its config dir: never a place for a consumer's file.
CERTBOT_OWNED = ("live", "archive", "keys", "renewal", "accounts")

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MODE_RE = re.compile(r"^0?[0-7]{3}$")

_TOP_KEYS = ("version", "defaults", "hosts", "consumers")
_DEFAULTS_KEYS = ("reload_timeout", "verify_timeout", "notify")
_CONSUMER_KEYS = (
    "certificate",
    "files",
    "test",
    "reload",
    "verify",
    "reload_timeout",
    "verify_timeout",
    "notes",
    "preset",
    "notify",
    "host",
    "container",
    "process",
)
_RUNS_IN_KEYS = {"container", "process"}
_FILE_KEYS = ("path", "content", "owner", "group", "mode", "link", "inplace", *KEYSTORE_KEYS)
_ENDPOINT_KEYS = ("host", "port", "server_name", "starttls", "check_chain", "family", "via")
_FEDERATION_KEYS = ("federation", "ca_file", "check_chain", "family")
# A Matrix server name: hostname [":" port], the hostname a DNS name, IPv4 or [IPv6].
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})$")
_PARTS = "cert, chain, fullchain or privkey"
# A consumer's field is the third step of a path: consumers.NAME.FIELD.
_FIELD_STEP = 2

K = TypeVar("K")


def read_config(
    root: Node | None, source: str, certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,)
) -> Config:
    """The map that the node graph ``root`` (None: an empty document) of ``source`` holds.

    ``certbot_dirs`` are Certbot's configuration directories: a file placed in their
    ``live/``, ``archive/``, ``keys/``, ``renewal/`` or ``accounts/`` is refused.

    Raises:
        UnfinishedMap: a field still holds a placeholder (each one is named).
        ConfigError: the document does not follow schema version 1.
    """
    if root is not None:
        unfilled = unfilled_fields(root, source)
        if unfilled:
            raise UnfinishedMap(unfilled, source)
    if root is None:
        raise ConfigError(
            "the document is empty; expected a mapping with 'version: 1' and 'consumers'", source
        )
    if isinstance(certbot_dirs, str):  # one directory given bare: not its characters
        certbot_dirs = (certbot_dirs,)
    return _MapReader(source, certbot_dirs).config(root)


class _Defaults(NamedTuple):
    """The map's ``defaults``: what a consumer that sets no timeout of its own gets."""

    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    notify: Notify | None = None


@dataclass(frozen=True)
class _Preset:
    """A preset a consumer named: what an error about one of its values adds."""

    name: str

    def note(self, path: Path) -> str:
        field = path.key(_FIELD_STEP) or "it"
        return f" (from preset {self.name}: install that service first, or set '{field}' yourself)"


class _MapReader(Reader):
    """Reads one map: the nodes it counts, and the file paths placed so far."""

    def __init__(self, source: str, certbot_dirs: Sequence[str]) -> None:
        super().__init__(source)
        self.owned = _owned_dirs(certbot_dirs)
        # A placed file's host (None: this one) and path -> the entry that places it.
        self.paths: dict[tuple[str | None, str], str] = {}
        self.hosts: dict[str, Host] = {}
        self.remote: str | None = None  # the host of the consumer being read

    # -- the top level --------------------------------------------------------------------

    def config(self, root: Node) -> Config:
        top = self.mapping(root, Path(), "a mapping with 'version: 1' and 'consumers'")
        self.check_keys(top, _TOP_KEYS, Path(), ("version",), root)
        self.version(top["version"][1])
        defaults = self.defaults(top["defaults"][1]) if "defaults" in top else _Defaults()
        hosts = read_hosts(self, top["hosts"][1]) if "hosts" in top else ()
        self.hosts = {h.name: h for h in hosts}
        consumers: list[Consumer] = []
        if "consumers" in top:
            consumers = self.consumers(top["consumers"][1], defaults)
        return Config(source=self.source, consumers=tuple(consumers), hosts=hosts)

    def version(self, node: Node) -> None:
        path = Path() / "version"
        version = self.scalar(node, path)
        if node.tag == STR_TAG and version == str(SUPPORTED_VERSION):
            raise self.error(
                node,
                path,
                f"expected the number {SUPPORTED_VERSION}, got the string {version!r}; "
                f"write `version: {SUPPORTED_VERSION}` without quotes",
            )
        if node.tag != INT_TAG or version != SUPPORTED_VERSION:
            raise self.error(
                node,
                path,
                f"unsupported config version {self.shown(node)}; "
                f"this certbot-fanout reads version {SUPPORTED_VERSION}",
            )

    def defaults(self, node: Node) -> _Defaults:
        path = Path() / "defaults"
        items = self.mapping(node, path, "a mapping")
        self.check_keys(items, _DEFAULTS_KEYS, path)
        reload_timeout, verify_timeout = DEFAULT_RELOAD_TIMEOUT, DEFAULT_VERIFY_TIMEOUT
        if "reload_timeout" in items:
            reload_timeout = self.timeout(items["reload_timeout"][1], path / "reload_timeout")
        if "verify_timeout" in items:
            verify_timeout = self.timeout(items["verify_timeout"][1], path / "verify_timeout")
        notify = self.notify(items["notify"][1], path / "notify") if "notify" in items else None
        return _Defaults(reload_timeout, verify_timeout, notify)

    def consumers(self, node: Node, defaults: _Defaults) -> list[Consumer]:
        if isinstance(node, ScalarNode) and node.tag == NULL_TAG:
            return []
        path = Path() / "consumers"
        items = self.mapping(node, path, "a mapping of consumer names to consumers")
        consumers: list[Consumer] = []
        for name, (key_node, value_node) in items.items():
            if not _NAME_RE.match(name):
                raise self.error(
                    key_node,
                    path / name,
                    f"consumer name '{name}' may hold only letters, digits, . _ and -",
                )
            consumers.append(self.consumer(name, value_node, path / name, defaults))
        return consumers

    # -- a consumer -----------------------------------------------------------------------

    def consumer(self, name: str, node: Node, path: Path, defaults: _Defaults) -> Consumer:
        items = self.mapping(node, path, "a mapping describing the consumer")
        self.check_keys(items, _CONSUMER_KEYS, path, ("certificate",), node)
        certificate = self.certificate(items["certificate"][1], path / "certificate")
        self.remote = None
        if "host" in items:
            self.remote = consumer_host(self, self.hosts, items["host"][1], path / "host")
            if self.hosts[self.remote].mode == "receive":
                check_receive_consumer(self, self.hosts[self.remote], items, path)
        if "preset" in items:
            for key, pair in self.preset(items["preset"][1], path / "preset", certificate):
                items.setdefault(key, pair)

        def opt(key: str, read: Callable[[Node, Path], K], default: K) -> K:
            return read(items[key][1], path / key) if key in items else default

        no_files: tuple[FileSpec, ...] = ()
        no_endpoints: tuple[Endpoint, ...] = ()
        files = opt("files", self.files, no_files)
        verify = opt("verify", self.endpoints, no_endpoints)
        return Consumer(
            name=name,
            certificate=certificate,
            files=files,
            test=opt("test", self.command, None),
            verify=verify,
            reload_timeout=opt("reload_timeout", self.timeout, defaults.reload_timeout),
            verify_timeout=opt("verify_timeout", self.timeout, defaults.verify_timeout),
            notes=opt("notes", self.string, "").strip(),
            notify=opt("notify", self.notify, defaults.notify),
            host=self.remote,
            **self.runs_in(items, path),
        )

    def runs_in(self, items: Items, path: Path) -> dict[str, Any]:
        """``reload`` (a command), or the fields of a consumer in a container or with a process
        (schema_containers, imported only for such a consumer)."""
        reload = items.get("reload")
        if not _RUNS_IN_KEYS & items.keys() and not isinstance(reload and reload[1], MappingNode):
            return {} if reload is None else {"reload": self.command(reload[1], path / "reload")}
        from certbot_fanout.schema_containers import read_runs_in

        return read_runs_in(self, items, path, self.remote, self.command)

    def certificate(self, node: Node, path: Path) -> str:
        certificate = self.string(node, path, "a certbot lineage name")
        if not certificate or "/" in certificate or certificate in (".", ".."):
            raise self.error(
                node,
                path,
                f"expected a lineage name (a directory under live/), got {certificate!r}",
            )
        return certificate

    def timeout(self, node: Node, path: Path) -> float:
        return self.number(node, path, 0, MAX_TIMEOUT, "a number of seconds")

    def preset(
        self, node: Node, path: Path, certificate: str
    ) -> Iterable[tuple[str, tuple[Node, Node]]]:
        """The fields of a preset, as YAML nodes, for the consumer to take where it has none."""
        name = self.string(node, path, "a preset name")
        preset = PRESETS.get(name)
        if preset is None:
            hint = suggest(name, PRESETS)
            extra = f"{hint} " if hint else ""
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
        origin = Origin(node=node, note=_Preset(name).note)
        # Synapse's server name is read from this host's config: not one on another host.
        server_name = synapse_server_name() if preset.federation and not self.remote else None
        try:
            text = preset.expand(certificate, server_name)
            root = self.include(text, f"<preset {name}>", origin)
        except YAMLError as e:  # a preset that the name still broke: never a crash
            raise self.error(node, path, f"preset {name} does not expand: {e}") from None
        assert root is not None, f"preset {name} is empty"
        return self.mapping(root, path, "a preset").items()

    # -- files ----------------------------------------------------------------------------

    def files(self, node: Node, path: Path) -> tuple[FileSpec, ...]:
        return tuple(
            self.file(item, path / i)
            for i, item in enumerate(self.sequence(node, path, "a list of files"))
        )

    def file(self, node: Node, path: Path) -> FileSpec:
        items = self.mapping(node, path, "a mapping with 'path' and 'content'")
        self.check_keys(items, _FILE_KEYS, path, ("path", "content"), node)
        file_path = self.file_path(items["path"][1], path / "path")
        self.paths[(self.remote, file_path)] = str(path)

        whole = whole_file(self, items["content"][1], path / "content")
        encoding, content = whole or (
            Encoding.PEM,
            self.content(items["content"][1], path / "content"),
        )
        link = self.boolean(items["link"][1], path / "link") if "link" in items else False
        if link and self.remote:
            raise self.error(
                items["link"][1],
                path / "link",
                f"a consumer on host {self.remote} cannot link into live/: the lineage is on "
                "this host; place a copy (drop 'link')",
            )
        if link:
            refuse_link(self, items, path, encoding)
            self.check_link(items, path, content)
        keystore = read_keystore(self, items, path, encoding)
        inplace = False
        if "inplace" in items:
            from certbot_fanout.schema_containers import read_inplace  # rare: not on every run

            inplace = read_inplace(self, items, path, self.remote, link)
        owner, owner_name = self.account(items, path, user=True)
        group, group_name = self.account(items, path, user=False)
        mode = 0o600 if Part.PRIVKEY in content else 0o644
        if "mode" in items:
            mode = self.mode(items["mode"][1], path / "mode")
        return FileSpec(
            path=file_path,
            content=content,
            owner=owner,
            group=group,
            mode=mode,
            link=link,
            owner_name=owner_name,
            group_name=group_name,
            encoding=encoding,
            keystore=keystore,
            inplace=inplace,
        )

    def file_path(self, node: Node, path: Path) -> str:
        """An absolute, plain path outside Certbot's directories, placed by no other entry."""
        file_path = self.string(node, path, "an absolute path")
        if not os.path.isabs(file_path):
            raise self.error(node, path, f"expected an absolute path, got {file_path!r}")
        components = file_path.split("/")
        if file_path.endswith("/") or "." in components or ".." in components or "//" in file_path:
            raise self.error(node, path, f"expected a plain path to a file, got {file_path!r}")
        owner_dir = self.certbot_owned(file_path)
        if owner_dir:
            raise self.error(
                node,
                path,
                f"{file_path} is inside {owner_dir}: certbot owns {owner_dir} and rewrites "
                "it on every renewal; certbot-fanout must not write there (place the copy "
                "elsewhere, or use link: true for a symlink into live/)",
            )
        if (self.remote, file_path) in self.paths:
            raise self.error(
                node,
                path,
                f"{file_path} is already placed by {self.paths[(self.remote, file_path)]}; "
                "each path may be placed by one entry only",
            )
        return file_path

    def certbot_owned(self, file_path: str) -> str | None:
        """The certbot-owned directory that holds (or is) ``file_path``, if any.

        Compared as written (the path is already plain, so lexically normal) with certbot's
        directories as given and resolved: a symlinked config dir does not hide the place.
        Symlinks on the path itself are not resolved here: anyone who can write a directory
        on it could then stop every consumer's deploy; placing the file checks where it
        really is (see the module's doc).
        """
        for owned in self.owned:
            if file_path == owned or file_path.startswith(owned + "/"):
                return owned
        return None

    def check_link(self, items: Items, path: Path, content: tuple[Part, ...]) -> None:
        """A symlink points at one file of live/ and has no mode of its own."""
        if len(content) != 1:
            raise self.error(
                items["content"][1],
                path / "content",
                "a link points at one file of live/: expected one of "
                "cert, chain, fullchain, privkey, not a list",
            )
        if "mode" in items:
            raise self.error(
                items["mode"][0],
                path / "mode",
                "a symlink has no mode of its own; drop 'mode' or 'link'",
            )

    def content(self, node: Node, path: Path) -> tuple[Part, ...]:
        parts = (
            [node]
            if isinstance(node, ScalarNode)
            else self.sequence(node, path, "a content part or a list of them")
        )
        if not parts:
            raise self.error(node, path, "expected at least one content part")
        result: list[Part] = []
        for i, part_node in enumerate(parts):
            part_path = path if part_node is node else path / i
            part = self.part(part_node, part_path)
            if part in result:
                raise self.error(part_node, part_path, f"'{part.value}' is listed twice")
            result.append(part)
        return tuple(result)

    def part(self, node: Node, path: Path) -> Part:
        word = self.string(node, path, _PARTS)
        try:
            return Part(word)
        except ValueError:
            hint = suggest(word, [*(p.value for p in Part), *WHOLE_FILES], cutoff=0.5)
            extra = f"; {hint}" if hint else ""
            raise self.error(
                node,
                path,
                f"unknown content '{word}': expected {_PARTS}{extra} "
                "(or, as a whole file alone, pkcs12 or der)",
            ) from None

    def account(self, items: Items, path: Path, *, user: bool) -> tuple[int, str]:
        """The file's ``owner`` (``user``) or ``group``, as id and name: root if not set."""
        kind = "user" if user else "group"
        key = "owner" if user else "group"
        if key not in items:
            return 0, "root"
        node, path = items[key][1], path / key
        value = self.scalar(node, path)
        if node.tag == INT_TAG and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < 2**32 - 1:
                raise self.error(node, path, f"{kind} id {value} is out of range")
            return value, str(value)
        name = self.string(node, path, f"a {kind} name or numeric id")
        if self.remote:
            return REMOTE_ID, name  # resolved on that host, before anything is placed there
        try:
            if user:
                return pwd.getpwnam(name).pw_uid, name
            return grp.getgrnam(name).gr_gid, name
        except KeyError:
            hint = "create it first, or use a numeric id" if user else "create it, or use a gid"
            raise self.error(node, path, f"unknown {kind} '{name}' on this host ({hint})") from None

    def mode(self, node: Node, path: Path) -> int:
        value = self.scalar(node, path)
        if node.tag == INT_TAG:
            text = str(node.value)
            example = text if _MODE_RE.match(text) else "0640"
            raise self.error(
                node,
                path,
                f'expected an octal string in quotes, such as "{example}"; unquoted, '
                f"YAML reads {text} as the number {value}",
            )
        word = self.string(node, path, 'an octal string such as "0640"')
        if not _MODE_RE.match(word):
            raise self.error(
                node,
                path,
                f'expected an octal mode such as "0640" (permission bits only), got {word!r}',
            )
        return int(word, 8)

    # -- commands -------------------------------------------------------------------------

    def command(self, node: Node, path: Path) -> tuple[str, ...]:
        """A command as a list of words, or as a string split like a shell would (but
        refused if it holds a shell operator: commands run without a shell)."""
        if isinstance(node, SequenceNode):
            words = tuple(
                self.string(w, path / i, "a word of the command")
                for i, w in enumerate(self.sequence(node, path, "a list of words"))
            )
        else:
            words = self.command_line(node, path)
        if not words or not words[0]:
            raise self.error(node, path, "expected a command, got an empty one")
        return words

    def command_line(self, node: Node, path: Path) -> tuple[str, ...]:
        text = self.string(node, path, "a command: a string or a list of words")
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
        return words

    # -- endpoints ------------------------------------------------------------------------

    def endpoints(self, node: Node, path: Path) -> tuple[Endpoint, ...]:
        return tuple(
            self.endpoint(item, path / i)
            for i, item in enumerate(self.sequence(node, path, "a list of endpoints"))
        )

    def endpoint(self, node: Node, path: Path) -> Endpoint:
        items = self.mapping(node, path, "a mapping with 'host' and 'port', or 'federation'")
        if "federation" in items:
            return self.federation_endpoint(items, node, path)
        self.check_keys(items, _ENDPOINT_KEYS, path, ("host", "port"), node)
        starttls = None
        if "starttls" in items:
            starttls = self.starttls(items["starttls"][1], path / "starttls")
        server_name = None
        if "server_name" in items:
            server_name = self.server_name(items["server_name"][1], path / "server_name")
        return Endpoint(
            host=self.host(items["host"][1], path / "host"),
            port=self.port(items["port"][1], path / "port"),
            server_name=server_name,
            starttls=starttls,
            check_chain=self.check_chain(items, path),
            family=self.family(items, path),
            via_host=endpoint_via(
                self, self.hosts[self.remote] if self.remote else None, items, path
            ),
        )

    def federation_endpoint(self, items: Items, node: Node, path: Path) -> Endpoint:
        """``{federation: NAME}``: the endpoints Matrix federation peers find for NAME."""
        self.check_keys(items, _FEDERATION_KEYS, path, (), node)
        name_node = items["federation"][1]
        name = self.string(name_node, path / "federation", "a Matrix server name")
        if not _matrix_server_name(name):
            raise self.error(
                name_node,
                path / "federation",
                f"expected a Matrix server name (a DNS name or address, optionally with "
                f":PORT; no scheme or path), got {name!r}",
            )
        ca_file = None
        if "ca_file" in items:
            ca_node = items["ca_file"][1]
            ca_file = self.string(ca_node, path / "ca_file", "an absolute path")
            if not os.path.isabs(ca_file):
                raise self.error(
                    ca_node, path / "ca_file", f"expected an absolute path, got {ca_file!r}"
                )
        return Endpoint(
            host=name,
            port=0,
            check_chain=self.check_chain(items, path),
            family=self.family(items, path),
            federation=name,
            ca_file=ca_file,
        )

    def check_chain(self, items: Items, path: Path) -> bool:
        if "check_chain" not in items:
            return True
        return self.boolean(items["check_chain"][1], path / "check_chain")

    def family(self, items: Items, path: Path) -> Family | None:
        """``family: ipv4|ipv6``: only that family's addresses; absent: every address."""
        if "family" not in items:
            return None
        node = items["family"][1]
        word = self.string(node, path / "family", "ipv4 or ipv6")
        try:
            return Family(word)
        except ValueError:
            raise self.error(
                node,
                path / "family",
                f"expected ipv4 or ipv6, got {word!r} (leave 'family' out to check every "
                "address the host has)",
            ) from None

    def starttls(self, node: Node, path: Path) -> Dialect:
        word = self.string(node, path, "a STARTTLS protocol")
        try:
            return Dialect(word)
        except ValueError:
            known = ", ".join(d.value for d in Dialect)
            hint = suggest(word, (d.value for d in Dialect))
            extra = f"; {hint}" if hint else ""
            raise self.error(
                node,
                path,
                f"unknown STARTTLS protocol '{word}': expected one of {known}{extra}",
            ) from None

    def host(self, node: Node, path: Path) -> str:
        host = self.string(node, path, "a host name or address")
        if not host or any(c.isspace() for c in host):
            raise self.error(node, path, f"expected a host, got {host!r}")
        if "/" in host or (":" in host and not _is_ipv6(host)):
            raise self.error(
                node,
                path,
                f"expected a host name or address, got {host!r}: no scheme, port or path "
                "(the port goes in 'port'; an IPv6 address goes without brackets)",
            )
        return host

    def port(self, node: Node, path: Path) -> int:
        port = self.scalar(node, path)
        if node.tag != INT_TAG or not isinstance(port, int) or not 0 < port < 65536:
            raise self.error(node, path, f"expected a port 1-65535, got {self.shown(node)}")
        return port

    def server_name(self, node: Node, path: Path) -> str:
        server_name = self.string(node, path, "a DNS name")
        if not server_name or any(c.isspace() or c in "/:" for c in server_name):
            raise self.error(
                node,
                path,
                f"expected a DNS name (no scheme, port or path), got {server_name!r}",
            )
        return server_name

    # -- notify ---------------------------------------------------------------------------

    def notify(self, node: Node, path: Path) -> Notify:
        """``notify:`` (see :mod:`certbot_fanout.schema_notify`)."""
        return read_notify(self, node, path, self.command)


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


# Synapse's server_name file is a line of YAML; more than this is not that file.
_SERVER_NAME_FILE_BYTES = 64 * 1024


def synapse_server_name(path: str = SYNAPSE_SERVER_NAME_FILE) -> str | None:
    """The Matrix server name Debian's matrix-synapse package was configured with: when the
    file is there, only root could have written it, and its ``server_name`` is a valid one."""
    if path_problem(path, 0) is not None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(_SERVER_NAME_FILE_BYTES + 1)
        if len(data) > _SERVER_NAME_FILE_BYTES:
            return None
        document = yaml.safe_load(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    value = document.get("server_name") if isinstance(document, dict) else None
    return value if isinstance(value, str) and _matrix_server_name(value) else None


def _matrix_server_name(name: str) -> bool:
    """Whether ``name`` is ``hostname [":" port]`` as the Matrix specification defines it."""
    host, port = name, ""
    if name.startswith("["):
        host, sep, rest = name[1:].partition("]")
        if not sep or not _is_ipv6(host) or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else ""
        if rest and not port:
            return False
    elif ":" in name:
        host, port = name.rsplit(":", 1)
        if not port:
            return False
    if port and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        return False
    return name.startswith("[") or bool(_DNS_NAME_RE.match(host))


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
