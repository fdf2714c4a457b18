"""`POST /webhooks/resend`: Resend's delivery events (Svix-signed), joined to the user's timeline.

`email.delivered`, `email.bounced`, `email.complained`, `email.opened` and `email.clicked` are
recorded once per delivery (`svix-id`); a hard bounce or a complaint also suppresses the user for
every loop. The user is the `user` tag every loop email carries (Resend echoes tags in
`data.tags`); events for other emails are acknowledged and ignored. Same checks and answers as
`POST /webhooks/clerk`: 400 bad signature or body, 503 not configured or storage unavailable.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from svix.webhooks import Webhook

from app.engine.job_ids import email_id
from app.errors import NotConfigured
from app.storage.keys import valid_user_id
from app.storage.records import EmailEvent
from app.storage.store import Store
from app.web import auth
from app.web.auth import Access
from app.web.deps import ClockDep, MetricsDep, StoreDep, services_of
from app.web.webhooks.svix import (
    MAX_BODY_BYTES,
    WEBHOOK_RESPONSES,
    WebhookAck,
    parse_event,
    read_body,
    verify,
)

logger = logging.getLogger(__name__)

HANDLED_TYPES = frozenset(
    {"email.delivered", "email.bounced", "email.complained", "email.opened", "email.clicked"}
)
HARD_BOUNCE_TYPES = frozenset({"permanent", "hard"})

router = APIRouter(tags=["webhooks"])


class ResendEvent(BaseModel):
    """The envelope of a Resend webhook: `type`, `created_at`, and the email in `data`."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1)
    created_at: str | None = None
    data: dict[str, Any]


async def get_verifier(request: Request) -> Webhook:
    verifier = services_of(request).resend_verifier
    if verifier is None:
        raise NotConfigured("not configured: set RESEND_WEBHOOK_SECRET")
    return verifier


VerifierDep = Annotated[Webhook, Depends(get_verifier)]


@router.post(
    "/webhooks/resend",
    response_model=WebhookAck,
    responses=WEBHOOK_RESPONSES,
)
@auth.policy(Access.PUBLIC, max_body_bytes=MAX_BODY_BYTES)  # the Svix signature is checked here
async def receive_resend_event(
    request: Request, verifier: VerifierDep, store: StoreDep, clock: ClockDep, metrics: MetricsDep
) -> WebhookAck:
    """Receive a Resend webhook: recorded, suppressed, duplicate, unmatched, unknown or ignored."""
    with metrics.webhook_failures("resend"):
        body = await read_body(request, MAX_BODY_BYTES)
        headers, now_ms = dict(request.headers), clock()
        delivery_id = verify(verifier, body, headers, "RESEND_WEBHOOK_SECRET", now_ms=now_ms)
        event = parse_event(body, ResendEvent)
        status = await apply_event(store, event, delivery_id, now_ms=now_ms)
    logger.info("resend event %s delivery=%s: %s", event.type, delivery_id, status)
    metrics.webhook("resend", event.type, status)
    if status == "suppressed":
        metrics.suppressions.labels(suppression_reason(event) or "-").inc()
    return WebhookAck(status=status)


async def apply_event(store: Store, event: ResendEvent, delivery_id: str, *, now_ms: int) -> str:
    if event.type not in HANDLED_TYPES:
        return "ignored"
    found = to_email_event(event, delivery_id)
    if found is None:
        return "unmatched"  # not one of our loop emails (no `user` tag)
    return await store.users.record_email_event(found, now_ms=now_ms)


def to_email_event(event: ResendEvent, delivery_id: str) -> EmailEvent | None:
    tags = tags_of(event.data)
    user_id = tags.get("user", "")
    if not valid_user_id(user_id):
        return None
    email_id = event.data.get("email_id")
    return EmailEvent(
        delivery_id=delivery_id,
        user_id=user_id,
        type=event.type,
        job_id=job_id_of(user_id, tags),
        provider_id=email_id if isinstance(email_id, str) else None,
        suppression=suppression_reason(event),
        details=bounce_details(event.data),
    )


def tags_of(data: dict[str, Any]) -> dict[str, str]:
    """`data.tags` as a dict, whether Resend sends `{name: value}` or `[{name, value}]`."""
    tags = data.get("tags")
    if isinstance(tags, dict):
        return {str(name): str(value) for name, value in tags.items()}
    if isinstance(tags, list):
        pairs = (tag for tag in tags if isinstance(tag, dict) and "name" in tag)
        return {str(tag["name"]): str(tag.get("value", "")) for tag in pairs}
    return {}


def job_id_of(user_id: str, tags: dict[str, str]) -> str | None:
    loop_id, step, kind = tags.get("loop"), tags.get("step", ""), tags.get("kind")
    if loop_id is None or kind is None or not step.isdigit():
        return None
    return email_id(user_id, loop_id, int(step), kind)


def suppression_reason(event: ResendEvent) -> str | None:
    """ "complained", "bounced" for a hard bounce, else None (soft bounces pass)."""
    if event.type == "email.complained":
        return "complained"
    if event.type == "email.bounced" and hard_bounce(event.data):
        return "bounced"
    return None


def hard_bounce(data: dict[str, Any]) -> bool:
    """Resend sends `email.bounced` for permanent rejections; `bounce.type` says so explicitly
    (`Permanent`), and a `Transient`/`Undetermined` one does not suppress."""
    bounce = data.get("bounce")
    kind = bounce.get("type") if isinstance(bounce, dict) else None
    return kind is None or str(kind).lower() in HARD_BOUNCE_TYPES


def bounce_details(data: dict[str, Any]) -> dict[str, str]:
    """What the timeline keeps of a bounce: its type and subtype (never addresses or text)."""
    bounce = data.get("bounce")
    if not isinstance(bounce, dict):
        return {}
    details = {"bounce_type": bounce.get("type"), "bounce_subtype": bounce.get("subType")}
    return {name: str(value)[:64] for name, value in details.items() if value is not None}
