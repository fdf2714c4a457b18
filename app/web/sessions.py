"""Dashboard sessions: the signed cookie the login form sets, and the login attempt limit.

The cookie holds a random session id and when it expires, signed with itsdangerous under a key
derived from `ACTIVATION_API_KEY` (changing the key ends every session). Reading one never
raises, whatever the cookie holds. Logout revokes the id in storage until it would have expired
(`store.logins`), so a copied cookie dies with it. Failed logins are counted per client
in storage, so every web process shares the count (`store.logins` too).
"""

import secrets
from dataclasses import dataclass

from app import signing

COOKIE = "activation_session"
SESSION_S = 12 * 3600
MAX_COOKIE_CHARS = 512  # a genuine token is about 110 characters
SESSION_ID_BYTES = 16
LOGIN_FAILURES_ALLOWED = 10
LOGIN_WINDOW_S = 15 * 60


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    expires_at_ms: int


def issue(api_key: str, now_ms: int) -> str:
    """A new session's cookie value: a random id and its expiry (epoch ms), signed."""
    session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
    return signing.sign_session(api_key, {"id": session_id, "exp": now_ms + SESSION_S * 1000})


def read(api_key: str, token: str, now_ms: int) -> Session | None:
    """The session a cookie value holds, or None when it is forged, altered, expired or
    malformed. Never raises: the value is whatever a client sent."""
    if not token.isascii() or len(token) > MAX_COOKIE_CHARS:
        return None  # a lone surrogate could not even be encoded to be checked
    return _session(signing.unsign_session(api_key, token), now_ms)


def _session(payload: object, now_ms: int) -> Session | None:
    if not isinstance(payload, dict):
        return None
    session_id, expires_at_ms = payload.get("id"), payload.get("exp")
    if not isinstance(session_id, str) or type(expires_at_ms) is not int:
        return None
    return Session(session_id, expires_at_ms) if expires_at_ms > now_ms else None
