"""A user's way through the service over its HTTP API: a signup (Clerk's webhook, signed), an
action, the user's state (`GET /v1/users/{id}`) and what it says of a step and of the emails."""

import json
from typing import Any

import httpx
from fastapi import FastAPI

from app.delivery.attempts import Lease
from app.engine.job_ids import evaluation_id
from tests.conftest import AUTH, FakeClock, clerk_event, load_fixture, sign, store_of, worker_of
from tests.support.constants import USER


def created_event(user_id: str = USER, **data: Any) -> dict[str, Any]:
    return clerk_event("created", user_id, **data)


async def signup(client: httpx.AsyncClient, user_id: str = USER, msg_id: str | None = None) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"]["id"] = user_id
    body = json.dumps(event).encode()
    response = await client.post("/webhooks/clerk", content=body, headers=sign(body, msg_id=msg_id))
    assert response.status_code == 200, response.text


async def act(client: httpx.AsyncClient, action: str, user_id: str = USER, **extra: Any) -> None:
    body = {"user_id": user_id, "action": action, **extra}
    response = await client.post("/v1/actions", json=body, headers=AUTH)
    assert response.status_code == 202, response.text


async def state(client: httpx.AsyncClient, user_id: str = USER) -> dict[str, Any]:
    response = await client.get(f"/v1/users/{user_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def step(body: dict[str, Any], loop_id: str, index: int) -> dict[str, Any]:
    loop = next(loop for loop in body["loops"] if loop["loop"] == loop_id)
    found: dict[str, Any] = loop["steps"][index]
    return found


def emails(body: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    return [(e["loop"], e["step"], e["kind"], e["status"]) for e in body["emails"]]


async def freeze_mid_turn(
    app: FastAPI, user_id: str, clock: FakeClock, lease_ms: int
) -> Lease | None:
    """A worker claims the user's turn and begins its attempts, then freezes before it sends: its
    lease; None when the turn was not its to claim (another holds it, or nothing is due)."""
    store, evaluator = store_of(app), worker_of(app).evaluator
    claim = await store.queue.claim_due(now_ms=clock(), lease_ms=lease_ms, limit=100)
    if evaluation_id(user_id) not in claim.job_ids:
        return None
    lease = Lease(job_id=evaluation_id(user_id), lease_ms=lease_ms, claim=claim)
    delivery, evaluator.delivery = evaluator.delivery, None  # begins the attempts, never sends
    try:
        await evaluator.run(user_id, lease)
    finally:
        evaluator.delivery = delivery
    return lease
