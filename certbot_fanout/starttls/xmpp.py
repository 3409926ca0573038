"""STARTTLS for XMPP, client-to-server (``xmpp``) and server-to-server (``xmpp_server``): open a
stream, read its features, ask for TLS, and return on ``<proceed/>``."""

from __future__ import annotations

from certbot_fanout.starttls.talk import Negotiate, Plaintext, show


def _stream(namespace: bytes) -> Negotiate:
    """XMPP's STARTTLS for a stream in ``namespace`` (jabber:client, jabber:server)."""

    def negotiate(talk: Plaintext, name: str) -> None:
        talk.send(
            b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
            b" xmlns='" + namespace + b"' to='" + name.encode("idna") + b"' version='1.0'>"
        )
        talk.stage = "stream features"
        if talk.begins() != b"<":
            raise talk.fail(f"expected an XMPP stream, got {talk.shown()}")
        features, marker = talk.until(b"</stream:features>", b"</stream:stream>", b"<stream:error")
        if marker != b"</stream:features>":
            raise talk.fail(f"the server ended the stream: {show(features[-200:])}")
        if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
            raise talk.fail("the server does not offer STARTTLS")
        talk.stage = "STARTTLS"
        talk.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        _, marker = talk.until(b"<proceed", b"<failure")
        if marker == b"<failure":
            raise talk.fail("the server refused STARTTLS")
        rest, _ = talk.until(b">")
        if not rest.endswith(b"/>"):
            talk.until(b"</proceed>")

    return negotiate


xmpp = _stream(b"jabber:client")
xmpp_server = _stream(b"jabber:server")
