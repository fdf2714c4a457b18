"""Fault injection end to end: duplicates, races, events out of order, a storage outage, provider
faults and a worker process killed mid-send. Every scenario ends in exactly one email per step,
counted in the local Resend stand-in's inbox."""

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.clock import system_clock_ms
from app.delivery.attempts import Delivery
from app.delivery.resend_api import ResendMailer
from app.delivery.worker import Worker
from app.errors import StorageUnavailable
from app.main import create_app
from app.runtime import build_runtime
from app.settings import Settings
from tests.conftest import (
    AUTH,
    FakeClock,
    RedisProcess,
    clerk_event,
    free_port,
    post_webhook,
    resend_settings,
    running,
    sign,
    store_of,
    worker_of,
)
from tests.standins.resend import ResendStandin, run_standin
from tests.support.constants import MIN, USER
from tests.support.processes import worker_env, worker_process
from tests.support.storage import storage_on
from tests.support.timing import fake_time_rate_limiter, wait_until

TERMINAL = ("sent", "failed", "dropped")

redis_transports = pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(**resend_settings(resend)), clock=clock)
    async with application.router.lifespan_context(application):
        fake_time_rate_limiter(application.state.runtime.worker, clock)
        yield application


def mailer_of(worker: Worker) -> ResendMailer:
    delivery = worker.evaluator.delivery
    assert isinstance(delivery, Delivery)
    assert isinstance(delivery.mailer, ResendMailer)
    return delivery.mailer


def user_event(kind: str, user_id: str = USER, **data: Any) -> bytes:
    return json.dumps(clerk_event(kind, user_id, **data)).encode()


async def signup(client: httpx.AsyncClient, user_id: str = USER) -> None:
    body = user_event("created", user_id)
    assert (await post_webhook(client, body)).status_code == 200


async def act(
    client: httpx.AsyncClient, user_id: str = USER, action_id: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"user_id": user_id, "action": "first_project_created"}
    if action_id is not None:
        body["id"] = action_id
    return await client.post("/v1/actions", json=body, headers=AUTH)


async def user_state(client: httpx.AsyncClient, user_id: str = USER) -> httpx.Response:
    return await client.get(f"/v1/users/{user_id}", headers=AUTH)


async def emails(client: httpx.AsyncClient, user_id: str = USER) -> list[dict[str, Any]]:
    response = await user_state(client, user_id)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["emails"]
    return found


def inbox_keys(resend: ResendStandin) -> list[str]:
    return sorted(resend.jobs)


def welcome_key(user_id: str = USER) -> str:
    return f"email|{user_id}|activation|0|action"


async def drain_until_settled(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, *, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Drain, move the fake clock past any retry, and again, until the welcome is settled."""
    deadline = time.monotonic() + timeout_s
    while True:
        await worker_of(app).drain()
        [email] = await emails(client)
        if email["status"] in TERMINAL:
            return email
        assert time.monotonic() < deadline, f"not settled in time: {email}"
        clock.advance(2 * MIN)
        await asyncio.sleep(0.05)  # let the stand-in notice a client that hung up


# --- 1. duplicate and concurrent deliveries --------------------------------------------------


async def test_same_signed_webhook_five_times_in_a_row_and_at_once_sends_one_welcome_each(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    sequential, concurrent = "user_seq", "user_conc"
    body = user_event("created", sequential)
    headers = sign(body, msg_id="msg_sequential")
    statuses = [(await post_webhook(client, body, headers)).json()["status"] for _ in range(5)]
    body2 = user_event("created", concurrent)
    headers2 = sign(body2, msg_id="msg_concurrent")
    answers = await asyncio.gather(*(post_webhook(client, body2, headers2) for _ in range(5)))
    for user_id in (sequential, concurrent):
        assert (await act(client, user_id)).status_code == 202
    await worker_of(app).drain()

    assert statuses == ["created"] + ["duplicate"] * 4
    assert sorted(answer.json()["status"] for answer in answers) == ["created"] + ["duplicate"] * 4
    assert inbox_keys(resend) == sorted([welcome_key(sequential), welcome_key(concurrent)])


async def test_same_action_id_five_times_in_a_row_and_at_once_counts_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await signup(client)
    in_a_row = [(await act(client, action_id="evt_1")).json() for _ in range(5)]
    at_once = await asyncio.gather(*(act(client, action_id="evt_2") for _ in range(5)))
    await worker_of(app).drain()
    # the same ids again after the email went out: still nothing new
    again = await asyncio.gather(*(act(client, action_id=f"evt_{n % 2 + 1}") for n in range(4)))
    await worker_of(app).drain()

    assert in_a_row == [{"accepted": 1, "duplicates": 0}] + [{"accepted": 0, "duplicates": 1}] * 4
    assert sorted(r.json()["accepted"] for r in at_once) == [0, 0, 0, 0, 1]
    assert all(r.json() == {"accepted": 0, "duplicates": 1} for r in again)
    state = (await user_state(client)).json()
    assert state["actions"] == {"first_project_created": 2}
    assert inbox_keys(resend) == [welcome_key()]


async def test_duplicated_batch_with_repeated_ids_inside_counts_each_id_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await signup(client)
    item = {"user_id": USER, "action": "first_project_created", "id": "evt_batch"}
    batch = {"actions": [item, item, item]}
    first = await client.post("/v1/actions", json=batch, headers=AUTH)
    second = await client.post("/v1/actions", json=batch, headers=AUTH)
    await worker_of(app).drain()

    assert first.json() == {"accepted": 1, "duplicates": 2}
    assert second.json() == {"accepted": 0, "duplicates": 3}
    assert (await user_state(client)).json()["actions"] == {"first_project_created": 1}
    assert inbox_keys(resend) == [welcome_key()]


@pytest.mark.parametrize("drains", [2, 4])
async def test_concurrent_drains_of_one_worker_send_each_email_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, drains: int
) -> None:
    users = [f"user_drain_{index}" for index in range(6)]
    for user_id in users:
        await signup(client, user_id)
        await act(client, user_id)
    worker = worker_of(app)
    await asyncio.gather(*(worker.drain() for _ in range(drains)))
    await asyncio.gather(*(worker.drain() for _ in range(drains)))

    assert inbox_keys(resend) == sorted(welcome_key(user_id) for user_id in users)


@redis_transports
@pytest.mark.parametrize("workers", [2, 4])
async def test_separate_worker_runtimes_on_one_queue_send_each_email_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock, workers: int
) -> None:
    """Several worker processes' worth of runtimes (own connections, own mailers), one Redis."""
    resend.script(("status", 500), ("status", 429, 1))  # two of the sends need a retry
    users = [f"user_rt_{index}" for index in range(8)]
    for user_id in users:
        await signup(client, user_id)
        await act(client, user_id)
    async with AsyncExitStack() as stack:
        runtimes = [build_runtime(app.state.runtime.settings, clock) for _ in range(workers)]
        for runtime in runtimes:
            stack.push_async_callback(runtime.close)
            fake_time_rate_limiter(runtime.worker, clock)
        for _ in range(3):
            await asyncio.gather(*(runtime.worker.drain() for runtime in runtimes))
            clock.advance(2 * MIN)

    assert inbox_keys(resend) == sorted(welcome_key(user_id) for user_id in users)
    statuses = [(await emails(client, user_id))[0]["status"] for user_id in users]
    assert statuses == ["sent"] * len(users)


# --- 2. out of order -------------------------------------------------------------------------


async def test_action_before_user_created_sends_the_welcome_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    assert (await act(client, action_id="evt_early")).status_code == 202
    await worker_of(app).drain()
    assert resend.inbox == []

    await signup(client)
    await worker_of(app).drain()
    assert (await act(client, action_id="evt_early")).json()["duplicates"] == 1
    await worker_of(app).drain()

    assert inbox_keys(resend) == [welcome_key()]


async def test_user_updated_before_user_created_keeps_the_newest_profile(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    newer = user_event(
        "updated", first_name="Newest", last_name="Name", updated_at=1_700_000_002_000
    )
    older = user_event(
        "created", first_name="Oldest", last_name="Name", updated_at=1_700_000_001_000
    )
    assert (await post_webhook(client, newer)).json()["status"] in (
        "created",
        "updated",
    )
    assert (await post_webhook(client, older)).status_code == 200
    await act(client)
    await worker_of(app).drain()

    profile = (await user_state(client)).json()["profile"]
    assert (profile["first_name"], profile["updated_at"]) == ("Newest", 1_700_000_002_000)
    assert [sent["body"]["subject"] for sent in resend.inbox] == ["Welcome aboard, Newest Name!"]


async def test_user_deleted_before_the_others_stores_nothing_and_sends_nothing(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, key_prefix: str
) -> None:
    deleted = user_event("deleted")
    assert (await post_webhook(client, deleted)).status_code == 200
    for body in (user_event("created"), user_event("updated", updated_at=9_999_999_999_999)):
        assert (await post_webhook(client, body)).status_code == 200
    await act(client, action_id="evt_after_delete")
    await worker_of(app).drain()

    assert resend.inbox == []
    assert (await user_state(client)).status_code == 404
    assert await store_of(app).users.get(USER) is None
    keys = await store_of(app).conn.call("KEYS", f"{key_prefix}*")
    assert [key for key in keys if "{" in key] == [store_of(app).keys.user(USER)], keys
    left = await store_of(app).conn.call("HKEYS", store_of(app).keys.user(USER))
    assert sorted(left) == ["del", "seen"]  # the tombstone and the deliveries it knows again


# --- 3. storage outage -----------------------------------------------------------------------


@redis_transports
async def test_storage_outage_answers_503_and_redelivery_after_it_completes_everything(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    own_redis: RedisProcess,
    transport: str,
) -> None:
    users = ["user_before", "user_during"]
    signups = {uid: user_event("created", uid) for uid in users}
    headers = {uid: sign(body, msg_id=f"msg_{uid}") for uid, body in signups.items()}
    with storage_on(transport, own_redis) as storage:
        settings = make_settings(**resend_settings(resend), **storage)
        async with running(settings, clock) as (application, http):
            fake_time_rate_limiter(application.state.runtime.worker, clock)
            before = await post_webhook(http, signups["user_before"], headers["user_before"])
            own_redis.stop()
            during = [await post_webhook(http, signups[uid], headers[uid]) for uid in users]
            during += [await act(http, uid, action_id=f"evt_{uid}") for uid in users]
            not_ready = await http.get("/health/ready")
            with pytest.raises(StorageUnavailable):
                await worker_of(application).drain()
            own_redis.start()  # empty: Svix and the app's client retry what was refused
            for _ in range(2):  # redelivered, then redelivered again: applied once
                for uid in users:
                    assert (await post_webhook(http, signups[uid], headers[uid])).status_code == 200
                    assert (await act(http, uid, action_id=f"evt_{uid}")).status_code == 202
                await worker_of(application).drain()
            ready = await http.get("/health/ready")
            states = [(await emails(http, uid))[0]["status"] for uid in users]

    assert before.json() == {"status": "created"}
    assert [response.status_code for response in during] == [503] * 4
    assert all(response.headers["retry-after"] for response in during)
    assert not_ready.status_code == 503
    assert not_ready.json()["failing"] == ["storage"]
    assert ready.status_code == 200
    assert states == ["sent", "sent"]
    assert inbox_keys(resend) == sorted(welcome_key(uid) for uid in users)


# --- 4. provider faults ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)  # the mailer is the subject
@pytest.mark.parametrize(
    ("faults", "attempts"),
    [
        pytest.param([("status", 500)] * 3, 4, id="500-three-times"),
        pytest.param([("status", 502), ("status", 503), ("status", 504)], 4, id="proxy-5xx"),
        # refused before sending: tried again without counting an attempt
        pytest.param([("status", 429, 30), ("status", 429, 5)], 1, id="429-retry-after"),
        pytest.param([("status", 409)], 1, id="409-concurrent-idempotent"),
        pytest.param([("hang", 3.0)], 2, id="hang-past-the-timeout"),
        pytest.param([("hang", 3.0), ("hang", 3.0)], 3, id="hang-twice"),
        pytest.param([("accept_then_fail", 503)], 2, id="accepted-then-503"),
        pytest.param([("accept_then_fail", "drop")], 2, id="accepted-then-dropped"),
    ],
)
async def test_transient_provider_faults_are_retried_then_sent_once(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    faults: list[tuple[Any, ...]],
    attempts: int,
) -> None:
    settings = make_settings(**resend_settings(resend, resend_timeout_s=0.3))
    async with running(settings, clock) as (application, http):
        fake_time_rate_limiter(application.state.runtime.worker, clock)
        resend.script(*faults)
        await signup(http)
        await act(http)
        email = await drain_until_settled(http, application, clock)

    assert (email["status"], email["last_error"], email["attempts"]) == ("sent", None, attempts)
    assert inbox_keys(resend) == [welcome_key()]


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_connection_refused_is_retried_then_sent_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    mailer = mailer_of(worker_of(app))
    mailer.api_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    await signup(client)
    await act(client)
    await worker_of(app).drain()
    [refused] = await emails(client)
    mailer.api_url = resend.url
    clock.advance(2 * MIN)
    await worker_of(app).drain()
    [email] = await emails(client)

    assert (refused["status"], refused["attempts"]) == ("queued", 1)
    assert "no answer from Resend" in refused["last_error"]
    assert (email["status"], email["attempts"]) == ("sent", 2)
    assert inbox_keys(resend) == [welcome_key()]


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
@pytest.mark.parametrize(
    "fault",
    [("status", 422), ("status", 400), ("status", 403), ("status", 422, None, "invalid_from")],
)
async def test_permanent_provider_error_goes_to_the_dead_letters_without_retry(
    client: httpx.AsyncClient,
    app: FastAPI,
    resend: ResendStandin,
    clock: FakeClock,
    fault: tuple[Any, ...],
) -> None:
    resend.script(fault)
    await signup(client)
    await act(client)
    await worker_of(app).drain()
    clock.advance(10 * MIN)
    await worker_of(app).drain()

    [email] = await emails(client)
    assert (email["status"], email["attempts"]) == ("failed", 1)
    assert [job.id for job in await store_of(app).queue.dead_jobs()] == [welcome_key()]
    assert resend.inbox == []
    assert resend.requests == 1


# --- 5. a worker process killed mid-send -----------------------------------------------------


@dataclass
class CrashOutcome:
    email: dict[str, Any]
    inbox: list[dict[str, Any]]
    accepted_before_the_kill: list[dict[str, Any]]
    requests: int


async def crash_mid_send(
    make_settings: Callable[..., Settings],
    redis_url: str,
    logs: Path,
    *,
    resend_accepts_first: bool,
) -> CrashOutcome:
    """Worker 1 starts the welcome's send; Resend hangs on it (and, if `resend_accepts_first`,
    accepts it while worker 1 is frozen by SIGSTOP); worker 1 is SIGKILLed; worker 2, started
    meanwhile, takes the job when its 8 s lease runs out."""
    key_prefix = f"crash-{uuid.uuid4().hex[:12]}:"
    with run_standin() as resend:
        settings = make_settings(key_prefix=key_prefix, **resend_settings(resend))
        async with running(settings, system_clock_ms) as (_, http):
            await signup(http)
            await act(http)
            resend.script(("hang", 1.0 if resend_accepts_first else 20.0))
            env = worker_env(redis_url, key_prefix, resend)
            in_flight: set[str] = resend.app.state.in_flight
            with worker_process(env, logs / "first.log") as first:
                await wait_until(lambda: bool(in_flight), 20, "the first send")
                if resend_accepts_first:
                    first.send_signal(signal.SIGSTOP)  # it can neither read nor record
                    await wait_until(lambda: bool(resend.inbox), 10, "the accept")
                # the second worker starts now: it cannot take the job before the lease ends
                with worker_process(env, logs / "second.log"):
                    first.send_signal(signal.SIGKILL)
                    accepted = list(resend.inbox)
                    await wait_until(lambda: resend.requests >= 2, 20, "the second send")
                    email = await settled_email(http)
                    await asyncio.sleep(0.5)  # the second worker polls on: nothing more
            return CrashOutcome(email, list(resend.inbox), accepted, resend.requests)


async def settled_email(http: httpx.AsyncClient, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (email := (await emails(http))[0])["status"] != "sent":
        assert time.monotonic() < deadline, f"the second worker did not record the send: {email}"
        await asyncio.sleep(0.05)
    return email


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_worker_processes_killed_mid_send_leave_exactly_one_email(
    make_settings: Callable[..., Settings], redis_url: str, tmp_path: Path
) -> None:
    """Two crashes at once, each with its own Resend stand-in and key prefix: killed while the
    request hangs (nothing accepted), and killed after Resend accepted but before recording it
    (the second worker's send is deduplicated by the Idempotency-Key)."""
    scenarios = {"hung": False, "accepted": True}
    for name in scenarios:
        (tmp_path / name).mkdir()
    hung, accepted = await asyncio.gather(
        *(
            crash_mid_send(
                make_settings,
                redis_url,
                tmp_path / name,
                resend_accepts_first=accepts,
            )
            for name, accepts in scenarios.items()
        )
    )

    for outcome in (hung, accepted):
        assert (outcome.email["status"], outcome.email["attempts"]) == ("sent", 2)
        assert outcome.requests == 2
        assert [sent["idempotency_key"] for sent in outcome.inbox] == [welcome_key()]
    assert hung.accepted_before_the_kill == []
    assert accepted.inbox == accepted.accepted_before_the_kill  # the resend got the first id
