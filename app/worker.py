"""The worker: claims due jobs from the durable schedule under a lease and runs them.

Two kinds of job: `eval|<uid>` (run the engine on one user and apply its decisions) and
`email|...` (send one email, handled by the delivery module). A crashed worker's jobs come back
when their lease runs out; any number of workers may run at once. Idle, it sleeps until the next
due job or `idle_s`, whichever is sooner; `wake()` cuts the sleep short when new work arrives.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from app.clock import Clock
from app.engine import Decisions, EmailOrder, Snapshot, evaluate
from app.errors import StorageError, StorageUnavailable
from app.jobs import EmailJob, JobStatus
from app.keys import job_user
from app.loops import Loop
from app.messages import Composer
from app.metrics import Metrics
from app.stats import late_activations, step_counters
from app.store import Claim, Store, UserRecord, timeline_entry
from app.templates import TemplateRenderError

logger = logging.getLogger(__name__)

MAX_CONFLICTS = 5
NO_ADDRESS = "the user has no primary email address"
EmailHandler = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lease_ms: int = 60_000
    idle_s: float = 120.0
    batch: int = 50
    max_backoff_s: float = 30.0
    concurrency: int = 10  # jobs of one claim run at once; their Redis calls share writes


class Evaluator:
    """Runs the engine for one user and applies the decisions, retrying on a concurrent change."""

    def __init__(
        self,
        store: Store,
        loops: Mapping[str, Loop],
        composer: Composer,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.loops = loops
        self.composer = composer
        self.clock = clock
        self.metrics = metrics or Metrics()

    async def run(self, user_id: str) -> Decisions | None:
        for _ in range(MAX_CONFLICTS):
            record = await self.store.snapshot(user_id)
            now = self.clock()
            decisions = evaluate(self.loops.values(), to_snapshot(record), now)
            if await self._apply(record, decisions, now):
                log_decisions(user_id, decisions)
                self.metrics.transitions(decisions)
                return decisions
        logger.warning(
            "user %s changed %d times while evaluated; lease left", user_id, MAX_CONFLICTS
        )
        return None

    async def _apply(self, record: UserRecord, decisions: Decisions, now: int) -> bool:
        uid = record.user_id
        jobs = [self._new_job(record, order, now) for order in decisions.emails]
        timeline = [
            timeline_entry(now, f"step.{state.status.value}", step=name, email=state.email_job)
            for name, state in decisions.transitions.items()
        ]
        # the loop funnel's counters move with the states (stats.py); a late activation too
        late = late_activations(self.loops.values(), record.steps, record.actions)
        timeline += [timeline_entry(now, "step.activated_late", step=name) for name in late]
        return await self.store.apply_decisions(
            uid,
            rev=record.rev,
            states={**late, **decisions.transitions},
            jobs=jobs,
            timeline=timeline,
            wake_at_ms=decisions.wake_at,
            counters=step_counters(self.loops.values(), record.steps, decisions.transitions, late),
        )

    def _new_job(self, record: UserRecord, order: EmailOrder, now: int) -> EmailJob:
        """The job for an email decision, rendered now (or failed, or dropped: no address)."""
        job = new_job(record.user_id, order, now)
        profile = record.profile
        if profile is None or profile.email is None:
            return job.model_copy(update={"status": JobStatus.DROPPED, "last_error": NO_ADDRESS})
        try:
            rendered = self.composer.compose(order, profile)
        except TemplateRenderError as exc:
            return job.model_copy(update={"status": JobStatus.FAILED, "last_error": str(exc)})
        return job.model_copy(update={"rendered": rendered})


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
    return Snapshot(record.user_id, registered, record.actions, record.steps, suppressed)


def log_decisions(user_id: str, decisions: Decisions) -> None:
    for name, state in decisions.transitions.items():
        logger.info("user %s step %s: %s", user_id, name, state.status.value)


class Worker:
    """Claims due jobs and runs them; `run()` until stopped, or `drain()` in burst mode."""

    def __init__(
        self,
        store: Store,
        evaluator: Evaluator,
        clock: Clock,
        *,
        send_email: EmailHandler | None = None,
        config: WorkerConfig | None = None,
        metrics: Metrics | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.evaluator = evaluator
        self.clock = clock
        self.send_email = send_email
        self.config = config or WorkerConfig()
        self.metrics = metrics or Metrics()
        self.busy = busy or (lambda: False)
        self.jobs_done = 0
        self.last_loop_at_ms: int | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"Worker(jobs_done={self.jobs_done}, last_loop_at_ms={self.last_loop_at_ms})"

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the job in hand, then return from `run()`."""
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> Claim:
        """Claim what is due now and run it; returns the claim (with when to look again)."""
        now = self.clock()
        claim = await self.store.claim_due(
            now_ms=now, lease_ms=self.config.lease_ms, limit=self.config.batch
        )
        self.last_loop_at_ms = now  # the schedule was reached: what readiness checks
        await self._run_jobs(claim.job_ids)
        return claim

    async def _run_jobs(self, job_ids: Sequence[str]) -> None:
        """The jobs in up to `concurrency` lanes: one job's round trips no longer wait for the
        previous job's, and the Redis calls the lanes make together leave in one write.

        Jobs are independent (any number of workers may run at once; a user's changes are
        rev-checked). While `busy()` (the web process is serving requests) only the first lane
        starts jobs. After a stop or a storage outage no lane starts another: the jobs in hand
        finish, the outage is raised, and leases bring the rest back."""
        pending = deque(job_ids)
        failed: list[StorageUnavailable] = []

        async def lane(first: bool) -> None:
            while pending and not (self._stopping or failed or (not first and self.busy())):
                try:
                    await self.handle(pending.popleft())
                except StorageUnavailable as exc:
                    failed.append(exc)

        lanes = min(self.config.concurrency, len(job_ids))
        await asyncio.gather(*(lane(first=i == 0) for i in range(lanes)))
        if failed:
            raise failed[0]

    async def drain(self, max_rounds: int = 1000) -> int:
        """Burst mode: run until nothing is due now; returns how many jobs ran."""
        before = self.jobs_done
        for _ in range(max_rounds):
            if not (await self.run_once()).job_ids:
                break
        return self.jobs_done - before

    async def run(self) -> None:
        backoff_s = 0.5
        while not self._stopping:
            self._wake.clear()  # a wake() from here on cuts the next sleep short
            try:
                claim = await self.run_once()
                backoff_s = 0.5
            except StorageUnavailable as exc:
                self.metrics.storage_error(exc)
                logger.warning(
                    "worker: storage unavailable (%s); retrying in %.1fs", exc, backoff_s
                )
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.config.max_backoff_s)
                continue
            if not claim.job_ids:
                await self._sleep(self._idle_seconds(claim.wake_at_ms))

    def _idle_seconds(self, wake_at_ms: int | None) -> float:
        if wake_at_ms is None:
            return self.config.idle_s
        return min(max((wake_at_ms - self.clock()) / 1000, 0.0), self.config.idle_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def handle(self, job_id: str) -> None:
        try:
            if job_id.startswith("eval|"):
                await self.evaluator.run(job_user(job_id))
            elif self.send_email is not None:
                await self.send_email(job_id)
            self.jobs_done += 1
        except StorageUnavailable:
            raise
        except StorageError as exc:
            self.metrics.storage_error(exc)
            logger.exception("job %s failed", job_id)  # its lease brings it back later
        except Exception:
            # one bad job must not stop the others; its lease brings it back later
            logger.exception("job %s failed", job_id)
