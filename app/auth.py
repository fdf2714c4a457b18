"""Bearer-key protection of `/v1/*`: `ACTIVATION_API_KEY`, compared in constant time.

Two layers: `RequireApiKey`, an ASGI middleware, refuses a request before anything reads its body
(so a caller without the key only ever sees 401, never a parser's complaint), and the route
dependency `ApiKeyDep` documents the scheme in OpenAPI and checks again.
"""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import SettingsDep

REFUSAL = "missing or wrong API key"
CHALLENGE = {"WWW-Authenticate": "Bearer"}

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer $ACTIVATION_API_KEY")


def key_matches(expected: SecretStr | None, given: str) -> bool:
    """Constant-time comparison; no configured key matches nothing."""
    if expected is None:
        return False
    secret = expected.get_secret_value().encode()
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse unless the bearer token equals ACTIVATION_API_KEY (always, when it is unset)."""
    given = credentials.credentials if credentials is not None else ""
    if not key_matches(settings.activation_api_key, given):
        raise HTTPException(401, REFUSAL, CHALLENGE)


ApiKeyDep = Depends(require_api_key)


class RequireApiKey:
    """Answers 401 to any `/v1/*` request without the key, before its body is read."""

    def __init__(self, app: ASGIApp, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            expected = scope["app"].state.settings.activation_api_key
            token = bearer_token(Headers(scope=scope).get("authorization"))
            if not key_matches(expected, token):
                response = JSONResponse({"detail": REFUSAL}, 401, headers=CHALLENGE)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
