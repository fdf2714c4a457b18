"""Emails sent in batches: up to 100 in one request to Resend's `POST /emails/batch`, each exactly
once in effect, as one at a time.

When a worker's claim holds more than one user's turn, the turns do not send their emails one by
one: each attempt a turn begins is placed in one of the claim's batches (`EmailJob.batch`,
written with the attempt) and handed to the claim's `Batcher`; once the claim's turns are done,
each batch goes out in one request, its id as the Idempotency-Key, validated permissively (one
bad address does not sink the rest).

- Membership is recorded before the request (`store.batches.record`), in one script that keeps
  only the jobs whose user's turn the worker still holds and leases the batch itself on the
  schedule (`batch|<id>`). From then on a member goes out in this batch, with these members and
  this key, or not at all: its user's turns leave it alone (`worker.Evaluator`).
- A job placed in a batch that was never recorded (the worker died first, or lost the user's
  turn) never reached Resend: the next turn of its user frees it and sends it afresh. A job
  attempted alone before stays alone: its own id is the key that deduplicates it.
- How the request ended for good (each member sent with its id, refused alone, or failed with
  the whole request) is recorded with the batch before any member is settled.
- A crashed or stalled worker's batch comes back when its lease runs out (`BatchSender.resume`):
  with its end recorded, its members are settled as it says, without a request; otherwise it is
  sent again, identical: Resend answers a key it accepted with its first answer, and a request it
  refused whole never sent anything.
- A request that failed in a way that may have reached Resend (5xx, a timeout) is sent again
  whole by the batch's own schedule entry, as the most patient member's loop `recovery` says;
  one that never reached it (429, a rate-limit slot too far off, the same key in flight) again
  after `retry-after`, not counted; one refused whole (4xx) fails every member; an email refused
  alone fails alone. Each member's job says so (settled as a single email's attempt is). A batch
  whose outcome is still unknown 23 h after it was recorded is dead-lettered, as a single email
  is: Resend keeps a key 24 h.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from app.delivery.jobs import EmailJob, JobStatus
from app.delivery.outbox import MAX_BATCH, BatchEmail, BatchMailer, Refused
from app.delivery.send import (
    DEFER,
    IDEMPOTENCY_WINDOW_MS,
    RETRY,
    Delivery,
    Lease,
    Settling,
    defer_ms,
    retry_delay_ms,
    tags_of,
)
from app.engine.job_ids import evaluation_id, is_evaluation, new_batch_id
from app.engine.loop_files import Recovery
from app.errors import AlreadySent, NotSent, PermanentSendError, TransientSendError
from app.storage.batches import FAILED, REFUSED, SENT, BatchRecord, Outcome
from app.storage.queue import KEEP
from app.storage.records import Claim

logger = logging.getLogger(__name__)

# How a member's settle is recorded: under which lease, and what it does to the user's next turn.
SettleAs = Callable[[EmailJob], tuple[Lease, int | str | None]]
UNLEASED: SettleAs = lambda job: (Lease(), KEEP)  # noqa: E731 (a resumed batch holds no turn)


@dataclass(slots=True)
class _Waiting:
    """A user whose turn handed jobs to the batcher: the turn's lease, and its next turn."""

    lease: Lease
    wake_at_ms: int | None
    last_job: str = ""  # the member whose settle sets the next turn


class BatchSender:
    """Records, sends and settles batches (see the module's docstring), for a mailer that sends
    them."""

    def __init__(self, delivery: Delivery) -> None:
        assert isinstance(delivery.mailer, BatchMailer)
        self.delivery = delivery
        self.mailer: BatchMailer = delivery.mailer
        self.store = delivery.store
        self.clock = delivery.clock

    async def resume(self, shard: int, batch_id: str, lease: Lease) -> None:
        """Send again a recorded batch whose worker did not end it (its schedule entry came
        back to `lease`'s claim)."""
        batch = await self.store.batches.get(shard, batch_id)
        if batch is None:  # ended meanwhile: only the schedule entry is left
            batch = BatchRecord(batch_id, shard, (), first=0)
            await self.store.batches.end(batch, token=lease.token, lease_ms=lease.lease_ms)
            return
        jobs = await self.store.batches.jobs(batch)
        logger.info("batch %s: sent again (%d members)", batch_id, len(batch.members))
        await self.send(batch, jobs, lease, UNLEASED)

    async def send(
        self, batch: BatchRecord, jobs: dict[str, EmailJob], lease: Lease, settle_as: SettleAs
    ) -> None:
        """Send a recorded batch (its members as stored: `jobs`) under the batch's `lease`,
        record how it ended, settle each member, then remove the batch; or keep it for its next
        request. A batch whose end was recorded is only settled: no request."""
        members = [
            jobs[job_id] for job_id, seq in batch.members if _waits(jobs.get(job_id), seq, batch.id)
        ]
        if batch.outcome is None and members:
            outcome = self._past_window(batch, members)
            if outcome is None:
                outcome = await self._request(batch, members, lease, settle_as)
                if outcome is None:  # kept, to be sent again
                    return
            batch = replace(batch, outcome=outcome)
            token, lease_ms = lease.token, lease.lease_ms
            if not await self.store.batches.decide(batch, token=token, lease_ms=lease_ms):
                logger.info("batch %s: end not recorded (another worker holds it)", batch.id)
        if batch.outcome is not None:
            await self._settle_outcome(batch, members, settle_as)
        await self._end(batch, lease)

    def _past_window(self, batch: BatchRecord, members: list[EmailJob]) -> Outcome | None:
        if self.clock() - batch.first <= IDEMPOTENCY_WINDOW_MS:
            return None
        error = "a batch's outcome is unknown and past Resend's 24 h idempotency window"
        return {job.id: (FAILED, error) for job in members}

    async def _request(
        self, batch: BatchRecord, members: list[EmailJob], lease: Lease, settle_as: SettleAs
    ) -> Outcome | None:
        """One request for the batch: how each member ended, or None when the batch is kept to
        be sent again (its members saying so)."""
        emails = [BatchEmail(job.rendered, tags_of(job)) for job in members if job.rendered]
        max_wait_s = self.delivery.max_wait_s
        try:
            outcomes = await self.mailer.send_batch(emails, batch.id, max_wait_s=max_wait_s)
        except AlreadySent:  # an earlier request with this key was accepted: ids unknown
            return {job.id: (SENT, "") for job in members}
        except NotSent as exc:
            delay_ms = defer_ms(exc.retry_after_s)
            await self._again(batch, members, str(exc), delay_ms, lease, settle_as, DEFER)
            return None
        except TransientSendError as exc:
            recovery, attempts = self._recovery(members), batch.attempts + 1
            if recovery is None or attempts > recovery.retries:
                return {job.id: (FAILED, str(exc)) for job in members}
            delay_ms = retry_delay_ms(recovery, attempts, exc.retry_after_s)
            again = replace(batch, attempts=attempts)
            await self._again(again, members, str(exc), delay_ms, lease, settle_as, RETRY)
            return None
        except PermanentSendError as exc:
            return {job.id: (FAILED, str(exc)) for job in members}
        return {
            job.id: (REFUSED, outcome.message) if isinstance(outcome, Refused) else (SENT, outcome)
            for job, outcome in zip(members, outcomes, strict=True)
        }

    async def _settle_outcome(
        self, batch: BatchRecord, members: list[EmailJob], settle_as: SettleAs
    ) -> None:
        """Settle each member (those not settled yet) as the batch's recorded end says."""
        assert batch.outcome is not None
        endings, ended = [], {SENT: 0, REFUSED: 0, FAILED: 0}
        for job in members:
            kind, text = batch.outcome.get(job.id, (FAILED, "not in the batch's end"))
            ended[kind] += 1
            if kind == SENT:
                endings.append(self.delivery.sent(job, text or None))
            else:
                why = f"Resend refused it in its batch: {text}" if kind == REFUSED else text
                endings.append(self.delivery.ended(job, JobStatus.FAILED, why))
        await self._settle(endings, settle_as)
        logger.info(
            "batch %s: %d sent, %d refused, %d failed",
            batch.id, ended[SENT], ended[REFUSED], ended[FAILED],
        )  # fmt: skip

    def _recovery(self, members: list[EmailJob]) -> Recovery | None:
        """The most patient of the members' loops' recoveries: the batch is retried whole."""
        loops = self.delivery.loops
        recoveries = [loops[job.loop_id].recovery for job in members if job.loop_id in loops]
        return max(recoveries, key=lambda recovery: recovery.retries, default=None)

    async def _again(
        self,
        batch: BatchRecord,
        unsettled: list[EmailJob],
        error: str,
        delay_ms: int,
        lease: Lease,
        settle_as: SettleAs,
        action: str,
    ) -> None:
        """Keep the batch to be sent again in `delay_ms`, its members saying so."""
        due = self.clock() + delay_ms
        endings = [self.delivery.again(job, error, due, action) for job in unsettled]
        await self._settle(endings, settle_as)
        kept = replace(batch, error=error)
        token, lease_ms = lease.token, lease.lease_ms
        if not await self.store.batches.again(kept, token=token, lease_ms=lease_ms, due_ms=due):
            logger.info("batch %s: not kept (another worker holds it)", batch.id)
        logger.info("batch %s: not sent (%s); again at %d", batch.id, error, due)

    async def _settle(self, endings: list[Settling], settle_as: SettleAs) -> None:
        """Record each member's end, all at once (their round trips leave together)."""
        settles = [self.delivery.settle(ending, *settle_as(ending.job)) for ending in endings]
        await asyncio.gather(*settles)

    async def _end(self, batch: BatchRecord, lease: Lease) -> None:
        ended = await self.store.batches.end(batch, token=lease.token, lease_ms=lease.lease_ms)
        if not ended:
            logger.info("batch %s: not removed (another worker holds it)", batch.id)


class Batcher:
    """One claim's batches: where each attempt its turns begin goes (`place`), the jobs the
    turns hand over (`add`), and, once the turns are done, each batch recorded, sent and
    settled (`flush`)."""

    def __init__(self, sender: BatchSender, claim: Claim, lease_ms: int) -> None:
        self.sender = sender
        self.claim = claim
        self.lease_ms = lease_ms
        self._placed: dict[str, str] = {}
        self._open = ""
        self._open_count = 0
        self._batches: dict[str, list[EmailJob]] = {}
        self._waiting: dict[str, _Waiting] = {}

    @classmethod
    def of(cls, sender: BatchSender | None, claim: Claim, lease_ms: int) -> "Batcher | None":
        """The claim's batcher, when the mailer sends batches (`sender`) and more than one
        user's turn may send an email (a turn alone sends its own, one at a time)."""
        if sender is None or sum(map(is_evaluation, claim.job_ids)) < 2:
            return None
        return cls(sender, claim, lease_ms)

    def place(self, job_id: str) -> str:
        """The batch an attempt of `job_id` goes in (the same if placed before), at most
        `MAX_BATCH` to a batch."""
        batch_id = self._placed.get(job_id)
        if batch_id is None:
            if not self._open or self._open_count == MAX_BATCH:
                self._open, self._open_count = new_batch_id(), 0
            self._open_count += 1
            batch_id = self._placed[job_id] = self._open
        return batch_id

    def add(self, jobs: Sequence[EmailJob], lease: Lease, wake_at_ms: int | None) -> None:
        """A user's turn's jobs begun in its batches; the last settled sets the user's next
        turn (`wake_at_ms`)."""
        for job in jobs:
            assert job.batch is not None
            self._batches.setdefault(job.batch, []).append(job)
        self._waiting[evaluation_id(jobs[0].user_id)] = _Waiting(lease, wake_at_ms)

    def waits(self, turn: str) -> bool:
        """Whether the user's turn (`eval|<uid>`) waits for its batches: its lease is kept."""
        return turn in self._waiting

    async def flush(self, unfinished: set[str]) -> None:
        """Record, send and settle each batch; the leases of what is in `unfinished` are kept
        meanwhile (the batch's own joins it while it is sent)."""
        for jobs in self._batches.values():
            for job in jobs:
                self._waiting[evaluation_id(job.user_id)].last_job = job.id
        batches, self._batches = self._batches, {}
        for batch_id, jobs in batches.items():
            batch = await self.sender.store.batches.record(
                self.claim, batch_id, jobs, now_ms=self.sender.clock(), lease_ms=self.lease_ms
            )
            if batch is None:  # every member's turn was taken over: theirs to send
                continue
            unfinished.add(batch.member)
            lease = Lease(self.claim, batch.member, self.lease_ms)
            try:
                # the jobs not recorded (their turn lost) are not the batch's: send skips them
                await self.sender.send(batch, {job.id: job for job in jobs}, lease, self._settle_as)
            finally:
                unfinished.discard(batch.member)

    def _settle_as(self, job: EmailJob) -> tuple[Lease, int | str | None]:
        waiting = self._waiting[evaluation_id(job.user_id)]
        return waiting.lease, waiting.wake_at_ms if job.id == waiting.last_job else KEEP


def _waits(job: EmailJob | None, seq: int, batch_id: str) -> bool:
    """Whether a recorded member still waits for its batch: not settled, still this attempt and
    this batch's (an operator's retry of a dead letter frees it), its user not deleted."""
    return job is not None and not job.terminal and job.seq == seq and job.batch == batch_id
