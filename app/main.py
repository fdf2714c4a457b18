"""The web app: `create_app(settings)` builds it; `app` is what `uvicorn app.main:app` serves.

Settings are read when the app starts (its lifespan), not when this module is imported, so tests and
other entry points pass their own.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from svix.webhooks import Webhook

from app import __version__, actions, health, progress, unsubscribe, webhooks
from app.clock import Clock, system_clock_ms
from app.connections import connect
from app.delivery import Delivery, Mailer, OutboxMailer
from app.engine import tracked_counts
from app.errors import ConfigError, RequestRefused, StorageError, StorageUnavailable
from app.keys import Keys
from app.loops import Loop, LoopFileError, load_loops
from app.mailer import RateLimiter, ResendMailer
from app.messages import DEFAULT_SENDER, Composer
from app.settings import Settings
from app.startup import configure_logging, describe_configuration
from app.store import Store
from app.templates import TemplateSet
from app.unsubscribe import UnsubscribeTokens
from app.worker import Evaluator, Worker, WorkerConfig

logger = logging.getLogger(__name__)

STORAGE_RETRY_AFTER_S = 5


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock_ms) -> FastAPI:
    """The app; with no settings given they are read from the environment at startup."""
    app = FastAPI(
        title="Activation loops",
        version=__version__,
        description="Clerk webhooks and app actions in; activation, nudge, milestone emails out.",
        lifespan=lifespan,
    )
    app.state.given_settings = settings
    app.state.clock = clock
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(actions.router)
    app.include_router(progress.router)
    app.include_router(unsubscribe.router)
    add_error_handlers(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.given_settings or load_settings()
    configure_logging(settings.log_level)
    logger.log(*describe_configuration(settings))
    loops, templates = load_loop_files(settings)
    store = build_store(settings)
    tokens = UnsubscribeTokens.from_settings(settings)
    mailer = build_mailer(settings)
    composer = build_composer(settings, loops, templates, tokens)
    worker = build_worker(settings, store, loops, composer, mailer, app.state.clock)
    app.state.unsubscribe_tokens = tokens
    app.state.settings = settings
    app.state.store = store
    app.state.loops = loops
    app.state.tracked_counts = tracked_counts(loops.values())
    app.state.worker = worker
    app.state.clerk_verifier = build_verifier(settings)
    app.state.wake_worker = worker.wake if settings.worker_in_process else lambda: None
    app.state.readiness = {
        "storage": store.ping,
        "loops": loops_check(loops),
        "worker": worker_check(settings, worker),
    }
    task = asyncio.create_task(worker.run()) if settings.worker_in_process else None
    try:
        yield
    finally:
        await stop_worker(worker, task)
        if isinstance(mailer, ResendMailer):
            await mailer.close()
        await store.close()


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


def build_worker(  # every part the worker drives
    settings: Settings,
    store: Store,
    loops: dict[str, Loop],
    composer: Composer,
    mailer: Mailer,
    clock: Clock,
) -> Worker:
    config = WorkerConfig(
        lease_ms=int(settings.worker_lease_s * 1000), idle_s=settings.worker_idle_s
    )
    evaluator = Evaluator(store, loops, composer, clock)
    delivery = Delivery(store, loops, mailer, clock)
    return Worker(store, evaluator, clock, send_email=delivery, config=config)


def loops_check(loops: dict[str, Loop]) -> Callable[[], Awaitable[None]]:
    """Loops are checked when they load (a bad file stops startup); an empty folder is not ready."""

    async def check() -> None:
        if not loops:
            raise RuntimeError("no loop files loaded: nothing will ever be sent")

    return check


def worker_check(settings: Settings, worker: Worker) -> Callable[[], Awaitable[None]]:
    """Readiness of the in-process worker: it looked at the schedule recently."""
    stale_after_ms = int((settings.worker_idle_s + 30) * 1000)

    async def check() -> None:
        if not settings.worker_in_process:
            return  # a separate `activation worker` process; it is watched on its own
        last = worker.last_loop_at_ms
        if last is None or worker.clock() - last > stale_after_ms:
            raise RuntimeError("in-process worker has not looked at the schedule recently")

    return check


async def stop_worker(worker: Worker, task: "asyncio.Task[None] | None") -> None:
    worker.stop()
    if task is not None:
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            logger.warning("worker did not stop within 30 s")


def build_verifier(settings: Settings) -> Webhook | None:
    secret = settings.clerk_webhook_signing_secret
    return Webhook(secret.get_secret_value()) if secret is not None else None


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestRefused, on_refused)
    app.add_exception_handler(StorageUnavailable, on_storage_unavailable)
    app.add_exception_handler(StorageError, on_storage_error)


async def on_refused(request: Request, exc: Any) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_code)


async def on_storage_unavailable(request: Request, exc: Any) -> JSONResponse:
    logger.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    headers = {"Retry-After": str(STORAGE_RETRY_AFTER_S)}
    return JSONResponse({"error": "storage unavailable"}, status_code=503, headers=headers)


async def on_storage_error(request: Request, exc: Any) -> JSONResponse:
    logger.error("storage error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": "storage error"}, status_code=500)


app = create_app()
