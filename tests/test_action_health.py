"""GET /v1/actions/health and the sightings behind it (`app.storage.action_sightings`): counted in
memory as actions are accepted, flushed by one script, merged across processes, read on all three
transports; their cost, the last-seen gauge, and `activation check`'s warning."""

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.cli.main import main
from app.engine.spelling import did_you_mean
from app.runtime import Runtime, build_runtime
from app.settings import Settings
from app.storage.action_sightings import Seen, SightingsBuffer
from tests.conftest import AUTH, FakeClock, RedisProcess, running
from tests.standins.redis_cluster import LocalCluster
from tests.support.constants import DAY, HOUR, MIN
from tests.support.storage import Meter, clear_storage_env

T0 = 1_800_000_000_000 + 30 * 60_000  # 2027-01-15T08:30:00Z
DAY_FIELD = "2027-01-15"

on_redis = pytest.mark.parametrize("transport", ["redis"], indirect=True)
shared = pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
embedded = pytest.mark.parametrize("transport", ["embedded"], indirect=True)


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def act(http: httpx.AsyncClient, *names: str, user_id: str = "user_1") -> None:
    body = {"actions": [{"user_id": user_id, "action": name} for name in names]}
    response = await http.post("/v1/actions", json=body, headers=AUTH)
    assert response.status_code == 202, response.text


async def health(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/v1/actions/health", headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def watched(answer: dict[str, Any], action: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [row for row in answer["watched"] if row["action"] == action]
    [row] = rows
    return row


def counts(answer: dict[str, Any], action: str) -> tuple[int, int, str]:
    row = watched(answer, action)
    return row["count_24h"], row["count_7d"], row["status"]


# --- the endpoint, on every transport ---------------------------------------------------------


async def test_health_counts_actions_names_statuses_and_typos(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    clock = FakeClock(T0)
    async with running(make_settings(loops_dir=loops_dir), clock) as (app, http):
        await act(http, "first_project_created", "first_project_created")
        await act(http, "first_projet_created", "totally_unrelated")
        await runtime_of(app).flush_sightings()
        assert runtime_of(app).sightings.pending.last_ms == {}  # all in storage now
        now = await health(http)

        clock.advance(2 * DAY)
        two_days_on = await health(http)
        clock.advance(7 * DAY)
        nine_days_on = await health(http)

    assert now == {
        "watched": [
            {"action": "first_project_created", "loops": ["welcome"], "last_seen_at": T0,
             "count_24h": 2, "count_7d": 2, "status": "ok"},
            {"action": "project_created", "loops": ["ten"], "last_seen_at": None,
             "count_24h": 0, "count_7d": 0, "status": "never_seen"},
        ],
        "unwatched": [
            {"action": "first_projet_created", "count_7d": 1,
             "did_you_mean": "first_project_created"},
            {"action": "totally_unrelated", "count_7d": 1, "did_you_mean": None},
        ],
    }  # fmt: skip
    assert counts(two_days_on, "first_project_created") == (0, 2, "silent")
    assert watched(two_days_on, "first_project_created")["last_seen_at"] == T0
    assert [row["action"] for row in two_days_on["unwatched"]] == [
        "first_projet_created",
        "totally_unrelated",
    ]
    # seen once, long ago: still silent (not never_seen), and no longer in the 7 days' list
    assert counts(nine_days_on, "first_project_created") == (0, 0, "silent")
    assert watched(nine_days_on, "first_project_created")["last_seen_at"] == T0
    assert nine_days_on["unwatched"] == []


async def test_the_windows_go_by_whole_utc_hours(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    clock = FakeClock(T0)
    async with running(make_settings(loops_dir=loops_dir), clock) as (app, http):
        await act(http, "first_project_created")
        clock.advance(23 * HOUR)  # the next day, 07:30
        await act(http, "first_project_created", "first_project_created")
        await runtime_of(app).flush_sightings()
        clock.advance(HOUR + 31 * MIN)  # 09:01: the first one's hour is 25 hours back
        later = await health(http)
        clock.advance(7 * DAY - 23 * HOUR)  # the first one's hour is 169 hours back
        week_on = await health(http)

    assert counts(later, "first_project_created") == (2, 3, "ok")
    assert counts(week_on, "first_project_created") == (0, 2, "silent")


async def test_sightings_not_yet_flushed_show_at_once_and_count_once(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    async with running(make_settings(loops_dir=loops_dir), FakeClock(T0)) as (app, http):
        await act(http, "project_created", "project_created", "project_created")
        before = await health(http)
        await runtime_of(app).flush_sightings()
        after = await health(http)
        await act(http, "project_created")
        more = await health(http)

    assert counts(before, "project_created") == (3, 3, "ok")
    assert watched(before, "project_created")["last_seen_at"] == T0
    assert counts(after, "project_created") == (3, 3, "ok")
    assert counts(more, "project_created") == (4, 4, "ok")


async def test_storage_keeps_watched_names_and_a_bounded_number_of_others(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    async with running(make_settings(loops_dir=loops_dir), FakeClock(T0)) as (app, _):
        sightings = runtime_of(app).store.sightings
        names = ["a1", "a2", "a3", "project_created"]
        batch = Seen({name: T0 for name in names}, {name: {T0 // HOUR: 1} for name in names})
        first = await sightings.flush(batch, watched={"project_created"}, max_names=2)
        again = await sightings.flush(Seen({"a1": T0 + 1}, {}), watched=(), max_names=2)
        stored = await sightings.read(T0, watched=["project_created"])

    assert first == (3, 1)  # a3 is left out: two others are all `seen` may hold
    assert again == (1, 0)  # a name it holds is always taken
    assert stored.last_ms == {"a1": T0 + 1, "a2": T0, "project_created": T0}
    assert stored.names() == {"a1", "a2", "project_created"}


async def test_names_not_reported_for_30_days_are_forgotten_unless_watched(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    old = T0 - 31 * DAY
    async with running(make_settings(loops_dir=loops_dir), FakeClock(T0)) as (app, http):
        sightings = runtime_of(app).store.sightings
        batch = Seen({"gone": old, "project_created": old, "recent": T0 - 29 * DAY}, {})
        await sightings.flush(batch, watched=["project_created"])
        answer = await health(http)
        kept = await sightings.read(T0, watched=["project_created"])

    assert kept.last_ms == {"project_created": old, "recent": T0 - 29 * DAY}
    assert counts(answer, "project_created") == (0, 0, "silent")
    assert watched(answer, "project_created")["last_seen_at"] == old


@embedded
async def test_health_needs_the_api_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/actions/health")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get("/v1/actions/health", headers=wrong)).status_code == 401


# --- several processes, shutdown and outages --------------------------------------------------


@shared
async def test_two_processes_flushes_add_up(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    settings = make_settings(loops_dir=loops_dir)
    async with running(settings, FakeClock(T0)) as (first, one):
        async with running(settings, FakeClock(T0 + MIN)) as (second, two):
            await act(one, "project_created", "project_created", "typo_name")
            await act(two, "project_created", "typo_name")
            await runtime_of(first).flush_sightings()
            await runtime_of(second).flush_sightings()
            await act(two, "project_created")  # not flushed: only the second process sees it
            from_first, from_second = await health(one), await health(two)
        after_close = await health(one)  # the second process flushed as it closed

    assert counts(from_first, "project_created") == (3, 3, "ok")
    assert counts(from_second, "project_created") == (4, 4, "ok")
    assert watched(from_first, "project_created")["last_seen_at"] == T0 + MIN  # the later
    assert from_first["unwatched"] == [{"action": "typo_name", "count_7d": 2, "did_you_mean": None}]
    assert counts(after_close, "project_created") == (4, 4, "ok")


@on_redis
async def test_the_keys_and_their_expiry(
    make_settings: Callable[..., Settings],
    loops_dir: Path,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    day_key = f"{key_prefix}seen:{DAY_FIELD}"
    async with running(make_settings(loops_dir=loops_dir), FakeClock(T0)) as (app, http):
        await act(http, "first_project_created", "first_project_created", "other")
        await runtime_of(app).flush_sightings()
        ttl_s = redis_client.ttl(day_key)
        redis_client.expire(day_key, 100)
        await act(http, "first_project_created")
        await runtime_of(app).flush_sightings()

        assert redis_client.hgetall(f"{key_prefix}seen") == {
            "first_project_created": str(T0),
            "other": str(T0),
        }
        assert redis_client.hgetall(day_key) == {"first_project_created@08": "3", "other@08": "1"}
        assert 8 * 24 * 3600 - 60 < ttl_s <= 8 * 24 * 3600  # set when the flush made it
        assert redis_client.ttl(day_key) <= 100  # and only then: no EXPIRE per flush


@on_redis
async def test_a_failed_flush_keeps_the_sightings_for_the_next(
    make_settings: Callable[..., Settings],
    loops_dir: Path,
    own_redis: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(loops_dir=loops_dir, redis_url=own_redis.url, storage_timeout_s=0.5)
    async with running(settings, FakeClock(T0)) as (app, http):
        runtime = runtime_of(app)
        await act(http, "project_created", "project_created")
        own_redis.stop()
        with caplog.at_level(logging.WARNING, logger="app.runtime"):
            await runtime.flush_sightings()
        errors = runtime.metrics.storage_errors.labels("unavailable")._value.get()
        kept = dict(runtime.sightings.pending.last_ms)
        own_redis.start()
        await runtime.flush_sightings()
        answer = await health(http)

    assert errors == 1
    assert kept == {"project_created": T0}
    assert "kept for the next flush" in caplog.text
    assert counts(answer, "project_created") == (2, 2, "ok")


def test_the_buffer_keeps_watched_names_and_a_bounded_number_of_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffer = SightingsBuffer({"watched"}, max_names=2)
    buffer.saw(["a", "b", "c", "c", "watched", "a"], T0)
    assert buffer.pending.hours == {
        "a": {T0 // HOUR: 2},
        "b": {T0 // HOUR: 1},
        "watched": {T0 // HOUR: 1},
    }
    assert buffer.overflow == 2
    with caplog.at_level(logging.WARNING, logger="app.storage.action_sightings"):
        taken = buffer.take()
    assert "2 report(s) of actions left out" in caplog.text
    assert (taken.names(), buffer.overflow, buffer.pending.names()) == (
        {"a", "b", "watched"},
        0,
        set(),
    )

    buffer.saw(["d"], T0 + HOUR)
    old = Seen({"a": T0}, {"a": {T0 // HOUR - 9 * 24: 5, T0 // HOUR: 1}})
    buffer.restore(old, T0 + HOUR)  # a failed flush: back in, past hours the health reads left out
    assert buffer.pending.hours == {"d": {T0 // HOUR + 1: 1}, "a": {T0 // HOUR: 1}}
    buffer.restore(Seen({"e": T0}, {"e": {T0 // HOUR: 4}}), T0 + HOUR)
    assert "e" not in buffer.pending.names()  # over the limit
    assert buffer.overflow == 4


# --- what it costs ----------------------------------------------------------------------------


def script_calls(delta: dict[str, int]) -> dict[str, int]:
    """`evalsha` counting an `eval` too (a fresh server learns the script on its first run)."""
    calls = dict(delta)
    if "eval" in calls:
        calls["evalsha"] = calls.get("evalsha", 0) + calls.pop("eval")
    return calls


@on_redis
async def test_a_flush_is_one_script_of_a_few_commands_whatever_the_names(
    make_settings: Callable[..., Settings], loops_dir: Path, redis_client: redis.Redis
) -> None:
    meter = Meter(redis_client)
    clock = FakeClock(T0)
    async with running(make_settings(loops_dir=loops_dir), clock) as (app, http):
        runtime = runtime_of(app)
        await act(http, "first_project_created")
        made = script_calls(await meter.of(runtime.flush_sightings))
        names = [f"action_{i:03d}" for i in range(50)]
        await act(http, *names, "first_project_created")
        new_names = script_calls(await meter.of(runtime.flush_sightings))
        clock.advance(MIN)
        await act(http, *names, *names)
        known_names = script_calls(await meter.of(runtime.flush_sightings))
        idle = await meter.of(runtime.flush_sightings)

    # the day's hash made: no HMGET of it, an EXPIRE (a watched name: `seen`'s size not read)
    assert made == {"evalsha": 1, "hmget": 1, "hset": 2, "exists": 1, "expire": 1}
    # 51 names: `seen` read and written once, its size read once (new names), the day's once
    assert new_names == {"evalsha": 1, "hmget": 2, "hlen": 1, "hset": 2, "exists": 1}
    assert known_names == {"evalsha": 1, "hmget": 2, "hset": 2, "exists": 1}
    assert idle == {}  # nothing new: no command at all


@on_redis
async def test_the_flush_tick_sends_nothing_without_new_actions(
    make_settings: Callable[..., Settings], loops_dir: Path, redis_client: redis.Redis
) -> None:
    meter = Meter(redis_client)
    runtime = build_runtime(
        make_settings(loops_dir=loops_dir), FakeClock(T0), sightings_flush_s=0.05
    )
    await runtime.start()
    try:
        idle = await meter.of(lambda: asyncio.sleep(0.3))  # several ticks
        runtime.sightings.saw(["first_project_created"], T0)
        ticked = script_calls(await meter.of(lambda: asyncio.sleep(0.3)))
    finally:
        await runtime.close()

    assert idle == {}
    assert ticked["evalsha"] == 1  # one flush, then quiet again
    assert sum(ticked.values()) <= 7
    assert runtime.sightings.pending.names() == set()


@on_redis
async def test_on_a_cluster_the_sightings_live_in_one_slot(
    make_settings: Callable[..., Settings],
    loops_dir: Path,
    redis_cluster: LocalCluster,
) -> None:
    settings = make_settings(loops_dir=loops_dir, redis_url=redis_cluster.url)
    async with running(settings, FakeClock(T0)) as (app, http):
        runtime = runtime_of(app)
        for n in range(20):  # users on every shard
            await act(http, "first_project_created", "frist_project_created", user_id=f"u{n}")
        await runtime.flush_sightings()
        answer = await health(http)
        seen_key = runtime.store.keys.shard(0).seen

    assert counts(answer, "first_project_created") == (20, 20, "ok")
    assert answer["unwatched"] == [
        {"action": "frist_project_created", "count_7d": 20, "did_you_mean": "first_project_created"}
    ]
    with redis_cluster.client() as client:
        assert client.hget(seen_key, "first_project_created") == str(T0)


# --- /metrics and the command line ------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@embedded
async def test_metrics_export_when_watched_actions_were_last_seen_and_the_heartbeat(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    async with running(make_settings(loops_dir=loops_dir), FakeClock(T0)) as (app, http):
        await act(http, "first_project_created", "unwatched_one")
        await runtime_of(app).worker.drain()
        scraped = samples((await http.get("/metrics", headers=AUTH)).text)

    gauge = "activation_watched_action_last_seen_timestamp_seconds"
    assert scraped[(gauge, frozenset({("action", "first_project_created")}))] == T0 / 1000
    assert {labels for name, labels in scraped if name == gauge} == {
        frozenset({("action", "first_project_created")})
    }  # never seen, or not watched: no series
    assert scraped[("activation_worker_heartbeat_timestamp_seconds", frozenset())] == T0 / 1000


def test_check_warns_of_watched_actions_never_reported(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    loops_dir: Path,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    clear_storage_env(monkeypatch)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    assert main(["check", str(loops_dir)]) == 0
    never = capsys.readouterr()

    redis_client.hset(f"{key_prefix}seen", "first_project_created", str(T0))
    assert main(["check", str(loops_dir)]) == 0
    once = capsys.readouterr()

    assert "2 loop(s) and 4 template(s) OK" in never.out
    assert never.err.splitlines() == [
        "warning: loop welcome waits for action 'first_project_created', never reported to this "
        "service (GET /v1/actions/health)",
        "warning: loop ten waits for action 'project_created', never reported to this service "
        "(GET /v1/actions/health)",
    ]
    assert once.err.splitlines() == [
        "warning: loop ten waits for action 'project_created', never reported to this service "
        "(GET /v1/actions/health)",
    ]


def test_check_names_the_reported_action_a_loop_likely_misspells(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    loops_dir: Path,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`project_created` is reported (and watched by another loop): a loop waiting for
    `project_craeted` is told so, from the sightings in storage."""
    monkeypatch.chdir(tmp_path)
    clear_storage_env(monkeypatch)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    ten = loops_dir / "ten.yaml"
    ten.write_text(ten.read_text().replace("project_created", "project_craeted"))
    (loops_dir / "more.yaml").write_text(
        "type: milestone\nsteps:\n  - trigger: {type: action, action: project_created}\n"
        "    action: {type: email, template: ten}\n"
    )
    for name in ("first_project_created", "project_created"):
        redis_client.hset(f"{key_prefix}seen", name, str(T0))

    assert main(["check", str(loops_dir)]) == 0

    assert capsys.readouterr().err.splitlines() == [
        "warning: loop ten waits for action 'project_craeted', never reported to this service "
        "(GET /v1/actions/health); did you mean 'project_created'? The sightings in storage "
        "show it reported",
    ]


def test_check_with_the_embedded_store_says_nothing_of_actions(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    loops_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    clear_storage_env(monkeypatch)
    assert main(["check", str(loops_dir)]) == 0
    assert capsys.readouterr().err == ""


# --- did you mean -----------------------------------------------------------------------------

WATCHED = ["first_project_created", "project_created", "invited_teammate", "ab"]


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("first_projet_created", "first_project_created"),  # a letter left out
        ("first_porject_created", "first_project_created"),  # two swapped
        ("First_Project_Created", "first_project_created"),  # case
        ("first-project-created", "first_project_created"),  # two changed
        ("projects_created", "project_created"),  # one added
        ("invite_teammate", "invited_teammate"),
        ("project_deleted", None),  # three edits away
        ("signed_up", None),
        ("AB", "ab"),  # a short name: only its case
        ("ac", None),
    ],
)
def test_did_you_mean(reported: str, expected: str | None) -> None:
    assert did_you_mean(reported, WATCHED) == expected


@shared
async def test_a_name_seen_for_the_first_time_reaches_storage_at_once(
    make_settings: Callable[..., Settings], loops_dir: Path
) -> None:
    """`activation check` reads storage's sightings, the dashboard adds the process's own: a name
    the process has not added to storage yet goes there within a second (the counts still wait
    for the periodic flush), so both agree that it is reported."""
    settings = make_settings(loops_dir=loops_dir)
    async with running(settings, FakeClock(T0)) as (app, http):
        runtime = runtime_of(app)
        runtime.sightings_flush_s = 3600.0
        await act(http, "first_project_created")
        found = None
        for _ in range(50):  # within a few seconds
            await asyncio.sleep(0.1)
            found = await runtime.store.sightings.last_seen(["first_project_created"])
            if found["first_project_created"] is not None:
                break
        assert found == {"first_project_created": T0}
        await act(http, "first_project_created")  # known to storage now: waits for the flush
        assert runtime._first_sighting is None
        assert runtime.sightings.pending.count("first_project_created", 0) == 1
