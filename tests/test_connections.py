"""The three transports: same answers, and every failure translated into our error tree in time."""

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvloop
from redis.exceptions import NoScriptError, ResponseError

from app.errors import StorageError, StorageUnavailable
from app.settings import Settings, StorageKind
from app.storage.connections import (
    Connection,
    NoScript,
    RedisConnection,
    UpstashConnection,
    classify_reply_error,
    connect,
    reply_error_line,
)
from app.storage.redis_client import Address
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
        # a local Upstash-compatible server wraps Redis's text in its own
        ("Failed to execute Redis command: NOSCRIPT No matching script.", NoScript),
        ("WRONGPASS invalid username-password pair", StorageUnavailable),
        ("Unauthorized", StorageUnavailable),
        ("LOADING Redis is loading the dataset in memory", StorageUnavailable),
        ("ERR wrong number of arguments for 'get' command", StorageError),
    ],
)
def test_reply_errors_are_classified_by_their_code(message: str, kind: type) -> None:
    assert type(classify_reply_error(message)) is kind


def redis_py_error(text: str, code: str | None = None, kind: type = ResponseError) -> Exception:
    error = kind(text)
    if code:  # set as redis-py 6 and later do (older ones have no such attribute)
        error.status_code = code
    return error


# redis-py 5 strips "WRONGTYPE" off the text; redis-py 8 leaves it in and sets `status_code`
# too; NoScriptError loses its code in both. The line the server sent comes out either way.
@pytest.mark.parametrize(
    ("text", "code", "kind", "line"),
    [
        ("WRONGTYPE Operation on a key", None, ResponseError, "WRONGTYPE Operation on a key"),
        (
            "WRONGTYPE Operation on a key",
            "WRONGTYPE",
            ResponseError,
            "WRONGTYPE Operation on a key",
        ),
        ("Operation on a key", "WRONGTYPE", ResponseError, "WRONGTYPE Operation on a key"),
        ("No matching script.", None, NoScriptError, "NOSCRIPT No matching script."),
        ("No matching script.", "NOSCRIPT", NoScriptError, "NOSCRIPT No matching script."),
        ("unknown command 'X'", "ERR", ResponseError, "ERR unknown command 'X'"),
    ],
)
def test_an_error_line_does_not_depend_on_how_redis_py_words_it(
    text: str, code: str | None, kind: type, line: str
) -> None:
    assert reply_error_line(redis_py_error(text, code, kind)) == line


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


# --- auto-pipelining over one connection (Redis TCP, app.storage.redis_client) -------------------


@pytest.fixture
async def tcp(redis_url: str) -> Any:
    connection = RedisConnection.from_url(redis_url, 1.0)
    yield connection
    await connection.close()


async def test_concurrent_commands_share_one_write(tcp: RedisConnection, key_prefix: str) -> None:
    keys = [f"{key_prefix}{{p}}:{index}" for index in range(20)]
    await asyncio.gather(*(tcp.call("SET", key, index) for index, key in enumerate(keys)))
    replies = await asyncio.gather(*(tcp.call("GET", key) for key in keys))

    assert replies == [str(index) for index in range(20)]
    assert tcp.wire.counts.commands == 40
    assert tcp.wire.counts.writes == 2  # one write per burst, not per command
    assert tcp.wire.connections == 1


def test_the_wire_runs_on_uvloop_as_under_uvicorn(redis_url: str, key_prefix: str) -> None:
    async def session() -> list[Any]:
        conn = RedisConnection.from_url(redis_url, 1.0)
        try:
            key = f"{key_prefix}{{u}}:uvloop"
            return await asyncio.gather(conn.call("SET", key, "1"), conn.call("GET", key))
        finally:
            await conn.close()

    assert uvloop.run(session()) == ["OK", "1"]


async def test_an_error_in_a_pipeline_fails_only_its_own_caller(tcp: RedisConnection) -> None:
    results = await asyncio.gather(
        tcp.call("PING"), tcp.call("GET"), tcp.call("EVALSHA", "0" * 40, 0), tcp.call("PING"),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == "PONG"
    assert type(results[1]) is StorageError
    assert type(results[2]) is NoScript
    assert results[3] == "PONG"


async def test_a_cancelled_caller_does_not_break_the_batch(tcp: RedisConnection) -> None:
    waiting = asyncio.ensure_future(tcp.call("ECHO", "first"))
    other = asyncio.ensure_future(tcp.call("ECHO", "second"))
    await asyncio.sleep(0)
    waiting.cancel()
    assert await other == "second"  # replies stay matched to their callers
    assert await tcp.call("ECHO", "third") == "third"


async def test_invalid_utf8_in_a_value_does_not_break_the_connection(
    tcp: RedisConnection, redis_client: Any, key_prefix: str
) -> None:
    key = f"{key_prefix}{{u}}:bytes"
    redis_client.set(key, b"\xff\xfeok")
    assert await tcp.call("GET", key) == "\ufffd\ufffdok"
    assert await tcp.call("PING") == "PONG"


async def test_a_lost_connection_fails_its_callers_and_the_next_call_reconnects(
    own_redis: Any,
) -> None:
    conn = RedisConnection.from_url(own_redis.url, 2.0)
    try:
        assert await conn.call("SET", "k", "v") == "OK"
        own_redis.stop()
        with pytest.raises(StorageUnavailable):
            await conn.call("GET", "k")
        own_redis.start()
        assert await conn.call("PING") == "PONG"  # a new connection, no restart of ours
        assert conn.wire.connections == 2
    finally:
        await conn.close()


BUSY_SCRIPT = """
local started = tonumber(redis.call('TIME')[1])
while tonumber(redis.call('TIME')[1]) - started < 2 do end
return 1
"""


async def test_an_overdue_reply_aborts_the_connection_and_fails_its_waiters(
    own_redis: Any,
) -> None:
    conn = RedisConnection.from_url(own_redis.url, 0.5)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            conn.call("EVAL", BUSY_SCRIPT, 0), conn.call("PING"), return_exceptions=True
        )
        elapsed_s = time.monotonic() - started
        assert all(isinstance(result, StorageUnavailable) for result in results), results
        assert "no reply within 0.5 s" in str(results[0])
        assert elapsed_s < 1.5
        await asyncio.sleep(2)  # the script ends; the server answers again
        assert await conn.call("PING") == "PONG"
        assert conn.wire.connections == 2
    finally:
        await conn.close()


async def test_password_and_database_from_the_url(own_redis: Any) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/3"
    conn = RedisConnection.from_url(url, 1.0)
    try:
        assert await conn.call("SET", "in-db-3", "yes") == "OK"
    finally:
        await conn.close()
    logged_in = redis.Redis(port=own_redis.port, password="s3cret", db=3)
    assert logged_in.get("in-db-3") == b"yes"
    wrong = RedisConnection.from_url(f"redis://:wrong@127.0.0.1:{own_redis.port}/0", 1.0)
    await assert_unavailable_fast(wrong)  # WRONGPASS: storage unreachable for us, not a bug


def test_addresses_from_urls() -> None:
    plain = Address.from_url("redis://127.0.0.1:6390/2")
    assert (plain.host, plain.port, plain.db, plain.tls, plain.password) == (
        "127.0.0.1",
        6390,
        2,
        None,
        None,
    )
    tls = Address.from_url("rediss://default:pw@eu1-x.upstash.io:6379")
    assert tls.tls is not None
    assert tls.tls.check_hostname
    assert tls.handshake() == [("AUTH", "default", "pw")]
    unverified = Address.from_url("rediss://h:6379?ssl_cert_reqs=none")
    assert unverified.tls is not None
    assert unverified.tls.verify_mode is ssl.CERT_NONE
    assert Address.from_url("unix:///run/redis.sock?db=1").path == "/run/redis.sock"


async def test_a_pipeline_to_a_dead_server_fails_every_caller_fast() -> None:
    conn = RedisConnection.from_url(f"redis://127.0.0.1:{free_port()}", 1.0)
    try:
        results = await asyncio.gather(
            *(conn.call("PING") for _ in range(5)), return_exceptions=True
        )
    finally:
        await conn.close()
    assert all(isinstance(result, StorageUnavailable) for result in results)
