"""Presets: what a common service needs, with Debian's paths, users and commands.

``preset: NAME`` on a consumer fills in every consumer field the user did not set; a field the
user sets replaces the preset's whole field. The templates are YAML read by the same validation
as the user's map; ``{certificate}`` stands for the consumer's lineage name. A preset with
``federation`` (Synapse's) also verifies the Matrix server name the way federation peers find
it, when the server name is known (Debian's matrix-synapse package records it in
``SYNAPSE_SERVER_NAME_FILE``; the schema reads it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

# A preset writes the certificate name into its paths (inside quoted YAML): only these.
CERTIFICATE_RE = re.compile(r"^[A-Za-z0-9._@+-]+$")

# Where Debian's matrix-synapse package keeps the server name it was configured with.
SYNAPSE_SERVER_NAME_FILE = "/etc/matrix-synapse/conf.d/server_name.yaml"


def usable_certificate(name: str) -> bool:
    """Whether a lineage name can go into a preset's paths (and is a lineage name at all)."""
    return bool(CERTIFICATE_RE.match(name)) and name not in (".", "..")


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar that reads back as that string (quoted only when needed)."""
    try:
        plain = yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    template: str
    # Its verify (the template's last field) also gets {federation: SERVER_NAME} when the
    # Matrix server name is known.
    federation: bool = False

    def expand(self, certificate: str, server_name: str | None = None) -> str:
        text = self.template.replace("{certificate}", certificate)
        if self.federation and server_name:
            text += f"  - {{federation: {_scalar(server_name)}}}\n"
        return text

    def entry(self, certificate: str, server_name: str | None = None) -> str:
        """A complete consumer entry (named after the preset) with every field the preset
        fills in, indented to paste under ``consumers:`` in a map."""
        fields = "".join(
            f"    {line}\n" if line else "\n"
            for line in self.expand(certificate, server_name).splitlines()
        )
        return f"  {self.name}:\n    certificate: {_scalar(certificate)}\n{fields}"

    def whole_map(self, certificate: str, server_name: str | None = None) -> str:
        """A whole map (``version: 1``) whose one consumer is :meth:`entry`."""
        return f"version: 1\nconsumers:\n{self.entry(certificate, server_name)}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "nginx",
            "nginx: fullchain and key, nginx -t, reload, TLS on 443",
            """\
files:
  - {path: "/etc/nginx/tls/{certificate}/fullchain.pem", content: fullchain, owner: root, group: root, mode: "0644"}
  - {path: "/etc/nginx/tls/{certificate}/privkey.pem", content: privkey, owner: root, group: root, mode: "0600"}
test: [nginx, -t]
reload: [systemctl, reload, nginx]
verify:
  - {host: 127.0.0.1, port: 443}
""",
        ),
        Preset(
            "apache",
            "Apache httpd: fullchain and key, apache2ctl configtest, graceful reload, TLS on 443",
            """\
files:
  - {path: "/etc/apache2/tls/{certificate}/fullchain.pem", content: fullchain, owner: root, group: root, mode: "0644"}
  - {path: "/etc/apache2/tls/{certificate}/privkey.pem", content: privkey, owner: root, group: root, mode: "0600"}
test: [apache2ctl, configtest]
reload: [systemctl, reload, apache2]
verify:
  - {host: 127.0.0.1, port: 443}
""",
        ),
        Preset(
            "haproxy",
            "HAProxy: one PEM (fullchain then key), haproxy -c, reload, TLS on 443",
            """\
files:
  - {path: "/etc/haproxy/certs/{certificate}.pem", content: [fullchain, privkey], owner: root, group: root, mode: "0600"}
test: [haproxy, -c, -q, -f, /etc/haproxy/haproxy.cfg]
reload: [systemctl, reload, haproxy]
verify:
  - {host: 127.0.0.1, port: 443}
""",
        ),
        Preset(
            "synapse",
            "Synapse's own TLS listener: copies owned by matrix-synapse, SIGHUP, federation on 8448",
            """\
files:
  - {path: "/etc/matrix-synapse/tls/{certificate}/fullchain.pem", content: fullchain, owner: matrix-synapse, group: matrix-synapse, mode: "0644"}
  - {path: "/etc/matrix-synapse/tls/{certificate}/privkey.pem", content: privkey, owner: matrix-synapse, group: matrix-synapse, mode: "0600"}
reload: [systemctl, reload, matrix-synapse]
verify:
  - {host: 127.0.0.1, port: 8448}
""",
            federation=True,
        ),
        Preset(
            "postfix",
            "Postfix: one file, key first (smtpd_tls_chain_files), postfix check, reload, "
            "SMTP STARTTLS on 25",
            """\
files:
  - {path: "/etc/postfix/tls/{certificate}.pem", content: [privkey, fullchain], owner: root, group: root, mode: "0600"}
test: [postfix, check]
reload: [postfix, reload]
verify:
  - {host: 127.0.0.1, port: 25, starttls: smtp}
""",
        ),
        Preset(
            "dovecot",
            "Dovecot: fullchain and key, doveconf check, doveadm reload, IMAP STARTTLS on 143",
            """\
files:
  - {path: "/etc/dovecot/tls/{certificate}/fullchain.pem", content: fullchain, owner: root, group: root, mode: "0644"}
  - {path: "/etc/dovecot/tls/{certificate}/privkey.pem", content: privkey, owner: root, group: root, mode: "0600"}
test: [doveconf, -n]
reload: [doveadm, reload]
verify:
  - {host: 127.0.0.1, port: 143, starttls: imap}
""",
        ),
        Preset(
            "exim",
            "Exim: fullchain and key readable by Debian-exim, exim4 -bV, reload, "
            "SMTP STARTTLS on 25",
            """\
files:
  - {path: "/etc/exim4/tls/{certificate}/fullchain.pem", content: fullchain, owner: root, group: Debian-exim, mode: "0644"}
  - {path: "/etc/exim4/tls/{certificate}/privkey.pem", content: privkey, owner: root, group: Debian-exim, mode: "0640"}
test: [exim4, -bV]
reload: [systemctl, reload, exim4]
verify:
  - {host: 127.0.0.1, port: 25, starttls: smtp}
""",
        ),
        Preset(
            "postgresql",
            "PostgreSQL: key owned by postgres 0600, reload, postgres STARTTLS on 5432",
            """\
files:
  - {path: "/etc/postgresql/tls/{certificate}/fullchain.pem", content: fullchain, owner: postgres, group: postgres, mode: "0644"}
  - {path: "/etc/postgresql/tls/{certificate}/privkey.pem", content: privkey, owner: postgres, group: postgres, mode: "0600"}
reload: [systemctl, reload, postgresql]
verify:
  - {host: 127.0.0.1, port: 5432, starttls: postgres}
notes: |
  PostgreSQL refuses a key readable by others on reload, logs one line and keeps the old
  certificate; the verify step is what catches that.
""",
        ),
        Preset(
            "mariadb",
            "MariaDB: files owned by mysql, FLUSH SSL, mysql STARTTLS on 3306",
            """\
files:
  - {path: "/etc/mysql/tls/{certificate}/fullchain.pem", content: fullchain, owner: mysql, group: mysql, mode: "0644"}
  - {path: "/etc/mysql/tls/{certificate}/privkey.pem", content: privkey, owner: mysql, group: mysql, mode: "0600"}
reload: [mariadb, --execute, FLUSH SSL]
verify:
  - {host: 127.0.0.1, port: 3306, starttls: mysql}
""",
        ),
        Preset(
            "prosody",
            "Prosody: DOMAIN.crt and DOMAIN.key readable by prosody, prosodyctl reload, "
            "XMPP STARTTLS on 5222 and 5269",
            """\
files:
  - {path: "/etc/prosody/certs/{certificate}.crt", content: fullchain, owner: root, group: prosody, mode: "0644"}
  - {path: "/etc/prosody/certs/{certificate}.key", content: privkey, owner: root, group: prosody, mode: "0640"}
reload: [prosodyctl, reload]
verify:
  - {host: 127.0.0.1, port: 5222, starttls: xmpp}
  - {host: 127.0.0.1, port: 5269, starttls: xmpp-server}
""",
        ),
        Preset(
            "ejabberd",
            "ejabberd: one PEM owned by ejabberd, reload_config, XMPP STARTTLS on 5222",
            """\
files:
  - {path: "/etc/ejabberd/tls/{certificate}.pem", content: [fullchain, privkey], owner: ejabberd, group: ejabberd, mode: "0600"}
reload: [ejabberdctl, reload_config]
verify:
  - {host: 127.0.0.1, port: 5222, starttls: xmpp}
""",
        ),
        Preset(
            "coturn",
            "coturn: files owned by turnserver, SIGUSR2 (SIGHUP only reopens logs), TLS on 5349",
            """\
files:
  - {path: "/etc/coturn/tls/{certificate}/fullchain.pem", content: fullchain, owner: turnserver, group: turnserver, mode: "0644"}
  - {path: "/etc/coturn/tls/{certificate}/privkey.pem", content: privkey, owner: turnserver, group: turnserver, mode: "0600"}
reload: [pkill, --signal, USR2, --exact, turnserver]
verify:
  - {host: 127.0.0.1, port: 5349}
""",
        ),
        Preset(
            "mosquitto",
            "Mosquitto: files owned by mosquitto, SIGHUP, MQTT over TLS on 8883",
            """\
files:
  - {path: "/etc/mosquitto/certs/{certificate}/fullchain.pem", content: fullchain, owner: mosquitto, group: mosquitto, mode: "0644"}
  - {path: "/etc/mosquitto/certs/{certificate}/privkey.pem", content: privkey, owner: mosquitto, group: mosquitto, mode: "0600"}
reload: [systemctl, reload, mosquitto]
verify:
  - {host: 127.0.0.1, port: 8883}
""",
        ),
        Preset(
            "lighttpd",
            "lighttpd: no reload: it re-reads the pair when the key changes, so the key is "
            "written last; TLS on 443",
            """\
files:
  - {path: "/etc/lighttpd/tls/{certificate}/fullchain.pem", content: fullchain, owner: root, group: root, mode: "0644"}
  - {path: "/etc/lighttpd/tls/{certificate}/privkey.pem", content: privkey, owner: root, group: root, mode: "0600"}
test: [lighttpd, -tt, -f, /etc/lighttpd/lighttpd.conf]
verify:
  - {host: 127.0.0.1, port: 443}
""",
        ),
    )
}
