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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from app.clock import Clock
from app.delivery.attempts import Lease
from app.delivery.batch import Batcher, BatchSender
from app.delivery.turns import Evaluator
from app.engine.backoff import Backoff
from app.engine.job_ids import batch_of, is_batch, is_evaluation, user_of
from app.errors import StorageError, StorageUnavailable
from app.observability.metrics import Metrics
from app.storage.records import Claim
from app.storage.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lease_ms: int = 60_000
    idle_s: float = 120.0
    batch: int = 100  # turns claimed at once: their emails fill one batch request
    max_backoff_s: float = 30.0
    concurrency: int = 10  # jobs of one claim run at once; their Redis calls share writes


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
        backoff = Backoff(500, int(self.config.max_backoff_s * 1000), jitter=(0.5, 1.0))
        failures = 0
        while not self._stopping:
            self._wake.clear()  # a wake() from here on cuts the next sleep short
            try:
                claim = await self.run_once()
            except Exception as exc:
                failures += 1
                wait_s = backoff.wait_ms(failures) / 1000
                self._failing(exc, wait_s)
                await self._sleep(wait_s)
                continue
            failures = 0
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
