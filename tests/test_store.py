"""The storage layer on all three transports: scripts, round trips, command cost, key schema."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from app.connections import connect
from app.keys import Keys
from app.settings import Settings
from app.store import RECORD_USER, Store, UserWrite
from app.users import UserProfile

PROFILE = UserProfile(id="user_store_1", email="ada@example.org", first_name="Ada")


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    instance = Store(connect(settings), Keys(settings.key_prefix), webhook_dedupe_ttl_s=172800)
    yield instance
    await instance.close()


async def record(store: Store, delivery: str, version_ms: int = 1, **profile: Any) -> UserWrite:
    data = PROFILE.model_copy(update=profile)
    return await store.record_user(delivery, data, created=True, version_ms=version_ms, now_ms=5)


async def test_record_then_read_back(store: Store) -> None:
    assert await record(store, "msg_1", version_ms=10) is UserWrite.CREATED

    stored = await store.get_user("user_store_1")
    assert stored is not None
    assert stored.profile == PROFILE
    assert stored.version_ms == 10
    assert stored.registered_at_ms == 5


async def test_unknown_user_reads_as_none(store: Store) -> None:
    assert await store.get_user("user_nobody") is None


async def test_newer_version_wins_whatever_the_order(store: Store) -> None:
    assert await record(store, "msg_new", version_ms=20, first_name="New") is UserWrite.CREATED
    assert await record(store, "msg_old", version_ms=10, first_name="Old") is UserWrite.STALE
    stored = await store.get_user("user_store_1")
    assert stored is not None
    assert stored.profile.first_name == "New"


async def test_script_missing_from_the_server_is_loaded_again(store: Store) -> None:
    await record(store, "msg_1")
    await store.conn.call("SCRIPT", "FLUSH")
    assert await record(store, "msg_2", version_ms=2) is UserWrite.UPDATED


async def test_delete_removes_every_personal_key(store: Store) -> None:
    await record(store, "msg_1")
    assert await store.delete_user("msg_del", "user_store_1", now_ms=9) is UserWrite.DELETED
    for key in store.keys.personal("user_store_1"):
        assert await store.conn.call("EXISTS", key) == 0
    assert await store.is_deleted("user_store_1")
    assert await store.delete_user("msg_del", "user_store_1", now_ms=9) is UserWrite.DUPLICATE


def test_every_user_key_carries_the_user_hash_tag() -> None:
    keys = Keys("activation:")
    user_keys = [keys.user("u1"), keys.tombstone("u1"), keys.webhook_seen("u1", "msg_1")]
    assert all(key.startswith("activation:{u1}:") for key in user_keys)
    assert set(keys.personal("u1")) <= set(user_keys)


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
async def test_user_created_costs_one_round_trip_and_six_commands(
    store: Store, redis_client: redis.Redis
) -> None:
    await record(store, "msg_warm")  # loads the script once
    before = command_calls(redis_client)
    await record(store, "msg_measured", version_ms=2)
    delta = calls_between(before, command_calls(redis_client))

    assert delta == {"evalsha": 1, "set": 1, "exists": 1, "hget": 1, "hsetnx": 1, "hset": 1}


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
