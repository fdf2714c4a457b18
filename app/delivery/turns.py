"""A user's turn: the engine run on the user (`Evaluator`), its decisions applied with the
attempts they begin (retried on a concurrent change, refused once the turn's lease is another
worker's), then the emails due sent in the same lane (`attempts.Delivery`) or handed to the
claim's batches (`batch.Batcher`).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.clock import Clock
from app.delivery.attempts import NO_WEBHOOK_STEP, BatchPlacer, Delivery, Lease, webhook_of
from app.delivery.batch import freed
from app.delivery.compose import Composer
from app.delivery.holding import admit, dropped_reason, held, hold_counters
from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import Decisions, EmailOrder, Snapshot, StepState, evaluate
from app.engine.funnel import Counter, late_activations, step_counters
from app.engine.holds import Holds
from app.engine.job_ids import evaluation_id
from app.engine.loops import Loop
from app.errors import TemplateRenderError
from app.observability.metrics import Metrics
from app.storage.records import Applied, UserRecord
from app.storage.store import Store

logger = logging.getLogger(__name__)

MAX_CONFLICTS = 5
NO_ADDRESS = "the user has no primary email address"
NO_PROFILE = "the user's profile is gone"


@dataclass(slots=True)
class Turn:
    """What one look at a user writes and does: step states, jobs (new ones, and those whose
    attempt begins now), the jobs to send (or record as ended), and when to look again."""

    states: dict[str, StepState]
    late: dict[str, StepState]  # step 0 states whose condition was met after they timed out
    writes: list[EmailJob]
    deliver: list[EmailJob]
    wake_at_ms: int | None
    holds: list[Counter] = field(default_factory=list)  # `held:<why>` counts of emails held


class Evaluator:
    """A user's turn: runs the engine on the user, applies the decisions (retrying on a
    concurrent change), then sends the emails due, in the same lane."""

    def __init__(
        self,
        store: Store,
        loops: Mapping[str, Loop],
        composer: Composer,
        clock: Clock,
        metrics: Metrics | None = None,
        delivery: Delivery | None = None,
        lease_ms: int = 60_000,
        holds: Holds | None = None,
    ) -> None:
        self.store = store
        self.loops = loops
        self.composer = composer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.delivery = delivery
        self.lease_ms = lease_ms
        self.holds = holds or Holds()

    async def run(self, user_id: str, lease: Lease | None = None) -> Decisions | None:
        """Evaluate and send under `lease`; None when nothing was applied (another worker took
        the turn over, the user was deleted, or kept changing)."""
        lease = lease or Lease(job_id=evaluation_id(user_id), lease_ms=self.lease_ms)
        for _ in range(MAX_CONFLICTS):
            record = await self.store.queries.snapshot(user_id)
            batched = await self._batched(record)
            now = self.clock()
            decisions = evaluate(self.loops.values(), to_snapshot(record), now)
            turn = self.plan(record, decisions, now, lease=lease, batched=batched)
            applied = await self._apply(record, decisions, turn, lease)
            if applied is Applied.APPLIED:
                log_decisions(user_id, decisions)
                self.metrics.transitions(decisions)
                if turn.deliver and self.delivery is not None:
                    await self.delivery.deliver(turn.deliver, lease, turn.wake_at_ms)
                return decisions
            if applied is not Applied.CONFLICT:
                logger.info("user %s not evaluated: %s", user_id, applied.value)
                return None
        logger.warning(
            "user %s changed %d times while evaluated; lease left", user_id, MAX_CONFLICTS
        )
        return None

    async def _batched(self, record: UserRecord) -> set[tuple[str, int]]:
        """The user's jobs (id, attempt) in a recorded batch: the batch's to send, not a turn's.
        One read per batch, and only for a user with jobs placed in one."""
        batch_ids = {job.batch for job in record.jobs.values() if job.batch and not job.terminal}
        if not batch_ids:
            return set()
        shard = self.store.keys.shard_of(record.user_id)
        return await self.store.batches.members(shard, sorted(batch_ids))

    def plan(
        self,
        record: UserRecord,
        decisions: Decisions,
        now: int,
        *,
        lease: Lease | None = None,
        batched: set[tuple[str, int]] | None = None,
    ) -> Turn:
        """The turn's writes: the decisions' states and new jobs; every queued job due now and
        not in flight begun (or dropped, when the user stopped loop email), unless the
        frequency cap or quiet hours hold it (`holding`); the next look at the soonest of the
        engine's wake, a queued job's due time, an attempt in flight's end. Jobs in a batch:
        see `turn_jobs`; with the lease's batcher, attempts begin in batches."""
        registered = None if record.deleted else record.registered_at_ms
        late = late_activations(self.loops.values(), record.steps, record.actions, registered)
        stopped = record.unsubscribed_at_ms is not None or record.suppressed_at_ms is not None
        wakes = [] if decisions.wake_at is None else [decisions.wake_at]
        turn = Turn({**late, **decisions.transitions}, late, [], [], None)
        new = [self._new_job(record, order, now) for order in decisions.emails]
        ready = []
        for job in turn_jobs(record, new, lease, batched or set()):
            if job.id not in record.jobs and job.terminal:
                turn.writes.append(job)
                turn.deliver.append(job)  # recorded as it ended (dead letters, counters)
            elif job.terminal:
                continue
            elif stopped and not job.is_webhook:  # a webhook tells the team, not the user
                turn.writes.append(dropped(job, stop_reason(record), now))
            elif job.started_at is not None and job.started_at + self.lease_ms > now:
                wakes.append(job.started_at + self.lease_ms)  # another lane's attempt in flight
            elif job.due_at > now:
                wakes.append(job.due_at)
                if job.id not in record.jobs:
                    turn.writes.append(job)
            else:
                ready.append(job)
        self._start(record, ready, turn, now, lease, wakes)
        turn.wake_at_ms = min(wakes) if wakes else None
        return turn

    def _start(
        self,
        record: UserRecord,
        ready: list[EmailJob],
        turn: Turn,
        now: int,
        lease: Lease | None,
        wakes: list[int],
    ) -> None:
        """Begin the attempts of the jobs due now that may go; hold or drop the others."""
        for job, verdict in admit(record, ready, self.loops, self.holds, now):
            if verdict is None:
                begun = self._begin(record, job, now, lease.batcher if lease else None)
                turn.writes.append(begun)
                turn.deliver.append(begun)
            elif verdict.dropped:
                turn.writes.append(dropped(job, dropped_reason(verdict), now))
            else:
                waiting = held(job, verdict, now)
                turn.writes.append(waiting)
                turn.holds += hold_counters(job, waiting)
                wakes.append(verdict.until_ms)

    def _begin(
        self, record: UserRecord, job: EmailJob, now: int, batcher: BatchPlacer | None
    ) -> EmailJob:
        """The job with an attempt begun now (rendered again if it never was: a dead letter
        retried after its template was fixed), in one of `batcher`'s batches unless an earlier
        attempt may have reached Resend alone (its own id is then the key that deduplicates)."""
        if job.rendered is None and job.payload is None:
            job = self._rendered(record, job, now)
            if job.terminal:
                return job
        if batcher is None or job.first_attempt_at is not None or job.is_webhook:
            return begin_attempt(job, now)  # a webhook goes alone, to its own endpoint
        return begin_attempt(job, now, batcher.place(job.id))

    async def _apply(
        self, record: UserRecord, decisions: Decisions, turn: Turn, lease: Lease
    ) -> Applied:
        transitions = decisions.transitions
        return await self.store.queue.apply_decisions(
            record.user_id,
            rev=record.rev,
            states=turn.states,
            jobs=turn.writes,
            wake_at_ms=turn.wake_at_ms,
            counters=[
                *step_counters(self.loops.values(), record.steps, transitions, turn.late),
                *turn.holds,
            ],
            token=lease.token,
            begun=bool(turn.deliver),
        )

    def _new_job(self, record: UserRecord, order: EmailOrder, now: int) -> EmailJob:
        """The job for an email decision, rendered now (or failed, or dropped: no address)."""
        return self._rendered(record, new_job(record.user_id, order, now), now)

    def _rendered(self, record: UserRecord, job: EmailJob, now: int) -> EmailJob:
        if job.is_webhook:
            return self._webhook_body(record, job, now)
        profile = record.profile
        if profile is None or profile.email is None:
            return dropped(job, NO_ADDRESS, now)
        parts = (job.id, job.loop_id, job.step, job.kind, job.template, job.personalization)
        order = EmailOrder(*parts, job.due_at)
        try:
            rendered = self.composer.compose(order, profile)
        except TemplateRenderError as exc:
            return failed(job, str(exc), now)
        return job.model_copy(update={"rendered": rendered})

    def _webhook_body(self, record: UserRecord, job: EmailJob, now: int) -> EmailJob:
        """The webhook job with its body, posted as is on every retry (or failed: its loop no
        longer has the step, or the user's data breaks its text)."""
        webhook = webhook_of(self.loops, job)
        if record.profile is None or webhook is None:
            reason = NO_PROFILE if webhook is not None else NO_WEBHOOK_STEP
            return failed(job, reason, now)
        try:
            body = self.composer.webhook_body(job, record.profile, webhook)
        except TemplateRenderError as exc:
            return failed(job, str(exc), now)
        return job.model_copy(update={"payload": body})


def turn_jobs(
    record: UserRecord, new: list[EmailJob], lease: Lease | None, batched: set[tuple[str, int]]
) -> list[EmailJob]:
    """The user's jobs a turn looks at: those stored and the new ones, but a job in a recorded
    batch (`batched`), the batch's to send; one placed in a batch never recorded never reached
    Resend and, under a claim (no other worker can record it now), is freed."""
    jobs = []
    for job in [*record.jobs.values(), *(j for j in new if j.id not in record.jobs)]:
        if job.batch is not None and not job.terminal:
            if (job.id, job.seq) in batched or lease is None or lease.claim is None:
                continue  # its batch's to send (or, holding no claim, maybe another's)
            job = freed(job)
        jobs.append(job)
    return jobs


def begin_attempt(job: EmailJob, now: int, batch: str | None = None) -> EmailJob:
    """The job with an attempt begun now: counted, numbered (only this attempt's worker settles
    it), and, the first that may reach Resend, the start of Resend's 24 h window; in `batch`,
    when it goes in one."""
    update: dict[str, object] = {"attempts": job.attempts + 1, "started_at": now, "batch": batch}
    update |= {"held": None, "held_at": None}
    update |= {"seq": job.seq + 1, "first_attempt_at": job.first_attempt_at or now}
    return job.model_copy(update=update)


def stop_reason(record: UserRecord) -> str:
    """Why no loop email may go to the user (they unsubscribed, or a bounce suppressed them)."""
    return "unsubscribed" if record.unsubscribed_at_ms is not None else "suppressed"


def failed(job: EmailJob, reason: str, now: int) -> EmailJob:
    return job.model_copy(
        update={"status": JobStatus.FAILED, "last_error": reason, "ended_at": now}
    )


def dropped(job: EmailJob, reason: str, now: int) -> EmailJob:
    return job.model_copy(
        update={"status": JobStatus.DROPPED, "last_error": reason, "ended_at": now}
    )


def new_job(user_id: str, order: EmailOrder, now: int) -> EmailJob:
    return EmailJob(
        id=order.job_id,
        user_id=user_id,
        loop_id=order.loop_id,
        step=order.step,
        kind=order.kind,
        template=order.template,
        personalization=dict(order.personalization),
        queued_at=now,
        due_at=order.due_at,
        channel=order.channel,
    )


def to_snapshot(record: UserRecord) -> Snapshot:
    registered = None if record.deleted else record.registered_at_ms
    suppressed = record.unsubscribed_at_ms is not None or record.suppressed_at_ms is not None
    profile = record.profile.view() if record.profile is not None else {}
    return Snapshot(
        record.user_id, registered, record.actions, record.steps, suppressed, profile=profile
    )


def log_decisions(user_id: str, decisions: Decisions) -> None:
    for name, state in decisions.transitions.items():
        logger.info("user %s step %s: %s", user_id, name, state.status.value)
