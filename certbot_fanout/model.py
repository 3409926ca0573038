"""The data model: what the map says, as frozen values. No I/O, no YAML, no sockets."""

from __future__ import annotations

import enum

# Certbot's default --config-dir: live/, archive/ and renewal/ live under it.
DEFAULT_CERTBOT_DIR = "/etc/letsencrypt"

# How many consumers deploy and status handle at once (--jobs).
DEFAULT_JOBS = 128


class Dialect(enum.Enum):
    SMTP = "smtp"
    LMTP = "lmtp"
    IMAP = "imap"
    POP3 = "pop3"
    FTP = "ftp"
    NNTP = "nntp"
    SIEVE = "sieve"
    XMPP = "xmpp"
    XMPP_SERVER = "xmpp-server"
    POSTGRES = "postgres"
    LDAP = "ldap"
    MYSQL = "mysql"
