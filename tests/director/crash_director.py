"""Runs one submission cycle and dies with SIGKILL at a chosen point, like a crashed daemon.

python -m tests.director.crash_director CONFIG after-submit   # CE has the jobs, the server
                                                              # has no references
python -m tests.director.crash_director CONFIG before-submit  # registered, never submitted
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from director.config import load_config
from director.daemon import client_for
from director.loop import Director


def die(*_: Any, **__: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(config: Path, point: str) -> None:
    settings = load_config(config)
    director = Director(settings, client=client_for(settings))
    ce = director.ce_for(director.queues[0])
    if point == "after-submit":
        submit = ce.submit

        async def submit_then_die(*args: Any) -> Any:
            await submit(*args)
            die()

        ce.submit = submit_then_die  # type: ignore[method-assign]
    else:
        ce.submit = die  # type: ignore[method-assign]
    await director.run_cycle()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
