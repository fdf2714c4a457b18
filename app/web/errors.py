"""How the service's errors become HTTP answers: one mapping for FastAPI's exception handlers and
for the hot intake routes, which answer their own errors (see `app.web.gate`).

    RequestRefused      its `status_code`, {"error": reason}
    StorageUnavailable  503 with Retry-After, so Svix and callers retry; counted and logged
    StorageError        500; counted and logged (a script bug or a wrong key type: not retried)
    invalid request     422, {"detail": [{"loc", "msg", "type"} per failing field]}
"""

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.errors import ActivationError, RequestRefused, StorageError, StorageUnavailable
from app.web.deps import services_of

logger = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_S = 5


def error_response(request: Request, exc: ActivationError) -> JSONResponse:
    """The answer to a refused request or a storage failure; any other error is re-raised."""
    if isinstance(exc, RequestRefused):
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)
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


def invalid_request_response(errors: Iterable[Mapping[str, Any]]) -> JSONResponse:
    """422 naming each failing field (FastAPI's shape); the offending input is not echoed back."""
    detail = [
        {
            "loc": [_printable(part) for part in error["loc"]],
            "msg": _printable(error["msg"]),
            "type": error["type"],
        }
        for error in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(part: object) -> str | int:
    # a JSON body may carry lone surrogates, which no response can encode: replace them
    return part if isinstance(part, int) else str(part).encode("utf-8", "replace").decode()
