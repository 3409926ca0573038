"""The Certbot installer ``fanout``: a thin adapter over the same deploy path as the hook.

This is the only module that imports ``certbot``. Facts it rests on (certbot 2.1 to 5.x):

- ``install``/``run`` call ``deploy_cert`` once per *name*, then ``save()``, then
  ``save("Deployed ACME Certificate")``, then ``restart()``: the lineage is remembered and
  deployed once.
- ``renew`` never calls ``deploy_cert``; it calls ``renew_deploy(lineage)`` (a RenewDeployer)
  and then ``restart()``, both skipped on ``--dry-run``. An exception there makes certbot exit 1,
  which a deploy hook cannot do.
- ``prepare()`` must not raise for a runtime problem: during ``renew`` certbot would renew
  without the installer and drop ``installer = fanout`` from the renewal configuration for good.
  Problems surface in ``renew_deploy``, ``restart`` and ``config_test`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from certbot import errors, interfaces
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_fanout import files
from certbot_fanout.config import (
    default_config_path,
    load_config,
)
from certbot_fanout.deploy import DeployOptions, DeployResult, Effects, Places, deploy_lineage
from certbot_fanout.errors import ConfigNotFound, FanoutError
from certbot_fanout.escape import printable
from certbot_fanout.model import (
    CONFIG_ENV,
    DEFAULT_CERTBOT_DIR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_HOST_JOBS,
    Config,
)
from certbot_fanout.render_common import plural
from certbot_fanout.render_deploy import render_deploy_failures, render_deploy_text
from certbot_fanout.render_status import render_status_failures, render_status_text
from certbot_fanout.state import default_state_path
from certbot_fanout.status import Level, StatusOptions, check_and_repair, restrict

if TYPE_CHECKING:
    from certbot_fanout.notify import NotifyReport

logger = logging.getLogger(__name__)

# The checkpoint title certbot passes to save() right after deploy_cert() (certbot's
# client.deploy_certificate): a token of certbot's installer protocol, the one signal that the
# certificates are in place, not a message of ours.
DEPLOYED_TITLE = "Deployed ACME Certificate"


class Installer(
    common.Plugin, interfaces.Installer, interfaces.RenewDeployer, interfaces.GenericUpdater
):
    """Deploy to every consumer in certbot-fanout's map and prove each serves the certificate."""

    description = "Deploy to each service in certbot-fanout's map, then verify it"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        add(
            "config",
            default=None,
            metavar="FILE",
            help=f"certbot-fanout's consumer map (default: ${CONFIG_ENV}, else "
            f"{DEFAULT_CONFIG_PATH})",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, str] = {}  # lineage name -> live dir, from deploy_cert
        self._originals: dict[str, files.Snapshot] = {}  # each path as this process found it

    # -- Plugin ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Nothing can fail here on purpose (see the module docstring)."""
        if not os.path.exists(self._config_path()):
            logger.warning("certbot-fanout: %s does not exist yet", self._config_path())

    def more_info(self) -> str:
        return (
            "Places the renewed files for every consumer listed in certbot-fanout's map "
            f"({self._config_path()}) with their owner and mode, runs each one's test and "
            "reload, and connects to each like a client to prove it serves the new certificate."
        )

    # -- Installer -------------------------------------------------------------------------

    def get_all_names(self) -> Iterable[str]:
        config = self._load()
        names = set(config.certificates)
        for consumer in config.consumers:
            names.update(ep.server_name for ep in consumer.verify if ep.server_name)
        return names

    def deploy_cert(
        self,
        domain: str,
        cert_path: str,
        key_path: str,
        chain_path: str,
        fullchain_path: str,
    ) -> None:
        live_dir = os.path.dirname(os.path.abspath(cert_path))
        self._pending.setdefault(os.path.basename(live_dir), live_dir)

    def enhance(self, domain: str, enhancement: str, options: Any = None) -> None:
        raise errors.PluginError(
            f"the fanout installer supports no enhancements (asked for {enhancement!r}); "
            "configure redirects, HSTS and OCSP stapling in each service itself"
        )

    def supported_enhancements(self) -> list[str]:
        return []

    def save(self, title: str | None = None, temporary: bool = False) -> None:
        if title == DEPLOYED_TITLE and not temporary:
            self._deploy_pending()

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Put back every file this process placed. Failures are logged, not raised."""
        self._restore_originals()

    def recovery_routine(self) -> None:
        """Put back every file this process placed. Failures are logged, not raised."""
        self._restore_originals()

    def config_test(self) -> None:
        """Every consumer's test command, where the consumer lives (another host's over its
        ssh connection)."""
        config = self._load()
        failures = []
        with contextlib.ExitStack() as stack:
            places = Places(Effects())
            places.open_hosts(stack, config, DEFAULT_HOST_JOBS)
            for consumer in config.consumers:
                if not consumer.test:
                    continue
                try:
                    located, fx = places.locate(consumer)
                    fx.run(consumer.test, located.reload_timeout, "test")
                except FanoutError as e:  # failed, or its host could not be reached
                    # The message holds the command's output: escaped, as in every report.
                    failures.append(printable(f"{consumer.name}: {e}"))
                finally:
                    places.release(consumer)
        if failures:
            raise errors.MisconfigurationError(
                "certbot-fanout: config test failed for " + "; ".join(failures)
            )

    def restart(self) -> None:
        self._deploy_pending()

    # -- RenewDeployer ---------------------------------------------------------------------

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        self._deploy(os.path.dirname(os.path.abspath(lineage.cert_path)))

    # -- GenericUpdater ----------------------------------------------------------------------

    def generic_updates(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Every ``certbot renew`` (twice a day, even when nothing is due): check every consumer
        of this lineage, redeploy what drifted, and fail certbot if one stays broken."""
        live_dir = os.path.dirname(os.path.abspath(lineage.cert_path))
        subset = restrict(self._load(), os.path.basename(live_dir))
        if not subset.consumers:
            return
        options = StatusOptions(config_dir=os.path.dirname(os.path.dirname(live_dir)))
        try:
            report = check_and_repair(subset, default_state_path(), options)
        except FanoutError as e:
            raise errors.PluginError(f"certbot-fanout: {e}") from None
        for line in render_status_text(report).splitlines():  # escaped by the renderer
            logger.info("%s", line)
        if any(c.notify for c in subset.consumers):
            from certbot_fanout.notify import notify_status

            _log_notify(notify_status(report, default_state_path(), "certbot renew (repair)"))
        # Only what a deploy should have fixed fails certbot: a certificate that is current
        # everywhere but expires soon (a short-lived one, or a renewal that keeps failing) is
        # certbot's own business, and status reports it.
        broken = [c for c in report.consumers if c.drifted or c.level is Level.UNKNOWN]
        if broken:
            raise errors.PluginError(
                f"certbot-fanout: still broken after repair: {render_status_failures(broken)}"
            )

    # -- the work ----------------------------------------------------------------------------

    def _config_path(self) -> str:
        configured: str | None = self.conf("config")
        return configured or default_config_path()

    def _load(self) -> Config:
        try:
            # Certbot's own --config-dir is off limits for consumer files, as is the default.
            certbot_dirs = [DEFAULT_CERTBOT_DIR]
            config_dir = getattr(self.config, "config_dir", None)
            if isinstance(config_dir, str):
                certbot_dirs.append(config_dir)
            return load_config(self._config_path(), certbot_dirs=certbot_dirs)
        except ConfigNotFound:
            path = self._config_path()
            raise errors.PluginError(
                f"certbot-fanout: no consumer map at {path} (--fanout-config FILE names "
                f"another); begin one with: certbot-fanout presets NAME --certificate CERT "
                f"--map > {path}"
            ) from None
        except FanoutError as e:
            raise errors.PluginError(f"certbot-fanout: {e}") from None

    def _deploy_pending(self) -> None:
        while self._pending:
            _, live_dir = self._pending.popitem()
            self._deploy(live_dir)

    def _deploy(self, live_dir: str) -> None:
        config = self._load()
        effects = Effects(place=self._place_recording_original)
        try:
            result = deploy_lineage(
                config, live_dir, DeployOptions(), effects, state_path=default_state_path()
            )
        except FanoutError as e:
            raise errors.PluginError(f"certbot-fanout: {e}") from None
        if result is None:
            logger.info(
                "certbot-fanout: no consumer in %s uses %s",
                printable(config.source),
                printable(live_dir),
            )
            return
        if any(c.consumer.notify for c in result.consumers):
            from certbot_fanout.notify import notify_deploy

            _log_notify(notify_deploy(result, default_state_path()))
        self._report(result)

    def _report(self, result: DeployResult) -> None:
        text = render_deploy_text(result)
        for line in text.splitlines():  # escaped by the renderer
            logger.info("%s", line)
        if result.failed:
            raise errors.PluginError(
                f"certbot-fanout: {result.certificate}: {render_deploy_failures(result)}"
            )
        message = (
            f"certbot-fanout: {result.certificate} deployed to "
            f"{plural(len(result.consumers), 'consumer')}, each proven to serve it"
        )
        try:
            display_util.notify(message)
        except ValueError:  # no display: certbot's API used outside its command line
            logger.info("%s", message)

    def _place_recording_original(self, desired: files.Desired) -> None:
        if desired.path not in self._originals:
            self._originals[desired.path] = files.snapshot(desired.path)
        files.place(desired)

    def _restore_originals(self) -> None:
        for path, original in self._originals.items():
            try:
                files.restore(original)
            except FanoutError as e:
                logger.error(
                    "certbot-fanout: cannot restore %s: %s", printable(path), printable(str(e))
                )
        self._originals.clear()


def _log_notify(report: NotifyReport) -> None:
    """What was sent (info), and what could not be (a warning: certbot's log keeps it); never
    an error for certbot, whose exit code is the deploy's."""
    from certbot_fanout.notify import summary_lines

    for line in summary_lines(report):  # escaped
        logger.info("certbot-fanout: %s", line)
    for line in report.problems:  # escaped
        logger.warning("certbot-fanout: notify: %s", line)
