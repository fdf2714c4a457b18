"""Email jobs as data: their lifecycle, stored as JSON in a `j:` field of the user's hash.

A job's id is deterministic (`email|<uid>|<loop>|<step>|<kind>`): the same decision queues it once,
and the id doubles as Resend's Idempotency-Key.
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for its due time or a retry
    SENT = "sent"  # accepted by Resend, or written to the outbox
    FAILED = "failed"  # permanent error or retries exhausted: in the dead-letter set
    DROPPED = "dropped"  # not sent on purpose: the user unsubscribed or has no email


TERMINAL_STATUSES = frozenset({JobStatus.SENT, JobStatus.FAILED, JobStatus.DROPPED})


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

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES
