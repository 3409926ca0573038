"""Loading the consumer map: where it is, reading it within bounds, and parsing it.

:func:`load_config` reads the file (at most :data:`MAX_CONFIG_BYTES`, and only when no user
but root could have written it or a directory above it: :mod:`certbot_fanout.trust`),
:func:`decode_config`
turns its bytes into text, and :func:`parse_config` turns the text into a
:class:`certbot_fanout.model.Config`: :mod:`certbot_fanout.yamlnode` composes the YAML node
graph and :mod:`certbot_fanout.schema` reads version 1 of the map from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from certbot_fanout import schema, trust, yamlnode
from certbot_fanout.errors import ConfigError, ConfigNotFound, UntrustedConfig
from certbot_fanout.model import CONFIG_ENV, DEFAULT_CERTBOT_DIR, DEFAULT_CONFIG_PATH, Config

# A map larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    """``$CERTBOT_FANOUT_CONFIG`` if set and non-empty, else the system path."""
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str, *, certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,)) -> Config:
    """Read and validate a consumer map.

    ``certbot_dirs`` are Certbot's configuration directories (``--config-dir``): a file placed
    in their ``live/``, ``archive/``, ``keys/``, ``renewal/`` or ``accounts/`` is refused.

    The map runs its commands as root, so it is read only if no other user could have written
    it: the file read (its ``fstat``, so nothing can be swapped in after the check) and every
    directory and link on the way to it are owned by root and writable by no one else (sticky
    directories aside); in a run by another user, that user counts as root.

    Raises:
        ConfigNotFound: there is no file at ``path``.
        UntrustedConfig: a user other than root could change the file or a directory above it.
        ConfigError: the file cannot be read or does not follow schema version 1.
    """
    try:
        with open(path, "rb") as f:
            problem = trust.stat_problem(path, os.fstat(f.fileno())) or trust.path_problem(path)
            if problem is not None:
                raise UntrustedConfig(_untrusted_text(problem), path)
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigNotFound(
            f"config file not found (set --config or ${CONFIG_ENV})", path
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file is larger than {MAX_CONFIG_BYTES} bytes", path)
    return parse_config(decode_config(raw, path), path, certbot_dirs=certbot_dirs)


def _untrusted_text(problem: trust.TrustProblem) -> str:
    return (
        f"refused: {problem}, so someone other than {problem.trusted} could change the commands "
        f"it runs; the map and every directory above it must be owned by {problem.trusted} and "
        "writable by no one else (chown root:root, chmod go-w)"
    )


def decode_config(raw: bytes, source: str) -> str:
    """The text of a map read as bytes: UTF-8 (a leading byte order mark is fine).

    Raises:
        ConfigError: another encoding, or bytes that are not UTF-8, with their line and column.
    """
    return yamlnode.decode(raw, source)


def parse_config(
    text: str,
    source: str = "<config>",
    *,
    certbot_dirs: Sequence[str] = (DEFAULT_CERTBOT_DIR,),
) -> Config:
    """Validate a consumer map given as text; ``source`` names it in messages.

    ``certbot_dirs``: as for :func:`load_config`.

    Raises:
        ConfigError: the text is not YAML, or does not follow schema version 1.
    """
    return schema.read_config(yamlnode.compose(text, source), source, certbot_dirs)
