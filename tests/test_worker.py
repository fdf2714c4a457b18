"""The worker as it runs in the web process: woken by new work, not by a poll; stops cleanly."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.clock import system_clock_ms
from app.delivery.worker import Worker, WorkerConfig
from app.errors import StorageUnavailable
from app.main import create_app
from app.settings import Settings
from app.storage.records import NewAction
from tests.conftest import AUTH, load_fixture, running, sign


async def wait_for(predicate: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def signup(client: httpx.AsyncClient) -> str:
    event = load_fixture("clerk_user_created.json")
    body = json.dumps(event).encode()
    await client.post("/webhooks/clerk", content=body, headers=sign(body))
    user_id: str = event["data"]["id"]
    return user_id


async def test_in_process_worker_sends_a_due_email_without_waiting_for_its_poll(
    make_settings: Callable[..., Settings],
) -> None:
    # the idle poll is a minute: only the wake-up can make this pass within the 5 s allowed
    settings = make_settings(worker_in_process=True, worker_idle_s=60)
    async with running(settings, system_clock_ms) as (_, client):
        await asyncio.sleep(0.1)  # the worker is asleep now
        user_id = await signup(client)
        action = {"user_id": user_id, "action": "first_project_created"}
        await client.post("/v1/actions", json=action, headers=AUTH)

        async def sent() -> bool:
            state = await client.get(f"/v1/users/{user_id}", headers=AUTH)
            return [e["status"] for e in state.json()["emails"]] == ["sent"]

        await wait_for(sent, timeout_s=5)
        ready = await client.get("/health/ready")
    assert ready.json()["checks"]["worker"] == "ok"


async def test_in_process_worker_starts_a_new_users_loops_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker_in_process=True, worker_idle_s=60)
    async with running(settings, system_clock_ms) as (_, client):
        await asyncio.sleep(0.1)  # the worker is asleep now
        user_id = await signup(client)

        async def waiting() -> bool:
            state = await client.get(f"/v1/users/{user_id}", headers=AUTH)
            return bool(state.json()["loops"][0]["steps"][0]["status"] == "waiting")

        await wait_for(waiting, timeout_s=5)


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_stop_ends_run_promptly_even_while_idle(app: Any) -> None:
    worker: Worker = app.state.runtime.worker
    worker.config = WorkerConfig(idle_s=3600)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)
    worker.stop()
    await asyncio.wait_for(task, timeout=2)


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_run_survives_storage_outage_and_carries_on(
    make_settings: Callable[..., Settings], own_redis: Any
) -> None:
    app = create_app(make_settings(redis_url=own_redis.url), clock=system_clock_ms)
    async with app.router.lifespan_context(app):
        worker: Worker = app.state.runtime.worker
        own_redis.stop()
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)
        assert not task.done()  # it logs, backs off and keeps trying
        assert worker.last_loop_at_ms is None  # no claim has succeeded: readiness says so
        own_redis.start()
        now = system_clock_ms()
        await app.state.runtime.store.actions.record(
            [NewAction("user_x", "x", now)], now_ms=now, tracked={"x": [1]}
        )
        worker.wake()

        async def ran_a_job() -> bool:
            return worker.jobs_done >= 1

        await wait_for(ran_a_job, timeout_s=10)
        worker.stop()
        await asyncio.wait_for(task, timeout=5)


class CountingEvaluator:
    """Stands in for the evaluator: records how many users it evaluates at once."""

    def __init__(self, fail_user: str | None = None) -> None:
        self.fail_user = fail_user
        self.running = 0
        self.most_at_once = 0
        self.done: list[str] = []

    async def run(self, user_id: str, lease: object = None) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if user_id == self.fail_user:
                await asyncio.sleep(0)  # the other lanes take their jobs first
                raise StorageUnavailable("redis went away")
            await asyncio.sleep(0.01)
            self.done.append(user_id)
        finally:
            self.running -= 1


async def due_evaluations(app: Any, count: int) -> list[str]:
    """`count` users with an evaluation due now (each recorded an action)."""
    now = app.state.runtime.clock()
    users = [f"user_lane{i:03d}" for i in range(count)]
    actions = [NewAction(user_id, "x", now) for user_id in users]
    await app.state.runtime.store.actions.record(actions, now_ms=now, tracked={"x": [1]})
    return users


def counting_worker(app: Any, concurrency: int, fail_user: str | None = None) -> CountingEvaluator:
    """The app's worker with `concurrency` lanes, evaluating through a `CountingEvaluator`."""
    worker: Worker = app.state.runtime.worker
    worker.config = WorkerConfig(concurrency=concurrency)
    worker.evaluator = evaluator = CountingEvaluator(fail_user)  # type: ignore[assignment]
    return evaluator


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
@pytest.mark.parametrize(("busy", "lanes"), [(False, 4), (True, 1)], ids=["quiet", "busy"])
async def test_a_claims_jobs_run_in_lanes_and_in_one_while_the_web_process_is_busy(
    app: Any, busy: bool, lanes: int
) -> None:
    evaluator = counting_worker(app, concurrency=4)
    app.state.runtime.worker.busy = lambda: busy
    users = await due_evaluations(app, 12)
    await app.state.runtime.worker.run_once()
    assert evaluator.most_at_once == lanes
    assert sorted(evaluator.done) == users


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_after_a_storage_outage_no_lane_starts_another_job(app: Any) -> None:
    worker: Worker = app.state.runtime.worker
    users = await due_evaluations(app, 10)
    evaluator = counting_worker(app, concurrency=2, fail_user=users[0])
    with pytest.raises(StorageUnavailable):
        await worker.run_once()
    assert evaluator.done == [users[1]]  # the job in hand when the outage came finished
    assert worker.jobs_done == 1
