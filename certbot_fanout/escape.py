"""The one escaper for text from outside the map: ``printable`` turns what a peer, a command,
a file name or a link target said into text that is safe to put on a terminal or in a log.

Every text renderer passes each string it did not write itself through ``printable`` (see
"Text from outside" in docs/architecture.md). Results keep the raw text; JSON escapes it on its
own. Pure: it imports nothing of ours and touches nothing.
"""

from __future__ import annotations

# The escapes for the characters that have a short one; every other unprintable one is
# written by its number (_escape).
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What a backslash may begin in the output: one that is followed by one of these (or ends the
# text) is doubled, any other stands for itself (an RFC 4514 subject's ``\,`` stays as it is).
_ESCAPE_LETTERS = frozenset("\\nrtxuU")
# Bytes that are not UTF-8 reach us as lone surrogates (``os.fsdecode``, "surrogateescape").
_BYTE_SURROGATES = range(0xDC80, 0xDD00)


def printable(value: str | bytes) -> str:
    """``value`` with every character a terminal could act on written out as an escape.

    Escaped: C0 and C1 controls, DEL, and everything else Python does not call printable
    (bidirectional overrides and isolates, line and paragraph separators, other format
    characters, unassigned code points, lone surrogates, spaces other than U+0020). ``\\n``,
    ``\\r`` and ``\\t`` have their short escapes; other ASCII controls and bytes that are not
    UTF-8 (given as ``bytes``, or as a str that ``os.fsdecode`` made) read ``\\xNN``; any other
    code point ``\\uNNNN`` or ``\\UNNNNNNNN``. A backslash is doubled where it could be read as
    the start of an escape, so two different texts never look the same.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch == "\\":
            follows = text[i + 1] if i < last else ""
            doubled = not follows or follows in _ESCAPE_LETTERS or not follows.isprintable()
            out.append("\\\\" if doubled else "\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_escape(ch))
    return "".join(out)


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    if code in _BYTE_SURROGATES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
