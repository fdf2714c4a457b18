"""The web app: `create_app(settings)` builds it; `app` is what `uvicorn app.main:app` serves.

Settings are read when the app starts (its lifespan), not when this module is imported, so tests and
other entry points pass their own.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from svix.webhooks import Webhook

from app import __version__, health, webhooks
from app.clock import Clock, system_clock_ms
from app.connections import connect
from app.errors import (
    ConfigError,
    NotConfigured,
    StorageError,
    StorageUnavailable,
    WebhookRejected,
)
from app.keys import Keys
from app.settings import Settings
from app.startup import configure_logging, describe_configuration
from app.store import Store

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
    add_error_handlers(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.given_settings or load_settings()
    configure_logging(settings.log_level)
    logger.log(*describe_configuration(settings))
    store = build_store(settings)
    app.state.settings = settings
    app.state.store = store
    app.state.clerk_verifier = build_verifier(settings)
    app.state.readiness = {"storage": store.ping}
    try:
        yield
    finally:
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


def build_store(settings: Settings) -> Store:
    return Store(
        connect(settings),
        Keys(settings.key_prefix),
        webhook_dedupe_ttl_s=settings.webhook_dedupe_ttl_s,
    )


def build_verifier(settings: Settings) -> Webhook | None:
    secret = settings.clerk_webhook_signing_secret
    return Webhook(secret.get_secret_value()) if secret is not None else None


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(WebhookRejected, on_refused)
    app.add_exception_handler(NotConfigured, on_refused)
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
