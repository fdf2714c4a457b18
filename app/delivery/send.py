"""Sends one email job: through Resend (or the outbox), exactly once in effect, retried by policy.

At most once: the job id is Resend's Idempotency-Key and the payload was rendered once, so a retry
after a crash is deduplicated by Resend for 24 hours; past that window, counted from the first
attempt that may have reached Resend, a job is not sent again but dead-lettered for an operator.
Every step runs under the job's fenced lease: a worker whose lease was taken over cannot start an
attempt or settle anything but a send that happened. Retries follow the loop's `recovery` (with
jitter, honouring `retry-after`); an attempt that never reached Resend (a 429, a request with the
same key still in flight, our own rate limit) is tried again later without using up a retry.
Permanent errors and exhausted retries go to the dead-letter set with the last error.
"""

import json
import logging
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.clock import Clock
from app.delivery.jobs import EmailJob, JobStatus
from app.delivery.outbox import Mailer, OutboxMailer
from app.engine.loop_files import Loop, Recovery
from app.errors import AlreadySent, NotSent, PermanentSendError, TransientSendError
from app.observability.metrics import Metrics
from app.storage.records import Attempt, Settled
from app.storage.store import Store

logger = logging.getLogger(__name__)

# Resend keeps an idempotency key for 24 h; an attempt older than this may be past its window.
IDEMPOTENCY_WINDOW_MS = 23 * 3600 * 1000
# A deferred attempt (429 without retry-after, a concurrent request) comes back after this at least.
MIN_DEFER_MS = 1000
# What the metrics call a job queued again (the job's status stays `queued`)
RETRY, DEFER = "retry", "defer"
TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")


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


def tags_of(job: EmailJob) -> dict[str, str]:
    """The tags Resend keeps with the email and echoes in its delivery events."""
    return {"loop": job.loop_id, "step": str(job.step), "kind": job.kind, **user_tag(job)}


def user_tag(job: EmailJob) -> dict[str, str]:
    """The `user` tag Resend echoes in its delivery events; only for ids Resend accepts as a
    tag value (a refused tag would fail the send)."""
    return {"user": job.user_id} if TAG_VALUE.fullmatch(job.user_id) else {}


@dataclass(frozen=True, slots=True)
class InHand:
    """One attempt at a job: the job as read, the lease it runs under, and when it began."""

    job: EmailJob
    token: str
    started_at_ms: int


class Delivery:
    """The worker's handler for `email|...` jobs. `max_wait_s`: the longest a send waits for a
    rate-limit slot before the job is deferred instead (a quarter of the lease: see Settings)."""

    def __init__(
        self,
        store: Store,
        loops: Mapping[str, Loop],
        mailer: Mailer,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        max_wait_s: float = math.inf,
    ) -> None:
        self.store = store
        self.loops = loops
        self.mailer = mailer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.max_wait_s = max_wait_s
        self.outbox = isinstance(mailer, OutboxMailer)

    async def __call__(self, job_id: str, token: str = "") -> None:
        now = self.clock()
        attempt = await self.store.queue.begin_attempt(job_id, token=token, now_ms=now)
        if attempt is None:
            logger.info("email %s: its lease was taken over by another worker; left to it", job_id)
            return
        if attempt.job is None:
            return  # the user was deleted: nothing to send
        await self._attempt(attempt, InHand(attempt.job, token, now))

    async def _attempt(self, attempt: Attempt, hand: InHand) -> None:
        job = hand.job
        if job.terminal:
            await self._finish(hand)  # ended already (no address, no template): recorded as is
        elif attempt.stop_reason is not None:
            await self._finish(hand, status=JobStatus.DROPPED, error=attempt.stop_reason)
        elif self._past_window(attempt):
            error = (
                "an earlier attempt's outcome is unknown and past Resend's 24 h idempotency window"
            )
            await self._finish(hand, status=JobStatus.FAILED, error=error)
        else:
            await self._send(hand, attempt.previous_attempts + 1)

    def _past_window(self, attempt: Attempt) -> bool:
        first = attempt.first_reached_at_ms
        return first is not None and self.clock() - first > IDEMPOTENCY_WINDOW_MS

    async def _send(self, hand: InHand, attempts: int) -> None:
        job = hand.job
        assert job.rendered is not None  # queued jobs are rendered (else queued as failed)
        try:
            provider_id = await self.mailer.send(
                job.rendered, job.id, tags=tags_of(job), max_wait_s=self.max_wait_s
            )
        except AlreadySent:
            provider_id = None
        except NotSent as exc:
            await self._defer(hand, str(exc), exc.retry_after_s)
            return
        except TransientSendError as exc:
            await self._retry_or_fail(hand, attempts, str(exc), exc.retry_after_s)
            return
        except PermanentSendError as exc:
            await self._finish(hand, status=JobStatus.FAILED, error=str(exc), attempts=attempts)
            return
        await self._sent(hand, attempts, provider_id)

    async def _sent(self, hand: InHand, attempts: int, provider_id: str | None) -> None:
        job, now = hand.job, self.clock()
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
        if sent.rendered is not None:
            sent = sent.model_copy(update={"rendered": sent.rendered.summary()})
        settled = await self.store.queue.settle(
            sent, now_ms=now, outbox_entry=outbox_entry, token=hand.token
        )
        if settled is Settled.SETTLED:
            self.metrics.email(JobStatus.SENT, due_at_ms=job.due_at, now_ms=now)
        logger.info("email %s sent (attempt %d)%s", job.id, attempts, _unless_settled(settled))

    def _outbox_entry(self, job: EmailJob) -> str:
        rendered = job.rendered
        assert rendered is not None
        entry = {"job": job.id, "at": job.sent_at, **rendered.model_dump()}
        return json.dumps(entry, separators=(",", ":"))

    async def _defer(self, hand: InHand, error: str, retry_after_s: float | None) -> None:
        """The attempt never reached Resend: queue the job again, the attempt not counted."""
        now = self.clock()
        due = now + max(int((retry_after_s or 0) * 1000), MIN_DEFER_MS)
        job = hand.job.model_copy(update={"last_error": error, "due_at": due})
        settled = await self.store.queue.settle(
            job,
            now_ms=now,
            retry_at_ms=due,
            token=hand.token,
            deferred_attempt_ms=hand.started_at_ms,
        )
        self.metrics.email(DEFER)
        logger.info(
            "email %s not sent (%s); again at %d%s", job.id, error, due, _unless_settled(settled)
        )

    async def _retry_or_fail(
        self, hand: InHand, attempts: int, error: str, retry_after_s: float | None
    ) -> None:
        job = hand.job
        recovery = self.loops[job.loop_id].recovery if job.loop_id in self.loops else None
        if recovery is None or attempts > recovery.retries:
            await self._finish(hand, status=JobStatus.FAILED, error=error, attempts=attempts)
            return
        now = self.clock()
        due = now + retry_delay_ms(recovery, attempts, retry_after_s)
        again = job.model_copy(update={"attempts": attempts, "last_error": error, "due_at": due})
        settled = await self.store.queue.settle(
            again, now_ms=now, retry_at_ms=due, token=hand.token
        )
        if settled is Settled.SETTLED:
            self.metrics.email(RETRY)
        logger.info(
            "email %s attempt %d failed (%s); retry at %d%s",
            job.id,
            attempts,
            error,
            due,
            _unless_settled(settled),
        )

    async def _finish(
        self,
        hand: InHand,
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
        final = hand.job.model_copy(update=update)
        now = self.clock()
        settled = await self.store.queue.settle(final, now_ms=now, token=hand.token)
        if settled is Settled.SETTLED:
            self.metrics.email(final.status, due_at_ms=final.due_at, now_ms=now)
        logger.info(
            "email %s %s: %s%s",
            final.id,
            final.status.value,
            final.last_error or "-",
            _unless_settled(settled),
        )


def _unless_settled(settled: Settled) -> str:
    """What a log line adds when settle wrote nothing (another worker's newer outcome stands)."""
    return "" if settled is Settled.SETTLED else f" (not recorded: {settled.value})"
