"""The pilot monitor: a web page for operators, served by the server itself.

Server-rendered with Jinja2 and a little plain JavaScript that refetches HTML fragments:
no build step, no package manager, nothing fetched from the internet, and the same access
rules as the API because the pages call the same logic with the caller's identity.
"""
