"""app.storage.redis_client under the faults a connection meets: a scripted server closes, hangs,
cuts a reply, answers what nobody asked, dribbles, restarts; callers are cancelled; too many come
at once.

Every case is bounded in time (`scripted`), so a regression fails instead of hanging, and runs
on asyncio's loop and again on uvloop's (`test_under_uvloop`), whose transports uvicorn uses."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from app.errors import StorageError, StorageUnavailable
from app.storage.connections import classify_reply_error
from app.storage.redis_client import Address, Wire
from tests.standins.scripted_redis import (
    Script,
    ScriptedRedis,
    answer,
    answer_then,
    black_hole,
    close_at_once,
    close_mid_reply,
    dribble,
    error_then_close,
    login_then,
)

TIMEOUT_S = 0.5  # the wire's timeout where a test waits for it
PATIENT_S = 5.0  # the wire's timeout where a test shows a failure comes without waiting for it
FAST_S = 1.0  # well inside PATIENT_S: what "fails fast" means here
SLACK_S = 0.5  # scheduling on a busy machine
BOUND_S = 10.0  # no test runs longer, whatever breaks


@contextlib.asynccontextmanager
async def scripted(
    *scripts: Script, password: str = "", timeout_s: float = TIMEOUT_S, **options: Any
) -> AsyncIterator[tuple[ScriptedRedis, Wire]]:
    """A scripted server and a wire to it (logging in with `password`, if any), within BOUND_S;
    the loop must report no error (such as an exception in one of its callbacks)."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    async with asyncio.timeout(BOUND_S), ScriptedRedis(*scripts) as server:
        login = f":{password}@" if password else ""
        address = Address.from_url(f"redis://{login}127.0.0.1:{server.port}")
        wire = Wire(address, timeout_s, classify_reply_error, **options)
        try:
            yield server, wire
        finally:
            await wire.close()
    assert not errors, errors


async def fails_within(limit_s: float, call: Awaitable[Any]) -> StorageError:
    """The error the call raised, which it had to raise within `limit_s`."""
    with pytest.raises(StorageError) as raised:
        async with asyncio.timeout(limit_s):
            await call
    return raised.value


# --- the server closes, hangs or cuts a reply -------------------------------------------------


async def test_a_server_that_accepts_and_closes_fails_fast() -> None:
    async with scripted(close_at_once, timeout_s=PATIENT_S) as (server, wire):
        error = await fails_within(FAST_S, wire.call("PING"))
        assert isinstance(error, StorageUnavailable)
        assert len(server.peers) <= 2  # a command never written is sent once more, no more


async def test_a_black_hole_fails_by_the_deadline_and_the_next_call_reconnects() -> None:
    async with scripted(answer_then(1, black_hole), answer) as (server, wire):
        assert await wire.call("PING") == "PONG"
        error = await fails_within(TIMEOUT_S + SLACK_S, wire.call("ECHO", "lost"))
        assert "no reply within 0.5 s" in str(error)
        await asyncio.wait_for(server.peers[0].client_closed.wait(), SLACK_S)  # aborted
        assert await wire.call("PING") == "PONG"
        assert wire.connections == 2


async def test_a_reply_cut_in_half_fails_fast_and_the_next_call_reconnects() -> None:
    async with scripted(close_mid_reply, answer, timeout_s=PATIENT_S) as (server, wire):
        error = await fails_within(FAST_S, wire.call("ECHO", "hello world"))
        assert isinstance(error, StorageUnavailable)
        assert "connection lost" in str(error)
        assert await wire.call("PING") == "PONG"
        assert wire.connections == 2
        assert server.received() == [["ECHO", "hello world"], ["PING"]]  # the lost one not resent


async def test_an_error_then_close_like_redis_at_maxclients_fails_fast() -> None:
    async with scripted(error_then_close, timeout_s=PATIENT_S) as (_, wire):
        for _ in range(3):
            error = await fails_within(FAST_S, wire.call("PING"))
            assert "max number of clients reached" in str(error)  # the operator sees why


async def test_a_connection_closed_between_open_and_send_is_reopened_once() -> None:
    # The login is answered, then the server closes: the wire has a connection, already closed.
    closing = login_then(b"+OK\r\n", close_at_once)
    async with scripted(closing, answer, password="pw", timeout_s=PATIENT_S) as (server, wire):
        async with asyncio.timeout(FAST_S):
            assert await wire.call("PING") == "PONG"
        assert wire.connections == 2
        assert server.received() == [["AUTH", "pw"], ["AUTH", "pw"], ["PING"]]


async def test_a_command_on_a_connection_always_closed_after_login_never_hangs() -> None:
    closing = login_then(b"+OK\r\n", close_at_once)
    async with scripted(closing, password="pw", timeout_s=PATIENT_S) as (server, wire):
        error = await fails_within(FAST_S, wire.call("PING"))
        assert isinstance(error, StorageUnavailable)
        assert len(server.peers) == 2  # opened, then reopened once
        assert ["PING"] not in server.received()


async def test_a_refused_login_closes_the_connection_and_raises() -> None:
    refused = login_then(b"-WRONGPASS invalid username-password pair\r\n", black_hole)
    async with scripted(refused, password="wrong", timeout_s=PATIENT_S) as (server, wire):
        error = await fails_within(FAST_S, wire.call("PING"))
        assert isinstance(error, StorageUnavailable)
        assert "WRONGPASS" in str(error)
        await asyncio.wait_for(server.peers[0].client_closed.wait(), FAST_S)
        assert server.received() == [["AUTH", "wrong"]]


# --- replies nobody asked for, and replies that take their time ---------------------------------


async def test_an_unsolicited_reply_closes_the_connection() -> None:
    async with scripted(answer) as (server, wire):
        assert await wire.call("PING") == "PONG"
        server.peers[0].send(b"+surprise\r\n")
        await asyncio.wait_for(server.peers[0].client_closed.wait(), FAST_S)
        assert await wire.call("ECHO", "next") == "next"
        assert wire.connections == 2


async def test_an_unsolicited_reply_is_never_matched_to_a_command_not_yet_written() -> None:
    async with scripted(answer) as (server, wire):
        assert await wire.call("PING") == "PONG"
        server.peers[0].send(b"+surprise\r\n")  # in the client's socket buffer now
        # On asyncio's loop the task queues its command, then the loop reads the surprise, then
        # comes the turn's write (on uvloop the read may come first: the case above).
        reply = asyncio.ensure_future(wire.call("ECHO", "mine"))
        assert await reply == "mine"
        assert wire.connections == 2
        assert ["ECHO", "mine"] not in server.peers[0].received  # resent only on the new one


async def test_a_reply_dribbled_byte_by_byte_within_the_deadline_succeeds() -> None:
    async with scripted(dribble(0.01), timeout_s=1.0) as (_, wire):
        replies = await asyncio.gather(wire.call("ECHO", "hello world"), wire.call("PING"))
        assert list(replies) == ["hello world", "PONG"]  # 25 bytes, 0.25 s
        assert wire.connections == 1


# --- a restart --------------------------------------------------------------------------------


async def test_a_restart_fails_fast_then_the_next_call_reconnects() -> None:
    async with scripted(answer, timeout_s=PATIENT_S) as (server, wire):
        assert await wire.call("PING") == "PONG"
        await server.stop()
        for _ in range(2):  # the lost connection, then a refused one
            error = await fails_within(FAST_S, wire.call("PING"))
            assert isinstance(error, StorageUnavailable)
        await server.start()  # the same port
        assert await wire.call("PING") == "PONG"
        assert wire.connections == 2


# --- deadlines are each command's own ----------------------------------------------------------


async def test_a_cancelled_caller_does_not_disarm_its_batch_mates_deadline() -> None:
    async with scripted(answer_then(1, black_hole)) as (server, wire):
        assert await wire.call("PING") == "PONG"
        batch = [asyncio.ensure_future(wire.call("ECHO", str(n))) for n in range(3)]
        await asyncio.sleep(0.05)  # written, in one write
        assert len(server.received()) == 4
        batch[-1].cancel()
        results = await asyncio.wait_for(
            asyncio.gather(*batch[:2], return_exceptions=True), TIMEOUT_S + SLACK_S
        )
        assert all(isinstance(result, StorageUnavailable) for result in results), results
        assert batch[-1].cancelled()


async def test_a_cancelled_callers_slot_keeps_the_replies_in_order() -> None:
    async with scripted(dribble(0.005)) as (_, wire):
        first = asyncio.ensure_future(wire.call("ECHO", "first"))
        second = asyncio.ensure_future(wire.call("ECHO", "second"))
        await asyncio.sleep(0.02)  # written; the first reply is on its way
        first.cancel()
        assert await second == "second"
        assert await wire.call("ECHO", "third") == "third"


# --- a bounded number of commands in flight ----------------------------------------------------


async def test_callers_beyond_the_limit_wait_and_fail_by_their_own_deadline() -> None:
    async with scripted(black_hole, max_in_flight=2) as (server, wire):
        started = time.monotonic()
        calls = [wire.call("ECHO", str(n)) for n in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert [str(result) for result in results] == 2 * ["redis: no reply within 0.5 s"] + 3 * [
            "redis: too many commands in flight"
        ]
        assert server.received() == [["ECHO", "0"], ["ECHO", "1"]]  # the others never left


async def test_callers_beyond_the_limit_all_complete_in_order() -> None:
    async with scripted(answer, max_in_flight=2) as (server, wire):
        done: list[int] = []

        async def echo(n: int) -> str:
            reply: str = await wire.call("ECHO", str(n))
            done.append(n)
            return reply

        replies = await asyncio.gather(*(echo(n) for n in range(50)))
        assert replies == [str(n) for n in range(50)]
        assert done == list(range(50))
        assert server.received() == [["ECHO", str(n)] for n in range(50)]
        assert wire.counts.writes >= 25  # never more than 2 in flight


async def test_a_caller_that_gave_up_waiting_for_room_is_never_sent() -> None:
    async with scripted(answer_then(1, black_hole), max_in_flight=1) as (server, wire):
        assert await wire.call("PING") == "PONG"
        occupant = asyncio.ensure_future(wire.call("ECHO", "occupant"))
        waiting = asyncio.ensure_future(wire.call("ECHO", "gave up"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await fails_within(TIMEOUT_S + SLACK_S, occupant)
        assert ["ECHO", "gave up"] not in server.received()


# --- the same on uvloop --------------------------------------------------------------------------

CASES: list[Callable[[], Awaitable[None]]] = [
    test_a_server_that_accepts_and_closes_fails_fast,
    test_a_black_hole_fails_by_the_deadline_and_the_next_call_reconnects,
    test_a_reply_cut_in_half_fails_fast_and_the_next_call_reconnects,
    test_an_error_then_close_like_redis_at_maxclients_fails_fast,
    test_a_connection_closed_between_open_and_send_is_reopened_once,
    test_a_command_on_a_connection_always_closed_after_login_never_hangs,
    test_a_refused_login_closes_the_connection_and_raises,
    test_an_unsolicited_reply_closes_the_connection,
    test_an_unsolicited_reply_is_never_matched_to_a_command_not_yet_written,
    test_a_reply_dribbled_byte_by_byte_within_the_deadline_succeeds,
    test_a_restart_fails_fast_then_the_next_call_reconnects,
    test_a_cancelled_caller_does_not_disarm_its_batch_mates_deadline,
    test_a_cancelled_callers_slot_keeps_the_replies_in_order,
    test_callers_beyond_the_limit_wait_and_fail_by_their_own_deadline,
    test_callers_beyond_the_limit_all_complete_in_order,
    test_a_caller_that_gave_up_waiting_for_room_is_never_sent,
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_under_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await case()

    uvloop.run(run())
