"""Everything a process needs, built from the settings: storage, loops and templates, the mailer,
the worker, the sightings of the actions it accepts (flushed to storage in the background).
Shared by the web app's lifespan and the `activation worker` command.
"""

import asyncio
import contextlib
import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from svix.webhooks import Webhook

from app.clock import Clock, ServerClock
from app.delivery.attempts import Delivery
from app.delivery.compose import DEFAULT_SENDER, Composer
from app.delivery.loop_folder import load_loop_files
from app.delivery.outbox import Mailer, OutboxMailer
from app.delivery.pacing import RateLimiter
from app.delivery.resend_api import ResendMailer
from app.delivery.templates import TemplateSet
from app.delivery.turns import Evaluator
from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.delivery.webhook_client import WebhookClient
from app.delivery.worker import Worker, WorkerConfig
from app.engine.evaluate import tracked_counts, watched_actions, watched_filters
from app.engine.filters import Filter
from app.engine.holds import CapRule, FrequencyCap, Holds, QuietHours
from app.engine.loops import Loop
from app.errors import (
    StorageError,
    StorageUnavailable,
)
from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.action_sightings import (
    FIRST_SIGHTING_FLUSH_S,
    SIGHTINGS_FLUSH_S,
    Seen,
    SightingsBuffer,
)
from app.storage.connections import connect
from app.storage.keys import Keys
from app.storage.store import Store
from app.web.session_tokens import SessionTokens, session_tokens

logger = logging.getLogger(__name__)


ReadinessCheck = Callable[[], Awaitable[None]]
OPEN_RETRY_S = 5.0  # storage not reachable at start: how soon to ask again what it is


@dataclass
class Runtime:
    """One process's parts, built once from the settings: what the web app keeps on its state
    (`app.state.runtime`, read through `app.web.deps.services_of`) and what the worker command
    runs."""

    settings: Settings
    store: Store
    loops: dict[str, Loop]
    templates: TemplateSet
    tokens: UnsubscribeTokens
    mailer: Mailer
    worker: Worker
    clock: Clock
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    sightings_flush_s: float = SIGHTINGS_FLUSH_S  # how often the sightings go to storage
    session_tokens: SessionTokens | None = None  # browsers' Clerk sessions; None: not accepted
    webhooks: WebhookClient | None = None  # webhook steps' POSTs
    worker_task: "asyncio.Task[None] | None" = None
    _first_sighting: "asyncio.Task[None] | None" = None
    _tasks: list["asyncio.Task[None]"] = dataclasses.field(default_factory=list)

    @cached_property
    def tracked_counts(self) -> dict[str, frozenset[int]]:
        """For each action, the counts some loop waits for (intake records when each is reached)."""
        return tracked_counts(self.loops.values())

    @cached_property
    def watched_filters(self) -> dict[str, dict[str, Filter]]:
        """For each action, the property filters loops count it by (intake matches them)."""
        return watched_filters(self.loops.values())

    @cached_property
    def watched_actions(self) -> dict[str, list[str]]:
        """Every action some loop waits for, with those loops' ids."""
        return watched_actions(self.loops.values())

    @cached_property
    def sightings(self) -> SightingsBuffer:
        """The actions this process accepted and has not yet added to storage's sightings."""
        return SightingsBuffer(self.watched_actions)

    @cached_property
    def clerk_verifier(self) -> Webhook | None:
        return webhook_verifier(self.settings.clerk_webhook_signing_secret)

    @cached_property
    def resend_verifier(self) -> Webhook | None:
        return webhook_verifier(self.settings.resend_webhook_secret)

    @cached_property
    def readiness(self) -> dict[str, ReadinessCheck]:
        """What `GET /health/ready` asks: storage answers, loops are loaded, the worker lives."""
        return {
            "storage": self.store.ping,
            "loops": loops_check(self.loops),
            "worker": worker_check(self.settings, self.worker),
        }

    def wake_worker(self) -> None:
        """New work: the in-process worker (if this process runs one) looks at once."""
        if self.settings.worker_in_process:
            self.worker.wake()

    async def start(self, *, in_process_worker: bool = False) -> None:
        """Read Redis's clock (a `ServerClock`) and keep it in sync in the background; with
        `in_process_worker`, run the worker as a task too (when the settings ask for one).
        First of all, find out whether storage is a Redis Cluster (`Store.open`); when it
        cannot be reached yet, the process starts anyway (readiness says so) and asks again."""
        if not await self.try_open_store():
            self._tasks.append(asyncio.create_task(self._open_store_later()))
        if isinstance(self.clock, ServerClock):
            await self.clock.try_sync()
            self._tasks.append(asyncio.create_task(self.clock.run()))
        if in_process_worker and self.settings.worker_in_process:
            self.worker_task = start_worker(self.worker)
        self._tasks.append(asyncio.create_task(self._flush_sightings_every()))

    async def try_open_store(self) -> bool:
        try:
            await self.store.open()
        except StorageUnavailable as exc:
            logger.warning(
                "storage not reached at start (%s); asking again in %g s", exc, OPEN_RETRY_S
            )
            return False
        return True

    async def _open_store_later(self) -> None:
        opened = False
        while not opened:
            await asyncio.sleep(OPEN_RETRY_S)
            opened = await self.try_open_store()

    async def _flush_sightings_every(self) -> None:
        while True:
            await asyncio.sleep(self.sightings_flush_s)
            # shielded: a flush cut short by `close()` still ends (`close` waits for it)
            await asyncio.shield(self.flush_sightings())

    def saw_actions(self, names: Iterable[str], now_ms: int) -> None:
        """Actions accepted: counted in memory (no Redis command); a name this process has not
        added to storage yet goes there within `FIRST_SIGHTING_FLUSH_S` (one flush at a time)."""
        if self.sightings.saw(names, now_ms) and self._first_sighting is None:
            self._first_sighting = asyncio.create_task(self._flush_first_sighting())

    async def _flush_first_sighting(self) -> None:
        try:
            await asyncio.sleep(FIRST_SIGHTING_FLUSH_S)
            await asyncio.shield(self.flush_sightings())
        finally:
            self._first_sighting = None

    async def flush_sightings(self) -> None:
        """Add this process's sightings of actions to storage: one script, or no command at all
        when there are none. What storage does not take stays buffered for the next flush."""
        async with self.sightings.lock:
            batch = self.sightings.take()
            if not batch:
                return
            try:
                _, dropped = await self.store.sightings.flush(batch, watched=self.watched_actions)
            except Exception as exc:  # the task must go on: the next flush tries again
                self._flush_failed(batch, exc)
                return
            self.sightings.stored(batch)
        if dropped:
            logger.warning(
                "sightings: %d name(s) no loop watches left out: storage holds its limit of them",
                dropped,
            )

    def _flush_failed(self, batch: Seen, exc: Exception) -> None:
        """The batch back in the buffer; storage's trouble counted, anything else (a bug) logged
        with its traceback."""
        if isinstance(exc, StorageError):
            self.metrics.storage_error(exc)
        logger.warning(
            "sightings of %d action(s) kept for the next flush: %s",
            len(batch.names()),
            exc,
            exc_info=not isinstance(exc, StorageError),
        )
        self.sightings.restore(batch, self.clock())

    async def seen_now(self) -> Seen:
        """The sightings of the last days in storage, this process's unflushed ones added."""
        async with self.sightings.lock:
            seen = await self.store.sightings.read(self.clock(), watched=self.watched_actions)
            seen.merge(self.sightings.pending)
        return seen

    async def watched_last_seen(self) -> dict[str, int | None]:
        """When each watched action was last reported (None: never), this process's unflushed
        sightings included: one HMGET."""
        names = list(self.watched_actions)
        async with self.sightings.lock:
            stored = await self.store.sightings.last_seen(names)
            pending = self.sightings.pending.last_ms
            return {name: latest(stored[name], pending.get(name)) for name in names}

    async def close(self) -> None:
        await stop_worker(self.worker, self.worker_task)
        for task in [*self._tasks, *filter(None, [self._first_sighting])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush_sightings()
        if self.session_tokens is not None:
            await self.session_tokens.close()
        if isinstance(self.mailer, ResendMailer):
            await self.mailer.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.store.close()


def latest(*times_ms: int | None) -> int | None:
    known = [at_ms for at_ms in times_ms if at_ms is not None]
    return max(known) if known else None


def webhook_verifier(secret: SecretStr | None) -> Webhook | None:
    return Webhook(secret.get_secret_value()) if secret is not None else None


def loops_check(loops: dict[str, Loop]) -> ReadinessCheck:
    """Loops are checked when they load (a bad file stops startup); an empty folder is not ready."""

    async def check() -> None:
        if not loops:
            raise RuntimeError("no loop files loaded: nothing will ever be sent")

    return check


def worker_check(settings: Settings, worker: Worker) -> ReadinessCheck:
    """Readiness of the in-process worker: not failing, and it looked at the schedule recently
    (a worker failing says so at once; one stuck says so within two idle periods)."""
    stale_after_ms = int((settings.worker_idle_s + min(settings.worker_idle_s, 30)) * 1000)

    async def check() -> None:
        if not settings.worker_in_process:
            return  # a separate `activation worker` process; it is watched on its own
        if worker.failing_since_ms is not None:
            since = datetime.fromtimestamp(worker.failing_since_ms / 1000, UTC).isoformat()
            raise RuntimeError(f"failing since {since}: {worker.last_error}")
        if worker.stopped_by is not None:
            raise RuntimeError(f"stopped: {worker.stopped_by}")
        last = worker.last_loop_at_ms
        if last is None or worker.clock() - last > stale_after_ms:
            raise RuntimeError("in-process worker has not looked at the schedule recently")

    return check


def start_worker(worker: Worker) -> "asyncio.Task[None]":
    """The in-process worker as a task whose end, other than by `stop()`, is logged loudly and
    reported by readiness (its loop catches every exception: this is for what it cannot)."""
    task = asyncio.create_task(worker.run())

    def ended(done: "asyncio.Task[None]") -> None:
        if done.cancelled() or worker.stopping:
            return
        error = done.exception()
        worker.stopped_by = repr(error) if error is not None else "returned"
        logger.critical("the in-process worker ended: %s", worker.stopped_by, exc_info=error)

    task.add_done_callback(ended)
    return task


async def stop_worker(worker: Worker, task: "asyncio.Task[None] | None") -> None:
    worker.stop()
    if task is not None:
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            logger.warning("worker did not stop within 30 s")


def build_runtime(
    settings: Settings,
    clock: Clock | None = None,
    *,
    busy: Callable[[], bool] | None = None,
    sightings_flush_s: float = SIGHTINGS_FLUSH_S,
) -> Runtime:
    """`clock`: none for the service's own (Redis's, see `app.clock.ServerClock`; call
    `start()`), or one of a test's or the simulator's. `busy`: the web process's
    `Traffic.busy`, for its in-process worker (see `Worker`). `sightings_flush_s`: how often
    the actions accepted go to storage's sightings (a test's own)."""
    loops, templates = load_loop_files(settings)
    store = build_store(settings)
    tokens = UnsubscribeTokens.from_settings(settings)
    mailer = build_mailer(settings)
    composer = build_composer(settings, loops, templates, tokens)
    metrics = Metrics()
    if clock is None:
        clock = ServerClock(store.server_time_ms, on_skew=metrics.clock_skew.set)
    webhooks = WebhookClient(settings.webhook_timeout, clock)
    worker = build_worker(
        settings, store, loops, composer, mailer, clock, metrics, busy, webhooks=webhooks
    )
    parts = (settings, store, loops, templates, tokens, mailer, worker, clock, metrics)
    browsers = session_tokens(settings, clock)
    return Runtime(
        *parts, sightings_flush_s=sightings_flush_s, session_tokens=browsers, webhooks=webhooks
    )


@contextmanager
def startup_frozen() -> Iterator[None]:
    """While serving, what was built before (modules, models, loops, templates) is out of the
    garbage collector's sight: each full collection used to walk it all, a pause that under load
    was the p99 latency (bench/README.md, "Where the time goes"). Freed again when the process
    winds down (a test's many apps then leave nothing behind)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_mailer(settings: Settings) -> Mailer:
    if settings.resend_api_key is None:
        return OutboxMailer()
    return ResendMailer(
        settings.resend_api_key.get_secret_value(),
        settings.resend_api_url,
        settings.resend_timeout_s,
        rate_limiter=RateLimiter(settings.resend_rate_limit_per_s),
    )


def build_composer(
    settings: Settings, loops: dict[str, Loop], templates: TemplateSet, tokens: UnsubscribeTokens
) -> Composer:
    return Composer(
        templates=templates,
        loops=loops,
        tokens=tokens,
        sender=settings.email_from or DEFAULT_SENDER,
        app_url=settings.app_url,
        public_url=settings.links_url,
    )


def build_store(settings: Settings) -> Store:
    return Store(
        connect(settings),
        Keys(settings.key_prefix),
        webhook_dedupe_ttl_s=settings.webhook_dedupe_ttl_s,
        action_dedupe_ttl_s=settings.action_dedupe_ttl_s,
        timeout_s=settings.storage_timeout_s,
    )


def holds_of(settings: Settings) -> Holds:
    """FREQUENCY_CAP, QUIET_HOURS and DEFAULT_TIMEZONE as the worker's turns keep them."""
    cap = FrequencyCap(tuple(CapRule(emails, window) for emails, window in settings.cap_rules))
    quiet = QuietHours.parse(settings.quiet_hours) if settings.quiet_hours else None
    return Holds(cap, quiet, ZoneInfo(settings.default_timezone))


def build_worker(
    settings: Settings,
    store: Store,
    loops: dict[str, Loop],
    composer: Composer,
    mailer: Mailer,
    clock: Clock,
    metrics: Metrics | None = None,
    busy: Callable[[], bool] | None = None,
    *,
    webhooks: WebhookClient | None = None,
) -> Worker:
    config = WorkerConfig(
        lease_ms=int(settings.worker_lease_s * 1000),
        idle_s=settings.worker_idle_s,
        concurrency=settings.worker_concurrency,
    )
    metrics = metrics or Metrics()
    # a send waits at most a quarter of its lease for a rate-limit slot (see Settings)
    delivery = Delivery(
        store,
        loops,
        mailer,
        clock,
        metrics,
        max_wait_s=settings.worker_lease_s / 4,
        webhooks=webhooks,
    )
    evaluator = Evaluator(
        store, loops, composer, clock, metrics, delivery, config.lease_ms, holds_of(settings)
    )
    return Worker(store, evaluator, clock, config=config, metrics=metrics, busy=busy)
