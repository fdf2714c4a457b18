"""What a browser may report with a Clerk session token (`POST /v1/actions`; `app.web.gate`
verified the token): its own user's actions only (`sub`), only those named in BROWSER_ACTIONS,
at most BROWSER_ACTIONS_PER_MINUTE per user (a fixed window kept in storage, so every process
shares it: one script per request). Checked before anything is stored; the server's actions
(the API key) pay for none of it.
"""

from collections.abc import Collection, Sequence

from app.errors import SessionRefused
from app.storage.rates import Window
from app.storage.records import NewAction
from app.web.deps import Services
from app.web.session_tokens import ClerkSession

BROWSER_ACTIONS_PER_MINUTE = 60
WINDOW_MS = 60_000
NOT_THE_USER = "a session token reports its own user's actions only: user_id must be its sub"


async def admit(services: Services, session: ClerkSession, actions: Sequence[NewAction]) -> None:
    """Raises `SessionRefused` (403 for an action the session may not report, 429 past the rate
    limit, with Retry-After) unless every action may be stored."""
    for action in actions:
        refusal = forbidden(session, action, services.settings.browser_actions)
        if refusal is not None:
            raise SessionRefused(refusal, status_code=403)
    rates = services.store.rates
    taken = await rates.take_browser_actions(
        session.user_id, len(actions), limit=BROWSER_ACTIONS_PER_MINUTE, window_ms=WINDOW_MS
    )
    if not taken.taken:
        raise too_many(taken)


def forbidden(session: ClerkSession, action: NewAction, allowed: Collection[str]) -> str | None:
    """Why the session may not report the action; None when it may."""
    if action.user_id != session.user_id:
        return NOT_THE_USER
    if action.action not in allowed:
        return f"action {action.action} may not be reported from a browser (BROWSER_ACTIONS)"
    return None


def too_many(window: Window) -> SessionRefused:
    retry_after_s = window.retry_after_s
    message = (
        f"at most {BROWSER_ACTIONS_PER_MINUTE} actions a minute from a user's browser: "
        f"try again in {retry_after_s} s"
    )
    headers = {"Retry-After": str(retry_after_s)}
    return SessionRefused(message, status_code=429, headers=headers)
