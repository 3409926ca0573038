"""STARTTLS for LDAP: the StartTLS ExtendedRequest (RFC 4511 4.14.1), and a small, bounded BER
reader for the ExtendedResponse."""

from __future__ import annotations

from certbot_fanout.starttls.talk import MAX_PLAINTEXT_BYTES, Plaintext

# ExtendedRequest for StartTLS (RFC 4511 4.14.1), message ID 1.
_LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_LDAP_REQUEST = (
    b"\x30" + bytes([len(_LDAP_STARTTLS_OID) + 7]) + b"\x02\x01\x01"
    b"\x77" + bytes([len(_LDAP_STARTTLS_OID) + 2]) + b"\x80" + bytes([len(_LDAP_STARTTLS_OID)])
) + _LDAP_STARTTLS_OID


def _ber(data: bytes, at: int) -> tuple[int, bytes, int]:
    """(tag, value, next offset) of the BER element at ``at``."""
    if at + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or at + size > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, data[at : at + length], at + length


def ldap(talk: Plaintext, name: str) -> None:
    talk.stage = "StartTLS request"
    talk.send(_LDAP_REQUEST)
    head = talk.exactly(2)
    if head[0] != 0x30:
        raise talk.fail(f"expected an LDAP message, got {talk.shown()}")
    size = head[1]
    extra = b""
    if size & 0x80:
        extra = talk.exactly(size & 0x7F) if 0 < size & 0x7F <= 4 else b""
        if not extra:
            raise talk.fail("malformed LDAP message length")
        size = int.from_bytes(extra, "big")
    if size > MAX_PLAINTEXT_BYTES:
        raise talk.fail(f"LDAP answer of {size} bytes is too large")
    message = head + extra + talk.exactly(size)
    try:
        _, body, _ = _ber(message, 0)
        _, _, at = _ber(body, 0)  # messageID
        tag, response, _ = _ber(body, at)
        if tag != 0x78:
            raise talk.fail(f"expected an ExtendedResponse, got tag {tag:#x}")
        code_tag, code, at = _ber(response, 0)
        _, _, at = _ber(response, at)  # matchedDN
        _, diagnostic, _ = _ber(response, at)
    except ValueError as e:
        raise talk.fail(f"malformed LDAP answer ({e})") from None
    if code_tag != 0x0A or int.from_bytes(code, "big") != 0:
        detail = diagnostic.decode("utf-8", "replace") or "no message"
        raise talk.fail(
            f"the server refused StartTLS (resultCode {int.from_bytes(code, 'big')}: {detail})"
        )
