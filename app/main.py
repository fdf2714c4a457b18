"""The web app: `create_app(settings)` builds it; `app` is what `uvicorn app.main:app` serves.

Settings are read when the app starts (its lifespan), not when this module is imported, so tests and
other entry points pass their own.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from starlette.types import ASGIApp
from svix.webhooks import Webhook

from app import __version__
from app.clock import Clock
from app.delivery import unsubscribe
from app.delivery.worker import Worker
from app.engine.evaluate import tracked_counts
from app.engine.loop_files import Loop
from app.errors import ActivationError, RequestRefused, StorageError
from app.intake import actions, resend_events
from app.intake import clerk as webhooks
from app.observability.startup import configure_logging, describe_configuration
from app.ops import dashboard, scrape
from app.ops import user_state as progress
from app.runtime import build_runtime, load_settings, startup_frozen
from app.settings import Settings
from app.web import health
from app.web.errors import error_response, invalid_request_response
from app.web.gate import Gate, RouteTable, declare_framework_routes
from app.web.intake import Endpoint, Intake, Traffic

logger = logging.getLogger(__name__)


class ActivationApp(FastAPI):
    """FastAPI with one layer of ours outside all of its own, `app.web.gate.Gate`: each request is
    matched to its route, refused or let in by the route's declared policy and body limit, and a
    hot intake route is called directly, skipping the rest of the stack. An error a hot route
    does not answer itself reaches the server, which answers 500 and logs it."""

    hot_routes: Mapping[tuple[str, str], Endpoint] = MappingProxyType({})

    @cached_property
    def traffic(self) -> Traffic:
        return Traffic()

    def build_middleware_stack(self) -> ASGIApp:
        table = RouteTable(self.routes, self.hot_routes)
        return Gate(super().build_middleware_stack(), table, self.state, self.traffic)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> ActivationApp:
    """The app; with no settings given they are read from the environment at startup. With no
    clock given it keeps Redis's (`app.clock.ServerClock`)."""
    app = ActivationApp(
        title="Activation loops",
        version=__version__,
        description="Clerk webhooks and app actions in; activation, nudge, milestone emails out.",
        lifespan=lifespan,
        telemetry=native_telemetry(),
    )
    app.state.given_settings = settings
    app.state.clock = clock
    declare_framework_routes(app)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(actions.router)
    app.include_router(progress.router)
    app.include_router(unsubscribe.router)
    app.include_router(dashboard.router)
    app.include_router(resend_events.router)
    app.include_router(scrape.router)
    add_error_handlers(app)
    app.hot_routes = webhooks.HOT_ROUTES | actions.HOT_ROUTES
    return app


def native_telemetry() -> TelemetryConfig | None:
    """FastAPI's own OpenTelemetry instrumentation: as FastAPI configures it when a tracer
    provider is set up before the app is built (`opentelemetry-instrument`, or the host's code);
    off otherwise, since FastAPI would ask on every request whether one is (see the README's
    Performance section)."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.given_settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    logger.log(*describe_configuration(settings))
    assert isinstance(app, ActivationApp)
    runtime = build_runtime(settings, app.state.clock, busy=app.traffic.busy)
    await runtime.start()
    worker = runtime.worker
    app.state.clock = runtime.clock
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.store = runtime.store
    app.state.loops = runtime.loops
    app.state.tracked_counts = tracked_counts(runtime.loops.values())
    app.state.worker = worker
    app.state.unsubscribe_tokens = runtime.tokens
    app.state.clerk_verifier = build_verifier(settings)
    app.state.resend_verifier = resend_events.build_verifier(settings)
    app.state.metrics = runtime.metrics
    app.state.wake_worker = worker.wake if settings.worker_in_process else lambda: None
    app.state.intake = Intake(
        store=runtime.store,
        clock=app.state.clock,
        metrics=runtime.metrics,
        wake_worker=app.state.wake_worker,
        tracked_counts=app.state.tracked_counts,
        clerk_verifier=app.state.clerk_verifier,
    )
    app.state.readiness = {
        "storage": runtime.store.reads.ping,
        "loops": loops_check(runtime.loops),
        "worker": worker_check(settings, worker),
    }
    task = start_worker(worker) if settings.worker_in_process else None
    app.state.worker_task = task
    try:
        with startup_frozen():
            yield
    finally:
        await stop_worker(worker, task)
        await runtime.close()


def build_verifier(settings: Settings) -> Webhook | None:
    secret = settings.clerk_webhook_signing_secret
    return Webhook(secret.get_secret_value()) if secret is not None else None


def loops_check(loops: dict[str, Loop]) -> Callable[[], Awaitable[None]]:
    """Loops are checked when they load (a bad file stops startup); an empty folder is not ready."""

    async def check() -> None:
        if not loops:
            raise RuntimeError("no loop files loaded: nothing will ever be sent")

    return check


def worker_check(settings: Settings, worker: Worker) -> Callable[[], Awaitable[None]]:
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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(RequestRefused, on_activation_error)
    app.add_exception_handler(StorageError, on_activation_error)  # StorageUnavailable too


async def on_invalid_request(request: Request, exc: Any) -> JSONResponse:
    return invalid_request_response(exc.errors())


async def on_activation_error(request: Request, exc: Any) -> JSONResponse:
    assert isinstance(exc, ActivationError)
    return error_response(request, exc)


app = create_app()
