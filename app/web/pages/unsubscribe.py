"""One-click unsubscribe (RFC 8058): `GET`/`POST /unsubscribe`, its token from the link
(`app.delivery.unsubscribe_links`).

A token names one user, signed by `app.signing` (itsdangerous): it cannot be forged, altered or
moved to another user without the secret. `GET` shows a confirmation page (mail scanners follow
links; they must not unsubscribe anyone); `POST` (the button, or the mail client's one-click
POST) unsubscribes: no further loop email, and pending emails are dropped and recorded.
"""

import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.web import auth
from app.web.auth import Access
from app.web.deps import ClockDep, StoreDep
from app.web.errors import error_responses
from app.web.pages.layout import page

logger = logging.getLogger(__name__)

router = APIRouter(tags=["unsubscribe"])

TokenQuery = Annotated[str, Query(min_length=3, max_length=512)]
TOKEN_ERRORS = error_responses(
    {400: "a forged, altered or malformed token", 422: "no token, or one too short or long"},
    page=True,
)
SITE = "Email preferences"  # what the user sees in the tab and the bar: not our operator pages


def _page(title: str, action: str | None = None) -> HTMLResponse:
    """The pages' shared layout and stylesheet (`templates/unsubscribe.html`)."""
    return page("unsubscribe.html", title=title, site=SITE, action=action)


def tokens_of(request: Request) -> UnsubscribeTokens:
    tokens: UnsubscribeTokens = request.app.state.runtime.tokens
    return tokens


@router.get("/unsubscribe", response_class=HTMLResponse, responses=TOKEN_ERRORS)
@auth.policy(Access.PUBLIC)  # the signed token is the credential
async def confirm_page(request: Request, token: TokenQuery) -> HTMLResponse:
    """A confirmation page: following the link alone unsubscribes nobody."""
    tokens_of(request).verify(token)
    return _page("Unsubscribe", action=f"/unsubscribe?{urlencode({'token': token})}")


@router.post("/unsubscribe", response_class=HTMLResponse, responses=TOKEN_ERRORS)
@auth.policy(Access.PUBLIC)  # the signed token is the credential
async def unsubscribe(
    request: Request, store: StoreDep, clock: ClockDep, token: TokenQuery
) -> HTMLResponse:
    """Unsubscribe the token's user (the page's button, or RFC 8058 one-click POST)."""
    user_id = tokens_of(request).verify(token)
    dropped = await store.users.unsubscribe(user_id, now_ms=clock())
    if dropped is None:  # deleted meanwhile: nothing of theirs is kept, nothing is written
        logger.info("unsubscribe for user %s: not stored (deleted); nothing to do", user_id)
    else:
        logger.info("user %s unsubscribed; %d pending email(s) dropped", user_id, dropped)
    return _page("You are unsubscribed")
