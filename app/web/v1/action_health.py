"""`GET /v1/actions/health`: are the actions loops wait for reported, and which reported actions
does no loop watch (a typo in the app or in a loop file)? Read from the sightings
(`app.storage.action_sightings`: storage's, plus this process's not yet flushed).

A watched action is `never_seen` (never reported to this service), `ok` (reported in the last
24 h) or `silent` (reported before, none in the last 24 h, however long ago: one last seen a
month ago is as silent as one last seen yesterday). Counts go by whole UTC hours: `count_24h` is
the current hour and the 24 before it, `count_7d` the current hour and the 168 before it. A
request's actions are counted as accepted, its duplicates (a client's retries) included.
"""

from collections.abc import Mapping, Sequence
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.clock import DAY_MS, HOUR_MS
from app.engine.spelling import did_you_mean
from app.storage.action_sightings import HOURS_PER_DAY, Seen
from app.web import auth
from app.web.auth import OPENAPI_BEARER, Access
from app.web.deps import services_of
from app.web.errors import error_responses

router = APIRouter(prefix="/v1", tags=["actions"], dependencies=[OPENAPI_BEARER])

Status = Literal["ok", "never_seen", "silent"]


class WatchedAction(BaseModel):
    action: str
    loops: list[str]
    last_seen_at: int | None  # epoch ms
    count_24h: int
    count_7d: int
    status: Status


class UnwatchedAction(BaseModel):
    action: str
    count_7d: int
    did_you_mean: str | None  # the watched action it likely misspells


class ActionHealth(BaseModel):
    watched: list[WatchedAction]
    unwatched: list[UnwatchedAction]


@router.get(
    "/actions/health",
    response_model=ActionHealth,
    responses=error_responses({401: "missing or wrong API key"}),
)
@auth.policy(Access.API_KEY)
async def get_action_health(request: Request) -> ActionHealth:
    """Each action a loop waits for, with its counts and status; each action reported in the
    last 7 days that no loop watches, with the watched name it may misspell."""
    services = services_of(request)
    seen = await services.seen_now()
    return action_health(services.watched_actions, seen, services.clock())


def action_health(watched: Mapping[str, Sequence[str]], seen: Seen, now_ms: int) -> ActionHealth:
    hour = now_ms // HOUR_MS
    day_from, week_from = hour - HOURS_PER_DAY, hour - 7 * HOURS_PER_DAY
    rows = []
    for name, loops in sorted(watched.items()):
        last_ms = seen.last_ms.get(name)
        count_24h, count_7d = seen.count(name, day_from), seen.count(name, week_from)
        status = status_of(last_ms, count_24h, count_7d, now_ms)
        row = WatchedAction(
            action=name,
            loops=list(loops),
            last_seen_at=last_ms,
            count_24h=count_24h,
            count_7d=count_7d,
            status=status,
        )
        rows.append(row)
    others = {name: seen.count(name, week_from) for name in seen.names() - watched.keys()}
    unwatched = [
        UnwatchedAction(action=name, count_7d=count, did_you_mean=did_you_mean(name, watched))
        for name, count in sorted(others.items(), key=lambda item: (-item[1], item[0]))
        if count
    ]
    return ActionHealth(watched=rows, unwatched=unwatched)


def status_of(last_ms: int | None, count_24h: int, count_7d: int, now_ms: int) -> Status:
    if last_ms is None and not count_7d:
        return "never_seen"
    if count_24h or (last_ms is not None and now_ms - last_ms < DAY_MS):
        return "ok"
    return "silent"
