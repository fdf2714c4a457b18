"""Bearer-key protection of `/v1/*`: `ACTIVATION_API_KEY`, compared in constant time."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.deps import SettingsDep

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer $ACTIVATION_API_KEY")


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse unless the bearer token equals ACTIVATION_API_KEY (always, when it is unset)."""
    expected = settings.activation_api_key
    given = credentials.credentials if credentials is not None else ""
    if expected is None or not hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})


ApiKeyDep = Depends(require_api_key)
