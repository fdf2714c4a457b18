"""A stand-in Redis on 127.0.0.1 whose every connection does what the test scripted: answer,
hang, close, or misbehave in the ways a real server or the network does (tests/test_wire.py)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis


class Peer:
    """One accepted connection, as its script sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader(encoding="utf-8")
        self.received: list[list[str]] = []  # every command read so far
        self.client_closed = asyncio.Event()

    async def command(self) -> list[str] | None:
        """The next command the client sent, or None once it closed the connection."""
        while (command := self.parser.gets()) is False:
            data = await self.reader.read(65536)
            if not data:
                self.client_closed.set()
                return None
            self.parser.feed(data)
        self.received.append(command)
        return list(command)

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("closed")  # ends the script
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


def bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def reply_to(command: list[str]) -> bytes:
    """What a healthy Redis answers, for the few commands these tests send."""
    name = command[0].upper()
    if name == "PING":
        return b"+PONG\r\n"
    if name == "ECHO":
        return bulk(command[1])
    if name in ("AUTH", "SELECT"):
        return b"+OK\r\n"
    return b"-ERR unknown command '%s'\r\n" % name.encode()


async def answer(peer: Peer) -> None:
    """A healthy server: every command answered at once, in order."""
    while (command := await peer.command()) is not None:
        peer.send(reply_to(command))


async def black_hole(peer: Peer) -> None:
    """Reads every command and never answers: a hung server or a dropped route."""
    while await peer.command() is not None:
        pass


async def close_at_once(peer: Peer) -> None:
    peer.close()


async def error_then_close(peer: Peer) -> None:
    """What Redis does to a connection over `maxclients`: one error, then closed."""
    peer.send(b"-ERR max number of clients reached\r\n")
    peer.close()


def answer_then(count: int, then: Script) -> Script:
    """Answers the first `count` commands, then behaves as `then`."""

    async def script(peer: Peer) -> None:
        for _ in range(count):
            command = await peer.command()
            if command is None:
                return
            peer.send(reply_to(command))
        await then(peer)

    return script


async def close_mid_reply(peer: Peer) -> None:
    """Reads a command, sends half of a bulk-string reply and closes."""
    if await peer.command() is not None:
        peer.send(b"$11\r\nhello")
        peer.close()


def dribble(delay_s: float) -> Script:
    """Answers each command one byte at a time, `delay_s` between bytes."""

    async def script(peer: Peer) -> None:
        while (command := await peer.command()) is not None:
            for byte in reply_to(command):
                peer.send(bytes([byte]))
                await asyncio.sleep(delay_s)

    return script


def login_then(login_reply: bytes, then: Script) -> Script:
    """Answers the first command (the login) with `login_reply`, then behaves as `then`."""

    async def script(peer: Peer) -> None:
        if await peer.command() is not None:
            peer.send(login_reply)
            await then(peer)

    return script


class ScriptedRedis:
    """A TCP server on 127.0.0.1: connection n runs scripts[n], the last script for the rest."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.port = 0
        self.peers: list[Peer] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def received(self) -> list[list[str]]:
        """Every command read so far, over every connection."""
        return [command for peer in self.peers for command in peer.received]

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection, as a server that goes down does."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for peer in self.peers:
            peer.close()  # every script then ends at its next read or write
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        script = self.scripts[min(len(self.peers), len(self.scripts) - 1)]
        self.peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await script(peer)
        except ConnectionError:
            pass  # the client went away mid-script
        finally:
            peer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> "ScriptedRedis":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
