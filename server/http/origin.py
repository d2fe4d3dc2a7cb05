"""Cross-site request refusal for the pilot monitor: one check on every non-GET monitor route.

The monitor's router depends on `same_origin`, so a state-changing route added to it later is
covered without remembering to. The rule, for any method but GET, HEAD and OPTIONS:

1. `Sec-Fetch-Site` present (browsers send it to HTTPS and localhost origins): it must be
   `same-origin` or `none` (a request the user started, e.g. from the address bar). The
   browser computed it from the real page and target, so it decides even behind a proxy.
2. Otherwise `Origin` present (every current browser sends it with a POST): its host and port
   must be those of the `Host` header. A reverse proxy must pass `Host` through unchanged
   (nginx: `proxy_set_header Host $host`). `Origin: null` (sandboxed frames, some redirects)
   is refused.
3. Neither header: not a browser, or one too old to send either. Allowed only if the request
   carries no monitor cookie, so it has no ambient credential that a forged request could ride
   on: `curl -d token=... /monitor/login` works. A script that logs out with its cookie jar
   sends `Origin: <the server's URL>`, as a browser would. (A browser old enough to send
   neither header on a POST, such as Firefox before 70, still honours the cookie's
   SameSite=Strict, so it would not send the cookie cross-site either.)

This is the same decision order as Go's `net/http.CrossOriginProtection`, with a stricter
third case. Refusals raise `CrossSiteRequest`, a 403 whose detail says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from fastapi import Request

from server.errors import Forbidden
from server.logic.monitor_sessions import COOKIE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CrossSiteRequest(Forbidden):
    """A state-changing monitor request that did not come from the monitor's own pages."""


def _same_host(origin: str, host: str) -> bool:
    """Whether `Origin` names the host and port the request was sent to (`Host`); the port
    missing from either is the default of the Origin's scheme."""
    try:
        theirs = urlsplit(origin.strip().lower())
        ours = urlsplit(f"//{host.strip().lower()}")
        if theirs.scheme not in _DEFAULT_PORTS or not theirs.hostname or not ours.hostname:
            return False  # `null`, another scheme, no Host header
        default = _DEFAULT_PORTS[theirs.scheme]
        return (theirs.hostname, theirs.port or default) == (ours.hostname, ours.port or default)
    except ValueError:  # a port out of range or not a number, a broken IPv6 literal
        return False


def cross_site_reason(method: str, headers: Mapping[str, str], has_cookie: bool) -> str | None:
    """Why this request is refused as cross-site, or None if it may go on."""
    if method.upper() in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.strip().lower() in ALLOWED_FETCH_SITES:
            return None
        return f"Cross-site request refused (Sec-Fetch-Site: {fetch_site[:32]})."
    origin = headers.get("origin")
    if origin is not None:
        if _same_host(origin, headers.get("host", "")):
            return None
        return "Cross-site request refused (its Origin is not this server)."
    if has_cookie:
        return "Request refused: a request with a monitor session must send an Origin header."
    return None


async def same_origin(request: Request) -> None:
    """The monitor router's dependency: raise CrossSiteRequest for a cross-site request."""
    reason = cross_site_reason(request.method, request.headers, COOKIE in request.cookies)
    if reason is not None:
        raise CrossSiteRequest(reason)
