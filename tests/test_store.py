"""The storage layer on all three transports: scripts, round trips, command cost, key schema."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from app.engine.evaluate import StepState, StepStatus
from app.settings import Settings
from app.storage.connections import connect
from app.storage.keys import IDS_LIMIT, LOG_LENGTH, Keys
from app.storage.records import Applied, Claim, NewAction, UserProfile, UserWrite
from app.storage.scripts import CLAIM, RECORD_ACTIONS, RECORD_USER
from app.storage.store import Store
from tests.support.constants import MIN

PROFILE = UserProfile(id="user_store_1", email="ada@example.org", first_name="Ada")


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    instance = Store(connect(settings), Keys(settings.key_prefix), webhook_dedupe_ttl_s=172800)
    yield instance
    await instance.close()


async def record(store: Store, delivery: str, version_ms: int = 1, **profile: Any) -> UserWrite:
    data = PROFILE.model_copy(update=profile)
    return await store.users.record(delivery, data, created=True, version_ms=version_ms, now_ms=5)


async def test_record_then_read_back(store: Store) -> None:
    assert await record(store, "msg_1", version_ms=10) is UserWrite.CREATED

    stored = await store.users.get("user_store_1")
    assert stored is not None
    assert stored.profile == PROFILE
    assert stored.version_ms == 10
    assert stored.registered_at_ms == 5


async def test_unknown_user_reads_as_none(store: Store) -> None:
    assert await store.users.get("user_nobody") is None


async def test_newer_version_wins_whatever_the_order(store: Store) -> None:
    assert await record(store, "msg_new", version_ms=20, first_name="New") is UserWrite.CREATED
    assert await record(store, "msg_old", version_ms=10, first_name="Old") is UserWrite.STALE
    stored = await store.users.get("user_store_1")
    assert stored is not None
    assert stored.profile.first_name == "New"


async def test_script_missing_from_the_server_is_loaded_again(store: Store) -> None:
    await record(store, "msg_1")
    await store.conn.call("SCRIPT", "FLUSH")
    assert await record(store, "msg_2", version_ms=2) is UserWrite.UPDATED


async def test_delete_removes_every_personal_key(store: Store) -> None:
    await record(store, "msg_1")
    await store.actions.record([NewAction("user_store_1", "x", 1, id="a")], now_ms=2, tracked={})
    assert await store.users.delete("msg_del", "user_store_1", now_ms=9) is UserWrite.DELETED
    left = await store.conn.call("HKEYS", store.keys.user("user_store_1"))
    assert sorted(left) == ["del", "seen"]  # the tombstone, and the deliveries it knows again
    assert await store.users.is_deleted("user_store_1")
    assert not (await store.queries.snapshot("user_store_1")).known
    assert await store.users.delete("msg_del", "user_store_1", now_ms=9) is UserWrite.DUPLICATE


def test_a_user_is_one_hash_under_their_hash_tag() -> None:
    assert Keys("activation:").user("u1") == "activation:{u1}"
    assert Keys("activation:", ("s0", "s1")).user("u1").startswith("activation:{s")


@pytest.mark.parametrize("user_id", ["", "user_{1}", "has space", "x" * 129])
def test_user_ids_that_would_break_the_hash_tag_are_refused(user_id: str) -> None:
    with pytest.raises(ValueError, match="invalid user id"):
        Keys().user(user_id)


# --- what one user.created costs ------------------------------------------------------------------


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: count for name, count in delta.items() if count and name != "info"}


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_user_created_costs_one_round_trip_and_four_commands(
    store: Store, redis_client: redis.Redis
) -> None:
    await record(store, "msg_warm", id="user_warm")  # loads the script once
    before = command_calls(redis_client)
    await record(store, "msg_measured")
    delta = calls_between(before, command_calls(redis_client))

    # read the user (tombstone, deliveries seen, version, registration), write them, their turn
    # (its lease read with the rest: a held turn is never made due, only noted on the lease)
    assert delta == {"evalsha": 1, "hmget": 1, "hset": 1, "zadd": 1}


@pytest.mark.parametrize("transport", ["upstash"], indirect=True)
async def test_user_created_is_one_http_request_to_upstash(
    store: Store, upstash_standin: tuple[str, Any]
) -> None:
    _, standin = upstash_standin
    await record(store, "msg_warm")
    before = standin.state.requests
    await record(store, "msg_measured", version_ms=2)
    assert standin.state.requests - before == 1


async def test_scripts_name_their_keys_and_arguments() -> None:
    header = RECORD_USER.source.split("\n", 12)
    assert any("KEYS[1]" in line for line in header)
    assert any("ARGV[1]" in line for line in header)


# --- actions, snapshots, the schedule and leases --------------------------------------------------


async def test_actions_count_once_per_id_and_record_tracked_counts(store: Store) -> None:
    actions = [
        NewAction("user_a", "project_created", 1_000, id="a1"),
        NewAction("user_a", "project_created", 2_000, id="a2"),
        NewAction("user_a", "project_created", 1_500, id="a1"),  # a repeat of a1
        NewAction("user_a", "invited", 3_000),
    ]
    tracked = {"project_created": [2]}
    assert await store.actions.record(actions, now_ms=5_000, tracked=tracked) == (3, 1)

    record = await store.queries.snapshot("user_a")
    projects = record.actions["project_created"]
    assert (projects.count, projects.first_at, projects.last_at) == (2, 1_000, 2_000)
    assert projects.reached_at == {1: 1_000, 2: 2_000}  # the earliest times, up to count 2
    assert record.actions["invited"].count == 1
    assert [entry["event"] for entry in record.timeline] == ["action"] * 3
    assert record.rev == "2"  # what loops read moved twice; `invited` no loop waits for


async def test_actions_before_the_user_exists_are_kept(store: Store) -> None:
    await store.actions.record([NewAction("user_early", "x", 1)], now_ms=1, tracked={})
    record = await store.queries.snapshot("user_early")
    assert record.profile is None
    assert record.actions["x"].count == 1
    assert record.known


async def test_actions_for_a_deleted_user_are_accepted_and_dropped(store: Store) -> None:
    await store.users.delete("msg_d", "user_gone", now_ms=1)
    assert await store.actions.record([NewAction("user_gone", "x", 1)], now_ms=1, tracked={}) == (
        1,
        0,
    )
    assert not (await store.queries.snapshot("user_gone")).known


async def test_intake_schedules_an_evaluation_now_and_claim_leases_it(store: Store) -> None:
    await store.actions.record([NewAction("user_s", "x", 10)], now_ms=100, tracked={"x": [1]})
    assert (await store.queue.claim_due(now_ms=99, lease_ms=1_000, limit=10)).job_ids == []

    claim = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    assert claim.job_ids == ["eval|user_s"]
    assert claim.wake_at_ms == 1_100  # the lease's end
    # while leased, nobody else gets it
    assert (await store.queue.claim_due(now_ms=500, lease_ms=1_000, limit=10)).job_ids == []
    # a crashed worker's lease runs out: the job comes back
    assert (await store.queue.claim_due(now_ms=1_100, lease_ms=1_000, limit=10)).job_ids == [
        "eval|user_s"
    ]


async def test_apply_refuses_decisions_made_on_an_old_snapshot(store: Store) -> None:
    watched = {"x": [2]}
    await store.actions.record([NewAction("user_c", "x", 10)], now_ms=100, tracked=watched)
    old = await store.queries.snapshot("user_c")
    await store.actions.record([NewAction("user_c", "x", 20)], now_ms=200, tracked=watched)
    state = StepState(status=StepStatus.WAITING, started_at=100)

    applied = await store.queue.apply_decisions(
        "user_c", rev=old.rev, states={"l/0": state}, jobs=[], wake_at_ms=None
    )
    assert applied is Applied.CONFLICT
    assert (await store.queries.snapshot("user_c")).steps == {}


async def test_apply_writes_states_settles_the_lease_and_schedules_the_wake(store: Store) -> None:
    await store.actions.record([NewAction("user_w", "x", 10)], now_ms=100, tracked={"x": [1]})
    lease = await store.queue.claim_due(now_ms=100, lease_ms=60_000, limit=10)
    record = await store.queries.snapshot("user_w")
    state = StepState(status=StepStatus.WAITING, started_at=100, deadline_at=400)

    applied = await store.queue.apply_decisions(
        "user_w",
        rev=record.rev,
        states={"l/0": state},
        jobs=[],
        wake_at_ms=400,
        token=lease.token,
    )
    assert applied is Applied.APPLIED
    assert (await store.queries.snapshot("user_w")).steps == {"l/0": state}
    claim = await store.queue.claim_due(now_ms=200, lease_ms=60_000, limit=10)
    assert claim == Claim(job_ids=[], wake_at_ms=400)  # lease settled, next look at the deadline


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_an_idle_look_at_the_schedule_costs_one_command(
    store: Store, redis_client: redis.Redis
) -> None:
    await store.actions.record([NewAction("user_i", "x", 1)], now_ms=1, tracked={"x": [1]})
    await store.queue.claim_due(now_ms=1, lease_ms=1000, limit=10)  # leased until 1001
    before = command_calls(redis_client)
    claim = await store.queue.claim_due(now_ms=2, lease_ms=1000, limit=10)
    delta = calls_between(before, command_calls(redis_client))

    assert claim == Claim(job_ids=[], wake_at_ms=1001)  # the lease's end: nothing due before
    assert delta == {"zrange": 1}


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
@pytest.mark.parametrize(
    ("tracked", "cost"),
    [
        # read the user (tombstone, ids seen, the action, the turn's lease), write it, wake the
        # user's loops
        ({"first_project_created": [1]}, {"evalsha": 1, "hmget": 1, "hset": 1, "zadd": 1}),
        # no loop waits for it: counted, nobody woken
        ({}, {"evalsha": 1, "hmget": 1, "hset": 1}),
        # a loop waits for the tenth: this first one is not it
        ({"first_project_created": [10]}, {"evalsha": 1, "hmget": 1, "hset": 1}),
    ],
)
async def test_an_action_costs_one_round_trip_and_at_most_four_commands(
    store: Store, redis_client: redis.Redis, tracked: dict[str, list[int]], cost: dict[str, int]
) -> None:
    await store.actions.record([NewAction("user_warm", "x", 1, id="w")], now_ms=1, tracked={})
    before = command_calls(redis_client)
    action = NewAction("user_cost", "first_project_created", 1, id="a1")
    await store.actions.record([action], now_ms=1, tracked=tracked)
    assert calls_between(before, command_calls(redis_client)) == cost


async def test_a_batch_too_large_for_one_request_is_split_and_counted_whole(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.storage.actions.MAX_SCRIPT_PAYLOAD_BYTES", 2_000)
    actions = [NewAction(f"user_big_{i % 3}", "x", 1, id=f"b{i}") for i in range(30)]
    assert await store.actions.record([*actions, actions[0]], now_ms=1, tracked={}) == (30, 1)
    assert (await store.queries.snapshot("user_big_1")).actions["x"].count == 10


@pytest.mark.parametrize("transport", ["upstash"], indirect=True)
async def test_upstash_gets_every_script_with_per_key_locking(
    store: Store, upstash_standin: tuple[str, Any]
) -> None:
    """Upstash locks the whole database for a script unless its shebang says otherwise."""
    _, standin = upstash_standin
    standin.state.flagged_scripts.clear()
    standin.state.unflagged_scripts.clear()
    await record(store, "msg_flag")
    await store.actions.record([NewAction("user_store_1", "x", 1)], now_ms=2, tracked={"x": [1]})
    await store.queue.claim_due(now_ms=3, lease_ms=1_000, limit=10)

    assert standin.state.unflagged_scripts == set()
    assert {RECORD_USER.key_locking_sha, RECORD_ACTIONS.key_locking_sha, CLAIM.key_locking_sha} <= (
        standin.state.flagged_scripts
    )
    assert RECORD_USER.key_locking_source.startswith("#!lua flags=allow-key-locking\n")


# --- what a user's hash remembers, and for how long ----------------------------------------------


async def test_a_delivery_is_known_again_for_its_ttl_then_forgotten(store: Store) -> None:
    ttl_ms = store.users.webhook_dedupe_ttl_s * 1000
    user = PROFILE.model_copy()
    at = 1_800_000_000_000

    async def deliver(now_ms: int) -> UserWrite:
        return await store.users.record("msg_1", user, created=True, version_ms=1, now_ms=now_ms)

    assert await deliver(at) is UserWrite.CREATED
    assert await deliver(at + ttl_ms - MIN) is UserWrite.DUPLICATE
    assert await deliver(at + ttl_ms + MIN) is UserWrite.UPDATED  # forgotten: applied again


async def test_recent_action_ids_are_the_newest_and_bounded(store: Store) -> None:
    actions = [NewAction("user_ids", "x", i, id=f"id_{i}") for i in range(IDS_LIMIT + 6)]
    for action in actions:
        await store.actions.record([action], now_ms=1_000, tracked={})
    ids = await store.conn.call("HGET", store.keys.user("user_ids"), "ids")
    assert len(ids) == IDS_LIMIT * 13  # 13 characters each, however many came

    newest, oldest = actions[-1], actions[0]
    assert await store.actions.record([newest], now_ms=1_000, tracked={}) == (0, 1)
    assert await store.actions.record([oldest], now_ms=1_000, tracked={}) == (1, 0)


async def test_an_actions_properties_are_logged_and_the_log_is_bounded(store: Store) -> None:
    plain = NewAction("user_log", "x", 1)
    await store.actions.record([plain], now_ms=1, tracked={})
    assert (await store.queries.snapshot("user_log")).log == []  # its count says it all
    for i in range(LOG_LENGTH + 5):
        action = NewAction("user_log", "x", 10 + i, properties={"n": i})
        await store.actions.record([action], now_ms=100, tracked={})
    log = (await store.queries.snapshot("user_log")).log
    assert len(log) == LOG_LENGTH
    assert log[0]["properties"] == {"n": LOG_LENGTH + 4}  # the newest first
