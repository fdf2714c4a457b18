"""One clock for every process: Redis's (TIME), kept in step by each process's monotonic clock.

A web process or worker whose machine clock is ten minutes ahead or behind stamps signups, judges
deadlines and leases exactly like the others; its skew is measured, exported and logged."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

import app.clock
from app.clock import ServerClock
from app.settings import Settings
from tests.conftest import AUTH, clerk_event, post_webhook, running, store_of, worker_of
from tests.support.constants import MIN, USER


class SkewedTime:
    """The `time` module as seen from a machine whose wall clock is off by `skew_ms`."""

    def __init__(self, skew_ms: int) -> None:
        self.skew_ns = skew_ms * 1_000_000

    def time_ns(self) -> int:
        return time.time_ns() + self.skew_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def real_now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_the_server_clock_reads_redis_and_runs_on_the_monotonic_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server_ms = real_now_ms() - 3 * MIN  # Redis's clock is three minutes behind this machine's

    async def read() -> int:
        await asyncio.sleep(0.01)
        return server_ms

    skews: list[float] = []
    clock = ServerClock(read, on_skew=skews.append)
    assert abs(clock() - real_now_ms()) < 1000  # not synced yet: this machine's clock
    await clock.sync()
    first = clock()
    await asyncio.sleep(0.05)
    monkeypatch.setattr(app.clock, "time", SkewedTime(+MIN))  # the wall clock jumps meanwhile

    assert abs(first - server_ms) < 100
    assert 40 <= clock() - first < 1000  # moved by elapsed time only, not by the jump
    assert skews == [pytest.approx(180, abs=0.2)]
    assert clock.skew_ms is not None
    assert abs(clock.skew_ms - 3 * MIN) < 200


async def test_a_failed_sync_keeps_the_last_reading(caplog: pytest.LogCaptureFixture) -> None:
    readings = [real_now_ms() + 5 * MIN]

    async def read() -> int:
        if not readings:
            raise OSError("redis went away")
        return readings.pop()

    clock = ServerClock(read)
    assert await clock.try_sync()
    assert not await clock.try_sync()
    assert abs(clock() - (real_now_ms() + 5 * MIN)) < 1000
    assert "Redis TIME not read" in caplog.text


def signup(user_id: str = USER) -> bytes:
    return json.dumps(clerk_event("created", user_id)).encode()


async def first_step(http: Any, user_id: str = USER) -> dict[str, Any]:
    state = await http.get(f"/v1/users/{user_id}", headers=AUTH)
    step: dict[str, Any] = state.json()["loops"][0]["steps"][0]
    return step


two_processes = pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)


@two_processes
@pytest.mark.parametrize("skew_ms", [10 * MIN, -10 * MIN], ids=["ahead", "behind"])
async def test_a_process_with_a_skewed_clock_decides_like_the_others(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, skew_ms: int
) -> None:
    """A signup through a web process whose clock is off, looked at by a worker whose clock is
    right, and the other way round: the user waits for their first project, no nudge is due
    (before: 10 minutes ahead timed the 5-minute step out at once, 10 behind stamped the signup
    10 minutes early)."""
    settings = make_settings()
    skewed = SkewedTime(skew_ms)
    for web_skewed in (True, False):
        user_id = f"user_skew_{'web' if web_skewed else 'worker'}"
        monkeypatch.setattr(app.clock, "time", skewed if web_skewed else time)
        async with running(settings, None) as (_, web):  # type: ignore[arg-type]
            assert (await post_webhook(web, signup(user_id))).status_code == 200
        monkeypatch.setattr(app.clock, "time", time if web_skewed else skewed)
        async with running(settings, None) as (worker_app, http):  # type: ignore[arg-type]
            assert await worker_of(worker_app).drain() >= 1
            step = await first_step(http, user_id)
        assert step["status"] == "waiting", (web_skewed, step)
        assert abs(step["started_at"] - real_now_ms()) < 5_000
        assert abs(step["waiting_until"] - (real_now_ms() + 5 * MIN)) < 5_000


@two_processes
async def test_a_worker_ahead_by_more_than_the_lease_takes_no_job_in_flight(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker (right clock) holds the new user's evaluation under a 60 s lease; a
    worker ten minutes ahead must leave it alone (before: it took the job over at once)."""
    settings = make_settings()
    async with running(settings, None) as (web_app, web):  # type: ignore[arg-type]
        assert (await post_webhook(web, signup())).status_code == 200
        store = store_of(web_app)
        held = await store.queue.claim_due(now_ms=real_now_ms(), lease_ms=60_000, limit=10)
    assert held.job_ids == [f"eval|{USER}"]

    monkeypatch.setattr(app.clock, "time", SkewedTime(10 * MIN))
    async with running(settings, None) as (ahead, _http):  # type: ignore[arg-type]
        ran = await worker_of(ahead).drain()
        metrics = ahead.state.runtime.metrics.render().decode()

    assert ran == 0
    skew_line = next(line for line in metrics.splitlines() if line.startswith("activation_clock"))
    assert 599 < float(skew_line.split()[-1]) < 601
