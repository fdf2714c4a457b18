"""Everything a process needs, built from the settings: storage, loops and templates, the mailer,
the worker. Shared by the web app's lifespan and the `activation worker` command.
"""

import asyncio
import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import ValidationError

from app.clock import Clock, ServerClock
from app.delivery.compose import DEFAULT_SENDER, Composer
from app.delivery.outbox import Mailer, OutboxMailer
from app.delivery.resend import RateLimiter, ResendMailer
from app.delivery.send import Delivery
from app.delivery.templates import TemplateSet
from app.delivery.unsubscribe import UnsubscribeTokens
from app.delivery.worker import Evaluator, Worker, WorkerConfig
from app.engine.loop_files import Loop, load_loops
from app.errors import ConfigError, LoopFileError
from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.connections import connect
from app.storage.keys import Keys
from app.storage.store import Store

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    loops: dict[str, Loop]
    templates: TemplateSet
    tokens: UnsubscribeTokens
    mailer: Mailer
    worker: Worker
    clock: Clock
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    _tasks: list["asyncio.Task[None]"] = dataclasses.field(default_factory=list)

    async def start(self) -> None:
        """Read Redis's clock (a `ServerClock`), then keep it in sync in the background."""
        if isinstance(self.clock, ServerClock):
            await self.clock.try_sync()
            self._tasks.append(asyncio.create_task(self.clock.run()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if isinstance(self.mailer, ResendMailer):
            await self.mailer.close()
        await self.store.close()


def build_runtime(
    settings: Settings, clock: Clock | None = None, *, busy: Callable[[], bool] | None = None
) -> Runtime:
    """`clock`: none for the service's own (Redis's, see `app.clock.ServerClock`; call
    `start()`), or one of a test's or the simulator's. `busy`: the web process's
    `Traffic.busy`, for its in-process worker (see `Worker`)."""
    loops, templates = load_loop_files(settings)
    store = build_store(settings)
    tokens = UnsubscribeTokens.from_settings(settings)
    mailer = build_mailer(settings)
    composer = build_composer(settings, loops, templates, tokens)
    metrics = Metrics()
    if clock is None:
        clock = ServerClock(store.reads.server_time_ms, on_skew=metrics.clock_skew.set)
    worker = build_worker(settings, store, loops, composer, mailer, clock, metrics, busy)
    return Runtime(settings, store, loops, templates, tokens, mailer, worker, clock, metrics)


@contextmanager
def startup_frozen() -> Iterator[None]:
    """While serving, what was built before (modules, models, loops, templates: some 130,000
    objects) is out of the garbage collector's sight: each full collection used to walk it all,
    a 30 ms pause that under load was the p99 latency. Freed again when the process winds down
    (a test's many apps then leave nothing behind)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_validation(exc)}") from None


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]).upper()
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def load_loop_files(settings: Settings) -> tuple[dict[str, Loop], TemplateSet]:
    """Loops and their templates, every use of a template checked: errors stop startup."""
    try:
        loops = load_loops(settings.loops_dir)
    except LoopFileError as exc:
        raise ConfigError(str(exc)) from None
    templates = TemplateSet.load(settings.loops_dir / "templates")
    for loop in loops.values():
        check_templates(loop, templates)
    logger.info("loaded %d loop(s) from %s: %s", len(loops), settings.loops_dir, ", ".join(loops))
    return loops, templates


def check_templates(loop: Loop, templates: TemplateSet) -> None:
    for step in loop.steps:
        for field, email in (("action", step.action), ("on_timeout", step.on_timeout)):
            if email is not None:
                where = f"{loop.source}: steps[{step.index}].{field}"
                templates.check(email.template, email.personalization, where)


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
        public_url=settings.public_url,
    )


def build_store(settings: Settings) -> Store:
    return Store(
        connect(settings),
        Keys(settings.key_prefix),
        webhook_dedupe_ttl_s=settings.webhook_dedupe_ttl_s,
        action_dedupe_ttl_s=settings.action_dedupe_ttl_s,
    )


def build_worker(
    settings: Settings,
    store: Store,
    loops: dict[str, Loop],
    composer: Composer,
    mailer: Mailer,
    clock: Clock,
    metrics: Metrics | None = None,
    busy: Callable[[], bool] | None = None,
) -> Worker:
    config = WorkerConfig(
        lease_ms=int(settings.worker_lease_s * 1000),
        idle_s=settings.worker_idle_s,
        concurrency=settings.worker_concurrency,
    )
    metrics = metrics or Metrics()
    evaluator = Evaluator(store, loops, composer, clock, metrics)
    # a send waits at most a quarter of its lease for a rate-limit slot (see Settings)
    delivery = Delivery(
        store, loops, mailer, clock, metrics, max_wait_s=settings.worker_lease_s / 4
    )
    return Worker(
        store, evaluator, clock, send_email=delivery, config=config, metrics=metrics, busy=busy
    )
