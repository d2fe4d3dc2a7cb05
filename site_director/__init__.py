"""The `site-director` console script: the server's and the director's commands in one.

This package is the only place that imports both `server` and `director`; neither imports the
other (the wire models of `server.models` aside: the contract between the two programs).
"""
