"""Email jobs as data: their lifecycle, stored as JSON in a `j:` field of the user's hash. A
webhook step's call is a job too (`channel` webhook), through the same turns and settles.

A job's id is deterministic (`email|<uid>|<loop>|<step>|<kind>`): the same decision queues it once,
and the id doubles as Resend's Idempotency-Key.
"""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.clock import DAY_MS


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for its due time or a retry
    SENT = "sent"  # accepted by Resend, or written to the outbox
    FAILED = "failed"  # permanent error or retries exhausted: in the dead-letter set
    DROPPED = "dropped"  # not sent on purpose: the user unsubscribed or has no email


class Channel(StrEnum):
    """How a job reaches its end: an email through Resend, or a POST to the team's webhook
    (`engine.loops.WebhookAction`): never batched, held, or stopped by the user's unsubscribe."""

    EMAIL = "email"
    WEBHOOK = "webhook"


TERMINAL_STATUSES = frozenset({JobStatus.SENT, JobStatus.FAILED, JobStatus.DROPPED})

# Resend keeps an idempotency key 24 h from the request that used it first: until then a job that
# may have been accepted under a key is sent again under that key only, never another.
KEY_KEPT_MS = DAY_MS


class RenderedEmail(BaseModel):
    """An email rendered once, at its first attempt, and sent identically on every retry."""

    model_config = ConfigDict(frozen=True)

    to: str
    subject: str
    sender: str = ""  # empty only in a sent email's summary
    html: str = ""
    text: str = ""
    headers: dict[str, str] = Field(default_factory=dict)

    def summary(self) -> "RenderedEmail":
        """What a sent email keeps in Redis: to whom and the subject. The sender (the service's
        EMAIL_FROM), the body and the headers were needed only to send it (identically, on every
        retry), never again."""
        return RenderedEmail(to=self.to, subject=self.subject)


class EmailJob(BaseModel):
    """One email a loop decided to send to one user."""

    model_config = ConfigDict(frozen=True)

    id: str
    user_id: str
    loop_id: str
    step: int
    kind: str
    template: str
    personalization: dict[str, str] = Field(default_factory=dict)
    status: JobStatus = JobStatus.QUEUED
    queued_at: int
    due_at: int
    attempts: int = 0  # attempts begun that may have reached Resend
    last_error: str | None = None
    sent_at: int | None = None
    ended_at: int | None = None  # when it failed or was dropped
    provider_id: str | None = None
    rendered: RenderedEmail | None = None
    first_attempt_at: int | None = None  # the first attempt that may have reached Resend began
    started_at: int | None = None  # the attempt in flight began (None: none in flight)
    seq: int = 0  # the number of the last attempt begun: only its worker settles it
    batch: str | None = None  # the batch its attempts go in (`delivery.batch`), if they do
    # waiting for the frequency cap or quiet hours (`engine.holds`) until its `due_at`, since
    held: str | None = None
    held_at: int | None = None
    channel: Channel = Channel.EMAIL
    # a webhook's body (JSON), rendered at its first attempt and posted as is on every retry
    payload: str | None = None

    @property
    def is_webhook(self) -> bool:
        return self.channel is Channel.WEBHOOK

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def requeued(self, now_ms: int) -> tuple["EmailJob", str | None]:
        """The job queued again by an operator (its retries afresh), and the batch it must go
        out in again, if any. An attempt that may have been accepted within Resend's 24 h keeps
        its key: a job tried alone goes alone again (its id is the key), one of a batch goes in
        that batch again (its id is the key); past the 24 h, or when nothing may have been
        accepted, it starts afresh."""
        update: dict[str, Any] = {"status": JobStatus.QUEUED, "attempts": 0, "due_at": now_ms}
        update |= {"ended_at": None, "started_at": None}
        first = self.first_attempt_at
        if first is None or now_ms - first >= KEY_KEPT_MS:
            update |= {"first_attempt_at": None, "batch": None}
            return self.model_copy(update=update), None
        return self.model_copy(update=update), self.batch
