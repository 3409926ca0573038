"""``certbot-fanout demo``: the real deploy path against throwaway services, no root, no network.

Everything lives in one temporary directory that is removed at the end, and every process the
demo starts is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from certbot_fanout._pki import Issued, ThrowawayCA, write_lineage
from certbot_fanout.lineage import fingerprint
from certbot_fanout.probe import fetch_leaf

NAME = "demo.test"
_WORDS = ("no", "one", "two", "three", "four", "five", "six")

# The directory this certbot_fanout was imported from, for the demo's own Python processes.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN_MODULE = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    'runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)'
)


def python_module_argv(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter and this certbot_fanout, isolated
    (``-I``): ``-m`` alone would put the working directory first on sys.path (and honour
    PYTHONPATH and the user's site), so a ``certbot_fanout`` planted where the demo is started
    would run instead."""
    return [sys.executable, "-I", "-c", _RUN_MODULE, _PACKAGE_ROOT, module, *args]


class _Service:
    """A demo TLS service process reading ``cert``/``key`` and reloading on SIGHUP."""

    def __init__(self, workdir: str, label: str, cert: str, key: str) -> None:
        self.label = label
        self.cert = cert
        self.key = key
        port_file = os.path.join(workdir, f"{label}.port")
        self.log = open(os.path.join(workdir, f"{label}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            python_module_argv(
                "certbot_fanout._demo_server",
                "--cert",
                cert,
                "--key",
                key,
                "--port-file",
                port_file,
            ),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"demo service {label} did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())

    def reload_argv(self) -> list[str]:
        return [
            sys.executable,
            "-I",
            "-c",
            "import os,sys; os.kill(int(sys.argv[1]), 1)",
            str(self.proc.pid),
        ]

    def serves(self) -> str:
        return fingerprint(fetch_leaf("127.0.0.1", self.port, NAME, 5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _fp(issued: Issued) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return fingerprint(x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(Encoding.DER))


def _config(workdir: str, services: list[_Service], stale: _Service | None) -> str:
    uid, gid = os.getuid(), os.getgid()
    blocks = []
    for svc in [*services, *([stale] if stale else [])]:
        copy_dir = os.path.join(workdir, "services", svc.label)
        reload_words = ", ".join(json.dumps(w) for w in svc.reload_argv())
        block = f"""\
  {svc.label}:
    certificate: {NAME}
    files:
      - {{path: {copy_dir}/fullchain.pem, content: fullchain, owner: {uid}, group: {gid}}}
      - {{path: {copy_dir}/privkey.pem, content: privkey, owner: {uid}, group: {gid}}}
    reload: [{reload_words}]
    verify:
      - {{host: 127.0.0.1, port: {svc.port}}}
"""
        if svc is stale:
            block += """\
    verify_timeout: 3
    notes: |
      Stands in for Synapse's federation listener, which terminates TLS itself.
      It was set up by hand with its own copy of the certificate, in a path nobody wrote down.
"""
        else:
            block += "    verify_timeout: 15\n"
            test_words = ", ".join(
                json.dumps(w)
                for w in python_module_argv(
                    "certbot_fanout._demo_server", "--check", "--cert", svc.cert, "--key", svc.key
                )
            )
            block += f"    test: [{test_words}]\n"
        blocks.append(block)
    path = os.path.join(workdir, "consumers.yaml")
    with open(path, "w") as f:
        f.write("version: 1\nconsumers:\n" + "".join(blocks))
    return path


@contextlib.contextmanager
def _workspace() -> Iterator[str]:
    workdir = tempfile.mkdtemp(prefix="certbot-fanout-demo-")
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_demo(out: TextIO, command: Callable[[Sequence[str]], int]) -> int:
    """Run the demonstration; 0 when everything behaved as the demo says it should.

    ``command`` runs one certbot-fanout command line (the CLI passes its own ``main``, writing
    to ``out``), so the demo drives the real command without importing the CLI back.
    """

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    services: list[_Service] = []
    with _workspace() as workdir:
        try:
            say(f"certbot-fanout demo: working in {workdir} (removed at the end)\n")
            ca = ThrowawayCA("certbot-fanout demo")
            config_dir = os.path.join(workdir, "letsencrypt")
            old = ca.issue([NAME], days=90)
            live = write_lineage(config_dir, NAME, old)
            say(f"1. A throwaway CA issued {NAME}; certbot-shaped lineage at {live}")

            for label in ("web", "federation", "federation-forgotten"):
                copy_dir = os.path.join(workdir, "services", label)
                os.makedirs(copy_dir)
                _write(os.path.join(copy_dir, "fullchain.pem"), old.fullchain_pem, 0o644)
                _write(os.path.join(copy_dir, "privkey.pem"), old.key_pem, 0o600)
            forgotten_dir = os.path.join(workdir, "services", "federation-forgotten")
            os.makedirs(os.path.join(workdir, "services", "federation-stale"))
            web = _Service(workdir, "web", *_copy_paths(workdir, "web"))
            services.append(web)
            fed = _Service(workdir, "federation", *_copy_paths(workdir, "federation"))
            services.append(fed)
            # The story's service: the map places files for it, but it reads another copy.
            stale = _Service(
                workdir,
                "federation-stale",
                os.path.join(forgotten_dir, "fullchain.pem"),
                os.path.join(forgotten_dir, "privkey.pem"),
            )
            services.append(stale)
            old_fp = _fp(old)
            roles = {
                web.label: "stands in for nginx",
                fed.label: "stands in for Synapse on 8448",
                stale.label: "a second listener, set up by hand; not in the map yet",
            }
            count = _WORDS[len(services)] if len(services) < len(_WORDS) else str(len(services))
            say(
                f"2. {count.capitalize()} loopback TLS services start, each from its own copy of "
                "the certificate:"
            )
            width = max(len(svc.label) for svc in services)
            for svc in services:
                say(f"     {svc.label:<{width}}  127.0.0.1:{svc.port}  ({roles[svc.label]})")
            for svc in services:
                if svc.serves() != old_fp:
                    raise RuntimeError(f"{svc.label} does not serve the first certificate")
            say(f"   all serve the first certificate (SHA-256 {old_fp[:16]}...)\n")

            new = ca.issue([NAME], days=90)
            write_lineage(config_dir, NAME, new)
            new_fp = _fp(new)
            say(f"3. Certbot renews {NAME} (new SHA-256 {new_fp[:16]}...); its deploy hook runs")
            config = _config(workdir, [web, fed], None)
            say(f"   certbot-fanout deploy --config {config} --lineage {live}\n")
            code = command(_deploy_argv(workdir, config, live))
            say(f"   exit code {code}\n")
            good = code == 0 and web.serves() == new_fp and fed.serves() == new_fp

            say("4. The story this tool was born from: a second TLS listener that reads a copy")
            say(
                "   nobody wrote down. Its reload exits 0 and it keeps serving the old certificate."
            )
            say(
                f"   Added to the map as federation-stale (127.0.0.1:{stale.port}); deploy again:\n"
            )
            config = _config(workdir, [web, fed], stale)
            code2 = command(_deploy_argv(workdir, config, live))
            say(f"   exit code {code2}: certbot's log and your mail get this, not three months of")
            say("   silence. The other consumers were still checked, and are current.\n")
            caught = code2 == 1 and stale.serves() == old_fp and web.serves() == new_fp
            if good and caught:
                say("Demo passed: both services turned to the renewed certificate, proven by a TLS")
                say("handshake; the stale one was caught and named.")
                return 0
            say("Demo FAILED: the deploy did not behave as described above.")
            return 1
        finally:
            for svc in services:
                svc.stop()


def _deploy_argv(workdir: str, config: str, live: str) -> list[str]:
    """The demo's deploy of lineage ``live`` with the map at ``config``, keeping its lock and
    state files in ``workdir``."""
    lock = os.path.join(workdir, "fanout.lock")
    state = os.path.join(workdir, "state.json")
    return ["deploy", "--config", config, "--lineage", live, "--lock-file", lock,
            "--state-file", state]  # fmt: skip


def _copy_paths(workdir: str, label: str) -> tuple[str, str]:
    copy_dir = os.path.join(workdir, "services", label)
    return os.path.join(copy_dir, "fullchain.pem"), os.path.join(copy_dir, "privkey.pem")
