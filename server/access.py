"""Who may do what: the access rules on an `Identity`, as plain functions.

The HTTP policies (`server.http.policies`) apply these rules to the caller of a route; the
logic applies the finer ones (which VOs a caller sees, which VO it may act in) with the
identity in hand. Nothing here knows about requests.
"""

from __future__ import annotations

from server.errors import Forbidden
from server.identity import GENERIC_PILOT, Identity


def check_reader(identity: Identity) -> None:
    """Any user or service token may read its VO's pilots; not a pilot, not a GenericPilot."""
    if identity.is_pilot:
        raise Forbidden("Pilot tokens cannot call operator endpoints.")
    if GENERIC_PILOT in identity.properties and not identity.is_admin:
        raise Forbidden("Pilots cannot read other pilots' metadata.")


def vo_scope(identity: Identity) -> frozenset[str] | None:
    """The VOs whose records this caller sees; None = all (administrators)."""
    return None if identity.is_admin else identity.vos


def require_vo(identity: Identity, vo: str) -> None:
    if not identity.is_admin and vo not in identity.vos:
        raise Forbidden("Pilots can only be managed within your own VO.")
