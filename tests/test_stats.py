"""Loop counters kept as events happen, on all three transports: the funnel, time to activation,
sends and failures per day, each counted once however often the worker looks."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.clock import last_days, utc_day
from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.funnel import funnel_view, sent_field, tta_bucket
from app.settings import Settings
from app.storage.records import as_fields
from app.web.pages.dashboard import LoopStats
from tests.conftest import AUTH, FakeClock, store_of, worker_of
from tests.support.constants import DAY, MIN, USER
from tests.support.flow import act, signup


@pytest.fixture
def settings(make_settings: Callable[..., Settings], loops_dir: Path) -> Settings:
    """The tests' small loops folder; the app and client fixtures are conftest's."""
    return make_settings(loops_dir=loops_dir)


async def counters(app: FastAPI, loop_id: str = "welcome") -> dict[str, int]:
    reply = await store_of(app).queries.read_stats([loop_id], [])
    return reply.loops[loop_id]


async def test_activation_counts_the_funnel_and_the_time_to_activation(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    assert await counters(app) == {"entered": 1}

    clock.advance(2 * MIN)
    await act(client, "first_project_created")
    await worker_of(app).drain()
    await worker_of(app).drain()  # looking again changes nothing

    assert await counters(app) == {
        "entered": 1, "met": 1, "tta:5m": 1, "sent": 1, "emails_sent": 1, "activated": 1,
    }  # fmt: skip
    today = utc_day(clock.now_ms)
    reply = await store_of(app).queries.read_stats(["welcome"], [today])
    assert reply.days[today] == {"welcome:sent": 1}


async def test_timeout_nudge_then_a_late_action_counts_once(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    clock.advance(5 * MIN)
    await worker_of(app).drain()
    assert await counters(app) == {
        "entered": 1, "timed_out": 1, "nudged": 1, "emails_sent": 1,
    }  # fmt: skip

    clock.advance(MIN)
    await act(client, "first_project_created")
    await worker_of(app).drain()
    await act(client, "first_project_created")
    await worker_of(app).drain()

    after = await counters(app)
    # met 6 minutes after the start: within the loop's 7-day measure, so activated, once
    assert (after["activated_after_nudge"], after["activated"]) == (1, 1)
    body = (await client.get(f"/v1/users/{USER}", headers=AUTH)).json()
    step = body["loops"][[loop["loop"] for loop in body["loops"]].index("welcome")]["steps"][0]
    assert step["status"] == "timed_out"
    assert step["condition_met_at"] == clock.now_ms
    assert "step.activated_late" in [entry["event"] for entry in body["timeline"]]


async def test_many_workers_at_once_count_each_event_once(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await signup(client)
    await act(client, "first_project_created")
    await asyncio.gather(*(worker_of(app).drain() for _ in range(4)))
    assert await counters(app) == {
        "entered": 1, "met": 1, "tta:1m": 1, "sent": 1, "emails_sent": 1, "activated": 1,
    }  # fmt: skip


async def test_milestone_enters_and_fires_at_once(client: httpx.AsyncClient, app: FastAPI) -> None:
    await signup(client)
    for _ in range(10):
        await act(client, "project_created")
    await worker_of(app).drain()
    assert await counters(app, "ten") == {
        "entered": 1, "met": 1, "tta:1m": 1, "sent": 1, "emails_sent": 1, "activated": 1,
    }  # fmt: skip


def email_job(**update: object) -> EmailJob:
    job = EmailJob(
        id=f"email|{USER}|welcome|0|action", user_id=USER, loop_id="welcome", step=0,
        kind="action", template="welcome", queued_at=1, due_at=1,
    )  # fmt: skip
    return job.model_copy(update=update)


async def test_a_failure_counts_once_per_entry_into_the_dead_set(
    app: FastAPI, clock: FakeClock
) -> None:
    store = store_of(app)
    job = email_job()
    await store.queue.apply_decisions(USER, rev="0", states={}, jobs=[job], wake_at_ms=None)
    failed = job.model_copy(update={"status": JobStatus.FAILED, "last_error": "Resend 422"})
    for _ in range(2):
        assert await store.queue.settle(failed, now_ms=clock.now_ms, seq=0)
    today = utc_day(clock.now_ms)
    reply = await store.queries.read_stats(["welcome"], [today])
    assert reply.loops["welcome"] == {"emails_failed": 1}
    assert reply.days[today] == {"welcome:failed": 1}
    assert (reply.dead_count, reply.dead_ids) == (1, [job.id])

    await store.queue.retry_dead(failed, now_ms=clock.now_ms)
    sent = job.model_copy(update={"status": JobStatus.SENT, "sent_at": clock.now_ms})
    for _ in range(2):
        await store.queue.settle(sent, now_ms=clock.now_ms, seq=0)
    reply = await store.queries.read_stats(["welcome"], [today])
    assert reply.loops["welcome"] == {"emails_failed": 1, "emails_sent": 1, "sent": 1}
    assert reply.days[today] == {"welcome:failed": 1, "welcome:sent": 1}


async def test_a_days_counts_join_the_totals_after_90_days(app: FastAPI, clock: FakeClock) -> None:
    store = store_of(app)
    first_day = utc_day(clock.now_ms)
    for n in range(2):
        job = email_job(id=f"email|user_t{n}|welcome|0|action", user_id=f"user_t{n}")
        await store.queue.apply_decisions(job.user_id, rev="0", states={}, jobs=[job],
                                          wake_at_ms=None)  # fmt: skip
        sent = job.model_copy(update={"status": JobStatus.SENT})
        await store.queue.settle(sent, now_ms=clock.now_ms, seq=0)
        clock.advance(91 * DAY)
    stored = await store.conn.call("HGETALL", store.keys.shard(0).stats("welcome"))
    later = utc_day(clock.now_ms - 91 * DAY)
    assert as_fields(stored) == {"sent:0:action": "1", f"sent:0:action@{later}": "1"}
    reply = await store.queries.read_stats(["welcome"], [first_day, later])
    assert reply.loops["welcome"]["emails_sent"] == 2  # the day folded in still counts
    assert reply.days == {first_day: {}, later: {"welcome:sent": 1}}


@pytest.mark.parametrize(
    ("elapsed_ms", "bucket"),
    [(0, "tta:1m"), (MIN - 1, "tta:1m"), (MIN, "tta:5m"), (59 * MIN, "tta:1h"),
     (DAY - 1, "tta:1d"), (6 * DAY, "tta:1w"), (7 * DAY, "tta:more")],
)  # fmt: skip
def test_time_to_activation_buckets(elapsed_ms: int, bucket: str) -> None:
    assert tta_bucket(elapsed_ms) == bucket


def test_last_days_end_today_oldest_first() -> None:
    at = 1_764_115_200_000  # 2025-11-26T00:00:00Z
    assert last_days(at, 3) == ["2025-11-24", "2025-11-25", "2025-11-26"]


def test_only_step_zero_emails_move_the_funnel() -> None:
    """Emails are counted per step and reason; the funnel reads step 0's, the total all."""
    stored = {sent_field(0, "action"): 2, sent_field(0, "timeout"): 1, sent_field(1, "action"): 3}
    assert funnel_view({**stored, "entered": 4, "tta:1m": 2, "tta:1h": 1}) == {
        "entered": 4, "tta:1m": 2, "tta:1h": 1, "met": 3, "sent": 2, "nudged": 1,
        "emails_sent": 6,
    }  # fmt: skip


async def test_activation_rate_is_none_before_anyone_entered(app: FastAPI) -> None:
    loop = app.state.runtime.loops["welcome"]
    assert LoopStats(loop, {}, []).activation_rate is None
    assert LoopStats(loop, {"entered": 4, "met": 1}, []).activation_rate == 0.25


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_days_first_send_alone_looks_for_days_to_fold(
    app: FastAPI, clock: FakeClock, redis_client: redis.Redis
) -> None:
    store = store_of(app)
    jobs = [
        email_job(id=f"email|user_d{n}|welcome|0|action", user_id=f"user_d{n}") for n in range(4)
    ]
    for job in jobs:
        await store.queue.apply_decisions(
            job.user_id, rev="0", states={}, jobs=[job], wake_at_ms=None
        )
    before = int(redis_client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))
    for job in jobs:
        sent = job.model_copy(update={"status": JobStatus.SENT})
        await store.queue.settle(sent, now_ms=clock.now_ms, seq=0)
    after = int(redis_client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))

    assert after - before == 1  # four sends of one loop on one day: one look
    today = utc_day(clock.now_ms)
    assert (await store.queries.read_stats(["welcome"], [today])).days[today] == {"welcome:sent": 4}
