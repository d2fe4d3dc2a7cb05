"""How long rendering 10,000 pilot wrappers takes (the director renders one per pilot).

Run: .venv/bin/python bench/render_wrappers.py [N]. Prints the figures; asserts nothing (timings
are not asserted in tests). Two queues: one whose pilot files are downloaded on the worker node
(the production case), and one that embeds a 100 kB pilot file in every wrapper, where copying
the bytes of each wrapper is most of the cost.
"""

from __future__ import annotations

import secrets
import sys
import time

from director.render import TemplateRenderer
from director.wrapper import PilotFile, PilotOptions, WrapperRenderer

DOWNLOADED = (
    PilotFile("dirac-pilot.py", sha512="0" * 128),
    PilotFile("pilotTools.py", sha512="1" * 128),
    PilotFile("pilotCommands.py", sha512="2" * 128),
)
EMBEDDED = (PilotFile("dirac-pilot.py", content=secrets.token_bytes(100_000)),)


def bench(label: str, files: tuple[PilotFile, ...], n: int) -> None:
    options = PilotOptions(
        server_url="https://diracx.example.org",
        vo="lhcb",
        site="LCG.Example.org",
        ce="ce.example.org",
        queue="long",
        setup="LHCb-Production",
        extensions=("LHCb",),
        pilot_files=files,
        pilot_locations=("https://diracx.example.org/pilot", "file:///cvmfs/lhcb.cern.ch/pilot"),
    )
    started = time.perf_counter()
    prepared = WrapperRenderer(TemplateRenderer()).prepare(options)
    prepare_s = time.perf_counter() - started
    stamps = [secrets.token_hex(16) for _ in range(n)]
    pilot_secret = secrets.token_hex(32)
    started = time.perf_counter()
    size = 0
    for stamp in stamps:
        size += len(prepared.render(stamp, pilot_secret))
    elapsed = time.perf_counter() - started
    print(
        f"{label}: prepared in {prepare_s * 1000:.1f} ms; {n} wrappers of "
        f"{size / n / 1024:.1f} kB in {elapsed:.3f} s ({elapsed / n * 1e6:.1f} us each)"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    bench("downloaded pilot files", DOWNLOADED, n)
    bench("embedded 100 kB pilot ", EMBEDDED, n)


if __name__ == "__main__":
    main()
