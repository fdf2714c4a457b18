"""Sends one email job: through Resend (or the outbox), exactly once in effect, retried by policy;
and a webhook step's call (`webhook_client`), under the same fence and settle.

At most once: the job id is Resend's Idempotency-Key and the payload was rendered once, so a retry
after a crash is deduplicated by Resend for 24 hours; past that window, counted from the first
attempt that may have reached Resend, a job is not sent again but dead-lettered for an operator.
An attempt is begun by the user's turn (`worker.Evaluator`), under the turn's lease, and only its
own worker settles it: one whose attempt was superseded records nothing but a send that happened.
Retries follow the loop's `recovery` (with jitter, honouring `retry-after`); an attempt that never
reached Resend (a 429, a request with the same key still in flight, our own rate limit) is tried
again later without using up a retry.
Permanent errors and exhausted retries go to the dead-letter set with the last error.
"""

import logging
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.clock import HOUR_MS, Clock
from app.delivery.outbox import BatchMailer, Mailer, OutboxMailer
from app.delivery.webhook_client import WebhookClient
from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.loops import Loop, Recovery, WebhookAction
from app.errors import NotSent, PermanentSendError, TransientSendError
from app.observability.metrics import Metrics
from app.storage.queue import KEEP
from app.storage.records import Claim, Held, Settled, outbox_entry
from app.storage.store import Store


class BatchPlacer(Protocol):
    """Where a claim's turns hand the attempts they begin in batches (`batch.Batcher`)."""

    def place(self, job_id: str) -> str: ...

    def add(self, jobs: Sequence[EmailJob], lease: "Lease", wake_at_ms: int | None) -> None: ...


logger = logging.getLogger(__name__)

# Resend keeps an idempotency key for 24 h (`jobs.KEY_KEPT_MS`); no attempt goes out later than
# this after the first that may have been accepted, an hour's margin for clocks and slow sends.
IDEMPOTENCY_WINDOW_MS = 23 * HOUR_MS
# A deferred attempt (429 without retry-after, a concurrent request) comes back after this at least.
MIN_DEFER_MS = 1000
NO_WEBHOOK_STEP = "its loop no longer has this webhook step"
# What the metrics call a job queued again (the job's status stays `queued`)
RETRY, DEFER = "retry", "defer"
TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")


def webhook_of(loops: Mapping[str, Loop], job: EmailJob) -> WebhookAction | None:
    """The webhook a job calls, as its loop has it now; None when the loop no longer has it."""
    loop = loops.get(job.loop_id)
    return loop.webhook(job.step, job.kind) if loop is not None else None


def retry_delay_ms(
    recovery: Recovery,
    retry: int,
    retry_after_s: float | None,
    draw: Callable[[], float] = random.random,
) -> int:
    """The wait before retry `retry` (1 = first): the loop's policy (`Recovery.policy`, ±20 %),
    never under Resend's `retry-after`."""
    floor_ms = int((retry_after_s or 0) * 1000)
    return recovery.policy.wait_ms(retry, at_least_ms=floor_ms, draw=draw)


def defer_ms(retry_after_s: float | None) -> int:
    """How long an attempt that never reached Resend waits: its `retry-after`, at least
    MIN_DEFER_MS."""
    return max(int((retry_after_s or 0) * 1000), MIN_DEFER_MS)


def tags_of(job: EmailJob) -> dict[str, str]:
    """The tags Resend keeps with the email and echoes in its delivery events."""
    return {"loop": job.loop_id, "step": str(job.step), "kind": job.kind, **user_tag(job)}


def user_tag(job: EmailJob) -> dict[str, str]:
    """The `user` tag Resend echoes in its delivery events; only for ids Resend accepts as a
    tag value (a refused tag would fail the send)."""
    return {"user": job.user_id} if TAG_VALUE.fullmatch(job.user_id) else {}


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease a turn (or a batch) runs under: its schedule member and the claim that holds
    it, whose token every write shows. No claim: the caller acts for none (a test, a dry run)
    and its writes pass only while nobody holds the member. `batcher`: the claim's emails go
    out in batches, through it."""

    claim: Claim | None = None
    job_id: str = ""
    lease_ms: int = 60_000
    batcher: BatchPlacer | None = None

    @property
    def token(self) -> str:
        return self.claim.token if self.claim is not None else ""

    @property
    def held(self) -> Held:
        return Held(self.job_id, self.token)


@dataclass(slots=True)
class Settling:
    """How one attempt ended, to be recorded: the job as it now is and what settle does."""

    job: EmailJob
    seq: int
    action: str
    outbox_entry: str = ""
    metric: str | None = None  # what the metrics count once it is recorded


class Delivery:
    """Sends the emails a user's turn began (`deliver`), one after the other, and records how
    each ended. `max_wait_s`: the longest a send waits for a rate-limit slot before the job is
    deferred instead (a quarter of the lease: see Settings)."""

    def __init__(
        self,
        store: Store,
        loops: Mapping[str, Loop],
        mailer: Mailer,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        max_wait_s: float = math.inf,
        webhooks: WebhookClient | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.loops = loops
        self.mailer = mailer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.max_wait_s = max_wait_s
        self.outbox = isinstance(mailer, OutboxMailer)

    @property
    def batches(self) -> bool:
        """Whether the mailer sends batches (Resend does; the outbox has no need)."""
        return isinstance(self.mailer, BatchMailer)

    async def deliver(self, jobs: Sequence[EmailJob], lease: Lease, wake_at_ms: int | None) -> None:
        """Send each begun job (or record one that ended before any attempt: no template, no
        address), then let the last settle set the user's next turn: `wake_at_ms`, or sooner
        when a job of this turn is tried again sooner. Jobs begun in a batch go to the lease's
        batcher, which sends and settles them, the last setting the user's next turn."""
        batched = [job for job in jobs if job.batch is not None and not job.terminal]
        alone = [job for job in jobs if job.batch is None or job.terminal]
        for i, job in enumerate(alone):
            ending = await self._attempt(job)
            if ending.job.status is JobStatus.QUEUED:
                wake_at_ms = min(wake_at_ms or ending.job.due_at, ending.job.due_at)
            last = i == len(alone) - 1 and not batched
            await self.settle(ending, lease.held, lease.held, wake_at_ms if last else KEEP)
        if batched:
            assert lease.batcher is not None  # only a batcher's turns begin jobs in a batch
            lease.batcher.add(batched, lease, wake_at_ms)

    async def _attempt(self, job: EmailJob) -> Settling:
        if job.terminal:  # ended already (no address, no template): recorded as is
            return Settling(job, job.seq, job.status.value, metric=job.status)
        if job.is_webhook:
            return await self._call(job)
        if self._past_window(job):
            error = (
                "an earlier attempt's outcome is unknown and past Resend's 24 h idempotency window"
            )
            return self.ended(job, JobStatus.FAILED, error, known=False)
        return await self._send(job)

    def _past_window(self, job: EmailJob) -> bool:
        first, started = job.first_attempt_at, job.started_at
        return (
            first is not None
            and started is not None
            and first < started
            and self.clock() - first > IDEMPOTENCY_WINDOW_MS
        )

    async def _send(self, job: EmailJob) -> Settling:
        assert job.rendered is not None  # begun jobs are rendered (else queued as failed)
        try:
            waited_s = await self.mailer.pace(self.max_wait_s)
            # the user may have unsubscribed, complained or gone while this waited
            if waited_s > 0 and (stopped := await self.store.queries.stop_reason(job)) is not None:
                return self.stopped(job, stopped)
            provider_id = await self.mailer.send(
                job.rendered, job.id, tags=tags_of(job), max_wait_s=self.max_wait_s, paced=True
            )
        except NotSent as exc:
            return self._deferred(job, str(exc), exc.retry_after_s)
        except TransientSendError as exc:
            return self._retry_or_fail(job, str(exc), exc.retry_after_s)
        except PermanentSendError as exc:
            return self.ended(job, JobStatus.FAILED, str(exc), known=not job.attempts > 1)
        return self.sent(job, provider_id)

    async def _call(self, job: EmailJob) -> Settling:
        """A webhook step's POST, its body as rendered at its first attempt, its `webhook-id`
        the job's on every retry: the receiver deduplicates (no 24 h window to keep here)."""
        webhook = webhook_of(self.loops, job)
        if webhook is None or job.payload is None or self.webhooks is None:
            reason = "no webhook client" if webhook is not None else NO_WEBHOOK_STEP
            return self.ended(job, JobStatus.FAILED, reason, known=False)
        try:
            await self.webhooks.post(webhook, job.id, job.payload)
        except TransientSendError as exc:
            return self._retry_or_fail(job, str(exc), exc.retry_after_s)
        except PermanentSendError as exc:
            return self.ended(job, JobStatus.FAILED, str(exc), known=False)
        return self.sent(job, None)

    def stopped(self, job: EmailJob, reason: str) -> Settling:
        """An attempt that no longer goes: its user was deleted (nothing to record), stopped
        loop email (dropped) or the attempt moved on (not this attempt's to record)."""
        return self.ended(job, JobStatus.DROPPED, reason, known=job.attempts <= 1)

    def sent(self, job: EmailJob, provider_id: str | None) -> Settling:
        """The job sent (`provider_id`: Resend's id, when its answer said it)."""
        update = {"status": JobStatus.SENT, "sent_at": self.clock(), "provider_id": provider_id}
        update |= {"last_error": None, "started_at": None, "payload": None}  # posted: done with
        sent, entry = job.model_copy(update=update), ""
        if sent.rendered is not None:  # an email: the outbox gets it whole, the job its summary
            entry = outbox_entry(sent) if self.outbox else ""
            sent = sent.model_copy(update={"rendered": sent.rendered.summary()})
        return Settling(sent, job.seq, "sent", entry, metric=JobStatus.SENT)

    def _deferred(self, job: EmailJob, error: str, retry_after_s: float | None) -> Settling:
        """The attempt never reached Resend: queue the job again, the attempt not counted."""
        first = None if job.first_attempt_at == job.started_at else job.first_attempt_at
        uncounted = job.model_copy(update={"attempts": job.attempts - 1, "first_attempt_at": first})
        return self.again(uncounted, error, self.clock() + defer_ms(retry_after_s), DEFER)

    def _retry_or_fail(self, job: EmailJob, error: str, retry_after_s: float | None) -> Settling:
        recovery = self.loops[job.loop_id].recovery if job.loop_id in self.loops else None
        if recovery is None or job.attempts > recovery.retries:
            return self.ended(job, JobStatus.FAILED, error, known=False)
        due = self.clock() + retry_delay_ms(recovery, job.attempts, retry_after_s)
        return self.again(job, error, due, RETRY)

    def again(self, job: EmailJob, error: str, due_at_ms: int, action: str) -> Settling:
        """The job queued again at `due_at_ms` after `error`; `action`: RETRY (the attempt
        counts) or DEFER (it never reached Resend)."""
        update = {"last_error": error, "due_at": due_at_ms, "started_at": None}
        return Settling(job.model_copy(update=update), job.seq, action, metric=action)

    def ended(self, job: EmailJob, status: JobStatus, error: str, *, known: bool) -> Settling:
        """The job ended (`status`) after `error`. `known`: no attempt of it may have been
        accepted, so nothing ties it to a key any more (an operator's retry starts afresh);
        otherwise it keeps the key it may have gone under and that key's 24 h
        (`EmailJob.requeued`)."""
        update: dict[str, object] = {"status": status, "last_error": error}
        update |= {"ended_at": self.clock(), "started_at": None}
        if known:
            update |= {"first_attempt_at": None, "batch": None}
        return Settling(job.model_copy(update=update), job.seq, status.value, metric=status)

    async def settle(
        self, ending: Settling, under: Held, turn: Held | None, wake: int | str | None
    ) -> None:
        """Record how an attempt made under the lease `under` ended; holding the user's `turn`,
        release it with its next time (`wake`) or keep it (`KEEP`)."""
        job, now = ending.job, self.clock()
        settled = await self.store.queue.settle(
            job,
            now_ms=now,
            seq=ending.seq,
            under=under,
            turn=turn,
            outbox_entry=ending.outbox_entry,
            wake_at_ms=wake,
            action=ending.action,
        )
        channel = job.channel.value
        if settled is Settled.SETTLED and ending.metric is not None:
            due_at_ms = job.due_at if job.terminal else None  # a final outcome times the job
            self.metrics.email(ending.metric, due_at_ms=due_at_ms, now_ms=now, kind=channel)
        logger.info("%s %s %s%s", channel, job.id, describe(ending), _unless_settled(settled))


def describe(ending: Settling) -> str:
    """What a log line says of an attempt's end."""
    job = ending.job
    if ending.action == "sent":
        return f"sent (attempt {job.attempts})"
    if ending.action in (RETRY, DEFER):
        verb = "failed" if ending.action == RETRY else "not sent"
        return f"attempt {verb} ({job.last_error}); again at {job.due_at}"
    return f"{job.status.value}: {job.last_error or '-'}"


def _unless_settled(settled: Settled) -> str:
    """What a log line adds when settle wrote nothing (another worker's newer outcome stands)."""
    return "" if settled is Settled.SETTLED else f" (not recorded: {settled.value})"
