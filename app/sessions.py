"""Operator access to the dashboard pages: `ACTIVATION_API_KEY` as a bearer token, or a signed
session cookie set by the login form (HttpOnly, SameSite=Strict). The cookie's key is derived from
the API key, so changing the key ends every session; with no key set nothing gets in (as `/v1/*`).
"""

import base64
import hashlib
import hmac
from enum import StrEnum

from fastapi import Request

from app.settings import Settings

COOKIE = "activation_session"
SESSION_S = 12 * 3600


class Access(StrEnum):
    GRANTED = "granted"
    LOGIN = "login"  # a key is configured; show the login form
    UNCONFIGURED = "unconfigured"  # no ACTIVATION_API_KEY: refuse everyone


def _signature(api_key: str, expires_ms: int) -> str:
    key = hmac.new(api_key.encode(), b"activation-loops dashboard session v1", hashlib.sha256)
    digest = hmac.new(key.digest(), f"session:{expires_ms}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(api_key: str, now_ms: int) -> str:
    """A session token: when it expires (epoch ms) and its signature."""
    expires_ms = now_ms + SESSION_S * 1000
    return f"{expires_ms}.{_signature(api_key, expires_ms)}"


def valid(api_key: str, token: str, now_ms: int) -> bool:
    expires, _, signature = token.partition(".")
    if not (expires.isascii() and expires.isdigit()) or int(expires) <= now_ms:
        return False
    # bytes: compare_digest refuses a str with non-ASCII characters (a forged cookie's)
    return hmac.compare_digest(signature.encode(), _signature(api_key, int(expires)).encode())


def key_matches(api_key: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), api_key.encode())


def access(request: Request, settings: Settings, now_ms: int) -> Access:
    """Whether the request may see operator pages: the bearer key or a valid session cookie."""
    if settings.activation_api_key is None:
        return Access.UNCONFIGURED
    api_key = settings.activation_api_key.get_secret_value()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key_matches(api_key, token.strip()):
        return Access.GRANTED
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and valid(api_key, cookie, now_ms):
        return Access.GRANTED
    return Access.LOGIN
