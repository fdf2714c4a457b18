"""`GET /metrics`: the Prometheus scrape (behind METRICS_TOKEN, else the API key), with the
queue gauges read from storage when Prometheus asks."""

import logging

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.errors import StorageError
from app.observability.metrics import Metrics
from app.storage.store import Store
from app.web import auth
from app.web.auth import Access
from app.web.deps import MetricsDep, StoreDep

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
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"description": "bad token"}},
)
@auth.policy(Access.METRICS)
async def scrape(metrics: MetricsDep, store: StoreDep) -> Response:
    """Prometheus text format; queue gauges are read from storage now (two ZCARDs)."""
    await refresh_queue_gauges(metrics, store)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def refresh_queue_gauges(metrics: Metrics, store: Store) -> None:
    """Storage trouble must not fail the scrape: the gauges keep their last values."""
    try:
        metrics.schedule_jobs.set(await store.reads.schedule_size())
        metrics.dead_letter_jobs.set(await store.reads.dead_letter_count())
    except StorageError as exc:
        metrics.storage_error(exc)
        logger.warning("metrics: queue gauges not refreshed: %s", exc)
