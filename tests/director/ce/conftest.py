"""Fixtures the CE test modules share, defined once here.

`arc_issuer` is session-scoped and holds one of the four issuer ports A-REX trusts. Imported
into each test module instead, pytest made one per module and kept each to the end of the
session, so the fifth module to need one found every port taken.
"""

from __future__ import annotations

from tests.director.ce.arc_infra import arc_infra, arc_issuer

__all__ = ["arc_infra", "arc_issuer"]
