"""One error hierarchy; library errors are translated into it where they enter."""

from __future__ import annotations


class FanoutError(Exception):
    """Base of every error certbot-fanout expects and reports without a traceback."""


class ConfigError(FanoutError):
    """The consumer map is unreadable or invalid.

    Args:
        message: what was expected and what was found.
        source: the config file's path.
        line: 1-based line, or 0 when unknown.
        column: 1-based column, or 0 when unknown.
        key_path: where in the document, e.g. ``consumers.synapse.files[1].mode``.
    """

    def __init__(
        self,
        message: str,
        source: str = "",
        line: int = 0,
        column: int = 0,
        key_path: str = "",
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        self.key_path = key_path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source
        if self.line:
            where = f"{where}:{self.line}:{self.column}"
        parts = [p for p in (where, self.key_path) if p]
        return ": ".join([*parts, self.message])


class ConfigNotFound(ConfigError):
    """There is no consumer map at the path (a newcomer's first run, or a mistyped path)."""


class UntrustedConfig(ConfigError):
    """The consumer map, or a directory above it, could be changed by a user other than root
    (in a run by another user: than root or that user), so it is not read."""


class UnfinishedMap(ConfigError):
    """The map still holds placeholders (``"<fill in: ...>"``, as ``discover --write-map``
    writes them): each field left to fill in is one of ``fields``, with its place and key path.
    """

    def __init__(self, fields: tuple[ConfigError, ...], source: str = "") -> None:
        self.fields = fields
        first = fields[0] if fields else ConfigError("", source)
        more = f" (and {len(fields) - 1} more fields to fill in)" if len(fields) > 1 else ""
        super().__init__(
            first.message + more, first.source or source, first.line, first.column, first.key_path
        )


class LineageError(FanoutError):
    """The Certbot lineage is missing, unreadable or inconsistent."""


class PlacementError(FanoutError):
    """A file could not be placed (or restored) as configured."""


class CommandError(FanoutError):
    """A test or reload command could not run, failed or timed out."""


class ProbeError(FanoutError):
    """An endpoint could not be reached or did not complete a TLS handshake."""


class LockError(FanoutError):
    """Another certbot-fanout run holds the lock for too long."""
