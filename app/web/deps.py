"""FastAPI dependency aliases: what a route may ask for, built once in the app's lifespan.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool, a
thread hand-off per dependency per request (what it cost: bench/README.md, "Where the time goes").
"""

from typing import Annotated

from fastapi import Depends, Request

from app.clock import Clock
from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.store import Store


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
