"""How the service's errors become HTTP answers: one mapping for FastAPI's exception handlers and
for the hot intake routes, which answer their own errors (see `app.web.gate`).

    RequestRefused      its `status_code`, {"error": reason} (a `SessionRefused`'s headers too)
    StorageUnavailable  503 with Retry-After, so Svix and callers retry; counted and logged
    StorageError        500; counted and logged (a script bug or a wrong key type: not retried)
    invalid request     422, {"detail": [{"loc", "msg", "type"} per failing field]}
"""

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.errors import (
    ActivationError,
    RequestRefused,
    SessionRefused,
    StorageError,
    StorageUnavailable,
)
from app.web.deps import services_of

logger = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_S = 5


def error_response(request: Request, exc: ActivationError) -> JSONResponse:
    """The answer to a refused request or a storage failure; any other error is re-raised."""
    if isinstance(exc, RequestRefused):
        headers = exc.headers if isinstance(exc, SessionRefused) else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)
    if isinstance(exc, StorageUnavailable):
        services_of(request).metrics.storage_error(exc)
        logger.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
        headers = {"Retry-After": str(STORAGE_RETRY_AFTER_S)}
        return JSONResponse({"error": "storage unavailable"}, status_code=503, headers=headers)
    if isinstance(exc, StorageError):
        services_of(request).metrics.storage_error(exc)
        logger.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": "storage error"}, status_code=500)
    raise exc


# The tags of a body that may take several shapes (`POST /v1/actions`: one action or a batch):
# pydantic puts them in an error's location, but a caller never wrote them.
BODY_SHAPE_TAGS = frozenset({"single", "batch"})
NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})
SEND_JSON = (
    "the body must be a JSON object, sent with Content-Type: application/json: one action "
    '{"user_id": ..., "action": ...} or a batch {"actions": [...]}'
)


def invalid_request_response(errors: Iterable[Mapping[str, Any]]) -> JSONResponse:
    """422 naming each failing field (FastAPI's shape); the offending input is not echoed back."""
    detail = [_public(error) for error in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _public(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error as a caller reads it: no internal tags in its location, and a body that is not
    a JSON object (a form, text, a missing Content-Type) told what to send."""
    loc = [_printable(part) for part in error["loc"]]
    if len(loc) > 1 and loc[0] == "body" and loc[1] in BODY_SHAPE_TAGS:
        del loc[1]
    msg = _printable(error["msg"])
    if loc == ["body"] and error["type"] in NOT_AN_OBJECT:
        msg = SEND_JSON
    return {"loc": loc, "msg": msg, "type": error["type"]}


def _printable(part: object) -> str | int:
    # a JSON body may carry lone surrogates, which no response can encode: replace them
    return part if isinstance(part, int) else str(part).encode("utf-8", "replace").decode()
