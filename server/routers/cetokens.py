"""`/api/auth/ce-token`: short-lived bearer tokens for computing elements (see logic.cetokens)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.http.dependencies import Context
from server.http.policies import Director
from server.logic import cetokens as logic
from server.models import TokenResponse

router = APIRouter(prefix="/api/auth", tags=["auth"])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post("/ce-token")
async def ce_token(
    ctx: Context, caller: Director, body: logic.CETokenRequest, response: Response
) -> TokenResponse:
    """An RS256 token for one CE (`aud`), with the WLCG compute scopes; for the director's
    service token (TrustedHost) or an administrator. 403 for anyone else."""
    response.headers.update(_NO_STORE)
    return logic.issue_ce_token(
        ctx.keys, caller, body, default_lifetime=ctx.settings.access_token_lifetime
    )
