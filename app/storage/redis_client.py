"""Redis over one TCP, TLS or unix-socket connection, every command pipelined.

What `connections.RedisConnection` speaks. The commands that concurrent callers issue in one
event-loop turn leave in one write, and their replies come back in order on the same connection
(RESP2, packed and parsed by hiredis, the C library redis-py itself uses when it is installed):
the auto-pipelining of ioredis and @upstash/redis. Written by hand because the intake routes'
cost in Redis is this module's CPU per command, to which redis-py's asyncio client adds its pool,
retry and timeout bookkeeping (how much: bench/README.md, "Where the time goes").

What each caller is promised:
- its own reply, or its own error reply as an error of our tree (`classify_reply_error`);
- an answer within `timeout_s`, whatever the other callers do: counted from its write when the
  connection is open and has room, else from its call (connecting and waiting for room count).
  A command written and unanswered for `timeout_s` (its caller waiting, gone or cancelled: its
  slot waits on, as replies are matched in order) means the connection is stuck: it is aborted,
  and every command written on it fails with `StorageUnavailable` (whether it ran is unknown;
  callers retry and every write is idempotent);
- a command never written (its connection closed or was lost first) is sent once more, on a new
  connection; one written and lost is never sent again behind the caller's back;
- at most `max_in_flight` commands written or queued on the connection: further callers wait
  their turn, in order ("redis: too many commands in flight" if it does not come in time).

No blocking commands, pub/sub or transactions: the service uses none.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from app.errors import StorageError, StorageUnavailable

CommandArg = str | int | float
ReplyErrorMap = Callable[[str], StorageError]
Reply = asyncio.Future[Any]

# uvloop's timers and clock tick in milliseconds: a check this close to its deadline is at it
_TIMER_SLACK_S = 0.001


class _Unsent(StorageUnavailable):
    """A command failed before it was written: sending it on another connection is safe."""


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
    """One connection: writes leave once per loop turn; replies resolve waiters in order.

    A command is queued (`unsent`) until its turn's write, then `written` with its deadline; only
    a written command can be matched to a reply. One timer per connection watches the oldest.
    """

    transport: asyncio.Transport

    def __init__(
        self, reply_error: ReplyErrorMap, counts: Counts, timeout_s: float, max_in_flight: int
    ) -> None:
        self.reply_error = reply_error
        self.counts = counts
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.outgoing: list[bytes] = []  # this turn's commands, packed
        self.unsent: list[Reply] = []  # their callers
        self.written: deque[tuple[Reply, float]] = deque()  # (caller, deadline), oldest first
        self.parked: deque[tuple[bytes, asyncio.Future[Reply]]] = deque()  # waiting for room
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.closed_why = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (what uvicorn runs on) are not subclasses of asyncio's
        self.transport = transport  # type: ignore[assignment]

    def has_room(self) -> bool:
        return len(self.written) + len(self.unsent) < self.max_in_flight

    def send(self, command: tuple[CommandArg, ...]) -> Reply:
        """Queue a command for this turn's write (the caller has checked `has_room`)."""
        if self.closed:
            raise _Unsent(self.closed_why)
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub wants a 1-tuple
        future = self.loop.create_future()
        self._queue(packed, future)
        return future

    def park(self, command: tuple[CommandArg, ...]) -> "asyncio.Future[Reply]":
        """Wait in line for room; resolves to the command's reply once it is queued."""
        if self.closed:
            raise _Unsent(self.closed_why)
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # as in send
        admission: asyncio.Future[Reply] = self.loop.create_future()
        self.parked.append((packed, admission))
        return admission

    def _queue(self, packed: bytes, future: Reply) -> None:
        if not self.outgoing:
            self.loop.call_soon(self._flush)  # after this turn's other callers
        self.outgoing.append(packed)
        self.unsent.append(future)

    def _flush(self) -> None:
        if not self.outgoing:
            return  # failed before its turn came
        if self.closed or self.transport.is_closing():
            self.abort(self.closed_why or "redis: the connection closed before the commands left")
            return
        futures, self.unsent = self.unsent, []
        data, self.outgoing = b"".join(self.outgoing), []
        deadline = self.loop.time() + self.timeout_s
        self.written.extend(zip(futures, repeat(deadline)))  # before the write: it may fail
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._check_overdue)
        self.counts.writes += 1
        self.counts.commands += len(futures)
        self.transport.write(data)

    def _check_overdue(self) -> None:
        """Abort if the oldest written command is overdue, else wait for its deadline."""
        self.timer = None
        if not self.written:
            return  # armed again by the next write
        deadline = self.written[0][1]
        if deadline - self.loop.time() > _TIMER_SLACK_S:
            self.timer = self.loop.call_at(deadline, self._check_overdue)
        else:
            self.abort(f"redis: no reply within {self.timeout_s:g} s")

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(f"redis: protocol error: {exc}")
                return
            if reply is False:
                break
            if not self.written:
                self.abort(_unasked(reply))
                return
            future = self.written.popleft()[0]
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(self.reply_error(str(reply)))
            else:
                future.set_result(reply)
        if self.parked:
            self._admit_parked()

    def _admit_parked(self) -> None:
        while self.parked and self.has_room():
            packed, admission = self.parked.popleft()
            if admission.done():
                continue  # its caller gave up waiting: it is never sent
            future = self.loop.create_future()
            self._queue(packed, future)
            admission.set_result(future)

    def eof_received(self) -> None:
        # new commands go to a new connection; connection_lost fails the ones on this one
        self.closed, self.closed_why = True, "redis: connection lost (closed by the server)"

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail_all(f"redis: connection lost ({reason})", resend=True)

    def abort(self, reason: str) -> None:
        self._fail_all(reason, resend=True)
        self.transport.abort()

    def close(self) -> None:
        self._fail_all("redis: the connection was closed", resend=False)
        self.transport.close()

    def _fail_all(self, reason: str, resend: bool) -> None:
        """Fail every command: written ones as lost, the others as safe to send elsewhere."""
        if not self.closed:
            self.closed, self.closed_why = True, reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lost = StorageUnavailable(reason)
        unsent = _Unsent(reason) if resend else lost
        written, self.written = self.written, deque()
        queued, self.unsent, self.outgoing = self.unsent, [], []
        parked, self.parked = self.parked, deque()
        _fail(lost, (future for future, _ in written))
        _fail(unsent, queued)
        _fail(unsent, (admission for _, admission in parked))


def _unasked(reply: Any) -> str:
    """Why a reply with no command written aborts: an error's text says why (maxclients)."""
    if isinstance(reply, hiredis.ReplyError):
        return f"redis: an error reply nobody asked for: {reply}"
    return "redis: a reply nobody asked for"  # data, maybe a user's: not in a log


def _fail(error: StorageUnavailable, futures: Iterable["asyncio.Future[Any]"]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def _forsake(admission: "asyncio.Future[Reply]") -> None:
    """Its caller gave up just as its command was admitted: nobody will await the reply."""
    if admission.done() and not admission.cancelled() and admission.exception() is None:
        admission.result().cancel()


class Wire:
    """The connection, opened by the first command and reopened by the first after a loss."""

    def __init__(
        self,
        address: Address,
        timeout_s: float,
        reply_error: ReplyErrorMap,
        max_in_flight: int = 4096,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.reply_error = reply_error
        self.max_in_flight = max_in_flight
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Task[_Protocol] | None = None
        self.connections = 0  # opened so far
        self.counts = Counts()

    async def call(self, *command: CommandArg) -> Any:
        protocol = self._protocol
        if protocol is not None and protocol.has_room():
            try:
                return await protocol.send(command)
            except _Unsent:
                pass  # never written: safe to send once more, on a new connection
            return await self._call_slowly(command, attempts=1)
        return await self._call_slowly(command, attempts=2)

    async def _call_slowly(self, command: tuple[CommandArg, ...], attempts: int) -> Any:
        """Open a connection or wait for room first, all within `timeout_s` from now."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                return await self._attempt(command, deadline)
            except _Unsent as exc:
                attempts -= 1
                if not attempts:
                    raise StorageUnavailable(str(exc)) from None

    async def _attempt(self, command: tuple[CommandArg, ...], deadline: float) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._open(deadline)
        if protocol.has_room():
            reply = protocol.send(command)
        else:
            reply = await self._wait_for_room(protocol, command, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                return await reply
        except TimeoutError:
            raise StorageUnavailable(f"redis: no reply within {self.timeout_s:g} s") from None

    async def _wait_for_room(
        self, protocol: _Protocol, command: tuple[CommandArg, ...], deadline: float
    ) -> Reply:
        admission = protocol.park(command)
        try:
            async with asyncio.timeout_at(deadline):
                return await admission
        except TimeoutError:
            _forsake(admission)
            raise StorageUnavailable("redis: too many commands in flight") from None
        except asyncio.CancelledError:
            _forsake(admission)
            raise

    async def _open(self, deadline: float) -> _Protocol:
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
        try:
            async with asyncio.timeout_at(deadline):
                # shielded: one caller giving up must not cancel the others' connection attempt
                return await asyncio.shield(self._opening)
        except TimeoutError:
            raise StorageUnavailable(f"redis: no connection within {self.timeout_s:g} s") from None

    async def _connect(self) -> _Protocol:
        protocol = await self._dial()
        try:
            for command in self.address.handshake():
                await protocol.send(command)
        except BaseException:
            protocol.abort("redis: the login did not complete")
            raise
        self.connections += 1
        self._protocol = protocol
        return protocol

    async def _dial(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address
        factory = lambda: _Protocol(  # noqa: E731
            self.reply_error, self.counts, self.timeout_s, self.max_in_flight
        )
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
        return protocol

    async def close(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
