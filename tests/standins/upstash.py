"""An Upstash-REST-compatible stand-in for tests, forwarding to a real Redis, and `serve()`.

This module owns two things:

* `create_standin(redis_url, token)`: an ASGI app speaking the subset of Upstash's Redis REST
  API the `upstash-redis` client uses:

  - ``POST /`` with a JSON array (``["SET", "k", "v", "EX", 100]``) runs one command:
    ``200 {"result": ...}``, or ``400 {"error": "<Redis error text>"}`` on a Redis error reply.
  - ``POST /pipeline`` with a JSON array of commands runs them back to back, not atomically:
    ``200 [{"result": ...} | {"error": ...}, ...]``.
  - ``POST /multi-exec`` runs them inside MULTI/EXEC, answering in the same shape. A command
    Redis rejects while queueing aborts the whole transaction: ``400 {"error": "EXECABORT ..."}``
    (Redis's own reply; not checked against the hosted service).
  - ``Authorization: Bearer <token>`` is required, else ``401 {"error": "Unauthorized"}``.
  - With ``Upstash-Encoding: base64`` every string in the result, at any depth, is base64; the
    status reply ``OK`` stays ``"OK"``. Without it strings are UTF-8 text (undecodable bytes are
    replaced). Integers stay integers, nil is ``null``. Error texts are never encoded.
  - Numbers in a request are passed to Redis exactly as written in the JSON (``1.5`` → ``"1.5"``).
  - Every answer carries an ``Upstash-Sync-Token`` header with an increasing number.

  Error texts are what the Redis server sent, code included (``ERR ...``, ``NOSCRIPT ...``,
  ``WRONGTYPE ...``): redis-py strips known codes off into exception classes, and this module
  puts them back.

* `serve(app)`: runs any ASGI app (this one, or another stand-in) under uvicorn on a free port in
  a background thread with its own event loop, yielding its base URL ``http://127.0.0.1:PORT``.

Knobs on ``app.state`` (plain attributes; set them from the test, `reset()` restores them):

* ``fault``: ``None`` (default) answers normally. ``"hang"`` answers nothing until the client
  disconnects (e.g. its timeout fires) or ``hang_s`` seconds pass, then a 504. A string of digits
  such as ``"500"`` or ``"503"`` answers that status with an HTML body, like a proxy in front of
  Upstash would. ``"error:<text>"`` answers ``400 {"error": "<text>"}``, an error of Upstash's
  own such as ``ERR max requests limit exceeded ...``. Faults apply before the token check. For
  "connection refused", point the client at a free port nobody listens on instead.
* ``fault_remaining``: ``None`` (default) keeps the fault on; an int N applies it to the next N
  requests only, then clears ``fault`` (e.g. fail once, then let the client's retry through).
* ``hang_s``: the longest a ``"hang"`` lasts (default 30.0 seconds).
* ``requests``: how many HTTP requests arrived (every path and outcome): count round trips.
* ``received``: the last 1000 accepted request bodies as ``(path, body)``, numbers as strings.
* ``local``: ``False`` (default) behaves as Upstash. ``True`` behaves as the local
  Upstash-compatible servers people develop against offline (e.g.
  @humanwhocodes/upstash-redis-server) do in front of a stock Redis: scripts go to Redis as sent,
  so Redis refuses the ``allow-key-locking`` flag (``ERR Unexpected flag in script shebang``);
  ``Upstash-Encoding: base64`` is ignored (strings come back as text); and a ``NOSCRIPT`` error
  is answered ``500 {"error": "Failed to execute Redis command: NOSCRIPT ..."}``. Other errors
  stay ``400`` with Redis's text.
* ``flagged_scripts``: the SHA1s of scripts run or loaded with Upstash's ``allow-key-locking``
  flag (below) since the last `reset()`; ``unflagged_scripts``: those without it (an
  ``EVALSHA`` of a SHA never seen flagged counts here). A test that every script is sent flagged
  asserts the first is not empty and the second is.

Upstash's script flag: on Upstash a script whose first line is a shebang carrying
``allow-key-locking`` (``#!lua flags=allow-key-locking``) locks only the keys in ``KEYS``; real
Redis rejects that flag (``ERR Unexpected flag in script shebang``). So for ``EVAL``/``EVAL_RO``
and ``SCRIPT LOAD`` of such a script (alone, in ``/pipeline`` or in ``/multi-exec``) the stand-in
drops the flag before forwarding (other flags stay; with none left the line becomes a bare
``#!lua``, so Lua's line numbers and Redis's shebang semantics do not change) and remembers the
SHA1 of the flagged source, which is what Upstash and the client know the script by, against
the SHA1 Redis knows. ``EVALSHA``/``EVALSHA_RO`` and ``SCRIPT EXISTS`` of a flagged SHA are
translated to Redis's; ``SCRIPT LOAD`` answers the flagged SHA. A flagged SHA the stand-in never
saw goes to Redis unchanged and gets Redis's own ``NOSCRIPT`` error, so the client falls back to
``EVAL`` as it would on Upstash. The SHA table mirrors Redis's script cache, so `reset()` keeps
it; after a ``SCRIPT FLUSH`` Redis answers ``NOSCRIPT`` and the client's ``EVAL`` refills both.
Upstash's own rule that such a script touch only keys in ``KEYS`` is not enforced here.
"""

import asyncio
import hashlib
import hmac
import json
import threading
import time
from base64 import b64encode
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from itertools import count
from typing import Any, TypeAlias

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp

Command: TypeAlias = list[str]
Reply: TypeAlias = bytes | int | list["Reply"] | ResponseError | None
Json: TypeAlias = str | int | list["Json"] | dict[str, "Json"] | None

DEFAULT_HANG_S = 30.0
GRACEFUL_SHUTDOWN_S = 5
RECEIVED_LIMIT = 1000
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
KEY_LOCKING_FLAG = "allow-key-locking"
SCRIPT_RUNNERS = frozenset({"EVAL", "EVAL_RO"})
SHA_RUNNERS = frozenset({"EVALSHA", "EVALSHA_RO"})


class BadRequest(ValueError):
    """The request body is not what the REST API accepts."""


def create_standin(redis_url: str, token: str) -> FastAPI:
    """The stand-in app; it connects to `redis_url` in its lifespan and closes at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # RESP2, as Upstash answers: a score is a string, never a double
        app.state.redis = aioredis.Redis.from_url(redis_url, decode_responses=False, protocol=2)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.state.sync_tokens = count(1)
    app.state.script_shas = {}  # SHA1 of a flagged script -> SHA1 of what Redis was given
    reset(app)
    app.add_route("/", run_single, methods=["POST"])
    app.add_route("/pipeline", run_pipeline, methods=["POST"])
    app.add_route("/multi-exec", run_multi_exec, methods=["POST"])
    return app


def reset(app: FastAPI) -> None:
    """Put every knob back to its default: no fault, zero requests, nothing received."""
    app.state.fault = None
    app.state.fault_remaining = None
    app.state.hang_s = DEFAULT_HANG_S
    app.state.requests = 0
    app.state.received = deque(maxlen=RECEIVED_LIMIT)
    app.state.local = False
    app.state.flagged_scripts = set()
    app.state.unflagged_scripts = set()


# --- endpoints ------------------------------------------------------------------------------


async def run_single(request: Request) -> Response:
    return await handle(request, single=True)


async def run_pipeline(request: Request) -> Response:
    return await handle(request, single=False)


async def run_multi_exec(request: Request) -> Response:
    return await handle(request, single=False, transaction=True)


async def handle(request: Request, *, single: bool, transaction: bool = False) -> Response:
    """Count, maybe fault, check the token, parse, run, answer."""
    state = request.app.state
    state.requests += 1
    fault = take_fault(state)
    if fault is not None:
        return await answer_fault(request, fault, state.hang_s)
    if not authorized(request, state.token):
        return answer(state, 401, {"error": "Unauthorized"})
    try:
        body = parse_body(await request.body(), single=single)
    except BadRequest as exc:
        return answer(state, 400, {"error": str(exc)})
    state.received.append((request.url.path, body))
    base64 = request.headers.get("upstash-encoding", "").lower() == "base64" and not state.local
    if single:
        return await answer_single(state, body, base64)
    return await answer_batch(state, body, base64, transaction)


async def answer_single(state: State, command: Command, base64: bool) -> Response:
    [forwarded], answers = to_redis(state, [command])
    [reply] = with_answers(await exchange(state.redis, [forwarded]), answers)
    item = result_item(reply, base64)
    if state.local and "NOSCRIPT" in str(item.get("error", "")):
        return answer(state, 500, {"error": f"Failed to execute Redis command: {item['error']}"})
    return answer(state, 400 if "error" in item else 200, item)


async def answer_batch(
    state: State, commands: list[Command], base64: bool, transaction: bool
) -> Response:
    if not commands:
        return answer(state, 200, [])
    forwarded, answers = to_redis(state, commands)
    if transaction:
        replies = await exchange(state.redis, [["MULTI"], *forwarded, ["EXEC"]])
        executed = replies[-1]
        if isinstance(executed, ResponseError):
            return answer(state, 400, {"error": error_text(executed)})
        if not isinstance(executed, list):
            return answer(state, 400, {"error": EXECABORT})
        replies = executed
    else:
        replies = await exchange(state.redis, forwarded)
    replies = with_answers(replies, answers)
    return answer(state, 200, [result_item(reply, base64) for reply in replies])


def answer(state: State, status: int, content: Json) -> Response:
    sync_token = str(next(state.sync_tokens))
    return JSONResponse(content, status_code=status, headers={"Upstash-Sync-Token": sync_token})


# --- Upstash's allow-key-locking script flag ------------------------------------------------


def to_redis(state: State, commands: Sequence[Command]) -> tuple[list[Command], dict[int, bytes]]:
    """The commands as Redis can run them, and by index the replies Upstash would give instead
    (``SCRIPT LOAD`` of a flagged script answers the flagged SHA, not Redis's). A local server
    sends them as they are."""
    if state.local:
        return list(commands), {}
    forwarded, answers = [], {}
    for index, command in enumerate(commands):
        forwarded.append(unflag_command(state, command))
        if forwarded[-1] is not command and is_script_load(command):
            answers[index] = sha1_hex(command[2]).encode()
    return forwarded, answers


def unflag_command(state: State, command: Command) -> Command:
    """`command` with flagged scripts stripped and flagged SHAs translated (else itself)."""
    name = command[0].upper()
    if name in SCRIPT_RUNNERS and len(command) > 1:
        return replace_at(command, 1, unflag_script(state, command[1]))
    if name in SHA_RUNNERS and len(command) > 1:
        return replace_at(command, 1, redis_sha(state, command[1]))
    if is_script_load(command):
        return replace_at(command, 2, unflag_script(state, command[2]))
    if name == "SCRIPT" and len(command) > 2 and command[1].upper() == "EXISTS":
        shas = [state.script_shas.get(sha.lower(), sha) for sha in command[2:]]
        return command if shas == command[2:] else [*command[:2], *shas]
    return command


def is_script_load(command: Command) -> bool:
    return len(command) > 2 and command[0].upper() == "SCRIPT" and command[1].upper() == "LOAD"


def replace_at(command: Command, index: int, value: str) -> Command:
    return command if value is command[index] else [*command[:index], value, *command[index + 1 :]]


def unflag_script(state: State, script: str) -> str:
    """The script Redis accepts; records the flagged SHA against Redis's."""
    stripped = strip_key_locking(script)
    if stripped is None:
        state.unflagged_scripts.add(sha1_hex(script))
        return script
    flagged_sha = sha1_hex(script)
    state.script_shas[flagged_sha] = sha1_hex(stripped)
    state.flagged_scripts.add(flagged_sha)
    return stripped


def redis_sha(state: State, sha: str) -> str:
    """The SHA Redis knows a flagged script by; any other SHA unchanged."""
    known: str | None = state.script_shas.get(sha.lower())
    if known is None:
        state.unflagged_scripts.add(sha.lower())
        return sha
    state.flagged_scripts.add(sha.lower())
    return known


def strip_key_locking(script: str) -> str | None:
    """`script` without the ``allow-key-locking`` shebang flag, or None if it does not carry it.

    Other flags stay; with none left the first line is a bare ``#!lua``.
    """
    first_line, newline, body = script.partition("\n")
    words = first_line.split()
    if not words or words[0] != "#!lua":
        return None
    flags = [word for word in words[1:] if word.startswith("flags=")]
    kept = [flag for word in flags for flag in word.removeprefix("flags=").split(",")]
    if KEY_LOCKING_FLAG not in kept:
        return None
    kept = [flag for flag in kept if flag and flag != KEY_LOCKING_FLAG]
    others = [word for word in words[1:] if not word.startswith("flags=")]
    shebang = ["#!lua", *others, *([f"flags={','.join(kept)}"] if kept else [])]
    return " ".join(shebang) + newline + body


def sha1_hex(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # Redis's script name


def with_answers(replies: list[Reply], answers: dict[int, bytes]) -> list[Reply]:
    """Redis's replies, those in `answers` replaced unless Redis answered an error."""
    if not answers:
        return replies
    return [
        answers[i] if i in answers and not isinstance(reply, ResponseError) else reply
        for i, reply in enumerate(replies)
    ]


# --- faults and auth ------------------------------------------------------------------------


def take_fault(state: State) -> str | None:
    """The fault for this request, counting down `fault_remaining` if it is set."""
    fault: str | None = state.fault
    if fault is None or state.fault_remaining is None:
        return fault
    state.fault_remaining -= 1
    if state.fault_remaining <= 0:
        state.fault = None
        state.fault_remaining = None
    return fault


async def answer_fault(request: Request, fault: str, hang_s: float) -> Response:
    if fault == "hang":
        await wait_for_disconnect(request, hang_s)
        return HTMLResponse("<html><body>504 Gateway Time-out</body></html>", status_code=504)
    if fault.isdigit():
        status = int(fault)
        return HTMLResponse(f"<html><body>{status} injected fault</body></html>", status)
    if fault.startswith("error:"):  # an error reply of Upstash's own (its request limits)
        return JSONResponse({"error": fault.removeprefix("error:")}, 400)
    raise ValueError(f"unknown fault {fault!r}; use None, 'hang' or an HTTP status like '500'")


async def wait_for_disconnect(request: Request, limit_s: float) -> None:
    """Return once the client hangs up, or after `limit_s` seconds."""
    try:
        async with asyncio.timeout(limit_s):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return


def authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


# --- request parsing ------------------------------------------------------------------------


def parse_body(raw: bytes, *, single: bool) -> Any:
    """A command, or a list of commands; JSON numbers are kept as the text that was sent."""
    try:
        body = json.loads(raw, parse_int=str, parse_float=str, parse_constant=str)
    except ValueError as exc:
        raise BadRequest(f"ERR invalid JSON body: {exc}") from exc
    if single:
        return check_command(body)
    if not isinstance(body, list):
        raise BadRequest("ERR a pipeline must be a JSON array of commands")
    return [check_command(command) for command in body]


def check_command(command: object) -> Command:
    if not isinstance(command, list) or not command:
        raise BadRequest("ERR a command must be a non-empty JSON array")
    if not all(isinstance(arg, str) for arg in command):
        raise BadRequest("ERR command arguments must be strings or numbers")
    return command


# --- talking to Redis -----------------------------------------------------------------------


async def exchange(redis: aioredis.Redis, commands: Sequence[Command]) -> list[Reply]:
    """Send `commands` on one connection and read one raw reply each, errors as values.

    Going below `execute_command` keeps redis-py's response callbacks out: replies are exactly
    what the server sent (status replies as bytes, e.g. ``b"OK"``).
    """
    pool = redis.connection_pool
    connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        return [await read_reply(connection) for _ in commands]
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


async def read_reply(connection: AbstractConnection) -> Reply:
    try:
        reply: Reply = await connection.read_response()
    except ResponseError as exc:
        return exc
    return reply


def error_text(exc: ResponseError) -> str:
    """The error line as Redis sent it: redis-py moves some codes to `status_code` and leaves
    others in the text, differently from one version to the next; a code goes back only where
    the text lacks it."""
    code = getattr(exc, "status_code", None)
    message = str(exc)
    if not code or message.split(" ", 1)[0] == code:
        return message
    return f"{code} {message}"


def result_item(reply: Reply, base64: bool) -> dict[str, Json]:
    if isinstance(reply, ResponseError):
        return {"error": error_text(reply)}
    return {"result": encode(reply, base64)}


def encode(reply: Reply, base64: bool) -> Json:
    """Bytes as base64 (``OK`` excepted) or UTF-8 text, recursively; ints and nil unchanged."""
    if isinstance(reply, bytes):
        if base64 and reply != b"OK":
            return b64encode(reply).decode("ascii")
        return reply.decode("utf-8", errors="replace")
    if isinstance(reply, list):
        return [encode(item, base64) for item in reply]
    if isinstance(reply, ResponseError):
        return error_text(reply)
    return reply


# --- serving --------------------------------------------------------------------------------


@contextmanager
def serve(app: ASGIApp, host: str = "127.0.0.1", startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Run `app` under uvicorn on a free port in a thread; yield ``http://HOST:PORT``.

    The app's lifespan runs (startup before the URL is yielded, shutdown on exit). Requests
    still in flight at exit get `GRACEFUL_SHUTDOWN_S` seconds before uvicorn cancels them.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=0,
        log_level="warning",
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"serve-{type(app).__name__}", daemon=True)
    thread.start()
    try:
        port = wait_started(server, thread, startup_timeout_s)
        yield f"http://{host}:{port}"
    finally:
        stop(server, thread)


def wait_started(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> int:
    """Poll (bounded) until uvicorn is listening; return the port it was given."""
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not start within {timeout_s}s")
        time.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(GRACEFUL_SHUTDOWN_S + 5)
    if thread.is_alive():
        server.force_exit = True
        thread.join(5)
