"""The tests' Resend stand-in in a process of its own (so it does not share the bench's GIL),
plus `GET /_inbox`: each accepted email's job (`tests.standins.resend.job_of`; the Idempotency-Key
for an email without the service's tags) and `received_at_ms`, and `GET /_batches`: the size of
each accepted batch request.

usage: python -m bench.resend_server PORT [TEAM_LIMIT_PER_S]

With a team limit, it answers as Resend does past its per-second limit (429 with retry-after) and
sends Resend's `ratelimit-*` headers on every answer.
"""

import sys
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.standins.resend import API_KEY, create_standin, job_of

SERVICE_TAGS = {"user", "loop", "step", "kind"}


def job_or_key(entry: dict[str, Any]) -> str | None:
    tags = {tag["name"] for tag in entry["body"].get("tags", [])}
    return job_of(entry) if tags >= SERVICE_TAGS else entry["idempotency_key"]


async def inbox(request: Request) -> JSONResponse:
    entries = request.app.state.inbox
    return JSONResponse([[job_or_key(e), e["received_at_ms"]] for e in entries])


async def batches(request: Request) -> JSONResponse:
    return JSONResponse([batch["size"] for batch in request.app.state.batches])


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def main(port: int, limit_per_s: int | None = None) -> None:
    app = create_standin(API_KEY)
    app.state.rate_limit = limit_per_s
    app.add_route("/_inbox", inbox, methods=["GET"])
    app.add_route("/_batches", batches, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
