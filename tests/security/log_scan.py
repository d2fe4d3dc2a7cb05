"""A pytest plugin that scans every log record of the whole run for tokens and secrets.

Enable it for a run with `-p tests.security.log_scan` (or in `addopts`). It adds one handler
to the root logger (and to uvicorn's loggers, which do not propagate), keeps nothing but the
offending records, and fails the session at the end if any record holds a JWT or a
`--pilotSecret` option with its value in clear. Records of the test's own HTTP client
(httpx, httpcore: they log the URLs the tests call) are not the product's logs and are skipped.
It sees what the loggers emit at their configured levels; tests that raise levels (caplog)
widen what it sees.
"""

from __future__ import annotations

import logging
import re

import pytest

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
CLEAR_SECRET = re.compile(r"pilotSecret['\"]?[=\s,:'\"]+[0-9a-f]{64}(?![0-9a-f])")
SKIPPED = ("httpx", "httpcore")
#: Not "uvicorn.access": the server runs uvicorn with access_log=False, which uvicorn implements
#: by leaving that logger without handlers; adding one here would switch its lines back on.
NON_PROPAGATING = ("uvicorn", "uvicorn.error")


class LeakCollector(logging.Handler):
    """Keeps (logger, level, first 200 characters) of every record holding a credential."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.leaks: list[str] = []
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in SKIPPED:
            return
        self.seen += 1
        try:
            text = record.getMessage()
        except Exception:  # a record with bad arguments is not ours to judge
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + repr(record.exc_info[1])
        for pattern, what in ((JWT, "JWT"), (CLEAR_SECRET, "pilot secret")):
            if pattern.search(text):
                self.leaks.append(f"{record.name}:{record.levelname}: {what}: {text[:200]!r}")


_collector = LeakCollector()


def pytest_sessionstart(session: pytest.Session) -> None:
    logging.getLogger().addHandler(_collector)
    for name in NON_PROPAGATING:
        logging.getLogger(name).addHandler(_collector)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_collector)
    for name in NON_PROPAGATING:
        logging.getLogger(name).removeHandler(_collector)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"log scan: {_collector.seen} records, {len(_collector.leaks)} with a credential"
        )
        for leak in _collector.leaks[:20]:
            reporter.write_line(f"  {leak}", red=True)
    if _collector.leaks and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
