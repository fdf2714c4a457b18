"""The Upstash REST stand-in, driven end to end by the real `upstash-redis` client.

The stand-in is served on a real port and forwards to the real Redis behind the `redis_url`
fixture. Every test works under a key prefix of its own, so none needs a clean database.
"""

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis
from fastapi import FastAPI
from upstash_redis.asyncio import Redis
from upstash_redis.errors import UpstashError

from tests.standins.upstash import create_standin, reset, serve

TOKEN = "standin-test-token"
NESTED_SCRIPT = "return {KEYS[1], ARGV[1], 42, false, {ARGV[1], 7}}"


@pytest.fixture(scope="module")
def standin(redis_url: str) -> Iterator[tuple[str, FastAPI]]:
    app = create_standin(redis_url, TOKEN)
    with serve(app) as url:
        yield url, app


@pytest.fixture
def url(standin: tuple[str, FastAPI]) -> Iterator[str]:
    base_url, app = standin
    reset(app)
    yield base_url
    reset(app)


@pytest.fixture
def app(standin: tuple[str, FastAPI], url: str) -> FastAPI:
    return standin[1]


@pytest.fixture
def prefix() -> str:
    return f"standin:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["base64", None], ids=["base64", "plain"])
async def upstash(request: pytest.FixtureRequest, url: str) -> AsyncIterator[Redis]:
    """The real client, with Upstash's default base64 response encoding and without it."""
    client = Redis(
        url=url, token=TOKEN, rest_encoding=request.param, rest_retries=0, allow_telemetry=False
    )
    yield client
    await client.close()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP to the stand-in, for what the client hides (status codes, headers)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        yield client


async def use_short_timeout(client: Redis, timeout_s: float) -> None:
    await client._http._client.aclose()
    client._http._client = httpx.AsyncClient(timeout=timeout_s)


# --- through the real client ----------------------------------------------------------------


async def test_set_get_round_trip(upstash: Redis, prefix: str) -> None:
    stored: object = await upstash.set(f"{prefix}k", "bar", ex=100)  # the stubs say str
    assert stored is True
    assert await upstash.get(f"{prefix}k") == "bar"
    assert 0 < await upstash.ttl(f"{prefix}k") <= 100
    assert await upstash.get(f"{prefix}missing") is None


async def test_non_ascii_value_round_trips(upstash: Redis, prefix: str) -> None:
    await upstash.set(f"{prefix}k", "héllo ✓")
    assert await upstash.get(f"{prefix}k") == "héllo ✓"
    assert await upstash.execute(["STRLEN", f"{prefix}k"]) == len("héllo ✓".encode())


async def test_pipeline_is_one_round_trip(upstash: Redis, app: FastAPI, prefix: str) -> None:
    pipe = upstash.pipeline()
    pipe.set(f"{prefix}a", "1")
    pipe.incr(f"{prefix}a")
    pipe.rpush(f"{prefix}list", "x", "ÿ")
    pipe.lrange(f"{prefix}list", 0, -1)
    pipe.get(f"{prefix}missing")
    assert await pipe.exec() == [True, 2, 2, ["x", "ÿ"], None]
    assert app.state.requests == 1


async def test_multi_runs_a_transaction(upstash: Redis, app: FastAPI, prefix: str) -> None:
    tx = upstash.multi()
    tx.set(f"{prefix}a", "10")
    tx.incr(f"{prefix}a")
    tx.get(f"{prefix}a")
    assert await tx.exec() == [True, 11, "11"]
    assert app.state.received[-1][0] == "/multi-exec"


async def test_pipeline_with_an_error_raises_but_the_rest_ran(upstash: Redis, prefix: str) -> None:
    pipe = upstash.pipeline()
    pipe.set(f"{prefix}a", "x")
    pipe.incr(f"{prefix}a")
    pipe.set(f"{prefix}b", "y")
    with pytest.raises(UpstashError, match=r"^ERR value is not an integer or out of range$"):
        await pipe.exec()
    assert await upstash.get(f"{prefix}b") == "y"


async def test_wrong_arity_raises_upstash_error_with_redis_text(upstash: Redis) -> None:
    with pytest.raises(UpstashError, match=r"^ERR wrong number of arguments for 'get' command$"):
        await upstash.execute(["GET"])


async def test_wrongtype_error_keeps_its_code(upstash: Redis, prefix: str) -> None:
    await upstash.set(f"{prefix}k", "v")
    with pytest.raises(UpstashError, match=r"^WRONGTYPE Operation against a key"):
        await upstash.rpush(f"{prefix}k", "x")


async def test_eval_returns_nested_array(upstash: Redis, prefix: str) -> None:
    result = await upstash.eval(NESTED_SCRIPT, keys=[f"{prefix}k"], args=["héllo"])
    assert result == [f"{prefix}k", "héllo", 42, None, ["héllo", 7]]


async def test_evalsha_with_numbers_in_the_command(upstash: Redis, prefix: str) -> None:
    sha = await upstash.script_load(NESTED_SCRIPT)
    result = await upstash.execute(["EVALSHA", sha, 1, f"{prefix}k", "v"])
    assert result == [f"{prefix}k", "v", 42, None, ["v", 7]]
    assert await upstash.evalsha(sha, keys=[f"{prefix}k"], args=["w"]) == [
        f"{prefix}k",
        "w",
        42,
        None,
        ["w", 7],
    ]


async def test_evalsha_of_unknown_script_is_noscript(upstash: Redis) -> None:
    with pytest.raises(UpstashError, match=r"^NOSCRIPT No matching script"):
        await upstash.evalsha("0" * 40, keys=[], args=[])


async def test_lua_errors_come_through_as_text(upstash: Redis, prefix: str) -> None:
    with pytest.raises(UpstashError, match=r"^ERR user_script:1: boom"):
        await upstash.eval("error('boom')")
    with pytest.raises(UpstashError, match=r"^MYCODE custom$"):
        await upstash.eval("return redis.error_reply('MYCODE custom')")


async def test_wrong_token_raises_unauthorized(url: str) -> None:
    async with Redis(url=url, token="wrong", rest_retries=0, allow_telemetry=False) as client:
        with pytest.raises(UpstashError, match=r"^Unauthorized$"):
            await client.get("anything")


async def test_hang_trips_the_client_timeout(upstash: Redis, app: FastAPI) -> None:
    app.state.fault = "hang"
    await use_short_timeout(upstash, 0.5)
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        await upstash.get("anything")
    assert time.monotonic() - started < 5


async def test_html_500_raises_json_decode_error(upstash: Redis, app: FastAPI) -> None:
    app.state.fault = "500"
    with pytest.raises(json.JSONDecodeError):
        await upstash.get("anything")


async def test_one_off_fault_is_retried_by_the_client(url: str, app: FastAPI) -> None:
    app.state.fault, app.state.fault_remaining = "503", 1
    client = Redis(url=url, token=TOKEN, rest_retries=1, rest_retry_interval=0)
    async with client:
        assert await client.get("standin:never-set") is None
    assert app.state.requests == 2
    assert app.state.fault is None


# --- the wire format, over plain HTTP ------------------------------------------------------


async def test_base64_encodes_strings_but_not_ok(raw: httpx.AsyncClient, prefix: str) -> None:
    b64 = {"Upstash-Encoding": "base64"}
    response = await raw.post("/", json=["SET", f"{prefix}k", "héllo"], headers=b64)
    assert response.json() == {"result": "OK"}
    response = await raw.post("/", json=["GET", f"{prefix}k"], headers=b64)
    assert base64.b64decode(response.json()["result"]).decode() == "héllo"
    response = await raw.post("/", json=["PING"], headers=b64)
    assert response.json() == {"result": base64.b64encode(b"PONG").decode()}


async def test_numbers_are_sent_as_written(raw: httpx.AsyncClient, prefix: str) -> None:
    await raw.post("/", json=["SET", f"{prefix}k", 1.5, "EX", 100])
    assert (await raw.post("/", json=["GET", f"{prefix}k"])).json() == {"result": "1.5"}
    response = await raw.post("/", json=["INCRBY", f"{prefix}n", 7])
    assert response.json() == {"result": 7}


async def test_error_reply_is_400(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/", json=["EVALSHA", "0" * 40, 0])
    assert response.status_code == 400
    assert response.json() == {"error": "NOSCRIPT No matching script. Please use EVAL."}


async def test_missing_token_is_401(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/", json=["PING"])
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


async def test_sync_token_increases(raw: httpx.AsyncClient) -> None:
    first = (await raw.post("/", json=["PING"])).headers["Upstash-Sync-Token"]
    second = (await raw.post("/", json=["PING"])).headers["Upstash-Sync-Token"]
    assert int(second) > int(first)


async def test_pipeline_errors_are_per_item(raw: httpx.AsyncClient, prefix: str) -> None:
    commands = [["SET", f"{prefix}a", "x"], ["INCR", f"{prefix}a"], ["GET", f"{prefix}a"]]
    for path in ("/pipeline", "/multi-exec"):
        response = await raw.post(path, json=commands)
        assert response.status_code == 200
        assert response.json() == [
            {"result": "OK"},
            {"error": "ERR value is not an integer or out of range"},
            {"result": "x"},
        ]


async def test_multi_exec_queueing_error_aborts_all(raw: httpx.AsyncClient, prefix: str) -> None:
    response = await raw.post("/multi-exec", json=[["SET", f"{prefix}a", "x"], ["GET"]])
    assert response.status_code == 400
    assert response.json()["error"].startswith("EXECABORT")
    assert (await raw.post("/", json=["EXISTS", f"{prefix}a"])).json() == {"result": 0}


async def test_malformed_body_is_400(raw: httpx.AsyncClient) -> None:
    for path, body in [("/", b"nope"), ("/", b"[]"), ("/pipeline", b"{}"), ("/", b"[true]")]:
        response = await raw.post(path, content=body)
        assert response.status_code == 400
        assert response.json()["error"].startswith("ERR ")


# --- Upstash's allow-key-locking script flag ---------------------------------------------------

FLAGGED_SCRIPT = (
    "#!lua flags=allow-key-locking\nreturn {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
)
READ_ONLY_FLAGGED = (
    "#!lua flags=no-writes,allow-key-locking\nreturn redis.call('SET', KEYS[1], 'x')"
)


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


def unseen_flagged_script() -> str:
    """A flagged script no Redis and no stand-in has seen yet."""
    return f"#!lua flags=allow-key-locking\n-- {uuid.uuid4().hex}\nreturn ARGV[1]"


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the Redis behind the stand-in."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_real_redis_rejects_the_flag(direct: redis.Redis, prefix: str) -> None:
    """What the stand-in must hide: Redis refuses Upstash's flag outright."""
    with pytest.raises(redis.ResponseError, match="Unexpected flag in script shebang"):
        direct.eval(FLAGGED_SCRIPT, 1, f"{prefix}n", "a")
    with pytest.raises(redis.ResponseError, match="Unexpected flag in script shebang"):
        direct.script_load(FLAGGED_SCRIPT)


async def test_flagged_eval_runs_and_is_recorded(
    upstash: Redis, app: FastAPI, prefix: str, direct: redis.Redis
) -> None:
    assert await upstash.eval(FLAGGED_SCRIPT, keys=[f"{prefix}n"], args=["a"]) == [
        f"{prefix}n",
        "a",
        1,
    ]
    assert app.state.flagged_scripts == {sha1(FLAGGED_SCRIPT)}
    assert app.state.unflagged_scripts == set()
    assert app.state.received[-1] == ("/", ["EVAL", FLAGGED_SCRIPT, "1", f"{prefix}n", "a"])
    assert direct.get(f"{prefix}n") == "1"


async def test_evalsha_of_the_flagged_sha_runs_after_eval(upstash: Redis, prefix: str) -> None:
    await upstash.eval(FLAGGED_SCRIPT, keys=[f"{prefix}n"], args=["a"])
    result = await upstash.evalsha(sha1(FLAGGED_SCRIPT), keys=[f"{prefix}n"], args=["b"])
    assert result == [f"{prefix}n", "b", 2]


async def test_evalsha_of_an_unknown_flagged_sha_is_noscript(upstash: Redis, app: FastAPI) -> None:
    script = unseen_flagged_script()
    with pytest.raises(UpstashError, match=r"^NOSCRIPT No matching script"):
        await upstash.evalsha(sha1(script), keys=[], args=["x"])
    # the client's fallback, as on Upstash: EVAL the source, then the SHA works
    assert await upstash.eval(script, keys=[], args=["x"]) == "x"
    assert await upstash.evalsha(sha1(script), keys=[], args=["y"]) == "y"
    assert sha1(script) in app.state.flagged_scripts


async def test_script_load_answers_the_flagged_sha(upstash: Redis, prefix: str) -> None:
    script = unseen_flagged_script()
    assert await upstash.script_load(script) == sha1(script)
    assert await upstash.script_exists(sha1(script)) == [1]
    assert await upstash.evalsha(sha1(script), keys=[], args=["z"]) == "z"


async def test_other_flags_stay(upstash: Redis, prefix: str) -> None:
    with pytest.raises(UpstashError, match="Write commands are not allowed from read-only"):
        await upstash.eval(READ_ONLY_FLAGGED, keys=[f"{prefix}k"], args=[])


async def test_flagged_scripts_in_pipeline_and_multi_exec(
    raw: httpx.AsyncClient, app: FastAPI, prefix: str
) -> None:
    script = unseen_flagged_script()
    for path in ("/pipeline", "/multi-exec"):
        commands = [
            ["EVAL", script, 0, "a"],
            ["EVALSHA", sha1(script), 0, "b"],
            ["SCRIPT", "LOAD", script],
            ["EVAL", FLAGGED_SCRIPT, 1, f"{prefix}n", "c"],
        ]
        response = await raw.post(path, json=commands)
        assert response.status_code == 200
        assert response.json()[:3] == [{"result": "a"}, {"result": "b"}, {"result": sha1(script)}]
        assert response.json()[3]["result"][:2] == [f"{prefix}n", "c"]
    assert app.state.flagged_scripts == {sha1(script), sha1(FLAGGED_SCRIPT)}


async def test_reset_clears_the_record_but_not_the_shas(upstash: Redis, app: FastAPI) -> None:
    script = unseen_flagged_script()
    await upstash.eval(script, keys=[], args=["x"])
    await upstash.eval("return ARGV[1]", keys=[], args=["plain"])
    assert app.state.unflagged_scripts == {sha1("return ARGV[1]")}
    reset(app)
    assert app.state.flagged_scripts == set()
    assert app.state.unflagged_scripts == set()
    assert await upstash.evalsha(sha1(script), keys=[], args=["again"]) == "again"
    assert app.state.flagged_scripts == {sha1(script)}
