"""The director tests' fixtures, reused here (not copied)."""

from __future__ import annotations

from tests.director.conftest import clock, make_director

__all__ = ["clock", "make_director"]
