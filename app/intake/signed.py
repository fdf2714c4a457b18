"""What both Svix-signed webhook endpoints (Clerk's and Resend's) share: the bounded body, the
signature and timestamp check, the delivery id, and the envelope parsed in one pass. Anything
wrong is a `WebhookRejected` (4xx with a short reason), never a 500."""

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from svix.webhooks import Webhook, WebhookVerificationError

from app.errors import PayloadTooLarge, WebhookRejected

MAX_BODY_BYTES = 1024 * 1024
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_DELIVERY_ID_CHARS = 256

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


def verify(verifier: Webhook, body: bytes, headers: dict[str, str], secret_name: str) -> str:
    """Check the Svix signature and timestamp (±5 min); returns the delivery id (`svix-id`).

    A signature that does not match names `secret_name` in the refusal's hint (the log's)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("body is not UTF-8") from None
    try:
        verifier.verify(body, headers)
    except WebhookVerificationError as exc:
        hint = ""
        if "signature" in str(exc).lower():
            hint = f"is {secret_name} the signing secret of this very endpoint?"
        raise WebhookRejected(f"signature check failed: {exc}", hint=hint) from None
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
