"""Loops end to end through HTTP, on all three transports: webhooks and actions in, the worker
(driven by hand on a fake clock) decides, `GET /v1/users/{id}` shows the progress."""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.settings import Settings
from tests.conftest import AUTH, FakeClock, load_fixture, sign, worker_of
from tests.support.constants import MIN, USER
from tests.support.flow import act, emails, signup, state, step


@pytest.fixture
def settings(make_settings: Callable[..., Settings], loops_dir: Path) -> Settings:
    """The tests' small loops folder; the app and client fixtures are conftest's."""
    return make_settings(loops_dir=loops_dir)


async def test_signup_waits_then_first_action_queues_the_welcome(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    waiting = await state(client)
    assert step(waiting, "welcome", 0)["status"] == "waiting"
    assert step(waiting, "welcome", 0)["waiting_until"] == clock.now_ms + 5 * MIN

    clock.advance(2 * MIN)
    await act(client, "first_project_created")
    await worker_of(app).drain()
    body = await state(client)

    assert step(body, "welcome", 0)["status"] == "fired"
    assert step(body, "welcome", 0)["condition_met_at"] == clock.now_ms
    assert step(body, "welcome", 1)["status"] == "waiting"
    assert emails(body) == [("welcome", 0, "action", "sent")]
    assert body["actions"] == {"first_project_created": 1}
    assert body["profile"]["name"] == "Example Example"
    events = [entry["event"] for entry in body["timeline"]]
    assert events[-1] == "user.created"
    assert "step.fired" in events


async def test_action_before_the_webhook_counts_once_the_user_registers(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await act(client, "first_project_created")
    await worker_of(app).drain()
    assert step(await state(client), "welcome", 0)["status"] == "not_started"

    await signup(client)
    await worker_of(app).drain()
    body = await state(client)
    assert step(body, "welcome", 0)["status"] == "fired"
    assert emails(body) == [("welcome", 0, "action", "sent")]


async def test_no_action_by_the_deadline_queues_the_nudge_at_the_deadline(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    clock.advance(5 * MIN - 1)
    assert await worker_of(app).drain() == 0  # nothing is due a millisecond early

    clock.advance(1)
    assert await worker_of(app).drain() == 1  # the deadline's turn: the nudge decided and sent
    await act(client, "first_project_created")  # too late: the step is decided
    await worker_of(app).drain()
    body = await state(client)
    assert step(body, "welcome", 0)["status"] == "timed_out"
    assert step(body, "welcome", 1)["status"] == "not_started"
    assert emails(body) == [("welcome", 0, "timeout", "sent")]


async def test_sequence_step_fires_after_its_delay(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await act(client, "first_project_created")
    await worker_of(app).drain()
    clock.advance(2 * 24 * 60 * MIN)
    await worker_of(app).drain()
    body = await state(client)
    assert step(body, "welcome", 1)["status"] == "fired"
    assert [kind for _, index, kind, _ in emails(body) if index == 1] == ["action"]


async def test_duplicates_everywhere_still_queue_one_email_per_step(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await asyncio.gather(*(signup(client, msg_id="msg_same") for _ in range(3)))
    for _ in range(3):
        await act(client, "first_project_created", id="evt_same")
    # several workers on the same schedule at once
    workers = [worker_of(app) for _ in range(3)]
    await asyncio.gather(*(worker.drain() for worker in workers))
    body = await state(client)
    assert body["actions"] == {"first_project_created": 1}
    assert emails(body) == [("welcome", 0, "action", "sent")]


async def test_milestone_fires_once_at_the_tenth(client: httpx.AsyncClient, app: FastAPI) -> None:
    await signup(client)
    for index in range(9):
        await act(client, "project_created", id=f"p{index}")
    await worker_of(app).drain()
    assert step(await state(client), "ten", 0)["status"] == "not_started"

    for index in range(9, 12):
        await act(client, "project_created", id=f"p{index}")
        await worker_of(app).drain()
    body = await state(client)
    assert step(body, "ten", 0)["status"] == "fired"
    assert [e for e in emails(body) if e[0] == "ten"] == [("ten", 0, "action", "sent")]


async def test_user_deleted_cancels_everything_pending(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    deleted = load_fixture("clerk_user_deleted.json")
    deleted["data"]["id"] = USER
    body = json.dumps(deleted).encode()
    assert (
        await client.post("/webhooks/clerk", content=body, headers=sign(body))
    ).status_code == 200

    clock.advance(10 * MIN)
    assert await worker_of(app).drain() == 0  # the deadline job went with the user
    response = await client.get(f"/v1/users/{USER}", headers=AUTH)
    assert response.status_code == 404
    await act(client, "first_project_created")  # a late action for a deleted user
    await worker_of(app).drain()
    assert (await client.get(f"/v1/users/{USER}", headers=AUTH)).status_code == 404


async def test_unknown_user_is_404_and_the_endpoint_needs_the_key(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v1/users/user_nobody", headers=AUTH)).status_code == 404
    assert (await client.get(f"/v1/users/{USER}")).status_code == 401
