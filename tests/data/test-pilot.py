# ruff: noqa: UP031, S310  (worker-node style: Python 3.6 stdlib, like the real pilot)
"""A small stand-in for dirac-pilot.py, run by the pilot wrapper in the wrapper tests.

Standard library only, like the real pilot. It checks what the wrapper hands over (its
arguments, the token file, the environment, its work directory), prints numbered lines, and uses
the token from the credentials file to post a line of its own, as a DiracX-aware pilot would.

Arguments: the DIRAC options the test expects (JSON list in TEST_PILOT_EXPECTED_ARGS) come
first, then this pilot's own options:
  --lines N          print N numbered lines on stdout (and one on stderr)
  --tag T            put T in every printed line, so the test can find them
  --wait-file P      after the first half of the lines, wait until file P exists
  --marker-file P    create P once every line is printed
  --end-wait-file P  then wait until file P exists before ending
  --duration S       keep running S seconds, one line per half second
  --post-at-end      post one line with the token from the credentials file before exiting
  --exit-code N      exit with N
  --long-line N      print one line of N "x" characters
  --refresh-itself   refresh the token pair through the credentials file, as a DiracX client
                     does (the wrapper must adopt the new pair, not reuse the old one)
  --print-tokens     print the tokens it holds (the wrapper must redact them)
  --save-credentials P  copy the credentials file to P (to check the revocation afterwards)
  --diracxTokenFile=P  checked against DIRACX_CREDENTIALS_PATH (the token-file option)
Exit code 3 = a check failed (the reason is printed on stderr).
"""

import json
import os
import ssl
import stat
import sys
import time
import urllib.error
import urllib.request


def fail(reason):
    sys.stderr.write("test-pilot CHECK FAILED: %s\n" % reason)
    sys.stderr.flush()
    sys.exit(3)


def own_options(argv):
    options = {
        "lines": 3,
        "tag": "tp",
        "wait_file": None,
        "marker_file": None,
        "end_wait_file": None,
        "duration": 0.0,
        "save_credentials": None,
        "long_line": 0,
        "refresh_itself": False,
        "print_tokens": False,
        "post_at_end": False,
        "exit_code": 0,
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--diracxTokenFile="):
            if arg.split("=", 1)[1] != os.environ.get("DIRACX_CREDENTIALS_PATH"):
                fail("--diracxTokenFile differs from DIRACX_CREDENTIALS_PATH")
            i += 1
            continue
        if arg == "--print-tokens":
            options["print_tokens"] = True
            i += 1
            continue
        if arg == "--refresh-itself":
            options["refresh_itself"] = True
            i += 1
            continue
        if arg == "--post-at-end":
            options["post_at_end"] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            fail("unexpected argument %r" % arg)
        value = argv[i + 1]
        if arg == "--lines":
            options["lines"] = int(value)
        elif arg == "--tag":
            options["tag"] = value
        elif arg == "--wait-file":
            options["wait_file"] = value
        elif arg == "--marker-file":
            options["marker_file"] = value
        elif arg == "--end-wait-file":
            options["end_wait_file"] = value
        elif arg == "--duration":
            options["duration"] = float(value)
        elif arg == "--exit-code":
            options["exit_code"] = int(value)
        elif arg == "--long-line":
            options["long_line"] = int(value)
        elif arg == "--save-credentials":
            options["save_credentials"] = value
        else:
            fail("unexpected argument %r" % arg)
        i += 2
    return options


def read_credentials():
    path = os.environ.get("DIRACX_CREDENTIALS_PATH", "")
    if not path or not os.path.isfile(path):
        fail("DIRACX_CREDENTIALS_PATH does not name a file")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:
        fail("credentials file mode %o, 600 expected" % mode)
    with open(path) as handle:
        data = json.load(handle)
    if not data.get("access_token") or not data.get("refresh_token"):
        fail("credentials file without tokens")
    return data


def https_post(path, body, token=None):
    context = ssl.create_default_context(cafile=os.environ.get("DIRACX_CA_PATH") or None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(
        os.environ["DIRACX_URL"] + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers=headers,
    )
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        data = response.read()
        return json.loads(data.decode()) if data else None


def refresh_itself():
    """Rotate the pair at the server and write it back the way DiracX's client does."""
    path = os.environ["DIRACX_CREDENTIALS_PATH"]
    old = read_credentials()
    new = https_post(
        "/api/auth/pilot-token",
        {
            "refresh_token": old["refresh_token"],
            "pilot_stamp": os.environ["SITE_DIRECTOR_PILOT_STAMP"],
        },
    )
    data = {
        "access_token": new["access_token"],
        "refresh_token": new["refresh_token"],
        "expires_on": int(time.time()) + int(new["expires_in"]),
    }
    fd = os.open(path + ".pilot", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(path + ".pilot", path)


def post_line(message):
    """One log line sent with the pilot's own token (what the DIRAC pilot's logger does)."""
    token = read_credentials()["access_token"]
    context = ssl.create_default_context(cafile=os.environ.get("DIRACX_CA_PATH") or None)
    body = json.dumps(
        {
            "lines": [
                {
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                    "severity": "INFO",
                    "message": message,
                    "scope": "TestPilot",
                }
            ]
        }
    ).encode()
    # A token read just before it expires can be stale by the time the server sees it (2 s
    # lifetimes in the tests): like a DiracX client, take a 401 as "read the credentials
    # again", a few times, since the wrapper keeps the file fresh.
    for attempt in range(4):
        request = urllib.request.Request(
            os.environ["DIRACX_URL"] + "/api/pilots/internal/message",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                if response.status >= 300:
                    fail("posting a line answered HTTP %d" % response.status)
                return
        except urllib.error.HTTPError as error:
            if error.code != 401 or attempt == 3:
                raise
        time.sleep(0.5)
        token = read_credentials()["access_token"]


def main():
    expected = json.loads(os.environ.get("TEST_PILOT_EXPECTED_ARGS", "[]"))
    argv = sys.argv[1:]
    if argv[: len(expected)] != expected:
        fail("arguments %r, expected them to start with %r" % (argv, expected))
    options = own_options(argv[len(expected) :])
    work_dir = os.environ.get("SITE_DIRECTOR_WORK_DIR", "")
    if os.path.realpath(os.getcwd()) != os.path.realpath(work_dir):
        fail("cwd %s is not the wrapper's work directory %s" % (os.getcwd(), work_dir))
    if stat.S_IMODE(os.stat(work_dir).st_mode) != 0o700:
        fail("work directory mode is not 700")
    if not os.environ.get("DIRACX_URL", "").startswith("https://"):
        fail("DIRACX_URL missing")
    read_credentials()
    if os.environ.get("SITE_DIRECTOR_PILOT_STAMP") is None:
        fail("SITE_DIRECTOR_PILOT_STAMP missing")
    if sys.stdin.read(1) != "":
        fail("stdin is not empty")

    tag = options["tag"]
    if options["refresh_itself"]:
        refresh_itself()
    if options["save_credentials"]:
        with open(options["save_credentials"], "w") as handle:
            json.dump(read_credentials(), handle)
    print("test-pilot %s: arguments checked: %s" % (tag, " ".join(argv)))
    if options["print_tokens"]:
        held = read_credentials()
        print("test-pilot %s: access %s" % (tag, held["access_token"]))
        sys.stderr.write("test-pilot %s: refresh %s\n" % (tag, held["refresh_token"]))
    post_line("test-pilot %s: posted with the pilot's own token" % tag)
    half = options["lines"] // 2
    for i in range(1, options["lines"] + 1):
        print("test-pilot %s: line %d of %d" % (tag, i, options["lines"]))
        sys.stdout.flush()
        if i == half and options["wait_file"]:
            while not os.path.exists(options["wait_file"]):
                time.sleep(0.05)
    if options["long_line"]:
        print("x" * options["long_line"])
    sys.stderr.write("test-pilot %s: a line on stderr\n" % tag)
    sys.stderr.flush()
    if options["marker_file"]:
        open(options["marker_file"], "w").close()
    if options["end_wait_file"]:
        while not os.path.exists(options["end_wait_file"]):
            time.sleep(0.05)
        print("test-pilot %s: the end file appeared" % tag)
    started = time.time()
    tick = 0
    while time.time() - started < options["duration"]:
        tick += 1
        print("test-pilot %s: still running, tick %d" % (tag, tick))
        sys.stdout.flush()
        time.sleep(0.5)
    if options["post_at_end"]:
        post_line("test-pilot %s: posted at the end with the refreshed token" % tag)
    print("test-pilot %s: done" % tag)
    return options["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
