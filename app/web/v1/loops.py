"""`GET /v1/loops`: each loop's activation figures, per arm, with a holdout's measured uplift
and an experiment's arms compared."""

from typing import Any

from fastapi import APIRouter, Request

from app.clock import last_days
from app.engine.funnel import loop_summary
from app.web import auth
from app.web.auth import OPENAPI_BEARER, Access
from app.web.deps import ClockDep, StoreDep, services_of
from app.web.errors import error_responses

router = APIRouter(prefix="/v1", tags=["loops"], dependencies=[OPENAPI_BEARER])


@router.get("/loops", responses=error_responses({401: "missing or wrong API key"}))
@auth.policy(Access.API_KEY)
async def get_loops(request: Request, store: StoreDep, clock: ClockDep) -> dict[str, Any]:
    """Per loop: entered, activated (step 0's condition met within `measure`), timed out,
    waiting, the activation rate; per arm for a holdout (`treatment`, `holdout`) or an
    experiment (its templates); for a holdout, the uplift (every other arm pooled against the
    holdout) with its 95 % interval; for an experiment, `vs_arms`: `a`'s rate minus `b`'s with
    the same interval (of more than two arms, the two with the most entrants; null figures
    while either has nobody)."""
    loops = services_of(request).loops
    reply = await store.queries.read_stats(list(loops), last_days(clock(), 1), dead_limit=0)
    return {"loops": [loop_summary(loop, reply.loops.get(loop.id, {})) for loop in loops.values()]}
