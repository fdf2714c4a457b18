"""`GET /metrics`: the Prometheus scrape (behind METRICS_TOKEN, else the API key), with the
gauges read from storage when Prometheus asks: three commands, the schedule's and the dead
letters' ZCARD and one HMGET of when each watched action was last reported (shard 0's `seen`,
`app.storage.action_sightings`; this process's sightings not yet flushed are added)."""

import logging

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.errors import StorageError
from app.web import auth
from app.web.auth import Access
from app.web.deps import Services, services_of
from app.web.errors import error_responses

logger = logging.getLogger(__name__)

# Documentation only (OpenAPI's security scheme): `app.web.gate` checks the token (the METRICS
# policy: METRICS_TOKEN, else ACTIVATION_API_KEY) before the route runs.
_bearer = HTTPBearer(
    auto_error=False, description="Authorization: Bearer $METRICS_TOKEN (else $ACTIVATION_API_KEY)"
)


router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(_bearer)],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        **error_responses({401: "missing or wrong metrics token"}),
    },
)
@auth.policy(Access.METRICS)
async def scrape(request: Request) -> Response:
    """Prometheus text format; the gauges are read from storage now (two ZCARDs, an HMGET)."""
    services = services_of(request)
    await refresh_gauges(services)
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def refresh_gauges(services: Services) -> None:
    """Storage trouble must not fail the scrape: the gauges keep their last values (and it is
    counted once)."""
    metrics, store = services.metrics, services.store
    try:
        metrics.schedule_jobs.set(await store.queries.schedule_size())
        metrics.dead_letter_jobs.set(await store.queries.dead_letter_count())
        metrics.watched_actions_seen(await services.watched_last_seen())
    except StorageError as exc:
        metrics.storage_error(exc)
        logger.warning("metrics: gauges not refreshed: %s", exc)
