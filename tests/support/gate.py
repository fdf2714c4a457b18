"""The hot routes (`app.web.gate`) beside the routed ones: an app with its hot routes left to
FastAPI's router, served in process with a spy on the scopes, and the answers of both to the same
requests; and a request body sent in chunks, counting what the app pulled of it."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.main import ActivationApp, create_app
from app.settings import Settings
from tests.conftest import FakeClock


class ScopeSpy:
    """Wraps an app and keeps each request's scope, which the router marks when it routes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.scopes.append(scope)
        await self.app(scope, receive, send)


def routed_only(app: ActivationApp) -> ActivationApp:
    """The same app with the hot routes left to FastAPI's router."""
    app.hot_routes = {}
    return app


@asynccontextmanager
async def serving(
    app: FastAPI, root_path: str = ""
) -> AsyncIterator[tuple[httpx.AsyncClient, ScopeSpy]]:
    spy = ScopeSpy(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=spy, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, spy


def answer(response: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    return (
        response.status_code,
        response.json(),
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
    )


async def hot_and_routed(
    settings: Settings, clock: FakeClock, path: str, requests: list[dict[str, Any]]
) -> dict[str, list[Any]]:
    """The answers to the same requests from an app serving `path` hot, and from one routing it
    (checked on the scopes); a request the client cannot even send answers its error's name."""
    answers: dict[str, list[Any]] = {}
    for name, app in [
        ("hot", create_app(settings, clock=clock)),
        ("routed", routed_only(create_app(settings, clock=clock))),
    ]:
        async with serving(app) as (http, spy):
            answers[name] = []
            for request in requests:
                try:
                    answers[name].append(answer(await http.post(path, **request)))
                except httpx.HTTPError as exc:  # e.g. a body shorter than its content-length
                    answers[name].append(type(exc).__name__)
        routed_count = sum("endpoint" in scope for scope in spy.scopes)
        # a body declared over the route's limit is refused by app.web.gate before any routing
        declared_too_large = sum(isinstance(a, tuple) and a[0] == 413 for a in answers[name])
        assert routed_count == (len(requests) - declared_too_large if name == "routed" else 0)
    return answers


CHUNK = b"x" * 16 * 1024


class Body:
    """A request body sent in chunks, counting what the app pulled of it."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.pulled_bytes = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled_bytes < self.total_bytes:
            chunk = CHUNK[: self.total_bytes - self.pulled_bytes]
            self.pulled_bytes += len(chunk)
            yield chunk
