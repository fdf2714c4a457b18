"""What a route may ask for: the process's `Services` (the runtime, built once in the app's
lifespan and kept as `app.state.runtime`) and FastAPI dependency aliases over them.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread
pool, a thread hand-off per dependency per request (what it cost: bench/README.md, "Where the
time goes"). The hot intake routes skip dependencies altogether and call `services_of` directly.
"""

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Protocol

from fastapi import Depends, Request
from starlette.requests import HTTPConnection
from svix.webhooks import Webhook

from app.clock import Clock
from app.engine.filters import Filter
from app.engine.loops import Loop
from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.action_sightings import Seen
from app.storage.store import Store
from app.web.session_tokens import SessionTokens


class Services(Protocol):
    """What the web layer uses of the runtime (`app.runtime.Runtime` provides it)."""

    settings: Settings
    store: Store
    clock: Clock
    metrics: Metrics
    loops: dict[str, Loop]
    session_tokens: SessionTokens | None  # None: browsers may report nothing

    @property
    def tracked_counts(self) -> Mapping[str, frozenset[int]]: ...

    @property
    def watched_filters(self) -> Mapping[str, Mapping[str, Filter]]: ...

    @property
    def watched_actions(self) -> Mapping[str, list[str]]: ...

    def saw_actions(self, names: Iterable[str], now_ms: int) -> None: ...

    async def seen_now(self) -> Seen: ...

    async def watched_last_seen(self) -> dict[str, int | None]: ...

    @property
    def clerk_verifier(self) -> Webhook | None: ...

    @property
    def resend_verifier(self) -> Webhook | None: ...

    @property
    def readiness(self) -> Mapping[str, Callable[[], Awaitable[None]]]: ...

    def wake_worker(self) -> None: ...


def services_of(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.runtime
    return services


async def get_store(request: Request) -> Store:
    return services_of(request).store


async def get_settings(request: Request) -> Settings:
    return services_of(request).settings


async def get_clock(request: Request) -> Clock:
    return services_of(request).clock


async def get_metrics(request: Request) -> Metrics:
    return services_of(request).metrics


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
