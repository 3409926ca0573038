"""The data model: what the map says, as frozen values. No I/O, no YAML, no sockets.

The lineage parts a placed file holds (:class:`Part`), the files (:class:`FileSpec`), the
endpoints that must serve the certificate (:class:`Endpoint`, :class:`Dialect`), the
consumers (:class:`Consumer`) and the whole map (:class:`Config`), with the plain constants
they need: defaults and limits for the timeouts, Certbot's default directory, the map's default
path and its environment variable, the default job count and status's expiry thresholds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Certbot's default --config-dir: live/, archive/ and renewal/ live under it.
DEFAULT_CERTBOT_DIR = "/etc/letsencrypt"

# Where the map is read from: --config, else $CERTBOT_FANOUT_CONFIG, else the system path.
DEFAULT_CONFIG_PATH = "/etc/certbot-fanout/consumers.yaml"
CONFIG_ENV = "CERTBOT_FANOUT_CONFIG"

# How many consumers deploy (its --jobs) and status handle at once.
DEFAULT_JOBS = 128
# Other hosts (``hosts:``): how many are connected to at once, the project's own known_hosts
# file (``hosts trust`` pins keys there), and where a run keeps its ssh control sockets.
DEFAULT_HOST_JOBS = 32
DEFAULT_KNOWN_HOSTS = "/var/lib/certbot-fanout/known_hosts"
DEFAULT_RUNTIME_DIR = "/run/certbot-fanout"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_PYTHON = "python3"
# The container engine's API socket a consumer's `container:` reaches when it names none
# (Docker's; Podman's service listens on /run/podman/podman.sock).
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"

# Seconds a consumer's reload and the verification of its endpoints may take, unless the map
# says otherwise; a timeout in the map is more than 0 and at most MAX_TIMEOUT (a day).
DEFAULT_RELOAD_TIMEOUT = 60.0
DEFAULT_VERIFY_TIMEOUT = 60.0
MAX_TIMEOUT = 86400.0

# status: WARNING, then CRITICAL, when what is served expires within this many days.
DEFAULT_WARN_DAYS = 21.0
DEFAULT_CRIT_DAYS = 7.0

# notify: how a mail is handed to the local MTA (the message on stdin), and the seconds a
# webhook may take by default and at most.
DEFAULT_SENDMAIL = ("/usr/sbin/sendmail", "-t", "-oi")
DEFAULT_WEBHOOK_TIMEOUT = 10.0
MAX_WEBHOOK_TIMEOUT = 60.0


class Dialect(enum.Enum):
    """A STARTTLS protocol: what an endpoint speaks before the TLS handshake."""

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


class Family(enum.Enum):
    """An address family an endpoint is checked over (unset: every address its host has)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


class KeyType(enum.Enum):
    """The kind of key a certificate certifies, as far as the probe can ask a server for it."""

    RSA = "rsa"
    ECDSA = "ecdsa"


class Part(enum.Enum):
    """A piece of the lineage that a placed file can hold."""

    CERT = "cert"
    CHAIN = "chain"
    FULLCHAIN = "fullchain"
    PRIVKEY = "privkey"


class Encoding(enum.Enum):
    """How a placed copy holds its parts."""

    PEM = "pem"  # the parts as PEM, in order
    DER = "der"  # the certificate alone, DER (content: der)
    PKCS12 = "pkcs12"  # key, certificate and chain in one PKCS#12 file (content: pkcs12)


@dataclass(frozen=True)
class Keystore:
    """How a PKCS#12 file is protected and named. The password stays in its file: the
    model holds only the path."""

    password_file: str
    legacy: bool = False  # PBE-SHA1-3DES with a SHA-1 MAC, for older Java and Windows
    alias: str | None = None  # the friendly name; None: the lineage's name


@dataclass(frozen=True)
class FileSpec:
    """One file a consumer reads: a copy of some lineage parts, or a symlink into live/."""

    path: str
    content: tuple[Part, ...]
    owner: int
    group: int
    mode: int
    link: bool = False
    owner_name: str = "root"
    group_name: str = "root"
    # content: der is (CERT,) as DER; content: pkcs12 is (PRIVKEY, FULLCHAIN) in a keystore.
    encoding: Encoding = Encoding.PEM
    keystore: Keystore | None = None  # set exactly when encoding is PKCS12
    # Rewrite the file's own inode (not atomic) instead of renaming a new one over it: for a
    # file a container or a private mount namespace was given through a single-file bind.
    inplace: bool = False

    @property
    def holds_key(self) -> bool:
        return Part.PRIVKEY in self.content


@dataclass(frozen=True)
class Endpoint:
    """A place where the consumer must serve the lineage's certificate (and its chain)."""

    host: str
    port: int
    server_name: str | None = None
    starttls: Dialect | None = None
    check_chain: bool = True
    family: Family | None = None  # only this family's addresses; None: every address
    # A Matrix server name: the endpoints are those its federation peers find (then host is
    # that name and port is 0), each checked against the system trust or ca_file too.
    federation: str | None = None
    ca_file: str | None = None
    # ``via: host``: probed through the ssh connection of the consumer's host, from the host
    # itself (its loopback, a port only it reaches); the host resolves ``host``.
    via_host: bool = False

    @property
    def label(self) -> str:
        if self.federation is not None:
            return f"federation {self.federation}"
        return address_label(self.host, self.port)


def address_label(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Webhook:
    """An HTTPS URL that gets the notification document by POST."""

    url: str
    headers_file: str | None = None  # "Name: value" lines, in a file only root can read
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    ca_file: str | None = None  # trust this CA instead of the system's


@dataclass(frozen=True)
class Notify:
    """Who hears when a consumer starts failing or recovers (``notify:``); empty: nobody."""

    mail: tuple[str, ...] = ()
    sendmail: tuple[str, ...] = DEFAULT_SENDMAIL
    webhook: Webhook | None = None
    command: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.mail) or self.webhook is not None or self.command is not None


@dataclass(frozen=True)
class ContainerSpec:
    """The containers a consumer runs in (``container:``), found through a container engine's
    API on its unix socket: by exact ``name``, by ``label`` ("KEY" or "KEY=VALUE"), or by
    ``compose_service``; every running match."""

    name: str | None = None
    label: str | None = None
    compose_service: str | None = None
    engine: str = DEFAULT_ENGINE_SOCKET

    @property
    def selector(self) -> dict[str, str]:
        found = {"name": self.name, "label": self.label, "compose_service": self.compose_service}
        return {k: v for k, v in found.items() if v is not None}

    @property
    def shown(self) -> str:
        """The selector in words: "name traefik", "label tls=1", "compose service web"."""
        key, value = next(iter(self.selector.items()))
        return f"{key.replace('_', ' ')} {value}"


@dataclass(frozen=True)
class ProcessSpec:
    """The process whose own view of the files is checked (``process:``): a systemd unit's
    main PID, the PID in a pid file, or the main process of that command name."""

    unit: str | None = None
    pid_file: str | None = None
    name: str | None = None

    @property
    def shown(self) -> str:
        if self.unit is not None:
            return f"unit {self.unit}"
        if self.pid_file is not None:
            return f"pid file {self.pid_file}"
        return f"process {self.name}"


@dataclass(frozen=True)
class ServiceReload:
    """A reload given as a mapping: a signal to the container's (or the process's) main
    process, a command run inside the container (no shell), or a restart of the container."""

    signal: str | None = None
    exec: tuple[str, ...] | None = None
    restart: bool = False

    @property
    def shown(self) -> str:
        if self.signal is not None:
            return f"signal {self.signal}"
        if self.exec is not None:
            return "exec " + " ".join(self.exec)
        return "restart"


@dataclass(frozen=True)
class Consumer:
    """A service that terminates TLS with one lineage's certificate."""

    name: str
    certificate: str
    files: tuple[FileSpec, ...] = ()
    test: tuple[str, ...] | None = None
    reload: tuple[str, ...] | None = None
    verify: tuple[Endpoint, ...] = ()
    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    notes: str = ""
    notify: Notify | None = None
    # The name of the host (in ``hosts:``) it lives on; None: this host. The files, test and
    # reload of a remote consumer happen there; its owners and groups are resolved there
    # (FileSpec.owner and group are then REMOTE_ID unless the map gave a number).
    host: str | None = None
    container: ContainerSpec | None = None
    process: ProcessSpec | None = None
    # ``reload:`` given as a mapping (signal, exec or restart); ``reload`` is then None.
    service_reload: ServiceReload | None = None

    @property
    def has_reload(self) -> bool:
        return bool(self.reload) or self.service_reload is not None


# A FileSpec's owner or group on another host, before that host resolved its name.
REMOTE_ID = -1


@dataclass(frozen=True)
class Host:
    """Another machine, reached with the system's OpenSSH client (``hosts:`` in the map)."""

    name: str
    ssh: str  # an ssh destination: [user@]host; the admin's ssh_config applies
    port: int | None = None
    ssh_config: str | None = None  # given to ssh as -F (None: ssh's own defaults)
    identity_file: str | None = None
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    python: str = DEFAULT_PYTHON  # the target's interpreter (3.9 or later)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # "agent": this host's placement code runs there (nothing installed but python3);
    # "receive": the target runs `certbot-fanout receive` with its own map (least privilege).
    mode: str = "agent"


@dataclass(frozen=True)
class Config:
    """A validated consumer map."""

    source: str
    consumers: tuple[Consumer, ...]
    hosts: tuple[Host, ...] = ()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def consumers_for(self, certificate: str) -> tuple[Consumer, ...]:
        return tuple(c for c in self.consumers if c.certificate == certificate)

    @property
    def certificates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.certificate for c in self.consumers))
