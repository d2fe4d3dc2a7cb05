"""The HTTP machinery around the routers: access policies, request dependencies, middleware,
metrics and exception handlers. Only `server.app` and `server.routers` import it; the logic
and database layers below never do (tests/test_architecture.py)."""
