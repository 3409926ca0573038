"""The map's fields for files that are not PEM: ``content: pkcs12`` (with ``password_file``,
``pkcs12_legacy`` and ``alias``) and ``content: der``.

A part of :mod:`certbot_fanout.schema`, which calls these while it reads a file entry; kept
apart so that the schema's own module stays readable. The password file is read here only to
check it (see :func:`certbot_fanout.password.read_password`); the model keeps its path.
"""

from __future__ import annotations

import os

from certbot_fanout.model import Encoding, Keystore, Part
from certbot_fanout.password import password_problem
from certbot_fanout.yamlnode import STR_TAG, Items, Node, Path, Reader, ScalarNode, SequenceNode

KEYSTORE_KEYS = ("password_file", "pkcs12_legacy", "alias")
# Content that is a whole file in an encoding of its own, and the parts it holds.
WHOLE_FILES = {
    "pkcs12": (Encoding.PKCS12, (Part.PRIVKEY, Part.FULLCHAIN)),
    "der": (Encoding.DER, (Part.CERT,)),
}
MAX_ALIAS = 128


def whole_file(reader: Reader, node: Node, path: Path) -> tuple[Encoding, tuple[Part, ...]] | None:
    """``content: pkcs12`` or ``content: der`` (a one-item list is the same), which stands
    alone; None for PEM parts, which the schema reads itself."""
    items: list[Node] = [node] if isinstance(node, ScalarNode) else []
    if isinstance(node, SequenceNode):
        items = list(node.value)
    for i, item in enumerate(items):
        word = item.value if isinstance(item, ScalarNode) and item.tag == STR_TAG else None
        if word not in WHOLE_FILES:
            continue
        if len(items) > 1:
            raise reader.error(
                item,
                path / i,
                f"'{word}' is a whole file of its own: write `content: {word}` alone, "
                "not in a list with other parts",
            )
        return WHOLE_FILES[word]
    return None


def refuse_link(reader: Reader, items: Items, path: Path, encoding: Encoding) -> None:
    """``link: true`` points into live/, which holds PEM files only."""
    if encoding is not Encoding.PEM:
        raise reader.error(
            items["link"][0],
            path / "link",
            f"live/ holds no {encoding.value} file to link to; drop 'link' for a copy",
        )


def read_keystore(reader: Reader, items: Items, path: Path, encoding: Encoding) -> Keystore | None:
    """A keystore's ``password_file`` (required), ``pkcs12_legacy`` and ``alias``, which no
    other content takes."""
    if encoding is not Encoding.PKCS12:
        for key in KEYSTORE_KEYS:
            if key in items:
                raise reader.error(
                    items[key][0], path / key, f"'{key}' is only for content: pkcs12"
                )
        return None
    if "password_file" not in items:
        raise reader.error(
            items["content"][1],
            path / "content",
            "content: pkcs12 needs 'password_file': the path of a file only root can read, "
            "holding the keystore's password",
        )
    node, key_path = items["password_file"][1], path / "password_file"
    password_file = reader.string(node, key_path, "an absolute path")
    if not os.path.isabs(password_file):
        raise reader.error(node, key_path, f"expected an absolute path, got {password_file!r}")
    problem = password_problem(password_file)
    if problem is not None:
        raise reader.error(node, key_path, problem)
    legacy = False
    if "pkcs12_legacy" in items:
        legacy = reader.boolean(items["pkcs12_legacy"][1], path / "pkcs12_legacy")
    alias = None
    if "alias" in items:
        alias = _alias(reader, items["alias"][1], path / "alias")
    return Keystore(password_file=password_file, legacy=legacy, alias=alias)


def _alias(reader: Reader, node: Node, path: Path) -> str:
    alias = reader.string(node, path, "a keystore alias")
    if not alias or len(alias) > MAX_ALIAS or not alias.isprintable():
        raise reader.error(
            node,
            path,
            f"expected an alias of 1 to {MAX_ALIAS} printable characters, got {alias!r}",
        )
    return alias
