"""Real mail, FTP and news daemons on loopback, for the STARTTLS integration tests.

- Dovecot: one master (``dovecot -F -c CONF``, private base_dir) with imap, pop3, managesieve
  and lmtp on inet ports; reload ``doveadm -c CONF reload``.
- Postfix: a private config and queue directory, ``postfix -c DIR start``; smtpd on a loopback
  port with STARTTLS; reload ``postfix -c DIR reload``. ``LocalPostfix`` also delivers mail
  for ``USER@localhost`` to an mbox file per user in its own spool directory, and gives the
  ``sendmail -C DIR`` that submits to it (for the notify tests).
- vsftpd: standalone (``listen=YES``, ``background=NO``), explicit FTPS (AUTH TLS). vsftpd
  loads its certificate once at start: SIGHUP re-reads vsftpd.conf but keeps the old
  certificate, so it must be restarted. A supervisor thread restarts it when it exits, the way
  ``Restart=always`` / ``systemctl restart`` would: its reload is ``kill -TERM PID``.
- NNTP: a minimal STARTTLS news server written here (greeting 200, CAPABILITIES, STARTTLS ->
  382, TLS with the placed files; SIGHUP re-reads them). No real NNTP server is cheap: Debian's
  inn2 fails to configure on a host without a resolvable FQDN and pulls cron and an MTA.
  Run as ``python -m <package>.daemons_mail nntp PORT_FILE CERT KEY LOG``.

Every daemon listens on 127.0.0.1 ports chosen at run time, keeps its config, state and logs
in the directory it is given (which every user must be able to traverse: Dovecot's login
processes and Postfix's daemons run as their own users), and is stopped by PID with its
process family. The reference client is ``stack.openssl_served`` (``openssl s_client``).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import io
import mailbox
import os
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .proc import (
    KILL_BIN,
    STOP_TIMEOUT,
    ChildDaemon,
    Daemon,
    PidFileDaemon,
    account,
    alive,
    find_binary,
    free_port,
    retry_if_port_taken,
    spawn,
    stop_child,
    tail,
    wait_ports,
    wait_until,
)

__all__ = [
    "DOVEADM_BIN",
    "DOVECOT_BIN",
    "POSTFIX_BIN",
    "VSFTPD_BIN",
    "Dovecot",
    "LocalPostfix",
    "NntpServer",
    "Postfix",
    "Vsftpd",
]

DOVECOT_BIN = find_binary("dovecot", "/usr/sbin/dovecot")
DOVEADM_BIN = find_binary("doveadm", "/usr/bin/doveadm")
POSTFIX_BIN = find_binary("postfix", "/usr/sbin/postfix")
SENDMAIL_BIN = find_binary("sendmail", "/usr/sbin/sendmail")
POSTQUEUE_BIN = find_binary("postqueue", "/usr/sbin/postqueue")
VSFTPD_BIN = find_binary("vsftpd", "/usr/sbin/vsftpd")

_IN_USE = "Address already in use"


# --------------------------------------------------------------------------- Dovecot


class Dovecot(ChildDaemon):
    """One Dovecot master serving imap, pop3, sieve (ManageSieve) and lmtp with STARTTLS."""

    PROTOCOLS = ("imap", "pop3", "sieve", "lmtp")
    label = "dovecot"

    def __init__(self, workdir: Path, cert_file: Path, key_file: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.cert_file = Path(cert_file).resolve()
        self.key_file = Path(key_file).resolve()
        self.conf_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.launch_log = self.workdir / "launch.log"
        self.ports = {proto: 0 for proto in self.PROTOCOLS}
        self._proc: subprocess.Popen[bytes] | None = None

    def reload_argv(self) -> list[str]:
        return [DOVEADM_BIN, "-c", str(self.conf_path), "reload"]

    def write_config(self) -> None:
        w = self.workdir
        p = self.ports
        # No !include of /etc/dovecot: nothing of the system instance is read or touched.
        self.conf_path.write_text(
            f"""\
base_dir = {w}/run
state_dir = {w}/state
log_path = {self.log_path}
protocols = imap pop3 lmtp sieve
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
mail_location = maildir:{w}/mail/%u
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={w}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p["imap"]}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {p["pop3"]}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    address = 127.0.0.1
    port = {p["sieve"]}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {p["lmtp"]}
  }}
}}
"""
        )

    def _logs(self) -> str:
        return f"--- launch:\n{tail(self.launch_log)}\n--- dovecot.log:\n{tail(self.log_path)}"

    def start(self) -> None:
        if self.running:
            raise RuntimeError("dovecot already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        retry_if_port_taken(self._start_once, self.stop, lambda: _IN_USE in self._logs())

    def _start_once(self) -> None:
        self.ports = {proto: free_port() for proto in self.PROTOCOLS}
        self.write_config()
        self._proc = spawn([DOVECOT_BIN, "-F", "-c", str(self.conf_path)], self.launch_log)
        wait_ports("dovecot", self.ports, lambda: self.running, self._logs)


# --------------------------------------------------------------------------- Postfix

# Only what smtpd needs to greet, offer STARTTLS and accept mail; chroot off (a chroot would
# need copies of /etc files inside the queue directory).
_POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(PidFileDaemon):
    """A private Postfix instance: ``postfix -c ETC start``; smtpd on 127.0.0.1:port.

    ``chain_file`` holds the key, then the certificate, then the chain (``smtpd_tls_chain_files``,
    the order Postfix recommends)."""

    label = "postfix"
    comm = "master"
    mydestination = ""  # the domains delivered here: none, it only greets and relays

    def __init__(self, workdir: Path, chain_file: Path, hostname: str = "localhost") -> None:
        self.workdir = Path(workdir).resolve()
        self.chain_file = Path(chain_file).resolve()
        self.hostname = hostname
        self.etc = self.workdir / "etc"
        self.spool = self.workdir / "spool"
        self.data = self.workdir / "data"
        self.maillog = self.workdir / "maillog"
        self.launch_log = self.workdir / "launch.log"
        self.pid_file = self.spool / "pid" / "master.pid"
        self.port = 0

    def _cmd(self, *args: str) -> list[str]:
        return [POSTFIX_BIN, "-c", str(self.etc), *args]

    def check_argv(self) -> list[str]:
        return self._cmd("check")

    def reload_argv(self) -> list[str]:
        return self._cmd("reload")

    def write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(exist_ok=True)  # root 0755; postfix creates the rest
        self.data.mkdir(exist_ok=True)
        os.chown(self.data, account("postfix").uid, -1)
        (self.etc / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {self.hostname}
mydestination = {self.mydestination}
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file_prefixes = {self.workdir}
maillog_file = {self.maillog}
smtpd_tls_security_level = may
smtpd_tls_chain_files = {self.chain_file}
{self.main_cf_extra()}"""
        )
        (self.etc / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n{_POSTFIX_SERVICES}"
        )

    def main_cf_extra(self) -> str:
        """More main.cf lines, for a subclass."""
        return ""

    def logs(self) -> str:
        return f"--- launch:\n{tail(self.launch_log)}\n--- maillog:\n{tail(self.maillog)}"

    def start(self) -> None:
        if self.running:
            raise RuntimeError("postfix already running")
        retry_if_port_taken(self._start_once, self.stop, lambda: _IN_USE in self.logs())

    def _start_once(self) -> None:
        self.port = free_port()
        self.write_config()
        # postfix logs to maillog_file, not stderr; `postfix start` returns once master has
        # started, and master wrote its PID before that.
        self.launch(self._cmd("start"), self.launch_log)


class LocalPostfix(Postfix):
    """A private Postfix that delivers mail for any ``USER@localhost`` (a real account) to
    the mbox ``mailbox(USER)`` in its own sticky spool directory, as the local(8) agent does
    for the system's /var/mail; ``sendmail_argv()`` submits to this instance (sendmail -C)."""

    mydestination = "localhost"

    def __init__(self, workdir: Path, chain_file: Path) -> None:
        super().__init__(workdir, chain_file, hostname="localhost")
        self.mail_dir = self.workdir / "mail"

    def main_cf_extra(self) -> str:
        self.mail_dir.mkdir(exist_ok=True)
        self.mail_dir.chmod(0o1777)
        return f"local_recipient_maps =\nmail_spool_directory = {self.mail_dir}\nbiff = no\n"

    def sendmail_argv(self) -> list[str]:
        return [SENDMAIL_BIN, "-C", str(self.etc), "-t", "-oi"]

    def mailbox(self, user: str) -> Path:
        return self.mail_dir / user

    def messages(self, user: str) -> list[email.message.Message]:
        """The messages delivered to ``user`` so far, oldest first."""
        path = self.mailbox(user)
        if not path.exists():
            return []
        box = mailbox.mbox(path, create=False)
        try:
            return [email.message_from_bytes(box.get_bytes(key)) for key in box.iterkeys()]
        finally:
            box.close()

    def queue_empty(self) -> bool:
        """Nothing waits in this instance's queue (``postqueue -p``): all mail was delivered."""
        result = subprocess.run(
            [POSTQUEUE_BIN, "-c", str(self.etc), "-p"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return "Mail queue is empty" in result.stdout + result.stderr

    def wait_for_messages(self, user: str, count: int, timeout: float = 20.0) -> None:
        """Wait until ``user``'s mbox holds ``count`` messages."""
        wait_until(
            f"{count} message(s) for {user}",
            lambda: len(self.messages(user)) >= count,
            lambda: self.running,
            self.logs,
            timeout=timeout,
        )


# --------------------------------------------------------------------------- vsftpd


class Vsftpd(Daemon):
    """vsftpd standalone with explicit FTPS, restarted by a supervisor whenever it exits."""

    def __init__(self, workdir: Path, cert_file: Path, key_file: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.cert_file = Path(cert_file).resolve()
        self.key_file = Path(key_file).resolve()
        self.conf_path = self.workdir / "vsftpd.conf"
        self.log_path = self.workdir / "vsftpd.log"
        self.launch_log = self.workdir / "launch.log"
        self.empty = self.workdir / "empty"
        self.port = 0
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._supervisor: threading.Thread | None = None

    @property
    def pid(self) -> int:
        proc = self._proc
        if proc is None:
            raise RuntimeError("vsftpd not running")
        return proc.pid

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and alive(proc.pid)

    def restart_argv(self) -> list[str]:
        """Stop the running vsftpd (the supervisor starts a new one, which reads the files)."""
        return [KILL_BIN, "-TERM", str(self.pid)]

    def sighup_argv(self) -> list[str]:
        """What looks like a reload but is not one for vsftpd's certificate."""
        return [KILL_BIN, "-HUP", str(self.pid)]

    def write_config(self) -> None:
        self.empty.mkdir(parents=True, exist_ok=True)
        self.empty.chmod(0o755)  # secure_chroot_dir: root-owned, not writable
        self.conf_path.write_text(
            f"""\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={self.port}
background=NO
anonymous_enable=YES
anon_root={self.empty}
no_anon_password=YES
local_enable=NO
write_enable=NO
pasv_enable=NO
secure_chroot_dir={self.empty}
xferlog_enable=NO
vsftpd_log_file={self.log_path}
ssl_enable=YES
allow_anon_ssl=YES
rsa_cert_file={self.cert_file}
rsa_private_key_file={self.key_file}
"""
        )

    def _logs(self) -> str:
        return f"--- vsftpd output:\n{tail(self.launch_log)}"

    def _launch(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        return spawn([VSFTPD_BIN, str(self.conf_path)], self.launch_log)

    def start(self) -> None:
        if self.running:
            raise RuntimeError("vsftpd already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # vsftpd says "500 OOPS: could not bind listening IPv4 socket"
        retry_if_port_taken(self._start_once, self.stop, lambda: "could not bind" in self._logs())
        self._stopping = False
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _start_once(self) -> None:
        self.port = free_port()
        self.write_config()
        self._proc = self._launch()
        wait_ports("vsftpd", {"ftp": self.port}, lambda: self.running, self._logs)

    def _supervise(self) -> None:
        delay = 0.05
        while True:
            proc = self._proc
            if proc is None:
                return
            # Stopped (a restart): start again at once. Died (a bad certificate, a taken
            # port): try again ever more slowly, as an init system would.
            stopped = proc.wait() == -signal.SIGTERM
            delay = 0.05 if stopped else min(delay * 2, 1.0)
            time.sleep(delay)
            with self._lock:
                if self._stopping:
                    return
                self._proc = self._launch()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            proc = self._proc
        stop_child(proc)
        if self._supervisor is not None:
            self._supervisor.join(STOP_TIMEOUT)
            self._supervisor = None
        self._proc = None


# --------------------------------------------------------------------------- NNTP


class NntpServer(ChildDaemon):
    """The minimal NNTP STARTTLS server below, in its own Python process."""

    label = "nntp server"

    def __init__(self, workdir: Path, cert_file: Path, key_file: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.cert_file = Path(cert_file).resolve()
        self.key_file = Path(key_file).resolve()
        self.port_file = self.workdir / "port"
        self.log_path = self.workdir / "nntp.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def reload_argv(self) -> list[str]:
        return [KILL_BIN, "-HUP", str(self.pid)]

    def start(self) -> None:
        if self.running:
            raise RuntimeError("nntp server already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        # Run this module with -m from the directory its package is imported from.
        top = Path(__file__).resolve().parents[__name__.count(".")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(top), env.get("PYTHONPATH")]))
        self._proc = spawn(
            [
                sys.executable,
                "-m",
                __name__,
                "nntp",
                str(self.port_file),
                str(self.cert_file),
                str(self.key_file),
                str(self.log_path),
            ],
            self.log_path,
            env=env,
        )

        def port_known() -> bool:
            with contextlib.suppress(OSError, ValueError):
                self.port = int(self.port_file.read_text())
            return bool(self.port)

        try:
            wait_until("nntp server (port file)", port_known, lambda: self.running, self._logs)
        except RuntimeError:
            self.stop()
            raise
        wait_ports("nntp server", {"nntp": self.port}, lambda: self.running, self._logs)

    def _logs(self) -> str:
        return tail(self.log_path)


_NNTP_CAPABILITIES = b"101 Capability list:\r\nVERSION 2\r\nREADER\r\n"


class _NntpTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert: str, key: str, log: Callable[[str], None]) -> None:
        super().__init__(("127.0.0.1", 0), _NntpHandler)
        self.cert, self.key, self.log = cert, key, log
        self.context = self.load()

    def load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)  # fullchain: the chain is sent too
        return ctx

    def reload(self) -> None:
        """SIGHUP: re-read the files; keep the old context if they are unusable."""
        try:
            self.context = self.load()
            self.log("reloaded the certificate")
        except (OSError, ssl.SSLError) as e:
            self.log(f"reload failed, keeping the old certificate: {e}")


class _NntpHandler(socketserver.StreamRequestHandler):
    server: _NntpTCPServer
    timeout = 10

    secure: ssl.SSLSocket | None = None

    def handle(self) -> None:
        try:
            self.converse()
        except (OSError, ssl.SSLError) as e:
            self.server.log(f"connection ended: {e}")
        finally:
            if self.secure is not None:
                self.secure.close()

    def converse(self) -> None:
        reader: io.BufferedIOBase = self.rfile
        writer: Callable[[bytes], object] = self.request.sendall
        writer(b"200 certbot-fanout test NNTP server ready (posting ok)\r\n")
        while True:
            line = reader.readline(1024)
            if not line:
                return
            command = line.strip().split(b" ", 1)[0].upper()
            if command == b"CAPABILITIES":
                starttls = b"" if self.secure else b"STARTTLS\r\n"
                writer(_NNTP_CAPABILITIES + starttls + b".\r\n")
            elif command == b"STARTTLS" and self.secure is None:
                # The client waits for 382 before its ClientHello; anything it pipelined stays
                # behind in the plaintext reader, never read as if it came through TLS.
                writer(b"382 Continue with TLS negotiation\r\n")
                self.secure = self.server.context.wrap_socket(self.request, server_side=True)
                reader = self.secure.makefile("rb")
                writer = self.secure.sendall
            elif command == b"QUIT":
                writer(b"205 closing connection\r\n")
                return
            else:
                writer(b"500 What?\r\n")


def _serve_nntp(port_file: str, cert: str, key: str, log_path: str) -> None:
    def log(message: str) -> None:
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} nntp[{os.getpid()}]: {message}\n")

    server = _NntpTCPServer(cert, key, log)
    signal.signal(signal.SIGHUP, lambda _sig, _frame: server.reload())
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    tmp = f"{port_file}.tmp"
    Path(tmp).write_text(str(server.server_address[1]))
    os.replace(tmp, port_file)
    log(f"listening on 127.0.0.1:{server.server_address[1]}")
    with server:
        server.serve_forever(poll_interval=0.1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 5 and args[0] == "nntp":
        _serve_nntp(*args[1:])
        return 0
    print("usage: python -m PACKAGE.daemons_mail nntp PORT_FILE CERT KEY LOG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
