"""How the service's errors become HTTP answers. Every error answered in JSON (webhooks, `/v1`,
the pages' JSON answers, the gate's refusals) has one body, built by `error_body` alone:

    {"error": "<short reason>"}                             every refusal and failure
    {"error": "invalid request: body.user_id", "fields": [  422: each failing field named
        {"field": "body.user_id", "message": "...", "type": "string_pattern_mismatch"}]}

One mapping for FastAPI's exception handlers and for the hot intake routes, which answer their
own errors (see `app.web.gate`):

    RequestRefused      its `status_code` (a `SessionRefused`'s headers too)
    StorageUnavailable  503 with Retry-After, so Svix and callers retry; counted and logged
    StorageError        500; counted and logged (a script bug or a wrong key type: not retried)
    invalid request     422, each failing field in `fields`
    HTTPException       its status and headers (the router's 404 and 405, an unknown user's
                        404, a body FastAPI cannot parse: 400), its detail as the reason
    anything else       500 "internal error" (the server still logs the traceback)
"""

import logging
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
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
INTERNAL_ERROR = "internal error"
MAX_FIELDS_NAMED = 3  # in a 422's reason; `fields` lists them all


class FieldError(BaseModel):
    """One failing field of a 422."""

    field: str = Field(examples=["body.actions.3.action"], description="where, dot-separated")
    message: str
    type: str = Field(examples=["missing"], description="pydantic's error type")


class ErrorBody(BaseModel):
    """The body of every error answer (see the README's "Errors")."""

    error: str = Field(examples=["missing or wrong API key"], description="a short reason")


class InvalidRequest(ErrorBody):
    """A 422: the same body, with each failing field named."""

    fields: list[FieldError]


def error_body(reason: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The one shape of an error answer's JSON body (`ErrorBody`, `InvalidRequest`)."""
    if fields is None:
        return {"error": reason}
    return {"error": reason, "fields": fields}


def error_json(
    status_code: int, reason: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(reason), status_code=status_code, headers=headers)


def error_responses(
    descriptions: Mapping[int, str], *, page: bool = False
) -> dict[int | str, dict[str, Any]]:
    """A route's error answers as OpenAPI `responses`, each with the one error body. `page`: a
    route answering HTML when it succeeds, whose errors are JSON all the same (referred to by
    name: the JSON routes put the models in the document)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status_code, text in descriptions.items():
        model = InvalidRequest if status_code == 422 else ErrorBody
        if page:
            schema = {"$ref": f"#/components/schemas/{model.__name__}"}
            responses[status_code] = {
                "description": text,
                "content": {"application/json": {"schema": schema}},
            }
        else:
            responses[status_code] = {"model": model, "description": text}
    return responses


def error_response(request: Request, exc: ActivationError) -> JSONResponse:
    """The answer to a refused request or a storage failure; any other error is re-raised."""
    if isinstance(exc, RequestRefused):
        headers = exc.headers if isinstance(exc, SessionRefused) else None
        return error_json(exc.status_code, str(exc), headers)
    if isinstance(exc, StorageUnavailable):
        services_of(request).metrics.storage_error(exc)
        logger.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_json(503, "storage unavailable", {"Retry-After": str(STORAGE_RETRY_AFTER_S)})
    if isinstance(exc, StorageError):
        services_of(request).metrics.storage_error(exc)
        logger.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        return error_json(500, "storage error")
    raise exc


def internal_error_response() -> JSONResponse:
    """A 500 for an error nobody answered: a bug (its traceback is the server's to log)."""
    return error_json(500, INTERNAL_ERROR)


def http_error_response(exc: HTTPException) -> JSONResponse:
    """FastAPI's and Starlette's own errors; a bare status phrase (`Not Found`) in lower case,
    as the service's own reasons are."""
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if detail == HTTPStatus(exc.status_code).phrase:
        detail = detail.lower()
    return error_json(exc.status_code, detail, exc.headers)


# The tags of a body that may take several shapes (`POST /v1/actions`: one action or a batch):
# pydantic puts them in an error's location, but a caller never wrote them.
BODY_SHAPE_TAGS = frozenset({"single", "batch"})
NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})
SEND_JSON = (
    "the body must be a JSON object, sent with Content-Type: application/json: one action "
    '{"user_id": ..., "action": ...} or a batch {"actions": [...]}'
)


def invalid_request_response(errors: Iterable[Mapping[str, Any]]) -> JSONResponse:
    """422 naming each failing field; the offending input is not echoed back."""
    fields = [_public(error) for error in errors]
    return JSONResponse(error_body(invalid_reason(fields), fields), status_code=422)


def invalid_reason(fields: list[dict[str, str]]) -> str:
    """`invalid request: ` and the first few fields named."""
    named = list(dict.fromkeys(field["field"] for field in fields))
    more = len(named) - MAX_FIELDS_NAMED
    return (
        "invalid request: "
        + ", ".join(named[:MAX_FIELDS_NAMED])
        + (f" and {more} more" if more > 0 else "")
    )


def _public(error: Mapping[str, Any]) -> dict[str, str]:
    """An error as a caller reads it: no internal tags in its location, and a body that is not
    a JSON object (a form, text, a missing Content-Type) told what to send."""
    loc = [_printable(part) for part in error["loc"]]
    if len(loc) > 1 and loc[0] == "body" and loc[1] in BODY_SHAPE_TAGS:
        del loc[1]
    message = _printable(error["msg"])
    if loc == ["body"] and error["type"] in NOT_AN_OBJECT:
        message = SEND_JSON
    if error["type"] == "json_invalid" and len(loc) == 2:  # the body, at a character
        message, loc = f"{message} at character {loc[1]}", loc[:1]
    return {"field": ".".join(loc), "message": message, "type": str(error["type"])}


def _printable(part: object) -> str:
    # a JSON body may carry lone surrogates, which no response can encode: replace them
    return str(part).encode("utf-8", "replace").decode()
