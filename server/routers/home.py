"""`/`: a small page that says what this server is and links what a person would look for.

An operator who opens the server's address in a browser lands here rather than on a 404: the
pilot monitor, the API documentation, and the discovery and health endpoints. Public, like
those endpoints; it shows nothing about the installation beyond what they already do.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from server.http.policies import Public

router = APIRouter(tags=["home"])

HOME = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Site Director</title>
  <link rel="stylesheet" href="/monitor/static/monitor.css">
</head>
<body>
  <main id="main">
    <h1>Site Director</h1>
    <p>The pilot and auth service of a DIRAC/DiracX site director.</p>
    <ul>
      <li><a href="/monitor">Pilot monitor</a> (log in with an access token)</li>
      <li><a href="/docs">API documentation</a>
        (<a href="/openapi.json">OpenAPI schema</a>)</li>
      <li><a href="/.well-known/openid-configuration">OpenID configuration</a>,
        <a href="/.well-known/jwks.json">signing keys</a></li>
      <li><a href="/api/health">Health</a>, <a href="/metrics">metrics</a></li>
    </ul>
  </main>
</body>
</html>
"""

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/", response_class=HTMLResponse)
async def home(_: Public) -> HTMLResponse:
    """Links to the pilot monitor and the API documentation."""
    return HTMLResponse(HOME, headers=HEADERS)
