"""What one queue's cycle did (`QueueOutcome`, `MonitorOutcome`) and its one log line per queue
and cycle, with fixed keys."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from director.errors import DirectorError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class QueueOutcome:
    """What one queue's submission cycle did: one log line, one dry-run table row."""

    queue: str
    ce: str
    kind: str
    slots: int = 0
    demand: int = 0
    n: int = 0
    submitted: int = 0
    failed: int = 0
    waiting: int = 0
    running: int = 0
    counts_from: str = ""
    why: str = ""
    seconds: float = 0.0
    stamps: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class MonitorOutcome:
    """What one queue's monitoring cycle did."""

    queue: str
    ce: str
    checked: int = 0
    updated: int = 0
    aborted: int = 0
    cleaned: int = 0
    seconds: float = 0.0
    why: str = ""
    error: str | None = None


def log_outcome(cycle: str, outcome: QueueOutcome | MonitorOutcome, *, json_format: bool) -> None:
    """One line per queue and cycle; WARNING when the queue failed, had submissions fail or
    rests in back-off (so `journalctl -p warning` shows them), INFO otherwise. With
    `log_format: json` the values go to the JSON formatter as fields of their own."""
    failed = isinstance(outcome, QueueOutcome) and (
        outcome.failed > 0 or outcome.why.startswith("backed off")
    )
    level = logging.WARNING if outcome.error or failed else logging.INFO
    if not log.isEnabledFor(level):
        return  # a line per queue and cycle: 1,000 queues are worth not formatting them
    values = {
        item.name: getattr(outcome, item.name) for item in fields(outcome) if item.name != "stamps"
    }
    values = {"cycle": cycle, **values, "seconds": round(outcome.seconds, 3)}
    if json_format:
        log.log(level, "%s cycle of queue %s", cycle, outcome.queue, extra=values)
    else:
        log.log(
            level,
            "%s",
            " ".join(
                f"{key}={kv(value)}" for key, value in values.items() if value not in (None, "")
            ),
        )


def log_unexpected(exc: Exception, what: str) -> None:
    """A traceback for an error none of the director's or the system's: a bug to report."""
    if not isinstance(exc, (DirectorError, OSError)):
        log.error("%s: unexpected error", what, exc_info=exc)


def kv(value: Any) -> str:
    """A value of a `key=value` log line, quoted when it holds a space, quote, `=` or newline."""
    text = str(value)
    if not text or any(char in text for char in ' "=\n'):
        return json.dumps(text)
    return text
