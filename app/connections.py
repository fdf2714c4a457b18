"""The three ways to reach Redis, behind one narrow interface: `await conn.call(*command)`.

- `UpstashConnection`: Upstash's REST API through the `upstash-redis` async client.
- `RedisConnection`: any Redis over TCP (Upstash's `rediss://` endpoint too), `redis.asyncio`.
- `EmbeddedConnection`: an in-process fakeredis, for trying the service out; nothing is persisted.

Each translates its client's exceptions into `errors.py` types where they enter, and answers every
command within `storage_timeout_s` or raises `StorageUnavailable`.
"""

import asyncio
import logging
from typing import Any, Protocol

import fakeredis
import httpx
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from upstash_redis.asyncio import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from app.errors import StorageError, StorageUnavailable
from app.settings import Settings, StorageKind

logger = logging.getLogger(__name__)

CommandArg = str | int | float

# Reply prefixes meaning "we cannot reach the data", not "the command is wrong".
_UNAVAILABLE_PREFIXES = ("WRONGPASS", "NOAUTH", "Unauthorized", "LOADING", "BUSY", "MASTERDOWN")


class NoScript(StorageError):
    """EVALSHA named a script the server does not have yet (the caller sends EVAL)."""


class Connection(Protocol):
    kind: StorageKind

    async def call(self, *command: CommandArg) -> Any: ...

    async def close(self) -> None: ...


def classify_reply_error(message: str) -> StorageError:
    """Map a Redis error reply to our tree by its error code (the reply's first word)."""
    if message.startswith("NOSCRIPT"):
        return NoScript(message)
    if message.startswith(_UNAVAILABLE_PREFIXES):
        return StorageUnavailable(message)
    return StorageError(message)


class AutoPipeline:
    """Sends the commands that concurrent requests issue in one event-loop turn as one pipeline:
    one write and one read instead of one each (the auto-pipelining of ioredis and
    @upstash/redis). Each caller still awaits its own reply, so nothing is acknowledged before
    its own command succeeded."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queue: list[tuple[tuple[CommandArg, ...], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.commands = 0

    async def call(self, *command: CommandArg) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if len(self._queue) == 1:
            # after the callbacks already ready this turn: their commands join the batch
            loop.call_soon(self._flush_queue)
        return await future

    def _flush_queue(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[tuple[tuple[CommandArg, ...], asyncio.Future[Any]]]) -> None:
        self.batches, self.commands = self.batches + 1, self.commands + len(batch)
        try:
            replies = await self._execute([command for command, _ in batch])
        except Exception as exc:  # the whole batch failed (connection, timeout): every caller
            replies = [exc] * len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: list[tuple[CommandArg, ...]]) -> list[Any]:
        if len(commands) == 1:
            return [await self._client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
        pipeline = self._client.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        return await pipeline.execute(raise_on_error=False)


class RedisConnection:
    """Redis over TCP; one pool, bounded timeouts, one immediate retry on a dropped connection,
    and concurrent commands auto-pipelined."""

    kind = StorageKind.REDIS

    def __init__(self, client: aioredis.Redis, *, auto_pipeline: bool = True) -> None:
        self._client = client
        self.pipeline = AutoPipeline(client) if auto_pipeline else None

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> "RedisConnection":
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # A pooled connection the server closed fails once; retry that, never a timeout. (No
            # health-check PING: it would be a quarter of an idle worker's Redis bill.)
            retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        )
        return cls(client)

    async def call(self, *command: CommandArg) -> Any:
        try:
            if self.pipeline is not None:
                return await self.pipeline.call(*command)
            return await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise StorageUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        except redis_errors.ResponseError as exc:
            raise _reply_error(exc) from exc

    async def close(self) -> None:
        await self._client.aclose()


def _reply_error(exc: redis_errors.ResponseError) -> StorageError:
    if isinstance(exc, redis_errors.NoScriptError):
        return NoScript(str(exc))
    return classify_reply_error(str(exc))


class EmbeddedConnection(RedisConnection):
    """An in-memory Redis (fakeredis with Lua); gone when the process stops."""

    kind = StorageKind.EMBEDDED

    @classmethod
    def create(cls) -> "EmbeddedConnection":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        return cls(client, auto_pipeline=False)  # in-process: nothing to save


class UpstashConnection:
    """Upstash's REST API with a real HTTP timeout and a short retry policy of our own.

    The client's defaults are unsafe for a webhook endpoint: no HTTP timeout at all, and a blind
    retry of any error after 3 s. We give it a pooled httpx client with a timeout, switch its retry
    off, and retry once ourselves only when the request never reached the server.
    """

    kind = StorageKind.UPSTASH
    retry_delay_s = 0.05

    def __init__(self, client: UpstashRedis) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, url: str, token: str, timeout_s: float) -> "UpstashConnection":
        client = UpstashRedis(
            url=url.rstrip("/"),
            token=token,
            rest_retries=0,
            allow_telemetry=False,
            read_your_writes=True,
        )
        # The client builds `httpx.AsyncClient(timeout=None)`; swap in one that cannot hang.
        client._http._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        return cls(client)

    async def call(self, *command: CommandArg) -> Any:
        try:
            return await self._call_with_retry(list(command))
        except UpstashError as exc:
            raise classify_reply_error(str(exc)) from exc
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # ValueError/KeyError/TypeError: a non-JSON or unexpected body, e.g. a proxy's 502 page.
            raise StorageUnavailable(f"upstash: {type(exc).__name__}: {exc}") from exc

    async def _call_with_retry(self, command: list[CommandArg]) -> Any:
        try:
            return await self._client.execute(command)
        except httpx.ConnectError:
            await asyncio.sleep(self.retry_delay_s)
            return await self._client.execute(command)

    async def close(self) -> None:
        await self._client.close()


def connect(settings: Settings) -> Connection:
    """The connection the settings ask for: Upstash REST, else Redis TCP, else embedded."""
    kind = settings.storage_kind
    if kind is StorageKind.UPSTASH:
        assert settings.upstash_redis_rest_url
        assert settings.upstash_redis_rest_token
        token = settings.upstash_redis_rest_token.get_secret_value()
        return UpstashConnection.from_settings(
            settings.upstash_redis_rest_url, token, settings.storage_timeout_s
        )
    if kind is StorageKind.REDIS:
        assert settings.redis_url is not None
        url = settings.redis_url.get_secret_value()
        return RedisConnection.from_url(url, settings.storage_timeout_s)
    return EmbeddedConnection.create()
