"""What both Svix-signed webhook endpoints (Clerk's and Resend's) share: the bounded body, the
signature and timestamp check (the timestamp on the service's clock, `app.clock`), the delivery
id, and the envelope parsed in one pass. Anything wrong is a `WebhookRejected` (4xx with a short
reason), never a 500."""

import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from svix.webhooks import Webhook

from app.errors import PayloadTooLarge, WebhookRejected
from app.signing import webhook_signature_holds
from app.web.errors import error_responses

MAX_BODY_BYTES = 1024 * 1024
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_DELIVERY_ID_CHARS = 256
WEBHOOK_TOLERANCE_MS = 5 * 60 * 1000  # Svix's, either way

DataT = TypeVar("DataT", bound=BaseModel)


class WebhookAck(BaseModel):
    """What the endpoint did: created, updated, stale, deleted, tombstoned, duplicate or ignored."""

    status: str


# What a Svix-signed webhook endpoint answers besides 2xx (documented in OpenAPI).
WEBHOOK_RESPONSES = error_responses(
    {
        400: "bad signature, stale timestamp, bad body",
        413: "body over 1 MiB",
        503: "not configured, or storage unavailable",
    }
)


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


def verify(
    verifier: Webhook, body: bytes, headers: dict[str, str], secret_name: str, *, now_ms: int
) -> str:
    """Check the Svix signature, and the timestamp within ±5 min of `now_ms` (the service's
    clock); returns the delivery id (`svix-id`).

    A signature that does not match names `secret_name` in the refusal's hint (the log's)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("body is not UTF-8") from None
    msg_id, timestamp_s, signatures = svix_headers(headers)
    check_timestamp(timestamp_s, now_ms)
    if not webhook_signature_holds(verifier, msg_id, timestamp_s, text, signatures):
        hint = f"is {secret_name} the signing secret of this very endpoint?"
        raise WebhookRejected("signature check failed: No matching signature found", hint=hint)
    return delivery_id(headers)


def svix_headers(headers: dict[str, str]) -> tuple[str, int, str]:
    """The id, timestamp (epoch s) and signatures of a delivery, under svix's names or Standard
    Webhooks' (`webhook-*`); the refusals say what svix's own check says."""
    msg_id = headers.get("svix-id") or headers.get("webhook-id")
    timestamp = headers.get("svix-timestamp") or headers.get("webhook-timestamp")
    signatures = headers.get("svix-signature") or headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookRejected("signature check failed: Missing required headers")
    try:
        timestamp_s = float(timestamp)
    except ValueError:
        timestamp_s = math.nan
    if not math.isfinite(timestamp_s):
        raise WebhookRejected("signature check failed: Invalid Signature Headers")
    return msg_id, math.floor(timestamp_s), signatures


def check_timestamp(timestamp_s: int, now_ms: int) -> None:
    """Svix's tolerance, on the service's clock: a delivery signed more than 5 minutes before or
    after now is refused (a replay, or a clock far off)."""
    if timestamp_s * 1000 < now_ms - WEBHOOK_TOLERANCE_MS:
        raise WebhookRejected("signature check failed: Message timestamp too old")
    if timestamp_s * 1000 > now_ms + WEBHOOK_TOLERANCE_MS:
        raise WebhookRejected("signature check failed: Message timestamp too new")


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
