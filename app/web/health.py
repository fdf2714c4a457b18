"""`GET /health` (the process answers) and `GET /health/ready` (every part it needs works).

Readiness checks are named async callables the runtime lists (`Services.readiness`); each
raises to fail, and the 503 names the parts that failed. Both routes are public, so a failure's
reason (which may name an internal address) is shown only to a caller holding the API key or the
metrics token; anyone else reads "failed". The log always has the reason.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.web import auth
from app.web.auth import Access
from app.web.deps import services_of
from app.web.errors import ErrorBody, error_body

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_S = 3.0
OK, FAILED = "ok", "failed"

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
    failing: list[str]


class NotReady(ErrorBody, Readiness):
    """A 503: the one error body (`error` names the failing parts) with the report beside it."""


@router.get("/health", response_model=Liveness)
@auth.policy(Access.PUBLIC)
async def health() -> Liveness:
    """Liveness: the process is up and serving."""
    return Liveness(status="ok")


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "a part failing, named"}},
)
@auth.policy(Access.PUBLIC)
async def ready(request: Request) -> JSONResponse:
    """Readiness: storage answers (and, once configured, loops are loaded and the worker lives).
    A failing part's reason is shown with the API key or metrics token as a bearer token."""
    checks = services_of(request).readiness
    results = await asyncio.gather(*(run_check(name, check) for name, check in checks.items()))
    report = dict(zip(checks, results, strict=True))
    failing = [name for name, result in report.items() if result != OK]
    token = auth.bearer_token(request.headers.get("authorization", "").encode("latin-1"))
    if not auth.holds_api_key_or_metrics_token(services_of(request).settings, token):
        report = {name: OK if result == OK else FAILED for name, result in report.items()}
    body = Readiness(status="unavailable" if failing else "ok", checks=report, failing=failing)
    if not failing:
        return JSONResponse(body.model_dump())
    not_ready = error_body(f"not ready: {', '.join(failing)}") | body.model_dump()
    return JSONResponse(not_ready, status_code=503)


async def run_check(name: str, check: ReadinessCheck) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check()
    except Exception as exc:  # a readiness probe reports every failure, whatever its type
        reason = str(exc)[:200] or type(exc).__name__
        logger.warning("readiness check %s failed: %s", name, reason)
        return f"{FAILED}: {reason}"
    return OK
