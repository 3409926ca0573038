"""What asking for a key type, or verifying trust, costs a probe.

Runs N sequential ``fetch_served`` calls against a real nginx on loopback that holds an ECDSA
and an RSA certificate for one name (one server block speaking TLS 1.2 and 1.3, one TLS 1.2
only), for each way of asking, and prints the median and 90th percentile per probe. Also: the
one-off cost of building a key-typed context (the ctypes call included) and of
``import certbot_fanout.probe``.

    .venv/bin/python bench/probe_keytype.py [--probes 200]

It needs nginx (Debian ``nginx-light``); everything lives in one temp dir, removed at the
end, and nginx is stopped by its PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certbot_fanout import probe
from certbot_fanout.model import KeyType
from certbot_fanout.probe import Trust, fetch_served

NAME = "bench.test"
_PEM = serialization.Encoding.PEM


def _pki(where: Path) -> None:
    """root.pem, and ecdsa.{pem,key} and rsa.{pem,key} for NAME, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    (where / "root.pem").write_bytes(root.public_bytes(_PEM))
    keys: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {
        "ecdsa": ec.generate_private_key(ec.SECP256R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    for label, key in keys.items():
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        (where / f"{label}.pem").write_bytes(leaf.public_bytes(_PEM))
        private = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        (where / f"{label}.key").write_bytes(key.private_bytes(_PEM, private, none))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _nginx(where: Path, ports: dict[str, int]) -> int:
    """Start nginx with one server per entry of ``ports`` (its ssl_protocols, and "RSA" for
    an RSA-only one; the others hold both certificates); its PID."""
    servers = ""
    for protocols, port in ports.items():
        labels = ["rsa"] if protocols == "RSA" else ["ecdsa", "rsa"]
        certs = "".join(
            f'        ssl_certificate "{where}/{label}.pem";\n'
            f'        ssl_certificate_key "{where}/{label}.key";\n'
            for label in labels
        )
        versions = "TLSv1.2 TLSv1.3" if protocols == "RSA" else protocols
        servers += (
            f"    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name {NAME};\n"
            f'        ssl_protocols {versions};\n{certs}        return 200 "ok\\n";\n    }}\n'
        )
    temps = "".join(
        f"    {kind}_temp_path {where}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (where / "nginx.conf").write_text(
        f"worker_processes 1;\npid {where}/nginx.pid;\nerror_log {where}/error.log;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n{temps}{servers}}}\n"
    )
    flags = ["-p", f"{where}/", "-c", f"{where}/nginx.conf", "-e", f"{where}/error.log"]
    subprocess.run(["nginx", *flags], check=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid = int((where / "nginx.pid").read_text())
            for port in ports.values():
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return pid
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError("nginx did not start:\n" + (where / "error.log").read_text())


def _time(port: int, n: int, **kwargs: object) -> list[float]:
    for _ in range(20):  # warm-up: the contexts, the caches
        fetch_served("127.0.0.1", port, NAME, 5, **kwargs)  # type: ignore[arg-type]
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fetch_served("127.0.0.1", port, NAME, 5, **kwargs)  # type: ignore[arg-type]
        times.append(time.perf_counter() - start)
    return times


def _report(label: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[int(len(ms) * 0.9)]
    print(
        f"  {label:<34} median {statistics.median(ms):6.3f} ms   p90 {p90:6.3f} ms   "
        f"total {sum(ms):7.1f} ms"
    )


def _one_offs() -> None:
    probe._reading_context.cache_clear()
    start = time.perf_counter()
    probe._reading_context(None)
    plain = time.perf_counter() - start
    probe._openssl.cache_clear()
    start = time.perf_counter()
    probe._reading_context(KeyType.RSA)
    typed = time.perf_counter() - start
    print(
        f"  context, no key type: {plain * 1000:.2f} ms; RSA (first, with ctypes): "
        f"{typed * 1000:.2f} ms"
    )
    code = "import certbot_fanout.probe"
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
        )
        last = [line for line in out.stderr.splitlines() if line.endswith("certbot_fanout.probe")]
        runs.append(int(last[-1].split("|")[1]))
        assert "ctypes" not in out.stderr, "import certbot_fanout.probe must not import ctypes"
    print(f"  import certbot_fanout.probe: {statistics.median(runs) / 1000:.1f} ms (no ctypes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe-keytype-bench.") as tmp:
        where = Path(tmp)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (where / kind).mkdir()
        _pki(where)
        ports = {"TLSv1.2 TLSv1.3": _free_port(), "TLSv1.2": _free_port(), "RSA": _free_port()}
        pid = _nginx(where, ports)
        try:
            trust = Trust(NAME, str(where / "root.pem"))
            for protocols in ("TLSv1.2 TLSv1.3", "TLSv1.2"):
                port = ports[protocols]
                print(f"nginx with ssl_protocols {protocols}, {args.probes} probes each:")
                _report("no key type", _time(port, args.probes))
                _report("key type RSA", _time(port, args.probes, key_type=KeyType.RSA))
                _report("key type ECDSA", _time(port, args.probes, key_type=KeyType.ECDSA))
                _report("trust (CA file)", _time(port, args.probes, trust=trust))
                _report(
                    "trust + RSA",
                    _time(port, args.probes, key_type=KeyType.RSA, trust=trust),
                )
                untrusted = Trust(NAME)  # the system's trust store: not our root
                _report("trust fails (2 handshakes)", _time(port, args.probes, trust=untrusted))
                other = Trust("other.test", trust.ca_file)  # checked after the handshake
                _report("trust, name is not the SNI", _time(port, args.probes, trust=other))
            print("nginx with the RSA certificate alone (what RSA itself costs the server):")
            _report("no key type", _time(ports["RSA"], args.probes))
            _report("key type RSA", _time(ports["RSA"], args.probes, key_type=KeyType.RSA))
            print("one-off costs:")
            _one_offs()
        finally:
            os.kill(pid, signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
