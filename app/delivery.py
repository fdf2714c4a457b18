"""Sends one email job: through Resend (or the outbox), exactly once in effect, retried by policy.

At most once: the job id is Resend's Idempotency-Key and the payload was rendered once, so a retry
after a crash is deduplicated by Resend for 24 hours; past that window a job whose last attempt's
outcome is unknown is not sent again but dead-lettered for an operator. Retries follow the loop's
`recovery` (with jitter, honouring `retry-after`); permanent errors and exhausted retries go to the
dead-letter set with the last error.
"""

import json
import logging
import random
import re
from collections.abc import Callable, Mapping
from typing import Protocol

from app.clock import Clock
from app.jobs import EmailJob, JobStatus, RenderedEmail
from app.loops import Loop, Recovery
from app.mailer import AlreadySent, OutgoingEmail, PermanentSendError, TransientSendError
from app.metrics import Metrics
from app.store import Attempt, Outcome, Store

logger = logging.getLogger(__name__)

# Resend keeps an idempotency key for 24 h; an attempt older than this may be past its window.
IDEMPOTENCY_WINDOW_MS = 23 * 3600 * 1000
OUTBOX_ID_PREFIX = "outbox:"
TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")


class Mailer(Protocol):
    async def send(self, email: OutgoingEmail, idempotency_key: str) -> str: ...


class OutboxMailer:
    """No Resend key: nothing leaves the machine; the email is kept in the outbox and logged."""

    async def send(self, email: OutgoingEmail, idempotency_key: str) -> str:
        logger.info("outbox: %r to %s (not sent: no RESEND_API_KEY)", email.subject, mask(email.to))
        return f"{OUTBOX_ID_PREFIX}{idempotency_key}"


def mask(address: str) -> str:
    """`ada@example.org` -> `a***@example.org`: enough to recognise, not to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def retry_delay_ms(
    recovery: Recovery,
    retry: int,
    retry_after_s: float | None,
    jitter: Callable[[], float] = random.random,
) -> int:
    """The wait before retry `retry` (1 = first): the policy's, ±20 % jitter, never under
    Resend's `retry-after`."""
    base_ms = recovery.delay_ms(retry)
    jittered_ms = int(base_ms * (0.8 + 0.4 * jitter()))
    floor_ms = int((retry_after_s or 0) * 1000)
    return max(jittered_ms, floor_ms, 1)


def outgoing(rendered: RenderedEmail, job: EmailJob) -> OutgoingEmail:
    return OutgoingEmail(
        from_=rendered.sender,
        to=rendered.to,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers=dict(rendered.headers),
        tags={"loop": job.loop_id, "step": str(job.step), "kind": job.kind, **user_tag(job)},
    )


def user_tag(job: EmailJob) -> dict[str, str]:
    """The `user` tag Resend echoes in its delivery events; only for ids Resend accepts as a
    tag value (a refused tag would fail the send)."""
    return {"user": job.user_id} if TAG_VALUE.fullmatch(job.user_id) else {}


class Delivery:
    """The worker's handler for `email|...` jobs."""

    def __init__(
        self,
        store: Store,
        loops: Mapping[str, Loop],
        mailer: Mailer,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.loops = loops
        self.mailer = mailer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.outbox = isinstance(mailer, OutboxMailer)

    async def __call__(self, job_id: str) -> None:
        attempt = await self.store.begin_attempt(job_id, now_ms=self.clock())
        job = attempt.job
        if job is None:
            return  # the user was deleted: nothing to send
        if job.terminal:
            await self._finish(job, Outcome(job.status.value))
        elif attempt.stop_reason is not None:
            await self._finish(
                job, Outcome.DROPPED, status=JobStatus.DROPPED, error=attempt.stop_reason
            )
        elif self._outcome_unknown(attempt):
            error = "an earlier attempt's outcome is unknown and past Resend's 24 h window"
            await self._finish(job, Outcome.FAILED, status=JobStatus.FAILED, error=error)
        else:
            await self._send(job, attempt.previous_attempts + 1)

    def _outcome_unknown(self, attempt: Attempt) -> bool:
        last = attempt.last_started_at_ms
        return last is not None and self.clock() - last > IDEMPOTENCY_WINDOW_MS

    async def _send(self, job: EmailJob, attempts: int) -> None:
        assert job.rendered is not None  # queued jobs are rendered (else queued as failed)
        try:
            provider_id = await self.mailer.send(outgoing(job.rendered, job), job.id)
        except AlreadySent:
            provider_id = None
        except TransientSendError as exc:
            await self._retry_or_fail(job, attempts, str(exc), exc.retry_after_s)
            return
        except PermanentSendError as exc:
            await self._finish(
                job, Outcome.FAILED, status=JobStatus.FAILED, error=str(exc), attempts=attempts
            )
            return
        await self._sent(job, attempts, provider_id)

    async def _sent(self, job: EmailJob, attempts: int, provider_id: str | None) -> None:
        now = self.clock()
        sent = job.model_copy(
            update={
                "status": JobStatus.SENT,
                "attempts": attempts,
                "sent_at": now,
                "provider_id": provider_id,
                "last_error": None,
            }
        )
        outbox_entry = self._outbox_entry(sent) if self.outbox else ""
        await self.store.settle(sent, Outcome.SENT, now_ms=now, outbox_entry=outbox_entry)
        self.metrics.email(Outcome.SENT, due_at_ms=job.due_at, now_ms=now)
        logger.info("email %s sent (attempt %d)", job.id, attempts)

    def _outbox_entry(self, job: EmailJob) -> str:
        rendered = job.rendered
        assert rendered is not None
        entry = {"job": job.id, "at": job.sent_at, **rendered.model_dump()}
        return json.dumps(entry, separators=(",", ":"))

    async def _retry_or_fail(
        self, job: EmailJob, attempts: int, error: str, retry_after_s: float | None
    ) -> None:
        recovery = self.loops[job.loop_id].recovery if job.loop_id in self.loops else None
        if recovery is None or attempts > recovery.retries:
            await self._finish(
                job, Outcome.FAILED, status=JobStatus.FAILED, error=error, attempts=attempts
            )
            return
        now = self.clock()
        due = now + retry_delay_ms(recovery, attempts, retry_after_s)
        again = job.model_copy(update={"attempts": attempts, "last_error": error, "due_at": due})
        await self.store.settle(again, Outcome.RETRY, now_ms=now, retry_at_ms=due)
        self.metrics.email(Outcome.RETRY)
        logger.info("email %s attempt %d failed (%s); retry at %d", job.id, attempts, error, due)

    async def _finish(
        self,
        job: EmailJob,
        outcome: Outcome,
        *,
        status: JobStatus | None = None,
        error: str | None = None,
        attempts: int | None = None,
    ) -> None:
        update: dict[str, object] = {}
        if status is not None:
            update["status"] = status
        if error is not None:
            update["last_error"] = error
        if attempts is not None:
            update["attempts"] = attempts
        final = job.model_copy(update=update)
        now = self.clock()
        await self.store.settle(final, outcome, now_ms=now)
        self.metrics.email(outcome, due_at_ms=job.due_at, now_ms=now)
        logger.info("email %s %s: %s", job.id, final.status.value, final.last_error or "-")
