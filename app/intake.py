"""The hot intake routes: what they use (`Intake`), and how they are reached (`HotRoutes`).

`Intake` holds what `POST /webhooks/clerk` and `POST /v1/actions` need, fetched from the app state
instead of through FastAPI dependencies: solving dependencies cost about 40 µs each per request
(measured with cProfile, five per webhook). The other routes keep the dependencies of `app.deps`.

`HotRoutes` (outside all of FastAPI's middleware, see `app.main.ActivationApp`) calls a hot
route's endpoint directly, skipping FastAPI's middleware, router and request handler: measured
under wrk on one uvicorn worker, that machinery costs a bare FastAPI endpoint about 65 µs of CPU
per request, twice what uvicorn itself spends. A hot endpoint takes a `Request`, answers its own
errors (`app.answers`) and returns a `Response`. The webhook's is the very function FastAPI routes
to; the actions endpoint validates its body as FastAPI does for the routed `post_actions`, which
documents it. Tests send both ways the same requests and compare the answers.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from svix.webhooks import Webhook

from app.clock import Clock
from app.errors import NotConfigured
from app.metrics import Metrics
from app.store import Store


@dataclass(frozen=True, slots=True)
class Intake:
    store: Store
    clock: Clock
    metrics: Metrics
    wake_worker: Callable[[], None]
    tracked_counts: Mapping[str, frozenset[int]]
    clerk_verifier: Webhook | None

    def verifier(self) -> Webhook:
        if self.clerk_verifier is None:
            raise NotConfigured("not configured: set CLERK_WEBHOOK_SIGNING_SECRET")
        return self.clerk_verifier


def intake_of(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


Endpoint = Callable[[Request], Awaitable[Response]]


class Traffic:
    """How many HTTP requests the process is serving right now (counted by `HotRoutes`).

    The in-process worker asks `busy()` before it widens to more than one job at a time: while
    requests are in flight they come first (a webhook answered late is sent again), and the
    evaluations they cause wait a little; a quiet process runs them at full concurrency."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0

    def busy(self) -> bool:
        return self.in_flight > 0


class HotRoutes:
    """Calls the given endpoints directly for their (method, path); passes the rest on.

    Each endpoint's module declares its FastAPI route with the same path constant, so the two
    cannot disagree; a test checks that every hot route is also in the app's OpenAPI."""

    def __init__(
        self, app: ASGIApp, routes: Mapping[tuple[str, str], Endpoint], traffic: Traffic
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.traffic.in_flight += 1
        try:
            endpoint = self.routes.get((scope["method"], route_path(scope)))
            if endpoint is None:
                await self.app(scope, receive, send)
            else:
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
        finally:
            self.traffic.in_flight -= 1


def route_path(scope: Scope) -> str:
    """The path the app's routes are matched against: without the proxy's root path, if any."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
