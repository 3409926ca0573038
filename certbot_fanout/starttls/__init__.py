"""The STARTTLS negotiators: the plaintext exchange that comes before a TLS handshake.

``NEGOTIATE`` maps each ``Dialect`` to its client side; ``negotiate`` is what the probe calls.
The pieces: ``talk`` (the bounded reader every dialect talks through: bytes, one deadline,
named stages), and one module per protocol family (``mail``: SMTP, LMTP, IMAP, POP3, FTP, NNTP,
ManageSieve; ``xmpp``; ``ldap``; ``db``: PostgreSQL, MySQL). A new dialect is a function
``(Plaintext, name) -> None`` in its family's module, a ``Dialect`` member and a line here.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from types import MappingProxyType

from certbot_fanout.model import Dialect
from certbot_fanout.starttls import db, ldap, mail, xmpp
from certbot_fanout.starttls.talk import Negotiate, Plaintext

NEGOTIATE: Mapping[Dialect, Negotiate] = MappingProxyType(
    {
        Dialect.SMTP: mail.smtp,
        Dialect.LMTP: mail.lmtp,
        Dialect.IMAP: mail.imap,
        Dialect.POP3: mail.pop3,
        Dialect.FTP: mail.ftp,
        Dialect.NNTP: mail.nntp,
        Dialect.SIEVE: mail.sieve,
        Dialect.XMPP: xmpp.xmpp,
        Dialect.XMPP_SERVER: xmpp.xmpp_server,
        Dialect.POSTGRES: db.postgres,
        Dialect.LDAP: ldap.ldap,
        Dialect.MYSQL: db.mysql,
    }
)


def negotiate(
    sock: socket.socket,
    dialect: Dialect,
    name: str,
    *,
    deadline: float,
    where: str,
    timeout: float,
) -> None:
    """Speak ``dialect`` on the non-blocking ``sock`` until the server is ready for a TLS
    ClientHello, by the monotonic ``deadline``. ``name`` is the server's name, ``where`` and
    ``timeout`` are for messages.

    Raises:
        ProbeError: ``{where}: {stage}: {problem}``, also when the server sends anything in
            plaintext after its go-ahead (a STARTTLS injection).
    """
    talk = Plaintext(sock, deadline, where, timeout)
    NEGOTIATE[dialect](talk, name)
    talk.ensure_nothing_pending()
