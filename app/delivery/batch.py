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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from app.delivery.attempts import (
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
from app.delivery.outbox import MAX_BATCH, BatchEmail, BatchMailer, Refused
from app.engine.email_jobs import KEY_KEPT_MS, EmailJob, JobStatus
from app.engine.job_ids import evaluation_id, is_evaluation, new_batch_id
from app.engine.loops import Loop, Recovery
from app.errors import KeyReused, NotSent, PermanentSendError, TransientSendError
from app.storage.batches import FAILED, OK, REFUSED, SENT, UNKNOWN, BatchRecord, Outcome
from app.storage.queue import KEEP
from app.storage.records import Claim, Held

logger = logging.getLogger(__name__)

# How a member's settle is recorded: the user's turn held for it (None: none), and what it does
# to the user's next turn.
SettleAs = Callable[[EmailJob], tuple[Held | None, int | str | None]]
UNLEASED: SettleAs = lambda job: (None, KEEP)  # noqa: E731 (a resumed batch holds no turn)
# A member's verdict before a request that makes it dropped (batch_check.lua's words)
STOPPED = frozenset({"unsubscribed", "suppressed"})
# A batch's first request follows its record (which read every member) at once; one that had
# to wait longer than this for a rate-limit slot reads its members again first.
RECHECK_AFTER_S = 0.05


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
        """Send again a recorded batch whose schedule entry came back to `lease`'s claim: a
        worker did not end it, a failed request is due again, an operator retried a member, or
        a spent batch's key has expired."""
        batch = await self.store.batches.get(shard, batch_id)
        if batch is None:  # ended meanwhile: only the schedule entry is left
            await self.store.batches.end(BatchRecord(batch_id, shard, (), first=0), lease.token)
            return
        if not batch.members:  # spent, nothing retried: gone once Resend forgets its key
            await self._finish(batch, lease.token, spent=self.clock() < batch.first + KEY_KEPT_MS)
            return
        jobs = await self.store.batches.jobs(batch)
        logger.info("batch %s: sent again (%d members)", batch_id, len(batch.members))
        await self.send(batch, jobs, lease, UNLEASED)

    async def send(
        self,
        batch: BatchRecord,
        jobs: dict[str, EmailJob],
        lease: Lease,
        settle_as: SettleAs,
        *,
        recorded: bool = False,
    ) -> None:
        """Send a recorded batch (its members as stored: `jobs`) under the batch's `lease`,
        record how it ended, settle each member, then remove the batch (or keep it, spent,
        while a member's outcome is unknown and Resend keeps its key); or keep it for its next
        request. A batch whose end was recorded is only settled: no request."""
        held = lease.held
        if batch.outcome is None:
            members = [jobs[j] for j, seq in batch.members if _waits(jobs.get(j), seq, batch.id)]
            ended = self._past_window(batch, members)
            if ended is None:
                ended = await self._request(batch, jobs, lease, settle_as, recorded)
                if ended is None:  # kept, to be sent again (or another worker's now)
                    return
            batch = ended
            if not await self.store.batches.decide(batch, lease.token):
                logger.info("batch %s: end not recorded (another worker holds it)", batch.id)
        await self._settle_outcome(batch, jobs, held, settle_as)
        assert batch.outcome is not None
        unknown = any(kind == UNKNOWN for kind, _ in batch.outcome.values())
        await self._finish(batch, lease.token, spent=unknown)

    def _past_window(self, batch: BatchRecord, members: list[EmailJob]) -> BatchRecord | None:
        if self.clock() - batch.first <= IDEMPOTENCY_WINDOW_MS:
            return None
        error = "a batch's outcome is unknown and past Resend's 24 h idempotency window"
        return replace(batch, outcome={job.id: (UNKNOWN, error) for job in members})

    async def _request(
        self,
        batch: BatchRecord,
        jobs: dict[str, EmailJob],
        lease: Lease,
        settle_as: SettleAs,
        recorded: bool,
    ) -> BatchRecord | None:
        """One request for the batch, with the members that still wait for it, checked right
        before (`recorded`: it was recorded just now, which checked them, and goes out at once
        unless it waits for a rate-limit slot): the batch with how each member ended, or None
        when it is kept to be sent again (its members saying so) or another worker holds it."""
        waiting = [jobs[j] for j, seq in batch.members if _waits(jobs.get(j), seq, batch.id)]
        try:
            waited_s = await self.mailer.pace(self.delivery.max_wait_s)
        except NotSent as exc:
            await self._again(batch, waiting, str(exc), defer_ms(exc.retry_after_s), lease,
                              settle_as, DEFER)  # fmt: skip
            return None
        if recorded and waited_s < RECHECK_AFTER_S:
            sending, prior = waiting, None  # the record's check is this request's
        else:
            checked = await self._check(batch, jobs, lease, settle_as)
            if checked is None:
                return None
            sending, prior = checked, batch.body  # what earlier requests under the key carried
        kept = {job.id for job in sending}
        batch = replace(batch, members=tuple(m for m in batch.members if m[0] in kept),
                        body=tuple(job.id for job in sending))  # fmt: skip
        if not sending:
            return replace(batch, outcome={})
        outcome = await request(self.mailer, batch, sending, prior, self.delivery.max_wait_s)
        if isinstance(outcome, TransientSendError):  # worth another request
            return await self._retry_later(batch, sending, outcome, lease, settle_as)
        return replace(batch, outcome=outcome)

    async def _check(
        self, batch: BatchRecord, jobs: dict[str, EmailJob], lease: Lease, settle_as: SettleAs
    ) -> list[EmailJob] | None:
        """The members that still wait for the batch, read now (the record's members and body
        become them); those whose user stopped loop email are dropped. None when another
        worker holds the batch, or its members changed (it comes back with its lease)."""
        verdicts = await self.store.batches.check(batch, lease.token)
        if verdicts is None:
            logger.info("batch %s: not sent (another worker holds it, or it changed)", batch.id)
            return None
        await self._drop(verdicts, jobs, lease.held, settle_as)
        return [jobs[j] for j, verdict in verdicts.items() if verdict == OK and j in jobs]

    async def _retry_later(
        self,
        batch: BatchRecord,
        sending: list[EmailJob],
        exc: TransientSendError,
        lease: Lease,
        settle_as: SettleAs,
    ) -> BatchRecord | None:
        """After a failed request: again later, under the most patient member loop's
        `recovery` (not counted when it never reached Resend); its members failed, outcome
        unknown, once the retries are used up."""
        if isinstance(exc, NotSent):
            delay_ms = defer_ms(exc.retry_after_s)
            await self._again(batch, sending, str(exc), delay_ms, lease, settle_as, DEFER)
            return None
        recovery, attempts = most_patient(self.delivery.loops, sending), batch.attempts + 1
        if recovery is None or attempts > recovery.retries:
            return replace(batch, outcome={job.id: (UNKNOWN, str(exc)) for job in sending})
        delay_ms = retry_delay_ms(recovery, attempts, exc.retry_after_s)
        again = replace(batch, attempts=attempts)
        await self._again(again, sending, str(exc), delay_ms, lease, settle_as, RETRY)
        return None

    async def _drop(
        self, verdicts: dict[str, str], jobs: dict[str, EmailJob], held: Held, settle_as: SettleAs
    ) -> None:
        """Members whose user stopped loop email since they were placed: dropped."""
        stopped = [(jobs[j], v) for j, v in verdicts.items() if v in STOPPED and j in jobs]
        endings = [self.delivery.stopped(job, why) for job, why in stopped]
        await self._settle(endings, held, settle_as)

    async def _settle_outcome(
        self, batch: BatchRecord, jobs: dict[str, EmailJob], held: Held, settle_as: SettleAs
    ) -> None:
        """Settle each member the batch's recorded end names, as it says (a member the batch
        no longer waited for, but an accepted earlier request carried, as sent)."""
        assert batch.outcome is not None
        missing = [job_id for job_id in batch.outcome if job_id not in jobs]
        jobs = jobs | await self.store.batches.jobs_of(missing)
        waiting = {j for j, seq in batch.members if _waits(jobs.get(j), seq, batch.id)}
        endings, ended = [], dict.fromkeys((SENT, REFUSED, FAILED, UNKNOWN), 0)
        for job_id, (kind, text) in batch.outcome.items():
            job = jobs.get(job_id)
            if job is None or (kind != SENT and job_id not in waiting):
                continue  # its user was deleted, or it no longer waits (an operator retried it)
            ended[kind] += 1
            endings.append(member_ending(self.delivery, job, kind, text))
        await self._settle(endings, held, settle_as)
        logger.info(
            "batch %s: %d sent, %d refused, %d failed, %d failed with the outcome unknown",
            batch.id, ended[SENT], ended[REFUSED], ended[FAILED], ended[UNKNOWN],
        )  # fmt: skip

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
        await self._settle(endings, lease.held, settle_as)
        kept = replace(batch, error=error)
        if not await self.store.batches.again(kept, lease.token, due_ms=due):
            logger.info("batch %s: not kept (another worker holds it)", batch.id)
        logger.info("batch %s: not sent (%s); again at %d", batch.id, error, due)

    async def _settle(self, endings: Iterable[Settling], held: Held, settle_as: SettleAs) -> None:
        """Record each member's end under the batch's lease, all at once (their round trips
        leave together)."""
        settles = [self.delivery.settle(ending, held, *settle_as(ending.job)) for ending in endings]
        await asyncio.gather(*settles)

    async def _finish(self, batch: BatchRecord, token: str, *, spent: bool) -> None:
        """Remove the batch, its members settled; or, `spent` (a member's outcome unknown),
        keep it without members until Resend forgets its key, then remove it."""
        if spent:
            until = batch.first + KEY_KEPT_MS
            spent_batch = replace(batch, members=())
            done = await self.store.batches.spend(spent_batch, token, until_ms=until)
        else:
            done = await self.store.batches.end(batch, token)
        if not done:
            logger.info("batch %s: not removed (another worker holds it)", batch.id)


async def request(
    mailer: BatchMailer,
    batch: BatchRecord,
    sending: list[EmailJob],
    prior: tuple[str, ...] | None,
    max_wait_s: float,
) -> Outcome | TransientSendError:
    """Send one request of `batch` (its slot taken): how each member ended, or the failure that
    makes it worth sending again. Every request under a batch's key carries a subset of what
    each earlier one did, so Resend's 409 for another payload says an earlier one was accepted:
    everything `prior` (the last request's members) held went out."""
    emails = [BatchEmail(job.rendered, tags_of(job)) for job in sending if job.rendered]
    try:
        outcomes = await mailer.send_batch(emails, batch.id, max_wait_s=max_wait_s, paced=True)
    except KeyReused as exc:
        if prior is None:  # no earlier request of ours used the key: nothing of ours went
            return {job.id: (FAILED, str(exc)) for job in sending}
        return {job_id: (SENT, "") for job_id in prior}
    except TransientSendError as exc:  # NotSent too
        return exc
    except PermanentSendError as exc:  # refused whole; an earlier request may have gone
        return {job.id: (FAILED if prior is None else UNKNOWN, str(exc)) for job in sending}
    return {
        job.id: (REFUSED, outcome.message) if isinstance(outcome, Refused) else (SENT, outcome)
        for job, outcome in zip(sending, outcomes, strict=True)
    }


def member_ending(delivery: Delivery, job: EmailJob, kind: str, text: str) -> Settling:
    """How a member ended, as its batch's recorded end says (`SENT` with Resend's id...)."""
    if kind == SENT:
        return delivery.sent(job, text or None)
    if kind == REFUSED:
        why = f"Resend refused it in its batch: {text}"
        return delivery.ended(job, JobStatus.FAILED, why, known=True)
    return delivery.ended(job, JobStatus.FAILED, text, known=kind == FAILED)


def most_patient(loops: Mapping[str, Loop], members: list[EmailJob]) -> Recovery | None:
    """The most patient of the members' loops' recoveries: the batch is retried whole."""
    recoveries = [loops[job.loop_id].recovery for job in members if job.loop_id in loops]
    return max(recoveries, key=lambda recovery: recovery.retries, default=None)


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
            recorded = {job_id for job_id, _ in batch.members} if batch is not None else set()
            await self._free([job for job in jobs if job.id not in recorded])
            if batch is None:
                continue
            unfinished.add(batch.member)
            lease = Lease(self.claim, batch.member, self.lease_ms)
            try:
                members = {job.id: job for job in jobs if job.id in recorded}
                await self.sender.send(batch, members, lease, self._settle_as, recorded=True)
            finally:
                unfinished.discard(batch.member)

    async def _free(self, jobs: list[EmailJob]) -> None:
        """Jobs placed in a batch but not recorded in it (their user's turn was lost, or they
        no longer wait: the user stopped loop email, was deleted, the job moved on): they never
        reached Resend. Each is queued again for its user's next turn, which the last of them
        releases (nothing is written where the turn is no longer this claim's)."""
        now = self.sender.clock()
        for job in jobs:  # due again at once: its user's next turn is now
            waiting = self._waiting[evaluation_id(job.user_id)]
            waiting.wake_at_ms = min(waiting.wake_at_ms or now, now)
        endings = [
            self.sender.delivery.again(freed(job), "its batch was not sent", now, DEFER)
            for job in jobs
        ]
        settles = [
            self.sender.delivery.settle(ending, *self._turn_of(ending.job)) for ending in endings
        ]
        await asyncio.gather(*settles)

    def _turn_of(self, job: EmailJob) -> tuple[Held, Held, int | str | None]:
        turn, wake = self._settle_as(job)
        assert turn is not None
        return turn, turn, wake

    def _settle_as(self, job: EmailJob) -> tuple[Held | None, int | str | None]:
        waiting = self._waiting[evaluation_id(job.user_id)]
        return waiting.lease.held, waiting.wake_at_ms if job.id == waiting.last_job else KEEP


def freed(job: EmailJob) -> EmailJob:
    """A job placed in a batch that was never recorded, as if that attempt never began: it
    never reached Resend."""
    update = {"attempts": max(job.attempts - 1, 0), "first_attempt_at": None}
    return job.model_copy(update=update | {"started_at": None, "batch": None})


def _waits(job: EmailJob | None, seq: int, batch_id: str) -> bool:
    """Whether a recorded member still waits for its batch: not settled, still this attempt and
    this batch's (an operator's retry of a dead letter frees it), its user not deleted."""
    return job is not None and not job.terminal and job.seq == seq and job.batch == batch_id
