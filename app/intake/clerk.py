"""`POST /webhooks/clerk`: Svix-verified Clerk user events, stored once per delivery.

Order of checks: size, UTF-8, signature (svix), JSON shape, storage. Anything wrong before storage
is a 4xx with a short JSON reason and nothing stored; storage trouble is a 503 so Svix retries; a
2xx is only sent once the event is stored (or is a duplicate, or a type we ignore).
"""

import json
import logging
import re
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from svix.webhooks import Webhook, WebhookVerificationError

from app.errors import ActivationError, PayloadTooLarge, WebhookRejected
from app.intake.users import ClerkDeletedUser, ClerkEvent, ClerkUser, EventType
from app.storage.store import Store
from app.web import auth
from app.web.auth import Access
from app.web.errors import error_response
from app.web.intake import intake_of

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_DELIVERY_ID_CHARS = 256
CLERK_PATH = "/webhooks/clerk"

router = APIRouter(tags=["webhooks"])

DataT = TypeVar("DataT", bound=BaseModel)


class WebhookAck(BaseModel):
    """What the endpoint did: created, updated, stale, deleted, tombstoned, duplicate or ignored."""

    status: str


class WebhookError(BaseModel):
    error: str


# What a Svix-signed webhook endpoint answers besides 2xx (documented in OpenAPI).
WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": WebhookError, "description": "bad signature, stale timestamp, bad body"},
    413: {"model": WebhookError, "description": "body over 1 MiB"},
    503: {"model": WebhookError, "description": "not configured, or storage unavailable"},
}


@router.post(
    CLERK_PATH,
    response_model=WebhookAck,
    responses=WEBHOOK_RESPONSES,
)
@auth.policy(Access.PUBLIC, max_body_bytes=MAX_BODY_BYTES)  # the Svix signature is checked here
async def receive_clerk_webhook(request: Request) -> Response:
    """Receive a Clerk webhook (subscribe to user.created, user.updated, user.deleted)."""
    # A hot route (app.web.gate): it answers its own errors and returns a Response.
    intake = intake_of(request)
    metrics = intake.metrics
    try:
        with metrics.webhook_failures("clerk"):
            verifier = intake.verifier()
            body = await read_body(request, MAX_BODY_BYTES)
            delivery_id = verify(verifier, body, dict(request.headers))
            event = parse_event(body, ClerkEvent)
            status = await apply_event(intake.store, event, delivery_id, now_ms=intake.clock())
    except ActivationError as exc:
        return error_response(request, exc)
    logger.info("clerk webhook %s delivery=%s: %s", event.type, delivery_id, status)
    metrics.webhook("clerk", event.type, status)
    intake.wake_worker()  # a registration starts loops: their clocks start now
    return JSONResponse({"status": status})


HOT_ROUTES = {("POST", CLERK_PATH): receive_clerk_webhook}  # served by app.web.gate


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The raw body, refused as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"body over {limit_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit_bytes:
                raise PayloadTooLarge(f"body over {limit_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # the sender gave up (a Svix timeout): nothing was stored, it will retry
        raise WebhookRejected("the client disconnected before the body arrived") from None
    return b"".join(chunks)


def verify(verifier: Webhook, body: bytes, headers: dict[str, str]) -> str:
    """Check the Svix signature and timestamp (±5 min); returns the delivery id (`svix-id`)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("body is not UTF-8") from None
    try:
        verifier.verify(body, headers)
    except WebhookVerificationError as exc:
        raise WebhookRejected(f"signature check failed: {exc}") from None
    except ValueError:
        # svix raises bare ValueError (binascii.Error included) on some malformed headers.
        raise WebhookRejected("signature check failed: malformed svix-signature") from None
    return delivery_id(headers)


def delivery_id(headers: dict[str, str]) -> str:
    value = headers.get("svix-id") or headers.get("webhook-id") or ""
    if not value or len(value) > MAX_DELIVERY_ID_CHARS or not value.isprintable():
        raise WebhookRejected("malformed svix-id")
    return value


def load_json(body: bytes) -> Any:
    """The body's JSON; refused when it is not JSON or holds text that cannot be stored."""
    try:
        payload = json.loads(body)
        # JSON may escape a lone UTF-16 surrogate (\ud800): valid JSON, but no UTF-8 exists for
        # it, so it could never be stored; refuse it now rather than fail on every retry. Only a
        # body holding a `\uD8..`-`\uDF..` escape can carry one: the rest skip the re-encoding.
        if SURROGATE_ESCAPE.search(body):
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise WebhookRejected("body holds an invalid Unicode escape (a lone surrogate)") from None
    except ValueError:
        raise WebhookRejected("body is not JSON") from None
    except RecursionError:
        raise WebhookRejected("body is JSON nested too deep") from None
    return payload


def parse_event(body: bytes, model: type[DataT]) -> DataT:
    """The body as an event envelope (Clerk's, Resend's): its JSON, then its shape.

    One pass through pydantic's JSON parser; a body it refuses as JSON (not JSON, a lone
    surrogate, NaN) takes the slow path, which says which it is, or accepts what `json` does."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors(include_url=False)[0]["type"] != "json_invalid":
            raise WebhookRejected(f"malformed event: {first_error(exc)}") from None
    payload = load_json(body)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise WebhookRejected(f"malformed event: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


async def apply_event(store: Store, event: ClerkEvent, delivery_id: str, *, now_ms: int) -> str:
    """Store what a user event says; other event types are acknowledged and ignored."""
    if event.type in (EventType.USER_CREATED, EventType.USER_UPDATED):
        user = parse_data(ClerkUser, event)
        profile = user.to_profile()
        version_ms = profile.updated_at or event.timestamp_ms or now_ms
        created = event.type == EventType.USER_CREATED
        write = await store.users.record(
            delivery_id, profile, created=created, version_ms=version_ms, now_ms=now_ms
        )
        return write.value
    if event.type == EventType.USER_DELETED:
        deleted = parse_data(ClerkDeletedUser, event)
        return (await store.users.delete(delivery_id, deleted.id, now_ms=now_ms)).value
    return "ignored"


def parse_data(model: type[DataT], event: ClerkEvent) -> DataT:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise WebhookRejected(f"malformed {event.type}: data.{first_error(exc)}") from None
