"""What the logic needs besides plain values: the settings, the database and the key set.

Built once at start-up (the app keeps it on `app.state`; the CLI builds its own) and passed
to the logic as it is; nothing here knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.db.engine import Database
from server.errors import InvalidRequest
from server.keys import KeyStore
from server.settings import ServerSettings


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    keys: KeyStore
    #: Per-process memo of slow, slowly changing reads (e.g. the monitor's filter choices);
    #: it lives and dies with the app.
    memo: dict[Any, Any] = field(default_factory=dict)

    def require_known_vo(self, vo: str) -> None:
        """A VO this server does not serve is a 400 (DiracX's answer), before anything is stored."""
        if vo not in self.settings.vos:
            raise InvalidRequest(f"Unknown VO {vo!r}")
