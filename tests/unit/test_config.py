"""The consumer map: every rejection names file:line:column, the key path and what was expected."""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from certbot_fanout._pki import ThrowawayCA, write_lineage
from certbot_fanout.cli import main
from certbot_fanout.config import (
    MAX_CONFIG_BYTES,
    default_config_path,
    load_config,
    parse_config,
)
from certbot_fanout.errors import ConfigError
from certbot_fanout.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    Config,
    Consumer,
    Dialect,
    Endpoint,
    FileSpec,
    Part,
)
from certbot_fanout.presets import PRESETS, Preset
from certbot_fanout.yamlnode import MAX_NODES

WriteConfig = Callable[[str], Path]
SOURCE = "consumers.yaml"
MISSING_USER = "cf-no-such-user"
MISSING_GROUP = "cf-no-such-group"


# -- helpers ------------------------------------------------------------------------------


def _y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _pos(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based line and column of the nth occurrence of ``needle`` in ``text``."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def _after(text: str, prefix: str) -> tuple[int, int]:
    """1-based line and column just after the first ``prefix`` (where its value starts)."""
    line, column = _pos(text, prefix)
    return line, column + len(prefix)


def _reject(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    return info.value


def _assert_error(
    error: ConfigError,
    at: tuple[int, int],
    key_path: str,
    *words: str,
) -> None:
    assert (error.line, error.column) == at, str(error)
    assert error.key_path == key_path, str(error)
    assert error.source == SOURCE
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"
    # The rendered form carries everything a sysadmin needs on one line.
    rendered = str(error)
    assert rendered.startswith(f"{SOURCE}:{at[0]}:{at[1]}: ")
    if key_path:
        assert f": {key_path}: " in rendered


def _with_file(entry: str) -> str:
    """A document whose only file entry (line 6) is ``entry``."""
    return _y(
        f"""
        version: 1
        consumers:
          web:
            certificate: example.org
            files:
              - {entry}
        """
    )


def _with_consumer_key(line: str) -> str:
    """A document whose consumer ``web`` has one more key (line 5)."""
    return _y(
        f"""
        version: 1
        consumers:
          web:
            certificate: example.org
            {line}
        """
    )


def _with_endpoint(entry: str) -> str:
    return _with_consumer_key(f"verify: [{entry}]")


def _only(config: Config) -> Consumer:
    assert len(config.consumers) == 1
    return config.consumers[0]


class _Runaway(Exception):
    pass


def _parse_quickly(text: str, limit: float = 5.0) -> ConfigError:
    """Parse ``text`` expecting a ConfigError; give up (fail) after ``limit`` seconds."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Runaway

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        parse_config(text, SOURCE)
    except ConfigError as e:
        return e
    except _Runaway:
        pytest.fail(f"parse_config was still working after {limit} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pytest.fail("parse_config accepted the document")


# -- the full example -------------------------------------------------------------------

# The full map example, with accounts that exist on Debian (www-data, nogroup), defaults that
# differ from the built-in ones, a list command, a quoted string command, and without the
# `starttls` line, which this version rejects (tested below).
FULL_EXAMPLE = _y(
    """
    version: 1
    defaults:
      reload_timeout: 30
      verify_timeout: 45
    consumers:
      synapse:
        certificate: matrix.example.org
        files:
          - path: /etc/matrix-synapse/tls/fullchain.pem
            content: fullchain
            owner: www-data
            group: www-data
            mode: "0644"
          - path: /etc/matrix-synapse/tls/privkey.pem
            content: privkey
            owner: www-data
            mode: "0600"
          - path: /etc/ssl/synapse-live.pem
            content: fullchain
            link: true
        reload: systemctl reload matrix-synapse
        verify:
          - host: 127.0.0.1
            port: 8448
            server_name: matrix.example.org
        verify_timeout: 90
        notes: |
          Synapse terminates TLS itself on 8448; nginx handles 443.
      nginx:
        certificate: matrix.example.org
        files:
          - {path: /etc/nginx/tls/matrix.pem, content: fullchain}
          - {path: /etc/nginx/tls/matrix.key, content: privkey, group: nogroup}
        test: nginx -t
        reload: nginx -s reload
        verify:
          - {host: 127.0.0.1, port: 443}
        reload_timeout: 5
      postfix:
        certificate: mail.example.org
        files:
          - {path: /etc/postfix/tls/mail.pem, content: [privkey, fullchain], owner: 0, group: 65534}
        test: [postfix, check]
        reload: sh -c 'postfix reload && echo "reloaded ok"'
        verify:
          - host: 127.0.0.1
            port: 25
    """
)


def test_full_example_loads_into_frozen_dataclasses() -> None:
    config = parse_config(FULL_EXAMPLE, SOURCE)
    assert config.source == SOURCE
    synapse, nginx, postfix = config.consumers
    assert synapse == Consumer(
        name="synapse",
        certificate="matrix.example.org",
        files=(
            FileSpec(
                path="/etc/matrix-synapse/tls/fullchain.pem",
                content=(Part.FULLCHAIN,),
                owner=33,
                group=33,
                mode=0o644,
                owner_name="www-data",
                group_name="www-data",
            ),
            FileSpec(
                path="/etc/matrix-synapse/tls/privkey.pem",
                content=(Part.PRIVKEY,),
                owner=33,
                group=0,
                mode=0o600,
                owner_name="www-data",
                group_name="root",
            ),
            FileSpec(
                path="/etc/ssl/synapse-live.pem",
                content=(Part.FULLCHAIN,),
                owner=0,
                group=0,
                mode=0o644,
                link=True,
            ),
        ),
        reload=("systemctl", "reload", "matrix-synapse"),
        verify=(Endpoint("127.0.0.1", 8448, "matrix.example.org"),),
        reload_timeout=30.0,
        verify_timeout=90.0,
        notes="Synapse terminates TLS itself on 8448; nginx handles 443.",
    )
    assert nginx == Consumer(
        name="nginx",
        certificate="matrix.example.org",
        files=(
            FileSpec("/etc/nginx/tls/matrix.pem", (Part.FULLCHAIN,), 0, 0, 0o644),
            FileSpec(
                "/etc/nginx/tls/matrix.key",
                (Part.PRIVKEY,),
                0,
                65534,
                0o600,
                group_name="nogroup",
            ),
        ),
        test=("nginx", "-t"),
        reload=("nginx", "-s", "reload"),
        verify=(Endpoint("127.0.0.1", 443),),
        reload_timeout=5.0,
        verify_timeout=45.0,
    )
    assert postfix == Consumer(
        name="postfix",
        certificate="mail.example.org",
        files=(
            FileSpec(
                "/etc/postfix/tls/mail.pem",
                (Part.PRIVKEY, Part.FULLCHAIN),
                0,
                65534,
                0o600,
                owner_name="0",
                group_name="65534",
            ),
        ),
        test=("postfix", "check"),
        reload=("sh", "-c", 'postfix reload && echo "reloaded ok"'),
        verify=(Endpoint("127.0.0.1", 25),),
        reload_timeout=30.0,
        verify_timeout=45.0,
    )
    assert postfix.files[0].holds_key
    assert not nginx.files[0].holds_key
    assert nginx.verify[0].label == "127.0.0.1:443"
    assert config.consumers_for("matrix.example.org") == (synapse, nginx)
    assert config.certificates == ("matrix.example.org", "mail.example.org")
    with pytest.raises(AttributeError):
        synapse.name = "other"  # type: ignore[misc]


def test_load_config_reads_a_file(write_config: WriteConfig) -> None:
    path = write_config(FULL_EXAMPLE)
    config = load_config(str(path))
    assert config.source == str(path)
    assert [c.name for c in config.consumers] == ["synapse", "nginx", "postfix"]


def test_builtin_defaults_apply_without_a_defaults_section() -> None:
    consumer = _only(parse_config(_with_consumer_key("notes: '  spaced  '")))
    assert consumer == Consumer("web", "example.org", notes="spaced")
    assert (consumer.reload_timeout, consumer.verify_timeout) == (60.0, 60.0)
    assert consumer.test is None
    assert consumer.reload is None


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        ("cert", 0o644),
        ("chain", 0o644),
        ("fullchain", 0o644),
        ("privkey", 0o600),
        ("[fullchain, privkey]", 0o600),
        ("[cert, chain]", 0o644),
    ],
)
def test_default_mode_depends_on_the_key(content: str, mode: int) -> None:
    spec = _only(parse_config(_with_file(f"{{path: /srv/a.pem, content: {content}}}"))).files[0]
    assert spec.mode == mode
    assert (spec.owner, spec.group, spec.owner_name, spec.group_name) == (0, 0, "root", "root")


@pytest.mark.parametrize(
    ("written", "mode"), [('"0640"', 0o640), ('"600"', 0o600), ("'0400'", 0o400), ('"0000"', 0)]
)
def test_quoted_octal_modes(written: str, mode: int) -> None:
    spec = _only(parse_config(_with_file(f"{{path: /a, content: cert, mode: {written}}}"))).files[0]
    assert spec.mode == mode


def test_merge_keys_supply_shared_settings() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web: &base
            certificate: example.org
            reload: nginx -s reload
            verify_timeout: 10
          api:
            <<: *base
            verify_timeout: 20
            files:
              - &keyfile {path: /srv/api/key.pem, content: privkey, owner: www-data}
              - {<<: *keyfile, path: /srv/api/key2.pem, mode: "0640"}
          mail:
            <<: [{reload: postfix reload}, *base]
        """
    )
    web, api, mail = parse_config(text).consumers
    assert api.certificate == "example.org"
    assert api.reload == ("nginx", "-s", "reload")
    assert api.verify_timeout == 20.0  # an explicit key beats a merged one
    assert web.verify_timeout == 10.0
    assert [(f.path, f.owner, f.mode) for f in api.files] == [
        ("/srv/api/key.pem", 33, 0o600),
        ("/srv/api/key2.pem", 33, 0o640),
    ]
    assert mail.reload == ("postfix", "reload")  # the first merged mapping wins
    assert mail.verify_timeout == 10.0


@pytest.mark.parametrize(
    "text",
    ["version: 1\n", "version: 1\nconsumers:\n", "version: 1\nconsumers: {}\n", "version: 1 # x"],
)
def test_no_consumers_is_valid(text: str) -> None:
    config = parse_config(text)
    assert config.consumers == ()
    assert config.consumers_for("example.org") == ()


def test_numeric_ids_are_accepted_even_without_an_account() -> None:
    spec = _only(
        parse_config(_with_file("{path: /a, content: cert, owner: 4242, group: 4343}"))
    ).files[0]
    assert (spec.owner, spec.group, spec.owner_name, spec.group_name) == (
        4242,
        4343,
        "4242",
        "4343",
    )


def test_named_accounts_resolve_to_ids() -> None:
    spec = _only(
        parse_config(_with_file("{path: /a, content: cert, owner: nobody, group: www-data}"))
    ).files[0]
    assert (spec.owner, spec.group, spec.owner_name, spec.group_name) == (
        65534,
        33,
        "nobody",
        "www-data",
    )


def test_endpoint_server_name_and_ipv6_label() -> None:
    consumer = _only(
        parse_config(_with_endpoint("{host: '::1', port: 8443, server_name: www.example.org}"))
    )
    assert consumer.verify == (Endpoint("::1", 8443, "www.example.org"),)
    assert consumer.verify[0].label == "[::1]:8443"


@pytest.mark.parametrize(
    ("written", "words"),
    [
        ("nginx -s reload", ("nginx", "-s", "reload")),
        ("  nginx   -s reload  ", ("nginx", "-s", "reload")),
        ("/usr/bin/env 'a b' \"c d\" e\\ f", ("/usr/bin/env", "a b", "c d", "e f")),
        ("sh -c 'nginx -t && nginx -s reload'", ("sh", "-c", "nginx -t && nginx -s reload")),
        ("[nginx, -s, reload]", ("nginx", "-s", "reload")),
        ("[sh, -c, 'a && b | c']", ("sh", "-c", "a && b | c")),  # a list is argv as written
        ("['&&']", ("&&",)),
    ],
)
def test_commands_split_like_a_shell_and_lists_are_kept(
    written: str, words: tuple[str, ...]
) -> None:
    assert _only(parse_config(_with_consumer_key(f"reload: {written}"))).reload == words
    assert _only(parse_config(_with_consumer_key(f"test: {written}"))).test == words


def test_default_config_path_honours_the_environment() -> None:
    assert default_config_path({CONFIG_ENV: "/srv/fanout.yaml"}) == "/srv/fanout.yaml"
    assert default_config_path({CONFIG_ENV: ""}) == DEFAULT_CONFIG_PATH
    assert default_config_path({}) == DEFAULT_CONFIG_PATH
    assert DEFAULT_CONFIG_PATH == "/etc/certbot-fanout/consumers.yaml"


def test_default_config_path_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "/tmp/from-env.yaml")
    assert default_config_path() == "/tmp/from-env.yaml"
    monkeypatch.delenv(CONFIG_ENV)
    assert default_config_path() == DEFAULT_CONFIG_PATH


# -- unknown and duplicate keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle", "key_path", "suggestion"),
    [
        ("version: 1\nconsumer: {}\n", "consumer", "consumer", "consumers"),
        ("version: 1\ndefault:\n  reload_timeout: 5\n", "default", "default", "defaults"),
        (
            "version: 1\ndefaults:\n  reload_timout: 5\n",
            "reload_timout",
            "defaults.reload_timout",
            "reload_timeout",
        ),
        (
            "version: 1\nconsumers:\n  web:\n    certificat: example.org\n",
            "certificat",
            "consumers.web.certificat",
            "certificate",
        ),
        (
            _with_consumer_key("verfy: []"),
            "verfy",
            "consumers.web.verfy",
            "verify",
        ),
        (
            _with_file("{path: /a, content: cert, onwer: root}"),
            "onwer",
            "consumers.web.files[0].onwer",
            "owner",
        ),
        (
            _with_file("{path: /a, contents: cert}"),
            "contents",
            "consumers.web.files[0].contents",
            "content",
        ),
        (
            _with_endpoint("{host: h, port: 443, server-name: x}"),
            "server-name",
            "consumers.web.verify[0].server-name",
            "server_name",
        ),
        (
            _with_endpoint("{hots: h, port: 443}"),
            "hots",
            "consumers.web.verify[0].hots",
            "host",
        ),
    ],
)
def test_unknown_key_with_a_suggestion(
    text: str, needle: str, key_path: str, suggestion: str
) -> None:
    error = _reject(text)
    unknown = key_path.rsplit(".", 1)[-1]
    _assert_error(
        error,
        _pos(text, needle),
        key_path,
        f"unknown key '{unknown}'",
        f"did you mean '{suggestion}'?",
    )


@pytest.mark.parametrize(
    ("text", "key_path", "known"),
    [
        ("version: 1\nzzz: 1\n", "zzz", "version, defaults, hosts, consumers"),
        ("version: 1\ndefaults: {zzz: 1}\n", "defaults.zzz", "reload_timeout, verify_timeout"),
        (_with_consumer_key("zzz: 1"), "consumers.web.zzz", "certificate, files, test, reload"),
        (_with_file("{path: /a, content: cert, zzz: 1}"), "consumers.web.files[0].zzz", "mode"),
        (_with_endpoint("{host: h, port: 1, zzz: 1}"), "consumers.web.verify[0].zzz", "host"),
    ],
)
def test_unknown_key_without_a_near_miss_lists_known_keys(
    text: str, key_path: str, known: str
) -> None:
    error = _reject(text)
    _assert_error(error, _pos(text, "zzz"), key_path, "unknown key 'zzz'", "known keys:", known)
    assert "did you mean" not in error.message


def test_duplicate_top_level_key_names_the_first_line() -> None:
    text = "version: 1\nconsumers: {}\nversion: 1\n"
    _assert_error(
        _reject(text),
        (3, 1),
        "version",
        "duplicate key 'version'",
        "first set on line 1",
    )


def test_duplicate_key_in_a_file_entry() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web:
            certificate: example.org
            files:
              - path: /srv/a.pem
                content: cert
                mode: "0644"
                owner: root
                mode: "0600"
        """
    )
    _assert_error(
        _reject(text),
        _pos(text, "mode", 2),
        "consumers.web.files[0].mode",
        "duplicate key 'mode'",
        "first set on line 8",
    )


def test_duplicate_consumer_name() -> None:
    text = "version: 1\nconsumers:\n  web: {certificate: a}\n  api: {certificate: b}\n"
    text += "  web: {certificate: c}\n"
    _assert_error(
        _reject(text), (5, 3), "consumers.web", "duplicate key 'web'", "first set on line 3"
    )


@pytest.mark.parametrize("key", ["1", "[a]", "null", "true"])
def test_keys_must_be_strings(key: str) -> None:
    text = f"version: 1\nconsumers:\n  ? {key}\n  : {{certificate: a}}\n"
    _assert_error(_reject(text), (3, 5), "consumers", "keys must be strings")


# -- required keys and the version ----------------------------------------------------------


def test_missing_version() -> None:
    _assert_error(_reject("consumers: {}\n"), (1, 1), "", "missing required key 'version'")


def test_missing_certificate_points_at_the_consumer() -> None:
    text = "version: 1\nconsumers:\n  web:\n    reload: nginx -s reload\n"
    _assert_error(_reject(text), (4, 5), "consumers.web", "missing required key 'certificate'")


@pytest.mark.parametrize(
    ("entry", "missing"),
    [("{content: cert}", "path"), ("{path: /a}", "content")],
)
def test_missing_file_keys(entry: str, missing: str) -> None:
    text = _with_file(entry)
    _assert_error(
        _reject(text), (6, 9), "consumers.web.files[0]", f"missing required key '{missing}'"
    )


@pytest.mark.parametrize(("entry", "missing"), [("{host: h}", "port"), ("{port: 1}", "host")])
def test_missing_endpoint_keys(entry: str, missing: str) -> None:
    text = _with_endpoint(entry)
    _assert_error(
        _reject(text),
        _pos(text, entry),
        "consumers.web.verify[0]",
        f"missing required key '{missing}'",
    )


@pytest.mark.parametrize("version", ["2", "0", "1.0", "true", "[1]", "'one'", "null"])
def test_unsupported_version(version: str) -> None:
    text = f"version: {version}\nconsumers: {{}}\n"
    error = _reject(text)
    _assert_error(error, (1, 10), "version", "reads version 1")


def test_version_2_says_which_version_is_supported() -> None:
    _assert_error(
        _reject("version: 2\n"),
        (1, 10),
        "version",
        "unsupported config version",
        "2",
        "this certbot-fanout reads version 1",
    )


def test_version_as_a_string_says_it_is_a_string() -> None:
    # "unsupported config version '1'; this certbot-fanout reads version 1" leaves the reader
    # puzzled; the message must say that the 1 was quoted (a string), as `mode` does.
    error = _reject("version: '1'\n")
    _assert_error(error, (1, 10), "version")
    assert "string" in error.message or "quote" in error.message, error.message


@pytest.mark.parametrize(
    ("certificate", "expected"),
    [
        ("''", "lineage name"),
        ("a/b", "lineage name"),
        ("'..'", "lineage name"),
        ("'.'", "lineage name"),
        ("42", "a certbot lineage name"),
        ("[a]", "a certbot lineage name"),
    ],
)
def test_bad_certificate_names(certificate: str, expected: str) -> None:
    text = f"version: 1\nconsumers:\n  web:\n    certificate: {certificate}\n"
    _assert_error(_reject(text), (4, 18), "consumers.web.certificate", expected)


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["etc/ssl/a.pem", "a.pem", "./a.pem", "~/a.pem", "''"])
def test_relative_paths_are_rejected(path: str) -> None:
    text = _with_file(f"{{path: {path}, content: cert}}")
    _assert_error(
        _reject(text),
        _pos(text, path),
        "consumers.web.files[0].path",
        "expected an absolute path",
    )


@pytest.mark.parametrize(
    "path", ["/etc/../a.pem", "/etc/ssl/..", "/../a.pem", "/etc//a.pem", "/etc/ssl/"]
)
def test_paths_must_be_plain(path: str) -> None:
    text = _with_file(f"{{path: '{path}', content: cert}}")
    _assert_error(
        _reject(text),
        _pos(text, f"'{path}'"),
        "consumers.web.files[0].path",
        "expected a plain path to a file",
        path,
    )


@pytest.mark.parametrize("path", ["123", "[/a]", "{a: b}", "null"])
def test_path_must_be_a_string(path: str) -> None:
    text = _with_file(f"{{path: {path}, content: cert}}")
    _assert_error(
        _reject(text), _pos(text, path), "consumers.web.files[0].path", "expected an absolute path"
    )


def test_same_path_twice_in_one_consumer() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web:
            certificate: example.org
            files:
              - {path: /srv/tls/a.pem, content: cert}
              - {path: /srv/tls/a.pem, content: privkey}
        """
    )
    _assert_error(
        _reject(text),
        _pos(text, "/srv/tls/a.pem", 2),
        "consumers.web.files[1].path",
        "/srv/tls/a.pem is already placed by consumers.web.files[0]",
        "one entry only",
    )


def test_same_path_twice_across_consumers() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web:
            certificate: example.org
            files: [{path: /srv/tls/a.pem, content: cert}]
          api:
            certificate: api.example.org
            files:
              - {path: /srv/tls/b.pem, content: cert}
              - {path: /srv/tls/a.pem, content: cert}
        """
    )
    _assert_error(
        _reject(text),
        _pos(text, "/srv/tls/a.pem", 2),
        "consumers.api.files[1].path",
        "already placed by consumers.web.files[0]",
    )


def test_same_path_spelt_with_a_dot_component() -> None:
    # "/srv/tls/./a.pem" is "/srv/tls/a.pem": either reject "." like ".." and "//", or compare
    # normalised paths; otherwise two entries silently overwrite each other.
    text = _y(
        """
        version: 1
        consumers:
          web:
            certificate: example.org
            files:
              - {path: /srv/tls/a.pem, content: cert}
              - {path: /srv/tls/./a.pem, content: privkey}
        """
    )
    error = _reject(text)
    _assert_error(error, _pos(text, "/srv/tls/./a.pem"), "consumers.web.files[1].path")


# -- owner, group, mode ---------------------------------------------------------------------


def test_unknown_user() -> None:
    text = _with_file(f"{{path: /a, content: cert, owner: {MISSING_USER}}}")
    _assert_error(
        _reject(text),
        _pos(text, MISSING_USER),
        "consumers.web.files[0].owner",
        f"unknown user '{MISSING_USER}' on this host",
        "numeric id",
    )


def test_unknown_group() -> None:
    text = _with_file(f"{{path: /a, content: cert, owner: root, group: {MISSING_GROUP}}}")
    _assert_error(
        _reject(text),
        _pos(text, MISSING_GROUP),
        "consumers.web.files[0].group",
        f"unknown group '{MISSING_GROUP}' on this host",
        "gid",
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("-1", ("user id -1 is out of range",)),
        ("4294967295", ("out of range",)),
        ("true", ("expected a user name or numeric id", "a boolean")),
        ("[root]", ("expected a user name or numeric id", "a list")),
        ("1.5", ("expected a user name or numeric id", "a number")),
    ],
)
def test_bad_owner_values(value: str, words: tuple[str, ...]) -> None:
    text = _with_file(f"{{path: /a, content: cert, owner: {value}}}")
    _assert_error(_reject(text), _pos(text, value), "consumers.web.files[0].owner", *words)


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("0640", ('in quotes, such as "0640"', "YAML reads 0640 as the number 416")),
        ("0600", ('"0600"', "YAML reads 0600 as the number 384")),
        ("644", ('in quotes, such as "644"', "YAML reads 644 as the number 644")),
        ("600", ("YAML reads 600 as the number 600",)),
        ("0o644", ("expected an octal mode", "'0o644'")),
        ("1777", ("in quotes", "YAML reads 1777 as the number 1777")),
    ],
)
def test_unquoted_modes_explain_what_yaml_read(mode: str, words: tuple[str, ...]) -> None:
    text = _with_file(f"{{path: /a, content: cert, mode: {mode}}}")
    _assert_error(_reject(text), _pos(text, mode), "consumers.web.files[0].mode", *words)


@pytest.mark.parametrize(
    "mode",
    [
        '"rwx"',
        '"rw-r--r--"',
        '"0999"',
        '"0800"',
        '"01777"',
        '"1777"',
        '"07777"',
        '"64"',
        '"0o644"',
        '""',
        '" 0644"',
        '"0644 "',
        '"-644"',
    ],
)
def test_quoted_modes_out_of_range_are_rejected(mode: str) -> None:
    text = _with_file(f"{{path: /a, content: cert, mode: {mode}}}")
    _assert_error(
        _reject(text),
        _pos(text, mode),
        "consumers.web.files[0].mode",
        'expected an octal mode such as "0640"',
        "permission bits only",
        repr(mode[1:-1]),
    )


@pytest.mark.parametrize(
    ("mode", "what"),
    [("[0644]", "a list"), ("true", "a boolean"), ("6.44", "a number"), ("null", "nothing")],
)
def test_mode_of_the_wrong_type(mode: str, what: str) -> None:
    text = _with_file(f"{{path: /a, content: cert, mode: {mode}}}")
    _assert_error(
        _reject(text), _pos(text, mode), "consumers.web.files[0].mode", "octal string", what
    )


# -- content and link -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle", "key_path", "words"),
    [
        ("fullchian", "fullchian", "content", ("unknown content 'fullchian'", "'fullchain'?")),
        ("key", "key", "content", ("unknown content 'key'", "cert, chain, fullchain or privkey")),
        ("[privkey, fulchain]", "fulchain", "content[1]", ("did you mean 'fullchain'?",)),
        ("[privkey, privkye]", "privkye", "content[1]", ("did you mean 'privkey'?",)),
        ("[]", "[]", "content", ("expected at least one content part",)),
        ("[cert, chain, cert]", "cert]", "content[2]", ("'cert' is listed twice",)),
        ("{cert: 1}", "{cert", "content", ("a content part or a list of them", "a mapping")),
        ("[[cert]]", "[[", "content[0]", ("cert, chain, fullchain or privkey", "a list")),
        ("null", "null", "content", ("got nothing (null)",)),
        ("FullChain", "FullChain", "content", ("unknown content 'FullChain'",)),
    ],
)
def test_bad_content(content: str, needle: str, key_path: str, words: tuple[str, ...]) -> None:
    text = _with_file(f"{{path: /a, content: {content}}}")
    at = _pos(text, needle)
    if needle == "[[":
        at = (at[0], at[1] + 1)
    _assert_error(_reject(text), at, f"consumers.web.files[0].{key_path}", *words)


@pytest.mark.parametrize("content", ["[fullchain, privkey]", "[cert, chain]"])
def test_link_needs_a_single_content_part(content: str) -> None:
    text = _with_file(f"{{path: /a, content: {content}, link: true}}")
    _assert_error(
        _reject(text),
        _pos(text, content),
        "consumers.web.files[0].content",
        "a link points at one file of live/",
        "not a list",
    )


def test_a_one_item_list_is_fine_for_a_link() -> None:
    spec = _only(parse_config(_with_file("{path: /a, content: [chain], link: true}"))).files[0]
    assert (spec.content, spec.link) == ((Part.CHAIN,), True)


def test_link_with_mode_is_rejected() -> None:
    text = _with_file('{path: /a, content: fullchain, link: true, mode: "0644"}')
    _assert_error(
        _reject(text),
        _pos(text, "mode"),
        "consumers.web.files[0].mode",
        "a symlink has no mode of its own",
        "drop 'mode' or 'link'",
    )


@pytest.mark.parametrize("link", ['"true"', "1", "[true]"])
def test_link_must_be_a_boolean(link: str) -> None:
    text = _with_file(f"{{path: /a, content: cert, link: {link}}}")
    _assert_error(
        _reject(text),
        _after(text, "link: "),
        "consumers.web.files[0].link",
        "expected true or false",
    )


# -- document shape and YAML syntax ---------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "\n# two\n# comments\n"])
def test_empty_document(text: str) -> None:
    error = _reject(text)
    assert (error.line, error.column, error.key_path) == (0, 0, "")
    assert "the document is empty" in error.message
    assert "version: 1" in error.message
    assert str(error).startswith(f"{SOURCE}: ")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- version: 1\n", "a list"),
        ("hello\n", "a string"),
        ("1\n", "a number"),
        ("~\n", "nothing (null)"),
        ("[version, 1]\n", "a list"),
    ],
)
def test_document_must_be_a_mapping(text: str, what: str) -> None:
    _assert_error(
        _reject(text),
        (1, 1),
        "",
        "expected a mapping with 'version: 1' and 'consumers'",
        f"got {what}",
    )


@pytest.mark.parametrize(
    ("text", "what"),
    [("version: 1\nconsumers: [web]\n", "a list"), ("version: 1\nconsumers: web\n", "a string")],
)
def test_consumers_must_be_a_mapping(text: str, what: str) -> None:
    _assert_error(
        _reject(text), (2, 12), "consumers", "a mapping of consumer names to consumers", what
    )


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        (
            "version: 1\nconsumers:\n  web: {certificate: x\n",
            (4, 1),
            ("YAML syntax error", "flow mapping", "expected ',' or '}'"),
        ),
        (
            "version: 1\nconsumers:\n\tweb: {}\n",
            (3, 1),
            ("YAML syntax error", "found character '\\t'"),
        ),
        (
            "version: 1\nconsumers:\n  web:\n    certificate: x\n   reload: y\n",
            (5, 4),
            ("YAML syntax error", "expected <block end>"),
        ),
        (
            "version: 1\nconsumers: {}\n---\nversion: 1\n",
            (3, 1),
            ("YAML syntax error", "expected a single document"),
        ),
        (
            "version: 1\nconsumers:\n  web: *nowhere\n",
            (3, 8),
            ("YAML syntax error", "found undefined alias"),
        ),
        ("version: 'unterminated\n", (2, 1), ("YAML syntax error", "quoted scalar")),
    ],
)
def test_yaml_syntax_errors_have_line_and_column(
    text: str, at: tuple[int, int], words: tuple[str, ...]
) -> None:
    _assert_error(_reject(text), at, "", *words)


@pytest.mark.parametrize(
    "value",
    [
        "owner: !custom root",  # a tag with no constructor
        "owner: !!python/name:os.system root",
        "mode: !!binary AAAA",
    ],
)
def test_unknown_tags_are_a_config_error(value: str) -> None:
    # PyYAML raises ConstructorError here; it must become a ConfigError, not escape as a
    # library exception (the CLI would call that an internal error, exit 1).
    text = _with_file(f"{{path: /a, content: cert, {value}}}")
    error = _reject(text)
    key = value.split(":", 1)[0]
    _assert_error(error, _pos(text, value.split(" ", 1)[1]), f"consumers.web.files[0].{key}")


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        (_with_endpoint("{host: h, port: !!int x443}"), "consumers.web.verify[0].port"),
        ("version: 1\ndefaults: {reload_timeout: !!float abc}\n", "defaults.reload_timeout"),
        ("version: !!int one\n", "version"),
    ],
)
def test_explicit_tags_that_do_not_fit_are_a_config_error(text: str, key_path: str) -> None:
    # PyYAML raises ValueError from int()/float(); it must become a ConfigError.
    error = _reject(text)
    assert error.key_path == key_path, str(error)
    assert error.line > 0


def test_deep_nesting_is_a_config_error() -> None:
    # 2 KB of brackets makes PyYAML's recursive composer raise RecursionError; that must be
    # reported as a ConfigError ("nested too deeply"), not escape as an internal error.
    text = "version: 1\nconsumers: " + "[" * 1000 + "]" * 1000 + "\n"
    error = _parse_quickly(text)
    assert "nest" in error.message or "deep" in error.message, error.message


# -- alias bombs ----------------------------------------------------------------------------


def _merge_laughs(levels: int = 9, width: int = 10) -> str:
    """Consumers that each merge the previous one ``width`` times: every mapping is a valid
    consumer, and the last one stands for width**levels mappings."""
    lines = ["version: 1", "consumers:", "  c0: &c0 {certificate: example.org}"]
    for i in range(1, levels + 1):
        aliases = ", ".join([f"*c{i - 1}"] * width)
        lines.append(f"  c{i}: &c{i} {{<<: [{aliases}]}}")
    return "\n".join(lines) + "\n"


def _endpoint_laughs(levels: int = 9, width: int = 10) -> str:
    """A verify list of valid endpoints, each merging the previous one ``width`` times, then a
    consumer whose verify list aliases the last of them ``width`` times."""
    lines = [
        "version: 1",
        "consumers:",
        "  web:",
        "    certificate: example.org",
        "    verify:",
        "      - &e0 {host: 127.0.0.1, port: 443}",
    ]
    for i in range(1, levels + 1):
        aliases = ", ".join([f"*e{i - 1}"] * width)
        lines.append(f"      - &e{i} {{<<: [{aliases}]}}")
    lines += [
        "  api:",
        "    certificate: example.org",
        "    verify: [" + ", ".join([f"*e{levels}"] * width) + "]",
    ]
    return "\n".join(lines) + "\n"


def _sequence_laughs() -> str:
    """The classic billion laughs, as the words of a reload command."""
    lines = ["version: 1", "consumers:", "  web:", "    certificate: example.org", "    test:"]
    lines.append("      - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]")
    for i in range(1, 10):
        lines.append(f"      - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("build", [_merge_laughs, _endpoint_laughs])
def test_merge_key_laughs_are_rejected_quickly(build: Callable[[], str]) -> None:
    text = build()
    error = _parse_quickly(text)
    assert f"expands to more than {MAX_NODES} nodes" in error.message
    assert "runaway YAML aliases" in error.message
    assert error.key_path.startswith("consumers.")
    assert 3 <= error.line <= text.count("\n")
    assert error.column > 0


def test_sequence_laughs_are_rejected_quickly() -> None:
    error = _parse_quickly(_sequence_laughs())
    assert error.key_path == "consumers.web.test[0]"
    assert "a word of the command" in error.message


def test_moderate_merges_are_not_mistaken_for_a_bomb() -> None:
    consumers = parse_config(_merge_laughs(levels=3, width=10)).consumers
    assert len(consumers) == 4
    assert all(c.certificate == "example.org" for c in consumers)


def test_wide_mapping_merged_many_times_is_rejected_quickly() -> None:
    # Each merge visits the merged mapping once but walks all its keys: 2 000 keys merged
    # 10 000 times stays under MAX_NODES visits yet costs 20 million steps (seconds, and
    # minutes at the 1 MiB size limit). Every key pair pulled in by a merge must count.
    keys = ", ".join(f"k{i}: 0" for i in range(2000))
    hundred_a = ", ".join(["*a"] * 100)
    hundred_b = ", ".join(["*b"] * 100)
    text = _y(
        f"""
        version: 1
        x: &a {{{keys}}}
        y: &b {{<<: [{hundred_a}]}}
        <<: [{hundred_b}]
        """
    )
    assert len(text) < 30_000
    error = _parse_quickly(text, limit=3.0)
    assert error.line > 0


def test_recursive_merge_is_rejected() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web: &w
            certificate: example.org
            <<: *w
        """
    )
    error = _parse_quickly(text)
    assert "recursive alias" in error.message
    assert "nested deeper than" in error.message
    assert error.key_path == "consumers.web"
    assert error.line in (3, 4, 5)


def test_recursive_sequence_is_rejected() -> None:
    text = _with_consumer_key("reload: &r [nginx, *r]")
    error = _parse_quickly(text)
    _assert_error(
        error, _pos(text, "&r"), "consumers.web.reload[1]", "a word of the command", "a list"
    )


# -- commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "operator"),
    [
        ("nginx -t && nginx -s reload", "&&"),
        ("nginx -t || true", "||"),
        ("systemctl reload nginx ; true", ";"),
        ("cat /run/nginx.pid | xargs kill -HUP", "|"),
        ("nginx -s reload > /dev/null", ">"),
        ("nginx -s reload 2>&1", ">&"),
        ("nginx -s reload &", "&"),
    ],
)
@pytest.mark.parametrize("key", ["reload", "test"])
def test_shell_operators_are_rejected(command: str, operator: str, key: str) -> None:
    text = _with_consumer_key(f"{key}: {command}")
    _assert_error(
        _reject(text),
        _pos(text, command),
        f"consumers.web.{key}",
        "commands run without a shell",
        f"'{operator}' would be passed as a word",
        "[sh, -c, '...']",
    )


@pytest.mark.parametrize(
    "command",
    [
        "nginx -t&&nginx -s reload",
        "systemctl reload nginx;true",
        "nginx -s reload >/dev/null",
        "cat /run/nginx.pid|xargs kill -HUP",
    ],
)
def test_shell_operators_without_spaces_are_rejected(command: str) -> None:
    # shlex.split leaves "-t&&nginx" or ">/dev/null" as one word, so these pass today and the
    # operator reaches the program as an argument.
    text = _with_consumer_key(f"reload: {command}")
    _assert_error(
        _reject(text), _pos(text, command), "consumers.web.reload", "commands run without a shell"
    )


@pytest.mark.parametrize(
    "command", ["nginx -s 'reload", 'nginx -s "reload', "nginx -s reload\\\\\\"]
)
def test_unbalanced_quotes_are_rejected(command: str) -> None:
    text = _with_consumer_key(f"reload: {command}")
    _assert_error(
        _reject(text),
        _pos(text, command),
        "consumers.web.reload",
        "cannot split the command into words",
    )


@pytest.mark.parametrize(
    ("command", "key_path"),
    [
        ("''", "reload"),
        ("'   '", "reload"),
        ("[]", "reload"),
        ('[""]', "reload"),
        ("\"''\"", "reload"),
    ],
)
def test_empty_commands_are_rejected(command: str, key_path: str) -> None:
    text = _with_consumer_key(f"reload: {command}")
    _assert_error(
        _reject(text),
        _pos(text, command),
        f"consumers.web.{key_path}",
        "expected a command, got an empty one",
    )


@pytest.mark.parametrize(
    ("command", "key_path", "what"),
    [
        ("null", "reload", "nothing (null)"),
        ("42", "reload", "a number"),
        ("{a: b}", "reload", "a mapping"),
        ("[nginx, 1]", "reload[1]", "a number"),
        ("[nginx, [a]]", "reload[1]", "a list"),
    ],
)
def test_commands_of_the_wrong_type(command: str, key_path: str, what: str) -> None:
    text = _with_consumer_key(f"reload: {command}")
    error = _reject(text)
    assert error.key_path == f"consumers.web.{key_path}"
    assert error.line == 5
    assert what in error.message


# -- endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "shown"),
    [
        ("0", "0"),
        ("65536", "65536"),
        ("-443", "-443"),
        ("'443'", "443"),
        ('"443"', "443"),
        ("443.0", "443.0"),
        ("true", "true"),
        ("null", "null"),
    ],
)
def test_bad_ports(port: str, shown: str) -> None:
    text = _with_endpoint(f"{{host: 127.0.0.1, port: {port}}}")
    _assert_error(
        _reject(text),
        _after(text, "port: "),
        "consumers.web.verify[0].port",
        "expected a port 1-65535",
        f"got '{shown}'",
    )


@pytest.mark.parametrize("port", ["1", "65535", "0x1BB"])
def test_ports_in_range(port: str) -> None:
    consumer = _only(parse_config(_with_endpoint(f"{{host: h, port: {port}}}")))
    assert consumer.verify[0].port == int(port, 0)


@pytest.mark.parametrize(
    ("host", "words"),
    [("''", ("expected a host",)), ("'a b'", ("expected a host",)), ("1", ("a number",))],
)
def test_bad_hosts(host: str, words: tuple[str, ...]) -> None:
    text = _with_endpoint(f"{{host: {host}, port: 1}}")
    _assert_error(_reject(text), _after(text, "host: "), "consumers.web.verify[0].host", *words)


def test_bad_server_name() -> None:
    text = _with_endpoint("{host: h, port: 1, server_name: 'a b'}")
    _assert_error(
        _reject(text),
        _pos(text, "'a b'"),
        "consumers.web.verify[0].server_name",
        "expected a DNS name",
    )


def test_verify_must_be_a_list_of_mappings() -> None:
    text = _with_consumer_key("verify: {host: h, port: 1}")
    _assert_error(_reject(text), _pos(text, "{host"), "consumers.web.verify", "a list of endpoints")
    text = _with_consumer_key("verify: [127.0.0.1]")
    _assert_error(_reject(text), _pos(text, "127"), "consumers.web.verify[0]", "'host' and 'port'")


def test_starttls_and_check_chain_are_read() -> None:
    text = _y(
        """
        version: 1
        consumers:
          postfix:
            certificate: mail.example.org
            verify:
              - host: 127.0.0.1
                port: 25
                starttls: smtp
              - {host: 127.0.0.1, port: 5269, starttls: xmpp-server, check_chain: false}
              - {host: 127.0.0.1, port: 465}
        """
    )
    verify = parse_config(text, SOURCE).consumers[0].verify
    assert [(e.starttls, e.check_chain) for e in verify] == [
        (Dialect.SMTP, True),
        (Dialect.XMPP_SERVER, False),
        (None, True),
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("smpt", ("unknown STARTTLS protocol 'smpt'", "did you mean 'smtp'?")),
        ("http", ("unknown STARTTLS protocol 'http'", "expected one of smtp, lmtp, imap")),
        ("587", ("expected a STARTTLS protocol", "a number")),
    ],
)
def test_unknown_starttls_protocol_is_rejected(value: str, words: tuple[str, ...]) -> None:
    text = _y(
        f"""
        version: 1
        consumers:
          postfix:
            certificate: mail.example.org
            verify:
              - host: 127.0.0.1
                port: 25
                starttls: {value}
        """
    )
    _assert_error(_reject(text), _pos(text, value), "consumers.postfix.verify[0].starttls", *words)


def test_check_chain_must_be_a_boolean() -> None:
    text = _y(
        """
        version: 1
        consumers:
          web:
            certificate: example.org
            verify:
              - {host: 127.0.0.1, port: 443, check_chain: maybe}
        """
    )
    _assert_error(
        _reject(text), _pos(text, "maybe"), "consumers.web.verify[0].check_chain", "true or false"
    )


# -- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0", ("expected more than 0", "got 0")),
        ("0.0", ("expected more than 0",)),
        ("-5", ("expected more than 0", "got -5")),
        ("86401", ("at most 86400",)),
        (".inf", ("at most 86400",)),
        (".nan", ("expected more than 0",)),
        ("'30'", ("expected a number of seconds", "a string")),
        ("30s", ("expected a number of seconds", "a string")),
        ("true", ("expected a number of seconds", "a boolean")),
        ("null", ("expected a number of seconds", "nothing (null)")),
        ("[30]", ("expected a number of seconds", "a list")),
    ],
)
@pytest.mark.parametrize("where", ["defaults", "consumer"])
@pytest.mark.parametrize("key", ["reload_timeout", "verify_timeout"])
def test_bad_timeouts(value: str, words: tuple[str, ...], where: str, key: str) -> None:
    if where == "defaults":
        text = f"version: 1\ndefaults:\n  {key}: {value}\n"
        key_path = f"defaults.{key}"
    else:
        text = _with_consumer_key(f"{key}: {value}")
        key_path = f"consumers.web.{key}"
    _assert_error(_reject(text), _after(text, f"{key}: "), key_path, *words)


@pytest.mark.parametrize("value", ["0.5", "1", "86400", "1.5e+3"])
def test_timeouts_in_range(value: str) -> None:
    consumer = _only(parse_config(_with_consumer_key(f"verify_timeout: {value}")))
    assert consumer.verify_timeout == float(value)


# -- consumer names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my app", "a/b", "café", "web:1", "$web", "a\\tb", "''"])
def test_consumer_names_with_bad_characters(name: str) -> None:
    quoted = name if name == "''" else f'"{name}"'
    text = f"version: 1\nconsumers:\n  {quoted}: {{certificate: example.org}}\n"
    error = _reject(text)
    _assert_error(error, (3, 3), error.key_path, "may hold only letters, digits, . _ and -")
    assert error.key_path.startswith("consumers.")


@pytest.mark.parametrize("name", ["web", "Web-2", "a.b_c", "0", "-"])
def test_consumer_names_that_are_fine(name: str) -> None:
    text = f"version: 1\nconsumers:\n  '{name}': {{certificate: example.org}}\n"
    assert _only(parse_config(text)).name == name


# -- reading the file -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == path
    assert (info.value.line, info.value.key_path) == (0, "")
    assert "config file not found" in info.value.message
    assert "$CERTBOT_FANOUT_CONFIG" in info.value.message
    assert str(info.value).startswith(f"{path}: ")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert info.value.source == str(tmp_path)
    assert "is a directory, expected a YAML file" in info.value.message


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.source == str(path)
    assert "not valid UTF-8" in info.value.message
    assert "byte offset 16" in info.value.message


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"version: 1\n" + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"larger than {MAX_CONFIG_BYTES} bytes" in info.value.message


def test_file_errors_carry_the_path_and_position(write_config: WriteConfig) -> None:
    path = write_config(_with_file("{path: /a, content: cert, mode: 0640}"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == (
        f"{path}:6:41: consumers.web.files[0].mode: expected an octal string in quotes, "
        'such as "0640"; unquoted, YAML reads 0640 as the number 416'
    )


# -- through the command line ---------------------------------------------------------------


@pytest.fixture
def live(ca: ThrowawayCA, tmp_path: Path) -> Path:
    issued = ca.issue(["example.org"])
    return Path(write_lineage(str(tmp_path / "letsencrypt"), "example.org", issued))


def _consumers_with(tmp_path: Path, broken: str) -> str:
    """A valid consumer placing a file under tmp_path, and a second consumer with ``broken``."""
    return _y(
        f"""
        version: 1
        consumers:
          good:
            certificate: example.org
            files:
              - {{path: {tmp_path}/out/fullchain.pem, content: fullchain}}
          bad:
            certificate: example.org
            {broken}
        """
    )


def _deploy(config: Path, live: Path, tmp_path: Path) -> int:
    return main(
        [
            "deploy",
            "--config",
            str(config),
            "--lineage",
            str(live),
            "--lock-file",
            str(tmp_path / "lock"),
        ],
        environ={},
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.mark.parametrize(
    ("broken", "words"),
    [
        (
            "files: [{path: /srv/b.pem, content: cert, mode: 0640}]",
            ("consumers.bad.files[0].mode", "YAML reads 0640 as the number 416"),
        ),
        ("reload: nginx -t && nginx -s reload", ("consumers.bad.reload", "without a shell")),
        ("verfy: []", ("consumers.bad.verfy", "did you mean 'verify'?")),
        (
            f"files: [{{path: /srv/b.pem, content: cert, owner: {MISSING_USER}}}]",
            ("consumers.bad.files[0].owner", f"unknown user '{MISSING_USER}'"),
        ),
    ],
)
def test_cli_rejects_a_bad_config_with_exit_2_and_touches_nothing(
    broken: str,
    words: tuple[str, ...],
    live: Path,
    out_dir: Path,
    tmp_path: Path,
    write_config: WriteConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(_consumers_with(tmp_path, broken))
    assert _deploy(config, live, tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"certbot-fanout: error: {config}:9:")
    for word in words:
        assert word in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list(out_dir.iterdir()) == []


def test_cli_places_the_file_once_the_config_is_fixed(
    live: Path,
    out_dir: Path,
    tmp_path: Path,
    write_config: WriteConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The control for the test above: the same layout with the bad key fixed does place.
    config = write_config(_consumers_with(tmp_path, 'notes: "fixed"'))
    assert _deploy(config, live, tmp_path) == 0, capsys.readouterr()
    assert (out_dir / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()


@pytest.mark.parametrize("kind", ["missing", "directory", "syntax"])
def test_cli_unreadable_config_exits_2(
    kind: str, live: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "consumers.yaml"
    if kind == "directory":
        config.mkdir()
    elif kind == "syntax":
        config.write_text("version: 1\nconsumers: [\n")
    assert _deploy(config, live, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"certbot-fanout: error: {config}")
    assert "Traceback" not in err


def test_cli_uses_the_environment_for_the_config_path(
    live: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "from-env.yaml"
    config.write_text("version: 2\n")
    code = main(
        ["deploy", "--lineage", str(live), "--lock-file", str(tmp_path / "lock")],
        environ={CONFIG_ENV: str(config)},
    )
    assert code == 2
    assert f"{config}:1:10: version: unsupported config version" in capsys.readouterr().err


# -- certbot's own directories ----------------------------------------------------------------

OWNED = ("live", "archive", "keys", "renewal", "accounts")


def _placing(path: str) -> str:
    return _with_file(f"{{path: '{path}', content: fullchain}}")


def _reject_in(text: str, *certbot_dirs: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE, certbot_dirs=certbot_dirs)
    return info.value


@pytest.mark.parametrize("owned", OWNED)
@pytest.mark.parametrize("below", ["", "/example.org", "/example.org/fullchain.pem", "/x.pem"])
def test_files_in_certbots_own_directories_are_rejected(
    owned: str, below: str, tmp_path: Path
) -> None:
    certbot_dir = str(tmp_path / "le")
    target = f"{certbot_dir}/{owned}{below}"
    text = _placing(target)
    error = _reject_in(text, certbot_dir)
    _assert_error(
        error,
        _after(text, "{path: "),
        "consumers.web.files[0].path",
        f"{target} is inside {certbot_dir}/{owned}",
        f"certbot owns {certbot_dir}/{owned}",
        "certbot-fanout must not write there",
    )


@pytest.mark.parametrize("owned", OWNED)
def test_the_default_certbot_dir_is_protected(owned: str) -> None:
    text = _placing(f"/etc/letsencrypt/{owned}/example.org/cert.pem")
    error = _reject(text)
    assert f"certbot owns /etc/letsencrypt/{owned}" in error.message
    assert error.key_path == "consumers.web.files[0].path"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/letsencrypt/live2/a.pem",
        "/etc/letsencrypt/renewal-hooks/a.pem",
        "/etc/letsencrypt/livex",
        "/etc/letsencrypt-copy/live/a.pem",
        "/etc/letsencrypt/a.pem",
        "/srv/live/a.pem",
    ],
)
def test_neighbours_of_certbots_directories_are_fine(path: str) -> None:
    # The control: only live/, archive/, keys/, renewal/ and accounts/ (and what they hold).
    assert _only(parse_config(_placing(path))).files[0].path == path


def test_only_the_given_certbot_dirs_are_protected(tmp_path: Path) -> None:
    text = _placing("/etc/letsencrypt/live/a.pem")
    assert _only(parse_config(text, certbot_dirs=(str(tmp_path),))).files[0].path
    error = _reject_in(_placing(f"{tmp_path}/keys/0001_key.pem"), "/nonexistent", str(tmp_path))
    assert f"certbot owns {tmp_path}/keys" in error.message


def test_a_bare_string_is_one_certbot_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certbot owns"):
        parse_config(_placing(f"{tmp_path}/live/a.pem"), certbot_dirs=str(tmp_path))


def test_a_symlink_into_live_is_left_to_the_placement(tmp_path: Path) -> None:
    # The path as written is checked; where it resolves is the placement's to refuse (one
    # consumer fails, not the map: tests/unit/test_hostile_users.py).
    certbot_dir = tmp_path / "le"
    (certbot_dir / "live" / "example.org").mkdir(parents=True)
    (tmp_path / "shortcut").symlink_to(certbot_dir / "live" / "example.org")
    text = _placing(f"{tmp_path}/shortcut/fullchain.pem")
    assert _only(parse_config(text, certbot_dirs=(str(certbot_dir),))).files[0].path


def test_a_symlinked_certbot_dir_is_protected_both_ways(tmp_path: Path) -> None:
    real = tmp_path / "real-le"
    (real / "archive").mkdir(parents=True)
    (tmp_path / "le").symlink_to(real)
    for target in (f"{tmp_path}/le/archive/x.pem", f"{real}/archive/x.pem"):
        error = _reject_in(_placing(target), str(tmp_path / "le"))
        assert "certbot-fanout must not write there" in error.message


def _deploy_into(config: Path, argv: list[str], tmp_path: Path, environ: dict[str, str]) -> int:
    return main(
        ["deploy", "--config", str(config), "--lock-file", str(tmp_path / "lock"), *argv],
        environ=environ,
    )


@pytest.mark.parametrize("how", ["cert-name", "lineage", "hook"])
def test_cli_refuses_to_write_into_the_lineages_certbot_dir(
    how: str,
    ca: ThrowawayCA,
    tmp_path: Path,
    write_config: WriteConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    certbot_dir = tmp_path / "letsencrypt"
    live = Path(write_lineage(str(certbot_dir), "example.org", ca.issue(["example.org"])))
    before = sorted((p, p.read_bytes()) for p in certbot_dir.rglob("*") if p.is_file())
    config = write_config(
        _y(
            f"""
            version: 1
            consumers:
              web:
                certificate: example.org
                files:
                  - {{path: {certbot_dir}/archive/example.org/privkey9.pem, content: privkey}}
            """
        )
    )
    # --config-dir names it, or the lineage (DIR/live/NAME) does, the way certbot's hook does.
    argv, environ = {
        "cert-name": (["--cert-name", "example.org", "--config-dir", str(certbot_dir)], {}),
        "lineage": (["--lineage", str(live)], {}),
        "hook": ([], {"RENEWED_LINEAGE": str(live)}),
    }[how]
    code = _deploy_into(config, argv, tmp_path, environ)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"certbot-fanout: error: {config}:6:16: consumers.web.files[0].path: ")
    assert f"certbot owns {certbot_dir}/archive" in err
    assert "Traceback" not in err
    assert sorted((p, p.read_bytes()) for p in certbot_dir.rglob("*") if p.is_file()) == before


def test_check_reports_a_file_in_certbots_dir_as_an_invalid_map(
    tmp_path: Path, write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(_placing(f"{tmp_path}/le/renewal/example.org.conf"))
    code = main(["check", "--no-probe", "--config", str(config), "--config-dir", f"{tmp_path}/le"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"PROBLEM: the map is not valid: {config}:6:" in out
    assert f"certbot owns {tmp_path}/le/renewal" in out


# -- encodings, characters YAML refuses, and big broken documents -----------------------------


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        ("version: 1\n".encode("utf-16"), "UTF-16"),
        (b"\xfe\xff" + "version: 1\n".encode("utf-16-be"), "UTF-16"),
        ("version: 1\n".encode("utf-32"), "UTF-32"),
    ],
)
def test_utf16_and_utf32_say_so(raw: bytes, encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert (info.value.line, info.value.column) == (1, 1)
    assert f"the file is {encoding}" in info.value.message
    assert "save it as UTF-8" in info.value.message


def test_non_utf8_bytes_have_a_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nconsumers:\n  café: {certificate: x}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert (info.value.line, info.value.column) == (3, 6)
    assert "byte 0xe9" in info.value.message


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        ("version: 1\nconsumers:\n  a\x00b: {}\n", (3, 4), ("a NUL character", "UTF-16")),
        ("version: 1\nnotes: \x07\n", (2, 8), ("the control character U+0007",)),
        ("version: 1\x1b\n", (1, 11), ("the control character U+001B",)),
    ],
)
def test_characters_yaml_refuses_have_a_line_and_column(
    text: str, at: tuple[int, int], words: tuple[str, ...]
) -> None:
    error = _reject(text)
    assert (error.line, error.column) == at, str(error)
    for word in words:
        assert word in error.message


def test_invisible_characters_in_an_unknown_key_are_shown() -> None:
    error = _reject("version: 1\n\ufeffconsumers: {}\n")
    assert "'\\ufeffconsumers' (with invisible characters)" in error.message
    assert "did you mean 'consumers'?" in error.message


def test_a_big_document_with_a_late_syntax_error_is_refused_quickly() -> None:
    text = "version: 1\nconsumers: [" + "1, " * 300_000 + "\n:"
    assert len(text) < MAX_CONFIG_BYTES
    error = _parse_quickly(text, limit=3.0)
    assert (error.line, error.column) == (3, 1)
    assert "YAML syntax error" in error.message


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a: {" * 2000 + "}" * 2000])
def test_nesting_past_libyamls_bound_is_refused_quickly_with_a_place(text: str) -> None:
    error = _parse_quickly(text, limit=1.0)
    assert "nested too deeply" in error.message
    assert error.line == 1


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ('{path: "/tmp/\\ud800/x", content: cert}', "path"),
        ('{path: /tmp/x, content: cert, owner: "\\ud800"}', "owner"),
        ('{path: /tmp/x, content: cert, group: "a\\udc80"}', "group"),
    ],
)
def test_lone_surrogates_are_a_config_error(entry: str, key: str) -> None:
    error = _reject(_with_file(entry))
    assert error.key_path == f"consumers.web.files[0].{key}"
    assert "lone surrogate" in error.message
    str(error).encode("utf-8")  # printable as it stands


def test_escape_sequences_in_a_key_are_shown_escaped() -> None:
    error = _reject('version: 1\n"\\e[31mconsumers": {}\n')
    assert "\x1b" not in str(error)
    assert "\\x1b[31mconsumers" in error.key_path


@pytest.mark.parametrize(
    ("value", "what"),
    [("!!bool maybe", "a boolean"), ("!!int ''", "a number"), ("!!timestamp x", "a date")],
)
def test_explicit_tags_whose_constructor_fails_are_a_config_error(value: str, what: str) -> None:
    text = _with_endpoint(f"{{host: h, port: {value}}}")
    error = _reject(text)
    assert error.key_path == "consumers.web.verify[0].port"
    assert f"is not {what}" in error.message


@pytest.mark.parametrize(
    "host", ["http://example.org", "example.org:443", "[::1]", "example.org/x", "1.2.3.4:5"]
)
def test_hosts_with_a_scheme_port_or_path_are_rejected(host: str) -> None:
    text = _with_endpoint(f"{{host: '{host}', port: 1}}")
    _assert_error(
        _reject(text), _after(text, "host: "), "consumers.web.verify[0].host", "no scheme"
    )


@pytest.mark.parametrize("host", ["::1", "fe80::1", "127.0.0.1", "example.org", "localhost"])
def test_plain_hosts_and_ipv6_addresses_are_fine(host: str) -> None:
    assert (
        _only(parse_config(_with_endpoint(f"{{host: '{host}', port: 1}}"))).verify[0].host == host
    )


@pytest.mark.parametrize("name", ["https://example.org", "example.org:443", "a/b"])
def test_server_names_with_a_scheme_port_or_path_are_rejected(name: str) -> None:
    text = _with_endpoint(f"{{host: h, port: 1, server_name: '{name}'}}")
    error = _reject(text)
    assert error.key_path == "consumers.web.verify[0].server_name"
    assert "expected a DNS name" in error.message


@pytest.mark.parametrize(
    "certificate",
    ["'example.org\"0640\"'", "'x\", owner: 0, mode: \"0777'", "'a\\b'", "'my cert'"],
)
def test_a_preset_refuses_a_certificate_name_it_cannot_put_in_a_path(certificate: str) -> None:
    # Found by fuzz/fuzz_config.py: a quote in the name broke the preset's YAML (a crash), and
    # could have set the preset's owner or mode.
    text = _with_consumer_key("preset: nginx").replace("example.org", certificate)
    error = _reject(text)
    assert error.key_path == "consumers.web.preset"
    assert (error.line, error.column) == _after(text, "preset: ")
    assert "puts the certificate name into file paths" in error.message


@pytest.mark.parametrize("certificate", ["example.org", "mail-2.example.org", "a_b+c@d"])
def test_a_preset_takes_an_ordinary_certificate_name(certificate: str) -> None:
    consumer = _only(
        parse_config(_with_consumer_key("preset: nginx").replace("example.org", certificate))
    )
    assert consumer.files[0].path == f"/etc/nginx/tls/{certificate}/fullchain.pem"


@pytest.mark.parametrize(
    ("template", "field", "key_path", "words"),
    [
        (
            "files:\n  - {path: /srv/{certificate}.pem, content: cert, group: cf-no-such-group}\n",
            "files",
            "files[0].group",
            ("unknown group 'cf-no-such-group'",),
        ),
        ("reload: 'systemctl reload svc | tee'\n", "reload", "reload", ("'|'",)),
        ("verify_timeout: 0\n", "verify_timeout", "verify_timeout", ("more than 0",)),
    ],
)
@pytest.mark.parametrize("name", ["web", "mail.example.org"])
def test_a_preset_error_names_the_field_to_set_and_points_at_the_preset_line(
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    field: str,
    key_path: str,
    words: tuple[str, ...],
    name: str,
) -> None:
    # The field comes from the place of the value, not from the words of a path: a consumer
    # name with dots in it does not shift it.
    monkeypatch.setitem(PRESETS, "ghost", Preset("ghost", "a service not installed", template))
    text = _with_consumer_key("preset: ghost").replace("  web:", f"  {name}:")
    error = _reject(text)
    _assert_error(
        error,
        _after(text, "preset: "),
        f"consumers.{name}.{key_path}",
        *words,
        f"(from preset ghost: install that service first, or set '{field}' yourself)",
    )
