"""Redis over one TCP, TLS or unix-socket connection, every command pipelined.

What `connections.RedisConnection` speaks. The commands that concurrent callers issue in one
event-loop turn leave in one write, and their replies come back in order on the same connection
(RESP2, packed and parsed by hiredis, the C library redis-py itself uses when it is installed):
the auto-pipelining of ioredis and @upstash/redis. Measured under wrk (one uvicorn worker, signed
webhooks, one EVALSHA each), redis-py's asyncio pipeline spent about 25 µs of CPU per command more
than this does, on its pool, retry and timeout bookkeeping.

What each caller is promised:
- its own reply, or its own error reply as an error of our tree (`classify_reply_error`);
- an answer within `timeout_s`: when a reply is overdue the connection is aborted, and every
  command still waiting on it fails with `StorageUnavailable` (whether it ran is unknown; callers
  retry and every write is idempotent);
- a lost connection fails what was waiting on it and is reopened by the next command; nothing
  is retried behind the caller's back.

No blocking commands, pub/sub or transactions: the service uses none.
"""

import asyncio
import collections
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from app.errors import StorageError, StorageUnavailable

CommandArg = str | int | float
ReplyErrorMap = Callable[[str], StorageError]


@dataclass
class Counts:
    """Writes and commands sent so far: a write carries every command of one loop turn."""

    writes: int = 0
    commands: int = 0


@dataclass(frozen=True)
class Address:
    """Where Redis is and how to log in, from a `redis://`, `rediss://` or `unix://` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> "Address":
        options: dict[str, Any] = dict(parse_url(url))
        kind = options.get("connection_class")
        return cls(
            host=options.get("host", "localhost"),
            port=int(options.get("port", 6379)),
            path=options.get("path") if kind is UnixDomainSocketConnection else None,
            tls=tls_context(options) if kind is SSLConnection else None,
            username=options.get("username"),
            password=options.get("password"),
            db=int(options.get("db", 0)),
        )

    def handshake(self) -> list[tuple[CommandArg, ...]]:
        """What a new connection sends before anything else: AUTH and SELECT, when needed."""
        commands: list[tuple[CommandArg, ...]] = []
        if self.password is not None:
            login = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *login))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """Verified TLS by default; `?ssl_cert_reqs=none` (or `optional`) as redis-py reads it."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = str(options.get("ssl_cert_reqs", "required")).lower()
    if reqs in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE if reqs == "none" else ssl.CERT_OPTIONAL
    elif options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    return context


class _Protocol(asyncio.Protocol):
    """One connection: writes leave once per loop turn; replies resolve waiters in order."""

    def __init__(self, reply_error: ReplyErrorMap, counts: Counts, timeout_s: float) -> None:
        self.reply_error = reply_error
        self.counts = counts
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (what uvicorn runs on) are not subclasses of asyncio's
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: tuple[CommandArg, ...]) -> "asyncio.Future[Any]":
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.outgoing:
            loop.call_soon(self._flush)  # after this turn's other callers
        self.outgoing.append(hiredis.pack_command(command))  # type: ignore[arg-type]  # its stub wants a 1-tuple
        self.waiting.append(future)
        return future

    def _flush(self) -> None:
        if self.closed or self.transport is None:
            return  # connection_lost failed the waiters already
        self.counts.writes += 1
        self.counts.commands += len(self.outgoing)
        data, self.outgoing = b"".join(self.outgoing), []
        self.transport.write(data)
        # replies come in order: when the batch's last one is in, so are the others
        last = self.waiting[-1]
        timer = asyncio.get_running_loop().call_later(self.timeout_s, self._overdue, last)
        last.add_done_callback(lambda _: timer.cancel())

    def _overdue(self, last: "asyncio.Future[Any]") -> None:
        if not last.done():
            self.abort(StorageUnavailable(f"redis: no reply within {self.timeout_s:g} s"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(StorageUnavailable(f"redis: protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:
                self.abort(StorageUnavailable("redis: a reply nobody asked for"))
                return
            future = self.waiting.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(self.reply_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail_all(StorageUnavailable(f"redis: connection lost ({reason})"))

    def abort(self, error: StorageUnavailable) -> None:
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_all(self, error: StorageUnavailable) -> None:
        self.closed = True
        self.outgoing = []
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class Wire:
    """The connection, opened by the first command and reopened by the first after a loss."""

    def __init__(self, address: Address, timeout_s: float, reply_error: ReplyErrorMap) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.reply_error = reply_error
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Task[_Protocol] | None = None
        self.connections = 0  # opened so far
        self.counts = Counts()

    async def call(self, *command: CommandArg) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._open()
        return await protocol.send(command)

    async def _open(self) -> _Protocol:
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
        # shielded: one caller giving up must not cancel the others' connection attempt
        return await asyncio.shield(self._opening)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address
        factory = lambda: _Protocol(self.reply_error, self.counts, self.timeout_s)  # noqa: E731
        try:
            async with asyncio.timeout(self.timeout_s):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(factory, address.path)
                else:
                    _, protocol = await loop.create_connection(
                        factory, address.host, address.port, ssl=address.tls
                    )
        except TimeoutError:
            raise StorageUnavailable(f"redis: no connection within {self.timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise StorageUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        try:
            for command in address.handshake():
                await protocol.send(command)
        except BaseException:
            protocol.abort(StorageUnavailable("redis: the login did not complete"))
            raise
        self.connections += 1
        self._protocol = protocol
        return protocol

    async def close(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
