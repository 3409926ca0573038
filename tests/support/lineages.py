"""Certbot-shaped lineages from a throwaway CA, for tests (the ``lineages`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from certbot_fanout._pki import Issued, ThrowawayCA, write_lineage


@dataclass
class LineageFactory:
    """Makes certbot-shaped lineages under one config dir, and renews them."""

    ca: ThrowawayCA
    config_dir: Path

    def issue(self, name: str, *more_names: str, days: float = 90) -> tuple[Path, Issued]:
        issued = self.ca.issue([name, *more_names], days=days)
        return Path(write_lineage(str(self.config_dir), name, issued)), issued

    renew = issue
