#!/usr/bin/env python3
"""A stand-in for dirac-pilot.py, embedded by the demo configuration.

It behaves like the start of a DIRAC pilot without contacting DIRAC: it prints its options and
a few command-like steps (the wrapper ships every line to the server's log endpoint), checks
that the wrapper handed it DiracX credentials, and ends with exit code 0. Set
SITE_DIRECTOR_DEMO_FAIL=1 in a queue's pilot environment to see a failing pilot instead.
"""

import json
import os
import platform
import sys
import time


def step(name, message):
    print("%s: %s" % (name, message))
    sys.stdout.flush()
    time.sleep(0.2)


def main():
    step("PilotParams", "options %s" % " ".join(sys.argv[1:]))
    step(
        "CheckWorkerNode",
        "host %s, python %s, %d CPUs"
        % (platform.node(), platform.python_version(), os.cpu_count() or 1),
    )
    path = os.environ.get("DIRACX_CREDENTIALS_PATH", "")
    try:
        with open(path) as handle:
            credentials = json.load(handle)
        ok = bool(credentials.get("access_token"))
    except (OSError, ValueError):
        ok = False
    step("CheckCredentials", "DiracX token %s" % ("present" if ok else "MISSING"))
    step("InstallDIRAC", "demo pilot: nothing to install")
    step("LaunchAgent", "no job agent in the demo; the pilot ends here")
    if os.environ.get("SITE_DIRECTOR_DEMO_FAIL") == "1" or not ok:
        print("demo pilot failing on purpose" if ok else "no credentials", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
