"""`POST /v1/actions`: "user did X" from the app's server, one action or a batch, idempotent by id;
or from a signed-in user's browser with a Clerk session token instead of the API key
(`app.web.session_tokens`), for what `browser_limits` admits, with CORS for ALLOWED_ORIGINS
(`app.web.cors`; `OPTIONS /v1/actions` is the preflight).

The route records the actions (one Lua script, one round trip), counts them in memory for their
health (`app.storage.action_sightings`: no command of its own) and wakes the worker; loops are
looked at by the worker, never inside the request.

It is a hot route (`app.web.gate`): `receive_actions` reads and validates the body as
FastAPI would for `post_actions`, the route FastAPI documents (and serves when hot routes are
off): the same JSON parsing, the same validation with `body` leading each error's location, and
the same 422. A test sends both a range of good and bad bodies and compares the answers.
"""

import json
from datetime import datetime
from email.message import Message
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, status
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from app.clock import datetime_ms, to_epoch_ms
from app.engine.conditions import ACTION_NAME_PATTERN
from app.errors import ActivationError, PayloadTooLarge
from app.storage.keys import USER_ID_PATTERN
from app.storage.records import NewAction
from app.web import auth
from app.web.auth import Access
from app.web.deps import Services, services_of
from app.web.errors import error_json, error_response, error_responses, invalid_request_response
from app.web.session_tokens import ClerkSession, session_of
from app.web.v1 import browser_limits

MAX_BATCH = 1000
MAX_PROPERTIES_BYTES = 4096
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z
ACTION_ID_PATTERN = r"^[!-~]{1,128}$"  # printable ASCII: it becomes part of a Redis key
ACTIONS_PATH = "/v1/actions"
# A full batch: 1,000 actions with 4 KiB of properties each, plus their ids, names and times.
MAX_BODY_BYTES = 5 * 1024 * 1024

# No key dependency here: `app.web.gate` refuses a request without the key before its body is read,
# and the route stays free of per-request dependency solving (see app/web/deps.py).
router = APIRouter(tags=["actions"])


class ActionIn(BaseModel):
    """One action; `id` is your idempotency key (a repeat is counted as a duplicate)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=USER_ID_PATTERN, examples=["user_29w83sxmDNGwOuEthce5gg56FcC"])
    action: str = Field(pattern=ACTION_NAME_PATTERN, examples=["first_project_created"])
    properties: dict[str, Any] | None = None
    occurred_at: datetime | int | None = Field(
        default=None, description="RFC 3339, or epoch milliseconds; defaults to now"
    )
    id: str | None = Field(default=None, pattern=ACTION_ID_PATTERN)

    @field_validator("properties")
    @classmethod
    def _small_properties(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(
                "properties hold an invalid Unicode escape (a lone surrogate)"
            ) from None
        if size > MAX_PROPERTIES_BYTES:
            raise ValueError(f"properties over {MAX_PROPERTIES_BYTES} bytes")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime | int | None) -> datetime | int | None:
        # a far-off time is a client bug, and would not survive Lua's number formatting
        if value is not None and not EARLIEST_MS <= occurred_ms(value, EARLIEST_MS) <= LATEST_MS:
            raise ValueError("occurred_at must be between the years 2000 and 3000")
        return value

    def to_new_action(self, now_ms: int) -> NewAction:
        return NewAction(
            user_id=self.user_id,
            action=self.action,
            occurred_at_ms=min(occurred_ms(self.occurred_at, now_ms), now_ms),
            id=self.id,
            properties=self.properties,
        )


class ActionBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actions: list[ActionIn] = Field(min_length=1, max_length=MAX_BATCH)


def _shape(value: Any) -> Literal["batch", "single"]:
    return "batch" if isinstance(value, dict) and "actions" in value else "single"


ActionsBody = Annotated[
    Annotated[ActionIn, Tag("single")] | Annotated[ActionBatch, Tag("batch")],
    Discriminator(_shape),
]


class Accepted(BaseModel):
    accepted: int
    duplicates: int


def occurred_ms(value: datetime | int | None, now_ms: int) -> int:
    """RFC 3339 (naive means UTC) or epoch ms; a time in the future counts as now."""
    if value is None:
        return now_ms
    if isinstance(value, datetime):
        return datetime_ms(value)
    return to_epoch_ms(value) or now_ms


@router.post(
    ACTIONS_PATH,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=error_responses(
        {
            400: "a body that cannot be parsed (not UTF-8, nested too deep)",
            401: "missing or wrong API key, or a session token refused",
            403: "a session token reporting another user's or a refused action",
            413: f"body over {MAX_BODY_BYTES} bytes",
            422: "invalid body: each failing field named",
            429: "a user's browser past its rate limit (see Retry-After)",
        }
    ),
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
@auth.policy(Access.API_KEY_OR_CLERK_SESSION, max_body_bytes=MAX_BODY_BYTES)
async def post_actions(request: Request, body: Annotated[ActionsBody, Body()]) -> Accepted:
    """Record one action or a batch of up to 1,000: with the API key, from your server; with a
    user's Clerk session token, from their browser (their own actions, named in BROWSER_ACTIONS,
    at most 60 a minute)."""
    # the key or token was checked by `app.web.gate` before the body was read
    return await record(services_of(request), body, session_of(request))


@router.options(ACTIONS_PATH, status_code=status.HTTP_204_NO_CONTENT, include_in_schema=False)
@auth.policy(Access.CORS_PREFLIGHT, max_body_bytes=0)
async def preflight_actions() -> Response:
    """The CORS preflight of a browser's `POST /v1/actions`: `app.web.gate` adds the headers for
    an allowed origin (`app.web.cors`)."""
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def receive_actions(request: Request) -> Response:
    """`post_actions` served as a hot route: the body read and validated here, errors answered."""
    try:
        payload = await json_body(request)
        if payload is EMPTY:
            return invalid_request_response([MISSING_BODY])
        body = ACTIONS_BODY.validate_python(payload, from_attributes=True)
    except ValidationError as exc:
        return invalid_request_response(
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        )
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        return invalid_request_response([error])
    except (ValueError, ClientDisconnect):  # not UTF-8, too deep, or cut short: as FastAPI does
        return error_json(400, NOT_PARSED)
    except PayloadTooLarge as exc:  # streamed past MAX_BODY_BYTES: `app.web.gate` stopped reading
        return error_response(request, exc)
    try:
        accepted = await record(services_of(request), body, session_of(request))
    except ActivationError as exc:
        return error_response(request, exc)
    return JSONResponse(accepted.model_dump(), status_code=status.HTTP_202_ACCEPTED)


HOT_ROUTES = {("POST", ACTIONS_PATH): receive_actions}  # served by app.web.gate
NOT_PARSED = "There was an error parsing the body"  # FastAPI's words, when it routes the request

ACTIONS_BODY: TypeAdapter[ActionIn | ActionBatch] = TypeAdapter(ActionsBody)
MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required"}
EMPTY = object()  # what `json_body` returns for an empty body


async def json_body(request: Request) -> Any:
    """The body as FastAPI reads it: JSON when it says it is JSON, its bytes if not, or `EMPTY`.
    Raises `JSONDecodeError`, or `ValueError` for any other parse failure."""
    raw = await request.body()
    if not raw:
        return EMPTY
    content_type = Message()
    content_type["content-type"] = request.headers.get("content-type", "")
    subtype = content_type.get_content_subtype()
    if content_type.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        return raw  # FastAPI's strict content type: left to fail validation as not an object
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


async def record(
    services: Services, body: ActionIn | ActionBatch, session: ClerkSession | None = None
) -> Accepted:
    """Store the actions; a browser's (`session`) only once `browser_limits.admit` let them all
    in."""
    now_ms = services.clock()
    items = body.actions if isinstance(body, ActionBatch) else [body]
    actions = [item.to_new_action(now_ms) for item in items]
    if session is not None:
        await browser_limits.admit(services, session, actions)
    accepted, duplicates = await services.store.actions.record(
        actions,
        now_ms=now_ms,
        tracked=services.tracked_counts,
        filters=services.watched_filters,
    )
    services.metrics.actions_recorded(accepted, duplicates)
    # for their health: no Redis command here (the runtime flushes them every few minutes, a
    # name new to storage within a second); the store answers only totals, so a request's
    # duplicates are counted too
    services.saw_actions([action.action for action in actions], now_ms)
    services.wake_worker()
    return Accepted(accepted=accepted, duplicates=duplicates)
