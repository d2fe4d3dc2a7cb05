"""How long rendering 10,000 pilot wrappers takes (the director renders one per pilot).

Run: .venv/bin/python bench/render_wrappers.py [N]. Prints the figure; asserts nothing (timings
are not asserted in tests). The queue embeds a 100 kB pilot file, as a queue without download
locations would.
"""

from __future__ import annotations

import secrets
import sys
import time

from director.render import TemplateRenderer
from director.wrapper import PilotFile, PilotOptions, WrapperRenderer


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    options = PilotOptions(
        server_url="https://diracx.example.org",
        vo="lhcb",
        site="LCG.Example.org",
        ce="ce.example.org",
        queue="long",
        setup="LHCb-Production",
        extensions=("LHCb",),
        pilot_files=(
            PilotFile("dirac-pilot.py", content=secrets.token_bytes(100_000)),
            PilotFile("pilot.json", sha512="0" * 128),
        ),
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
        f"prepared the queue in {prepare_s * 1000:.1f} ms; rendered {n} wrappers "
        f"({size / n / 1024:.1f} kB each) in {elapsed:.3f} s "
        f"({elapsed / n * 1e6:.1f} us per wrapper)"
    )


if __name__ == "__main__":
    main()
