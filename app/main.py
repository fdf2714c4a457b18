"""The web app: `create_app(settings)` builds it; `app` is what `uvicorn app.main:app` serves.

Settings are read when the app starts (its lifespan), not when this module is imported, so tests and
other entry points pass their own.
"""

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cached_property
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from app import __version__
from app.clock import Clock
from app.errors import ActivationError, ConfigError, RequestRefused, StorageError
from app.observability.startup import configure_logging, describe_configuration
from app.runtime import build_runtime, startup_frozen
from app.settings import Settings, load_settings
from app.web import health, metrics
from app.web.errors import (
    error_response,
    http_error_response,
    internal_error_response,
    invalid_request_response,
)
from app.web.gate import Endpoint, Gate, RouteTable, Traffic, declare_framework_routes
from app.web.pages import dashboard, outbox, unsubscribe
from app.web.v1 import action_health, actions, loops, users
from app.web.webhooks import clerk, resend

logger = logging.getLogger(__name__)


class ActivationApp(FastAPI):
    """FastAPI with one layer of ours outside all of its own, `app.web.gate.Gate`: each request is
    matched to its route, refused or let in by the route's declared policy and body limit, and a
    hot intake route is called directly, skipping the rest of the stack. An error a hot route
    does not answer itself is answered 500 (`app.web.errors`) and reaches the server, which logs
    it."""

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
    app.state.given_clock = clock
    declare_framework_routes(app)
    for module in (clerk, resend, actions, users, loops, action_health, dashboard, outbox,
                   unsubscribe, health, metrics):  # fmt: skip
        app.include_router(module.router)
    add_error_handlers(app)
    app.hot_routes = clerk.HOT_ROUTES | actions.HOT_ROUTES
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
    """The runtime, built once from the settings and kept as `app.state.runtime`: every route
    reads what it needs of it (`app.web.deps.services_of`)."""
    try:
        settings = app.state.given_settings or load_settings()
        configure_logging(settings.log_level, settings.log_format)
        logger.log(*describe_configuration(settings))
        assert isinstance(app, ActivationApp)
        runtime = build_runtime(settings, app.state.given_clock, busy=app.traffic.busy)
    except ConfigError as exc:
        app.state.startup_refused = exc
        raise
    await runtime.start(in_process_worker=True)
    app.state.runtime = runtime
    try:
        with startup_frozen():
            yield
    finally:
        await runtime.close()


def add_error_handlers(app: FastAPI) -> None:
    """Every error in the one body of `app.web.errors`, FastAPI's own (404, 405, 422) too."""
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(HTTPException, on_http_error)  # FastAPI's subclass too
    app.add_exception_handler(RequestRefused, on_activation_error)
    app.add_exception_handler(StorageError, on_activation_error)  # StorageUnavailable too
    app.add_exception_handler(Exception, on_unexpected_error)  # answered, then re-raised


async def on_invalid_request(request: Request, exc: Any) -> JSONResponse:
    return invalid_request_response(exc.errors())


async def on_http_error(request: Request, exc: Any) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return http_error_response(exc)


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return internal_error_response()


async def on_activation_error(request: Request, exc: Any) -> JSONResponse:
    assert isinstance(exc, ActivationError)
    return error_response(request, exc)


app = create_app()
