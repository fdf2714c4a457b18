"""The three ways to reach Redis, behind one narrow interface: `await conn.call(*command)`.

- `UpstashConnection`: Upstash's REST API through the `upstash-redis` async client.
- `RedisConnection`: any Redis over TCP (Upstash's `rediss://` endpoint too), through
  `app.storage.redis_client`: one connection, concurrent commands pipelined, parsed by hiredis.
- `EmbeddedConnection`: an in-process fakeredis, for trying the service out; nothing is persisted.

Each translates its client's exceptions into `errors.py` types where they enter, and answers every
command within `storage_timeout_s` or raises `StorageUnavailable`.
"""

import asyncio
import logging
import re
from typing import Any, Protocol

import fakeredis
import httpx
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from upstash_redis.asyncio import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from app.errors import NoScript, StorageError, StorageUnavailable
from app.settings import Settings, StorageKind
from app.storage.redis_client import Address, CommandArg, Wire

logger = logging.getLogger(__name__)

# Error codes (a reply's first word) meaning "the data cannot be reached or written right now",
# not "the command is wrong": a failover's old primary (READONLY), a restart (LOADING), a replica
# cut off (MASTERDOWN), a cluster resharding (TRYAGAIN, CLUSTERDOWN), a full or broken server (OOM,
# MISCONF), a long script (BUSY), lost credentials (NOAUTH, WRONGPASS, Upstash's "Unauthorized").
TRANSIENT_CODES = frozenset(
    {
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "OOM",
        "MISCONF",
        "BUSY",
        "NOAUTH",
        "WRONGPASS",
        "Unauthorized",
        "MOVED",  # one node of a cluster, before the service found out it is one
        "ASK",
    }
)
# Plain `ERR` replies that mean the same: Redis at `maxclients`, Upstash's rate and quota limits.
TRANSIENT_MESSAGES = (
    "max number of clients reached",
    "max requests limit exceeded",
    "max daily request limit exceeded",
    "max concurrent connections exceeded",
)
# Inside a script, Redis 7 reports a failing `redis.call` as "ERR ... : @user_script:..."-style
# text or with the original code first; both are looked at.
_CODE_IN_SCRIPT_ERROR = re.compile(r"(?:^|[\s:(-])([A-Z]{3,})\b(?= )")
_NOSCRIPT = re.compile(r"\bNOSCRIPT\b")


class ScriptFlags:
    """Whether a connection's scripts carry Upstash's `allow-key-locking` shebang flag (Upstash
    then locks only a script's KEYS, not the whole database): on the Upstash transport until
    the server refuses it. A local Upstash-compatible server forwards scripts to a stock Redis,
    which refuses the flag: that is noticed once (`storage.scripts`), said once, and the plain
    scripts run from then on."""

    def __init__(self, key_locking: bool = False) -> None:
        self.key_locking = key_locking

    def refused_key_locking(self, error: str) -> None:
        if self.key_locking:
            self.key_locking = False
            logger.warning(
                "storage refused Upstash's allow-key-locking script flag (%s): a local "
                "Upstash-compatible server in front of Redis? Scripts run without it from now on",
                error,
            )


class Connection(Protocol):
    kind: StorageKind
    scripts: ScriptFlags

    async def call(self, *command: CommandArg) -> Any: ...

    async def close(self) -> None: ...


def classify_reply_error(message: str) -> StorageError:
    """Map a Redis error reply to our tree, once for every transport: `StorageUnavailable` for
    what passes (retry later, answer 503), `StorageError` for a wrong command (a bug)."""
    code = message.split(" ", 1)[0]
    if transient_reply(code, message):  # first: BUSY's text ends "... SHUTDOWN NOSCRIPT."
        return StorageUnavailable(message)
    if _NOSCRIPT.search(message):  # wherever a server puts it ("Failed to execute ...: NOSCRIPT")
        return NoScript(message)
    return StorageError(message)


def redis_py_reply_error(exc: redis_errors.ResponseError) -> StorageError:
    """A redis-py error reply in our tree, classified on the line the server sent."""
    return classify_reply_error(reply_error_line(exc))


def reply_error_line(exc: redis_errors.ResponseError) -> str:
    """The error line as the server sent it. redis-py strips some codes off the text (into the
    class and, from 6, `status_code`) and leaves others in, and that differs between versions:
    a code is put back only where the text does not already start with it."""
    code = getattr(exc, "status_code", None)
    if isinstance(exc, redis_errors.NoScriptError):
        code = "NOSCRIPT"
    text = str(exc)
    if not code or text.split(" ", 1)[0] == code:
        return text
    return f"{code} {text}"


def transient_reply(code: str, message: str) -> bool:
    if code in TRANSIENT_CODES:
        return True
    if any(text in message for text in TRANSIENT_MESSAGES):
        return True
    # a script's failing call: its own code is further in ("... OOM command not allowed ...")
    return "script" in message and any(
        found in TRANSIENT_CODES for found in _CODE_IN_SCRIPT_ERROR.findall(message)
    )


class RedisConnection:
    """Redis over TCP (or TLS, or a unix socket): one connection, concurrent commands pipelined
    (`app.storage.redis_client`), every reply within `timeout_s`. On a node of a Redis Cluster it is
    only used to find that out (`storage.cluster_shards`): a `ClusterConnection` takes over."""

    kind = StorageKind.REDIS
    cluster = False

    def __init__(self, wire: Wire, url: str = "") -> None:
        self.wire = wire
        self.url = url
        self.scripts = ScriptFlags()

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> "RedisConnection":
        return cls(Wire(Address.from_url(url), timeout_s, classify_reply_error), url)

    async def cluster_enabled(self) -> bool:
        """Whether this server is a node of a Redis Cluster (`INFO cluster`)."""
        info = str(await self.call("INFO", "cluster"))
        return "cluster_enabled:1" in info

    async def call(self, *command: CommandArg) -> Any:
        return await self.wire.call(*command)

    async def close(self) -> None:
        await self.wire.close()


class ClusterConnection:
    """A Redis Cluster through redis-py's `RedisCluster`: it finds the nodes from any one of
    them, sends each command to the node that owns its keys' slot, follows MOVED/ASK and a
    failover's new topology. Every script touches one slot (`storage.keys`), every reply comes
    within `timeout_s` or raises `StorageUnavailable`."""

    kind = StorageKind.REDIS
    cluster = True

    def __init__(self, client: RedisCluster, timeout_s: float) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.scripts = ScriptFlags()

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> "ClusterConnection":
        client = RedisCluster.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return cls(client, timeout_s)

    @property
    def client(self) -> RedisCluster:
        return self._client

    async def call(self, *command: CommandArg) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._client.execute_command(*command)
        except redis_errors.ResponseError as exc:
            raise redis_py_reply_error(exc) from exc
        except (TimeoutError, redis_errors.RedisError) as exc:
            # connections, timeouts, CLUSTERDOWN, no node for a slot: all pass with time
            raise StorageUnavailable(f"redis cluster: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()


class EmbeddedConnection:
    """An in-memory Redis (fakeredis with Lua); gone when the process stops."""

    kind = StorageKind.EMBEDDED

    def __init__(self, client: fakeredis.FakeAsyncRedis) -> None:
        self._client = client
        self.scripts = ScriptFlags()

    @classmethod
    def create(cls) -> "EmbeddedConnection":
        return cls(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True))

    async def call(self, *command: CommandArg) -> Any:
        try:
            return await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis_errors.ResponseError as exc:
            raise redis_py_reply_error(exc) from exc

    async def close(self) -> None:
        await self._client.aclose()


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
        self.scripts = ScriptFlags(key_locking=True)

    @classmethod
    def from_settings(cls, url: str, token: str, timeout_s: float) -> "UpstashConnection":
        client = UpstashRedis(
            url=url.rstrip("/"),
            token=token,
            # plain JSON answers: every value stored is UTF-8 text, and the local
            # Upstash-compatible servers ignore the header that asks for base64
            rest_encoding=None,
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
