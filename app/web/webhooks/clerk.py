"""`POST /webhooks/clerk`: Svix-verified Clerk user events, stored once per delivery, and the
Clerk payloads they carry.

Order of checks: size, UTF-8, signature (svix), JSON shape, storage. Anything wrong before storage
is a 4xx with a short JSON reason and nothing stored; storage trouble is a 503 so Svix retries; a
2xx is only sent once the event is stored (or is a duplicate, or a type we ignore). Only what loops
and templates need is kept of a Clerk user: `private_metadata`, phone numbers and external
accounts never reach storage.
"""

import logging
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import JSONResponse, Response
from svix.webhooks import Webhook

from app.clock import to_epoch_ms
from app.errors import ActivationError, NotConfigured, WebhookRejected
from app.storage.keys import USER_ID_PATTERN
from app.storage.records import UserProfile
from app.storage.store import Store
from app.web import auth
from app.web.auth import Access
from app.web.deps import Services, services_of
from app.web.errors import error_response
from app.web.webhooks.svix import (
    MAX_BODY_BYTES,
    WEBHOOK_RESPONSES,
    DataT,
    WebhookAck,
    first_error,
    parse_event,
    read_body,
    verify,
)

logger = logging.getLogger(__name__)

CLERK_PATH = "/webhooks/clerk"
SECRET_NAME = "CLERK_WEBHOOK_SIGNING_SECRET"  # noqa: S105 (its name, for the log's hint)

router = APIRouter(tags=["webhooks"])


# --- Clerk's payloads ------------------------------------------------------------------------


class EventType(StrEnum):
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"


class _Lenient(BaseModel):
    # Clerk adds fields over time; unknown ones are not an error in a payload we do not own.
    model_config = ConfigDict(extra="ignore")


class ClerkEmailAddress(_Lenient):
    id: str
    email_address: str


class ClerkUser(_Lenient):
    """`data` of `user.created` / `user.updated`."""

    id: str = Field(pattern=USER_ID_PATTERN)
    email_addresses: list[ClerkEmailAddress] = Field(default_factory=list)
    primary_email_address_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    image_url: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    public_metadata: dict[str, Any] | None = None
    unsafe_metadata: dict[str, Any] | None = None

    @field_validator("first_name", "last_name", "username", "image_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    def primary_email(self) -> str | None:
        """The entry whose id is `primary_email_address_id`; None when null or dangling."""
        for address in self.email_addresses:
            if address.id == self.primary_email_address_id:
                return address.email_address
        return None

    def to_profile(self) -> UserProfile:
        return UserProfile(
            id=self.id,
            email=self.primary_email(),
            first_name=self.first_name,
            last_name=self.last_name,
            username=self.username,
            image_url=self.image_url,
            created_at=to_epoch_ms(self.created_at),
            updated_at=to_epoch_ms(self.updated_at),
            public_metadata=self.public_metadata or {},
            unsafe_metadata=self.unsafe_metadata or {},
        )


class ClerkDeletedUser(_Lenient):
    """`data` of `user.deleted`."""

    id: str = Field(pattern=USER_ID_PATTERN)


class ClerkEvent(_Lenient):
    """The envelope of every Clerk webhook; `data` is parsed by type once it is known."""

    type: str = Field(min_length=1)
    data: dict[str, Any]
    timestamp: float | None = None
    instance_id: str | None = None

    @property
    def timestamp_ms(self) -> int | None:
        return to_epoch_ms(self.timestamp)


# --- the endpoint ------------------------------------------------------------------------------


@router.post(
    CLERK_PATH,
    response_model=WebhookAck,
    responses=WEBHOOK_RESPONSES,
)
@auth.policy(Access.PUBLIC, max_body_bytes=MAX_BODY_BYTES)  # the Svix signature is checked here
async def receive_clerk_webhook(request: Request) -> Response:
    """Receive a Clerk webhook (subscribe to user.created, user.updated, user.deleted)."""
    # A hot route (app.web.gate): it answers its own errors and returns a Response.
    services = services_of(request)
    metrics = services.metrics
    try:
        with metrics.webhook_failures("clerk"):
            verifier = clerk_verifier(services)
            body = await read_body(request, MAX_BODY_BYTES)
            headers, now_ms = dict(request.headers), services.clock()
            delivery_id = verify(verifier, body, headers, SECRET_NAME, now_ms=now_ms)
            event = parse_event(body, ClerkEvent)
            status = await apply_event(services.store, event, delivery_id, now_ms=now_ms)
    except ActivationError as exc:
        return error_response(request, exc)
    logger.info("clerk webhook %s delivery=%s: %s", event.type, delivery_id, status)
    metrics.webhook("clerk", event.type, status)
    services.wake_worker()  # a registration starts loops: their clocks start now
    return JSONResponse({"status": status})


HOT_ROUTES = {("POST", CLERK_PATH): receive_clerk_webhook}  # served by app.web.gate


def clerk_verifier(services: Services) -> Webhook:
    """The endpoint's Svix verifier; NotConfigured (503) without CLERK_WEBHOOK_SIGNING_SECRET."""
    if services.clerk_verifier is None:
        raise NotConfigured("not configured: set CLERK_WEBHOOK_SIGNING_SECRET")
    return services.clerk_verifier


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
