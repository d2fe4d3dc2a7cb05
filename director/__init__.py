"""The site director: submits pilots to computing elements and follows them to their end."""

import sys

# httpx's package imports its command-line tool (`httpx._main`) whenever click, rich and
# pygments are installed, as they are here (beside uvicorn, and for our own tables): ~6 MB of
# every director process for a tool it never runs. A None entry in sys.modules makes that one
# import fail, which httpx expects (its `httpx.main` then asks for `httpx[cli]`). Set here, in
# the package every director command imports first, so it precedes any import of httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
