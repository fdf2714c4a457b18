"""Redis error replies under ordinary production faults: a failover's old primary (READONLY), a
full server (OOM), a server at `maxclients`, Upstash's request limits. Each is classified once as
"unavailable": intake answers 503 with Retry-After (Svix retries), and the worker logs, backs off
and carries on, readiness naming its failure, until Redis is fine again."""

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.clock import system_clock_ms
from app.delivery.worker import Worker
from app.errors import StorageError, StorageUnavailable
from app.settings import Settings
from app.storage.connections import classify_reply_error
from tests.conftest import (
    API_KEY,
    AUTH,
    RedisProcess,
    clerk_event,
    post_webhook,
    redis_binary,
    running,
)
from tests.support.storage import storage_on

SCRIPT = "script: 88c923858e73954cede057e8a25f614a3552b177, on @user_script:1."
TRANSIENT = [
    # as redis-server 7 answers (a failing call inside a script keeps its own code first)
    f"READONLY You can't write against a read only replica. {SCRIPT}",
    f"OOM command not allowed when used memory > 'maxmemory'. {SCRIPT}",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "LOADING Redis is loading the dataset in memory",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to "
    "disk. Commands that may modify the data set are disabled",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
    "ERR max number of clients reached",
    "NOAUTH Authentication required.",
    # Upstash's limits, as its REST API and TCP endpoint answer them
    "ERR max requests limit exceeded. Limit: 500000, Usage: 500000. See "
    "https://upstash.com/docs/redis/troubleshooting/max_requests_limit for details",
    "ERR max daily request limit exceeded. Limit: 10000, Usage: 10000. See "
    "https://docs.upstash.com/overall/databasetypes for details",
    # older servers wrap a script's failing call in ERR
    "ERR Error running script (call to f_8e8d): @user_script:12: @user_script: 12: -OOM command "
    "not allowed when used memory > 'maxmemory'.",
]
PERMANENT = [
    f"ERR Unknown Redis command called from script {SCRIPT}",
    f"ERR Wrong number of args calling Redis command from script {SCRIPT}",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR Error running script (call to f_8e8d): @user_script:3: attempt to compare nil with number",
]


@pytest.mark.parametrize("message", TRANSIENT)
def test_replies_meaning_storage_is_unavailable_for_now(message: str) -> None:
    assert isinstance(classify_reply_error(message), StorageUnavailable)


@pytest.mark.parametrize("message", PERMANENT)
def test_replies_meaning_a_wrong_command_stay_permanent(message: str) -> None:
    error = classify_reply_error(message)
    assert isinstance(error, StorageError)
    assert not isinstance(error, StorageUnavailable)


# --- end to end against a real redis-server in trouble ------------------------------------------


class Fault:
    """Puts a redis-server into a production fault and takes it out again."""

    def __init__(self, kind: str, server: RedisProcess, workdir: Path) -> None:
        self.kind = kind
        self.client = redis.Redis.from_url(server.url)
        self.primary = None
        if kind == "readonly":
            workdir.mkdir()
            self.primary = RedisProcess(redis_binary(), workdir)

    def start(self) -> None:
        if self.kind == "readonly":  # a failover: this server is now a replica of another
            assert self.primary is not None
            self.primary.start()
            self.client.execute_command("REPLICAOF", "127.0.0.1", self.primary.port)
        elif self.kind == "oom":
            self.client.config_set("maxmemory-policy", "noeviction")
            self.client.config_set("maxmemory", 1)

    def end(self) -> None:
        if self.kind == "readonly":
            self.client.execute_command("REPLICAOF", "NO", "ONE")
        elif self.kind == "oom":
            self.client.config_set("maxmemory", 0)

    def close(self) -> None:
        self.client.close()
        if self.primary is not None:
            self.primary.stop()


async def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def signup_body(user_id: str) -> bytes:
    return json.dumps(clerk_event("created", user_id)).encode()


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
@pytest.mark.parametrize("kind", ["readonly", "oom"])
async def test_worker_and_intake_ride_out_a_storage_fault(
    make_settings: Callable[..., Settings],
    own_redis: RedisProcess,
    tmp_path: Path,
    transport: str,
    kind: str,
) -> None:
    fault = Fault(kind, own_redis, tmp_path / "primary")
    try:
        with storage_on(transport, own_redis) as storage:
            settings = make_settings(worker_in_process=True, worker_idle_s=1, **storage)
            async with running(settings, system_clock_ms) as (app, http):
                await ride_out(app, http, fault)
    finally:
        fault.close()


async def ride_out(app: FastAPI, http: httpx.AsyncClient, fault: Fault) -> None:
    worker: Worker = app.state.runtime.worker
    task: asyncio.Task[None] = app.state.runtime.worker_task
    await wait_for(lambda: ready(http), 5, "the worker's first look")
    # work falls due in a moment: an idle look only reads, which both faults still allow
    store = app.state.runtime.store
    await store.conn.call(
        "ZADD", store.keys.shard(0).schedule, system_clock_ms() + 1500, "eval|user_due"
    )
    worker.wake()
    fault.start()

    answer = await post_webhook(http, signup_body("user_fault"))
    assert (answer.status_code, answer.json()) == (503, {"error": "storage unavailable"})
    assert int(answer.headers["retry-after"]) > 0

    async def failing() -> bool:
        return worker.failing_since_ms is not None

    await wait_for(failing, 10, "the worker to meet the fault")
    report = await http.get("/health/ready", headers=AUTH)
    assert report.status_code == 503
    assert "worker" in report.json()["failing"]
    assert report.json()["checks"]["worker"].startswith("failed: failing since ")
    assert not task.done()  # it backs off and goes on

    fault.end()
    assert (await post_webhook(http, signup_body("user_fault"))).json() == {"status": "created"}

    async def welcomed() -> bool:
        state = await http.get("/v1/users/user_fault", headers=AUTH)
        steps = state.json()["loops"][0]["steps"] if state.status_code == 200 else []
        return bool(steps) and steps[0]["status"] == "waiting"

    await wait_for(welcomed, 15, "the worker to evaluate the new user")
    await wait_for(lambda: ready(http), 10, "readiness to recover")
    assert worker.failing_since_ms is None
    assert not task.done()


async def ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/health/ready")).status_code == 200


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_server_at_maxclients_is_unavailable_not_an_error(
    make_settings: Callable[..., Settings],
    own_redis: RedisProcess,
) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("maxclients", 1)  # this connection is the one
    try:
        settings = make_settings(redis_url=own_redis.url)
        async with running(settings, system_clock_ms) as (_, http):
            answer = await post_webhook(http, signup_body("user_crowded"))
            admin.config_set("maxclients", 100)
            later = await post_webhook(http, signup_body("user_crowded"))
    finally:
        admin.close()
    assert (answer.status_code, answer.json()) == (503, {"error": "storage unavailable"})
    assert later.json() == {"status": "created"}


@pytest.mark.parametrize("transport", ["upstash"], indirect=True)
async def test_upstash_request_limits_are_unavailable_not_an_error(
    make_settings: Callable[..., Settings],
    upstash_standin: tuple[str, FastAPI],
) -> None:
    _, standin = upstash_standin
    async with running(make_settings(), system_clock_ms) as (_, http):
        standin.state.fault = f"error:{TRANSIENT[-3]}"
        standin.state.fault_remaining = 1
        answer = await post_webhook(http, signup_body("user_limited"))
        later = await post_webhook(http, signup_body("user_limited"))
    assert (answer.status_code, answer.json()) == (503, {"error": "storage unavailable"})
    assert later.json() == {"status": "created"}


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_the_worker_survives_any_exception_of_a_claim(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(worker_in_process=True, worker_idle_s=1)
    async with running(settings, system_clock_ms) as (app, http):
        worker: Worker = app.state.runtime.worker
        store = app.state.runtime.store
        real_claim = store.queue.claim_due
        failures = [RuntimeError("a bug in a claim"), StorageError("ERR a script bug")]

        async def flaky_claim(**options: Any) -> Any:
            if failures:
                raise failures.pop(0)
            return await real_claim(**options)

        monkeypatch.setattr(store.queue, "claim_due", flaky_claim)
        worker.wake()

        async def failing() -> bool:
            return worker.failing_since_ms is not None

        await wait_for(failing, 10, "the first failure")
        not_ready = await http.get("/health/ready", headers={"Authorization": f"Bearer {API_KEY}"})
        await wait_for(lambda: ready(http), 10, "the worker to recover")

    assert not_ready.status_code == 503
    assert "RuntimeError: a bug in a claim" in not_ready.json()["checks"]["worker"]
    assert worker.failing_since_ms is None
    assert not failures
    metrics = app.state.runtime.metrics.render().decode()
    assert 'activation_worker_errors_total{kind="other",stage="claim"} 1.0' in metrics
    assert 'activation_worker_errors_total{kind="error",stage="claim"} 1.0' in metrics
