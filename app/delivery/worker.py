"""The worker: claims users' turns from the durable schedule under a fenced lease and runs them.

The schedule holds one member per user with something to do, `eval|<uid>`: the user's turn runs
the engine on them, applies its decisions, and sends the emails due (`send.Delivery`) in the same
lane; when a claim holds several turns, their emails go out together, in batches of up to 100
(`batch`). A crashed worker's turns come back when their lease runs out; leases of turns still in
hand are renewed, and a worker whose lease was taken over anyway can no longer write (the lease's
token fences it). Any number of workers may run at once. Idle, it sleeps until the next due job
or `idle_s`, whichever is sooner; `wake()` cuts the sleep short when new work arrives.

It cannot die of what happens to it: any exception of a claim or a job is logged, counted and
backed off (capped exponential, with jitter), and `failing_since_ms`/`last_error` tell readiness.
"""

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from app.clock import Clock
from app.delivery.attempts import Delivery, Lease
from app.delivery.batch import Batcher, BatchSender, freed
from app.delivery.compose import Composer
from app.delivery.jobs import EmailJob, JobStatus
from app.engine.evaluate import Decisions, EmailOrder, Snapshot, StepState, evaluate
from app.engine.funnel import late_activations, step_counters
from app.engine.job_ids import batch_of, evaluation_id, is_batch, is_evaluation, user_of
from app.engine.loops import Loop
from app.errors import StorageError, StorageUnavailable, TemplateRenderError
from app.observability.metrics import Metrics
from app.storage.records import Applied, Claim, UserRecord
from app.storage.store import Store

logger = logging.getLogger(__name__)

MAX_CONFLICTS = 5
NO_ADDRESS = "the user has no primary email address"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lease_ms: int = 60_000
    idle_s: float = 120.0
    batch: int = 100  # turns claimed at once: their emails fill one batch request
    max_backoff_s: float = 30.0
    concurrency: int = 10  # jobs of one claim run at once; their Redis calls share writes


@dataclass(slots=True)
class Turn:
    """What one look at a user writes and does: step states, jobs (new ones, and those whose
    attempt begins now), the jobs to send (or record as ended), and when to look again."""

    states: dict[str, StepState]
    late: dict[str, StepState]  # step 0 states whose condition was met after they timed out
    writes: list[EmailJob]
    deliver: list[EmailJob]
    wake_at_ms: int | None


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
    ) -> None:
        self.store = store
        self.loops = loops
        self.composer = composer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.delivery = delivery
        self.lease_ms = lease_ms

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
        not in flight begun (or dropped, when the user stopped loop email); the next look at
        the soonest of the engine's wake, a queued job's due time, an attempt in flight's end.
        Jobs in a batch: see `turn_jobs`; with the lease's batcher, attempts begin in batches."""
        late = late_activations(self.loops.values(), record.steps, record.actions)
        stopped = record.unsubscribed_at_ms is not None or record.suppressed_at_ms is not None
        wakes = [] if decisions.wake_at is None else [decisions.wake_at]
        turn = Turn({**late, **decisions.transitions}, late, [], [], None)
        new = [self._new_job(record, order, now) for order in decisions.emails]
        for job in turn_jobs(record, new, lease, batched or set()):
            if job.id not in record.jobs and job.terminal:
                turn.writes.append(job)
                turn.deliver.append(job)  # recorded as it ended (dead letters, counters)
            elif job.terminal:
                continue
            elif stopped:
                turn.writes.append(dropped(job, stop_reason(record), now))
            elif job.started_at is not None and job.started_at + self.lease_ms > now:
                wakes.append(job.started_at + self.lease_ms)  # another lane's attempt in flight
            elif job.due_at > now:
                wakes.append(job.due_at)
                if job.id not in record.jobs:
                    turn.writes.append(job)
            else:
                begun = self._begin(record, job, now, lease.batcher if lease else None)
                turn.writes.append(begun)
                turn.deliver.append(begun)
        turn.wake_at_ms = min(wakes) if wakes else None
        return turn

    def _begin(
        self, record: UserRecord, job: EmailJob, now: int, batcher: Batcher | None
    ) -> EmailJob:
        """The job with an attempt begun now (rendered again if it never was: a dead letter
        retried after its template was fixed), in one of `batcher`'s batches unless an earlier
        attempt may have reached Resend alone (its own id is then the key that deduplicates)."""
        if job.rendered is None:
            job = self._rendered(record, job, now)
            if job.terminal:
                return job
        if batcher is None or job.first_attempt_at is not None:
            return begin_attempt(job, now)
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
            counters=step_counters(self.loops.values(), record.steps, transitions, turn.late),
            token=lease.token,
            begun=bool(turn.deliver),
        )

    def _new_job(self, record: UserRecord, order: EmailOrder, now: int) -> EmailJob:
        """The job for an email decision, rendered now (or failed, or dropped: no address)."""
        return self._rendered(record, new_job(record.user_id, order, now), now)

    def _rendered(self, record: UserRecord, job: EmailJob, now: int) -> EmailJob:
        profile = record.profile
        if profile is None or profile.email is None:
            return dropped(job, NO_ADDRESS, now)
        parts = (job.id, job.loop_id, job.step, job.kind, job.template, job.personalization)
        order = EmailOrder(*parts, job.due_at)
        try:
            rendered = self.composer.compose(order, profile)
        except TemplateRenderError as exc:
            update = {"status": JobStatus.FAILED, "last_error": str(exc), "ended_at": now}
            return job.model_copy(update=update)
        return job.model_copy(update={"rendered": rendered})


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
    update |= {"seq": job.seq + 1, "first_attempt_at": job.first_attempt_at or now}
    return job.model_copy(update=update)


def stop_reason(record: UserRecord) -> str:
    """Why no loop email may go to the user (they unsubscribed, or a bounce suppressed them)."""
    return "unsubscribed" if record.unsubscribed_at_ms is not None else "suppressed"


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


class Backoff:
    """Capped exponential waits with jitter (half to all of the step): 0.5 s, 1 s, 2 s, ..."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.step_s = first_s

    def next_s(self) -> float:
        wait_s = self.step_s * (0.5 + random.random() / 2)
        self.step_s = min(self.step_s * 2, self.cap_s)
        return wait_s

    def reset(self) -> None:
        self.step_s = self.first_s


class LeaseKeeper:
    """Renews the leases of a claim's unfinished jobs every third of the lease, until closed.

    A timer, not a task, waits for the first renewal: most claims end long before it (a task per
    claim cost the in-process worker CPU the intake needs)."""

    def __init__(
        self, store: Store, clock: Clock, lease_ms: int, claim: Claim, unfinished: set[str]
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_ms = lease_ms
        self.claim = claim
        self.unfinished = unfinished
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(lease_ms / 3000, self._due)
        self._renewal: asyncio.Task[None] | None = None
        self._closed = False

    def _due(self) -> None:
        self._renewal = self._loop.create_task(self._renew())

    async def _renew(self) -> None:
        try:
            await self.store.queue.renew_leases(
                self.claim,
                sorted(self.unfinished),
                now_ms=self.clock(),
                lease_ms=self.lease_ms,
            )
        except Exception as exc:  # a missed renewal is survivable: the next one may do
            logger.warning("worker: leases not renewed: %s", exc)
        if not self._closed:
            self._timer = self._loop.call_later(self.lease_ms / 3000, self._due)

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._renewal is not None:
            self._renewal.cancel()


class Worker:
    """Claims due jobs and runs them; `run()` until stopped, or `drain()` in burst mode."""

    def __init__(
        self,
        store: Store,
        evaluator: Evaluator,
        clock: Clock,
        *,
        config: WorkerConfig | None = None,
        metrics: Metrics | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.evaluator = evaluator
        self.clock = clock
        self.config = config or WorkerConfig()
        self.metrics = metrics or Metrics()
        self.busy = busy or (lambda: False)
        self.jobs_done = 0
        self.last_loop_at_ms: int | None = None
        self.failing_since_ms: int | None = None  # the first of the failures going on now
        self.last_error: str | None = None
        self.stopped_by: str | None = None  # why `run()` ended other than by `stop()`, if it did
        self._wake = asyncio.Event()
        self._stopping = False
        delivery = evaluator.delivery
        self.batch_sender = BatchSender(delivery) if delivery and delivery.batches else None

    def __repr__(self) -> str:
        return (
            f"Worker(jobs_done={self.jobs_done}, last_loop_at_ms={self.last_loop_at_ms}, "
            f"failing_since_ms={self.failing_since_ms})"
        )

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Finish the job in hand, then return from `run()`."""
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> Claim:
        """Claim what is due now, shard by shard (one shard on a single Redis), and run it;
        returns what was claimed and when to look again."""
        now = self.clock()
        if self.store.keys.shard_count == 1:  # one Redis, Upstash: the common case, kept short
            claim = await self._claim(now, 0)
            self._looked(now)
            await self._run_jobs(claim)
            return claim
        claims = [await self._claim(now, shard) for shard in range(self.store.keys.shard_count)]
        self._looked(now)
        for claim in claims:
            await self._run_jobs(claim)
        wakes = [claim.wake_at_ms for claim in claims if claim.wake_at_ms is not None]
        job_ids = [job_id for claim in claims for job_id in claim.job_ids]
        return Claim(job_ids=job_ids, wake_at_ms=min(wakes) if wakes else None)

    def _looked(self, now_ms: int) -> None:
        """The schedule was reached: what readiness checks, and the heartbeat metric."""
        self.last_loop_at_ms = now_ms
        self.metrics.worker_heartbeat(now_ms)

    async def _claim(self, now_ms: int, shard: int) -> Claim:
        return await self.store.queue.claim_due(
            now_ms=now_ms, lease_ms=self.config.lease_ms, limit=self.config.batch, shard=shard
        )

    async def _run_jobs(self, claim: Claim) -> None:
        """The jobs in up to `concurrency` lanes: one job's round trips no longer wait for the
        previous job's, and the Redis calls the lanes make together leave in one write.

        Jobs are independent (any number of workers may run at once; a user's changes are
        rev-checked). While `busy()` (the web process is serving requests) only the first lane
        starts jobs. After a stop or a storage outage no lane starts another: the jobs in hand
        finish, the outage is raised, and leases bring the rest back. Meanwhile the leases of
        the claim's jobs not yet finished are renewed every third of the lease."""
        pending = deque(claim.job_ids)
        unfinished = set(claim.job_ids)
        failed: list[StorageUnavailable] = []
        batcher = Batcher.of(self.batch_sender, claim, self.config.lease_ms)

        async def lane(first: bool) -> None:
            while pending and not (self._stopping or failed or (not first and self.busy())):
                job_id = pending.popleft()
                try:
                    await self.handle(job_id, claim, batcher)
                except StorageUnavailable as exc:
                    failed.append(exc)
                finally:
                    if batcher is None or not batcher.waits(job_id):
                        unfinished.discard(job_id)

        lanes = min(self.config.concurrency, len(claim.job_ids))
        with self._leases_kept(claim, unfinished):
            await asyncio.gather(*(lane(first=i == 0) for i in range(lanes)))
            if batcher is not None and not failed:
                try:
                    await batcher.flush(unfinished)
                except StorageUnavailable as exc:
                    failed.append(exc)
        if failed:
            raise failed[0]

    @contextlib.contextmanager
    def _leases_kept(self, claim: Claim, unfinished: set[str]) -> Iterator[None]:
        if not claim.job_ids:
            yield
            return
        keeper = LeaseKeeper(self.store, self.clock, self.config.lease_ms, claim, unfinished)
        try:
            yield
        finally:
            keeper.close()

    async def drain(self, max_rounds: int = 1000) -> int:
        """Burst mode: run until nothing is due now; returns how many jobs ran."""
        before = self.jobs_done
        for _ in range(max_rounds):
            if not (await self.run_once()).job_ids:
                break
        return self.jobs_done - before

    async def run(self) -> None:
        """Claim and run jobs until `stop()`: whatever fails, it logs, backs off and goes on."""
        backoff = Backoff(0.5, self.config.max_backoff_s)
        while not self._stopping:
            self._wake.clear()  # a wake() from here on cuts the next sleep short
            try:
                claim = await self.run_once()
            except Exception as exc:
                wait_s = backoff.next_s()
                self._failing(exc, wait_s)
                await self._sleep(wait_s)
                continue
            backoff.reset()
            self._recovered()
            if not claim.job_ids:
                await self._sleep(self._idle_seconds(claim.wake_at_ms))

    def _failing(self, exc: Exception, wait_s: float) -> None:
        if self.failing_since_ms is None:
            self.failing_since_ms = self.clock()
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.metrics.worker_failure(exc)
        if isinstance(exc, StorageError):
            logger.warning("worker: %s; retrying in %.1f s", self.last_error, wait_s)
        else:
            logger.error("worker: %s; retrying in %.1f s", self.last_error, wait_s, exc_info=exc)

    def _recovered(self) -> None:
        if self.failing_since_ms is not None:
            logger.info("worker: recovered after failing since %d", self.failing_since_ms)
        self.failing_since_ms = None
        self.last_error = None

    def _idle_seconds(self, wake_at_ms: int | None) -> float:
        if wake_at_ms is None:
            return self.config.idle_s
        return min(max((wake_at_ms - self.clock()) / 1000, 0.0), self.config.idle_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def handle(
        self, job_id: str, claim: Claim | None = None, batcher: Batcher | None = None
    ) -> None:
        """Run one user's turn (or send a recorded batch again) under the claim's lease; a
        failure other than an outage is logged and counted, and the lease brings the turn back
        later. With a `batcher`, the turn's emails go in its batches."""
        try:
            if is_evaluation(job_id):
                lease = Lease(claim, job_id, self.config.lease_ms, batcher)
                await self.evaluator.run(user_of(job_id), lease)
            elif is_batch(job_id) and self.batch_sender is not None and claim is not None:
                lease = Lease(claim, job_id, self.config.lease_ms)
                await self.batch_sender.resume(claim.shard, batch_of(job_id), lease)
            else:
                logger.error("schedule member %r: not a turn this worker runs; left", job_id)
            self.jobs_done += 1
        except StorageUnavailable:
            raise
        except Exception as exc:
            # one bad job must not stop the others; its lease brings it back later
            self.metrics.job_failure(exc)
            logger.exception("job %s failed", job_id)
