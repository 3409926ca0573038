"""Every test helper, in one place: test modules import helpers from ``tests.support`` only.

- ``cli``: the one subprocess runner, the one in-process runner and ``explain``.
- ``lineages``: Certbot-shaped lineages from a throwaway CA (the ``lineages`` fixture).
- ``peers``: loopback TLS peers, honest and hostile, for probe and deploy tests.
- ``services``: SIGHUP-reloading loopback TLS services that count their reloads.
- ``public``: what a test runs as another user (a public copy of the package, an interpreter
  every user can run).
- ``tally``: the counts the hardening tests record for RELIABILITY.md.
- ``watch``: an inotify watcher, run as its own process by path.
- ``maps``: small builders for consumer maps.
- ``proc``: process plumbing for the daemons (ports, PIDs, service accounts, owned files).
- ``stack``: pebble, certbot, nginx and HAProxy; ``daemons_db``, ``daemons_mail``,
  ``daemons_xmpp``, ``synapse_env``: the other real daemons of the integration tests.
- ``integration``: what the integration tests share beyond the daemons (lineage files, the
  STARTTLS services, a counted nginx consumer); ``monitoring``: the pieces of
  test_status_real.

The daemon modules, ``proc`` and ``cli`` import no pytest and no ``certbot_fanout`` at module
level (only ``cli.invoke`` imports the command, when called), so that the daemon modules can be
run as ``python -m tests.support.MODULE`` from the repository root.
"""
