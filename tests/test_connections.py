"""The three transports: same answers, and every failure translated into our error tree in time."""

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.connections import (
    Connection,
    NoScript,
    RedisConnection,
    UpstashConnection,
    classify_reply_error,
    connect,
)
from app.errors import StorageError, StorageUnavailable
from app.settings import Settings, StorageKind
from tests.conftest import UPSTASH_TOKEN, free_port


@pytest.fixture
async def conn(settings: Settings) -> Any:
    connection = connect(settings)
    yield connection
    await connection.close()


async def test_settings_choose_the_transport(settings: Settings, transport: str) -> None:
    connection = connect(settings)
    try:
        assert connection.kind is StorageKind(transport)
    finally:
        await connection.close()


async def test_round_trip_of_text_ints_and_nil(conn: Connection, key_prefix: str) -> None:
    key = f"{key_prefix}{{u}}:k"
    assert await conn.call("SET", key, "héllo ✓ {json: 1}") in ("OK", True)
    assert await conn.call("GET", key) == "héllo ✓ {json: 1}"
    assert await conn.call("INCRBY", f"{key}:n", 5) == 5
    assert await conn.call("GET", f"{key}:missing") is None


async def test_lua_nested_reply_is_the_same_on_every_transport(conn: Connection) -> None:
    script = "return {'a', 1, {'b', 2}, KEYS[1], ARGV[1]}"
    reply = await conn.call("EVAL", script, 1, "{u}:k", "arg")
    assert reply == ["a", 1, ["b", 2], "{u}:k", "arg"]


async def test_unknown_script_is_noscript(conn: Connection) -> None:
    with pytest.raises(NoScript):
        await conn.call("EVALSHA", "0" * 40, 0)


async def test_error_reply_is_a_permanent_storage_error(conn: Connection) -> None:
    with pytest.raises(StorageError) as raised:
        await conn.call("GET")
    assert not isinstance(raised.value, StorageUnavailable)
    assert "wrong number of arguments" in str(raised.value).lower()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("NOSCRIPT No matching script. Please use EVAL.", NoScript),
        ("WRONGPASS invalid username-password pair", StorageUnavailable),
        ("Unauthorized", StorageUnavailable),
        ("LOADING Redis is loading the dataset in memory", StorageUnavailable),
        ("ERR wrong number of arguments for 'get' command", StorageError),
    ],
)
def test_reply_errors_are_classified_by_their_code(message: str, kind: type) -> None:
    assert type(classify_reply_error(message)) is kind


# --- unreachable or hanging storage fails fast -------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung Redis or proxy."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def assert_unavailable_fast(connection: Connection, limit_s: float = 4.0) -> None:
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable):
            await connection.call("PING")
    finally:
        await connection.close()
    assert time.monotonic() - started < limit_s


async def test_redis_refusing_connections_is_unavailable() -> None:
    await assert_unavailable_fast(RedisConnection.from_url(f"redis://127.0.0.1:{free_port()}", 1.0))


async def test_redis_that_never_answers_times_out(silent_server: int) -> None:
    conn = RedisConnection.from_url(f"redis://127.0.0.1:{silent_server}", 0.5)
    await assert_unavailable_fast(conn)


async def test_upstash_refusing_connections_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    await assert_unavailable_fast(UpstashConnection.from_settings(url, UPSTASH_TOKEN, 1.0))


async def test_upstash_that_never_answers_times_out(silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}"
    await assert_unavailable_fast(UpstashConnection.from_settings(url, UPSTASH_TOKEN, 0.5))


@pytest.mark.parametrize("fault", ["hang", "500"])
async def test_upstash_faults_are_unavailable(upstash_standin: tuple[str, Any], fault: str) -> None:
    url, standin = upstash_standin
    standin.state.fault = fault
    try:
        await assert_unavailable_fast(UpstashConnection.from_settings(url, UPSTASH_TOKEN, 0.5))
    finally:
        standin.state.fault = None


async def test_upstash_wrong_token_is_unavailable(upstash_standin: tuple[str, Any]) -> None:
    url, _ = upstash_standin
    await assert_unavailable_fast(UpstashConnection.from_settings(url, "wrong-token", 1.0))


async def test_upstash_trailing_slash_is_stripped(upstash_standin: tuple[str, Any]) -> None:
    url, _ = upstash_standin
    conn = UpstashConnection.from_settings(url + "/", UPSTASH_TOKEN, 1.0)
    try:
        assert await conn.call("PING") == "PONG"
    finally:
        await conn.close()


# --- auto-pipelining (Redis TCP) -------------------------------------------------------------


@pytest.fixture
async def tcp(redis_url: str) -> Any:
    connection = RedisConnection.from_url(redis_url, 1.0)
    yield connection
    await connection.close()


async def test_concurrent_commands_share_one_pipeline(
    tcp: RedisConnection, key_prefix: str
) -> None:
    keys = [f"{key_prefix}{{p}}:{index}" for index in range(20)]
    await asyncio.gather(*(tcp.call("SET", key, index) for index, key in enumerate(keys)))
    replies = await asyncio.gather(*(tcp.call("GET", key) for key in keys))

    assert replies == [str(index) for index in range(20)]
    assert tcp.pipeline is not None
    assert tcp.pipeline.commands == 40
    assert tcp.pipeline.batches == 2  # one write and one read per burst, not per command


async def test_an_error_in_a_pipeline_fails_only_its_own_caller(tcp: RedisConnection) -> None:
    results = await asyncio.gather(
        tcp.call("PING"), tcp.call("GET"), tcp.call("EVALSHA", "0" * 40, 0), tcp.call("PING"),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] is True
    assert type(results[1]) is StorageError
    assert type(results[2]) is NoScript
    assert results[3] is True


async def test_a_cancelled_caller_does_not_break_the_batch(tcp: RedisConnection) -> None:
    waiting = asyncio.ensure_future(tcp.call("PING"))
    other = asyncio.ensure_future(tcp.call("PING"))
    await asyncio.sleep(0)
    waiting.cancel()
    assert await other is True
    assert await tcp.call("PING") is True


async def test_a_pipeline_to_a_dead_server_fails_every_caller_fast() -> None:
    conn = RedisConnection.from_url(f"redis://127.0.0.1:{free_port()}", 1.0)
    try:
        results = await asyncio.gather(
            *(conn.call("PING") for _ in range(5)), return_exceptions=True
        )
    finally:
        await conn.close()
    assert all(isinstance(result, StorageUnavailable) for result in results)
