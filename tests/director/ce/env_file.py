"""The KEY=VALUE files that tests/infra/*-setup.sh write for the tests to read."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def infra_dir(service: str) -> Path:
    """Where tests/infra/<service>-setup.sh keeps this checkout's service by default (lib.sh's
    $INFRA_BASE): outside the checkout, which may lie under a directory of mode 0700 that the
    services' job users could not traverse."""
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"site-director-test-{digest}" / service


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
