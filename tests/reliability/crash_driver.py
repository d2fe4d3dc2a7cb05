"""A director that dies with SIGKILL at a chosen point of its cycle, like a crashed daemon.

python -m tests.reliability.crash_driver CONFIG POINT SEED
python -m tests.reliability.crash_driver --serve   # reads "CONFIG POINT SEED LOG" lines

With --serve it imports the director once and forks one child per line read (each child is a
fresh director process as far as the server and the CE can tell), answering each line with the
child's wait status; this keeps 50 trials in CI from paying 50 interpreter start-ups.

It runs submission and monitoring cycles (as `site-director once` does, then again) and kills
itself when the hook of POINT fires; a hook that never fires in three rounds kills it at the
end. SEED picks the hook's parameters (how many pilots reach the CE, which call, the delay), so
every trial is reproducible. Before dying it prints `KILLED <point>` on stderr, so the trial
report can say where the process really died.

Points (they mirror the cycle's steps, see `director/cycle/submission.py`):

- after-mint       the server registered the pilots and minted their secrets; nothing submitted
- mid-submit       k of the n pilots reached the CE, the others not
- half-job         as mid-submit, and the next pilot's job folder is half written (no job.json)
- before-patch     the CE has every job, the server has no reference yet
- in-patch         the references' PATCH is on the wire (killed 0-20 ms after it started)
- after-patch      the PATCH answered, nothing else done
- nth-patch        the N-th PATCH of any cycle (reconciliation, submission or monitoring)
- monitor-status   monitoring asked the CE for the status and died before patching it
- monitor-clean    monitoring cleaned some of the ended jobs and died
- timer            a random delay (0-1.5 s) from the start, wherever the process is
- after-kill       monitoring recorded the operators' kill requests `in_progress` and killed
                   their jobs at the CE, and died before reporting the outcome (the trial asks
                   for the kills, see `crash_trials.py`)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from director.config import load_config
from director.daemon import client_for
from director.loop import Director

POINTS = (
    "after-mint",
    "mid-submit",
    "half-job",
    "before-patch",
    "in-patch",
    "after-patch",
    "nth-patch",
    "monitor-status",
    "monitor-clean",
    "timer",
    "after-kill",
)


def die(point: str) -> None:
    sys.stderr.write(f"KILLED {point}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(director: Director, point: str, rng: random.Random) -> None:
    """Wrap the client's and the CEs' methods so that POINT's hook kills the process."""
    client = director.client
    assert client is not None
    ces = {director.ce_for(ref) for ref in director.queues}
    register, patch = client.register_bulk, client.patch_metadata
    record_outcomes = client.record_outcomes
    state = {"patches": 0, "submitting": False, "kill_started": False}
    nth = rng.randint(1, 4)

    async def register_then_die(body: Any) -> Any:
        result = await register(body)
        if point == "after-mint":
            die(point)
        return result

    async def patching(updates: Any) -> Any:
        state["patches"] += 1
        number = state["patches"]
        submitting = state["submitting"]
        if point == "before-patch" and submitting:
            die(point)
        if point == "in-patch" and submitting:
            task = asyncio.ensure_future(patch(updates))
            await asyncio.sleep(rng.uniform(0, 0.02))
            die(point)
            await task
        await patch(updates)
        if point == "after-patch" and submitting:
            die(point)
        if point == "nth-patch" and number == nth:
            die(f"{point}#{nth}")
        return None

    async def recording(kind: str, body: Any) -> Any:
        result = await record_outcomes(kind, body)
        if kind == "kill" and any(o.outcome == "in_progress" for o in body.outcomes):
            state["kill_started"] = True
        return result

    client.register_bulk = register_then_die  # type: ignore[method-assign]
    client.patch_metadata = patching  # type: ignore[method-assign]
    client.record_outcomes = recording  # type: ignore[method-assign]

    for ce in ces:
        submit, status, clean, kill = ce.submit, ce.status, ce.clean, ce.kill

        async def submitting(spec: Any, pilots: Any, submit: Any = submit, ce: Any = ce) -> Any:
            n = len(pilots)
            if point in ("mid-submit", "half-job") and n:
                k = rng.randint(0, n - 1)
                await submit(spec, pilots[:k])
                if point == "half-job":
                    folder = Path(ce.jobs_dir) / pilots[k].stamp
                    (folder / "work").mkdir(parents=True, mode=0o700)
                    (folder / "pilot.sh").write_text(pilots[k].wrapper)
                die(f"{point}:{k}/{n}")
            results = await submit(spec, pilots)
            state["submitting"] = True
            return results

        async def statusing(references: Any, status: Any = status) -> Any:
            results = await status(references)
            if point == "monitor-status" and references:
                die(point)
            return results

        async def cleaning(references: Any, clean: Any = clean) -> Any:
            if point == "monitor-clean" and references:
                k = rng.randint(0, len(references) - 1)
                await clean(references[:k])
                die(f"{point}:{k}/{len(references)}")
            return await clean(references)

        async def killing(references: Any, kill: Any = kill) -> Any:
            results = await kill(references)
            if point == "after-kill" and references and state["kill_started"]:
                die(f"{point}:{len(references)}")  # the CE killed them; no outcome reported
            return results

        ce.submit = submitting  # type: ignore[method-assign,assignment]
        ce.kill = killing  # type: ignore[method-assign]
        ce.status = statusing  # type: ignore[method-assign]
        ce.clean = cleaning  # type: ignore[method-assign]


async def main(config: Path, point: str, seed: int) -> None:
    rng = random.Random(seed)
    settings = load_config(config)
    director = Director(settings, client=client_for(settings))
    install(director, point, rng)
    if point == "timer":
        timer = threading.Timer(rng.uniform(0, 1.5), die, args=(point,))
        timer.daemon = True
        timer.start()
    for _ in range(3):
        await director.run_cycle()
        await director.monitor_cycle()
        await asyncio.sleep(0.2)  # let the pilots (which exit at once) end
    die(f"{point}(end)")


def serve() -> None:
    """Fork one crashing director per request line; answer with its signal number (or 0)."""
    for line in sys.stdin:
        config, point, seed, log_path = line.split()
        pid = os.fork()
        if pid == 0:  # the child: a director that will die
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 2)
            try:
                asyncio.run(main(Path(config), point, int(seed)))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        sys.stdout.write(f"{killed_by}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
