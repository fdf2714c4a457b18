"""Shared fixtures: a real redis-server, the Upstash REST stand-in, apps on each transport.

Redis: `TEST_REDIS_URL` if given, else a `redis-server` this session starts on a free port. Without
one, Redis tests skip with the reason, except under `CI=true`, where that is a failure.
"""

import copy
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from svix.webhooks import Webhook

from app.clock import Clock
from app.main import create_app
from app.settings import Settings
from tests.standins.redis_cluster import redis_cluster  # noqa: F401  (the fixture, for every test)
from tests.support.constants import FIXTURES, SHIPPED_LOOPS, USER

if TYPE_CHECKING:
    from app.delivery.worker import Worker
    from app.storage.store import Store
    from tests.standins.resend import ResendStandin

API_KEY = "test-activation-api-key"
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UPSTASH_TOKEN = "test-upstash-token"
TRANSPORTS = ["embedded", "redis", "upstash"]


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def clerk_event(kind: str, user_id: str = USER, **data: Any) -> dict[str, Any]:
    """Clerk's documented `user.<kind>` payload (a fresh copy), for `user_id`, `data` merged in."""
    event: dict[str, Any] = copy.deepcopy(load_fixture(f"clerk_user_{kind}.json"))
    event["data"]["id"] = user_id
    event["data"].update(data)
    return event


async def post_webhook(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST a body to the Clerk endpoint with the given headers, else signed now."""
    headers = sign(body) if headers is None else headers
    return await client.post("/webhooks/clerk", content=body, headers=headers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_redis(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def no_redis(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: TEST_REDIS_URL, or a redis-server started for this session."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    yield from run_redis_server(redis_binary(), tmp_path_factory.mktemp("redis"))


class RedisProcess:
    """A redis-server of the tests' own, that a test may stop and start again on the same port."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.workdir / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_redis(self.url)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        no_redis("no redis-server binary on PATH and no TEST_REDIS_URL given")
    return str(binary)


def run_redis_server(binary: str, workdir: Path) -> Iterator[str]:
    server = RedisProcess(binary, workdir)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server for a test that stops and restarts it."""
    server = RedisProcess(redis_binary(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def upstash_standin(redis_url: str) -> Iterator[tuple[str, FastAPI]]:
    """The Upstash REST stand-in, served on a real port, forwarding to the test Redis."""
    from tests.standins.upstash import create_standin, serve

    standin = create_standin(redis_url, UPSTASH_TOKEN)
    with serve(standin) as url:
        yield url, standin


@pytest.fixture
def key_prefix() -> str:
    """A prefix of its own for each test, so tests sharing one Redis never see each other."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, transport: str, key_prefix: str
) -> Callable[..., Settings]:
    """Settings for the test's transport; keyword arguments override any setting."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "key_prefix": key_prefix,
            "clerk_webhook_signing_secret": SIGNING_SECRET,
            "storage_timeout_s": 1.0,
            "loops_dir": SHIPPED_LOOPS,
            "activation_api_key": API_KEY,
            # tests drive the worker by hand (`app.state.runtime.worker.drain()`) on a fake clock
            "worker_in_process": False,
        }
        values.update(storage_settings(request, transport))
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


def storage_settings(request: pytest.FixtureRequest, transport: str) -> dict[str, Any]:
    if transport == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    if transport == "upstash":
        url, _ = request.getfixturevalue("upstash_standin")
        return {"upstash_redis_rest_url": url, "upstash_redis_rest_token": UPSTASH_TOKEN}
    return {}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class FakeClock:
    """An injected clock in epoch ms that tests move by hand. The last one a test made stands for
    the service's clock, and Svix's: `sign()` signs at its now unless told another time."""

    latest: "FakeClock | None" = None

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        FakeClock.latest = self

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(int(time.time() * 1000))


@pytest.fixture(autouse=True)
def _no_fake_clock_yet() -> Iterator[None]:
    """Each test starts signing on this machine's clock, until it makes a `FakeClock`."""
    FakeClock.latest = None
    yield
    FakeClock.latest = None


def service_now() -> datetime:
    """Now as Svix signs a webhook: on the service's clock (in production both keep the true
    time, Svix's own and Redis's), which in a test is its `FakeClock`, else this machine's."""
    clock = FakeClock.latest
    if clock is None:
        return datetime.now(tz=UTC)
    return datetime.fromtimestamp(clock() / 1000, tz=UTC)


def worker_of(app: FastAPI) -> "Worker":
    worker: Worker = app.state.runtime.worker
    return worker


def store_of(app: FastAPI) -> "Store":
    store: Store = app.state.runtime.store
    return store


@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[str]:
    """Real uvicorn serving `app` on a free 127.0.0.1 port in a thread (its options overridable,
    e.g. `root_path`, `log_config`); yields the base URL, stops the server on exit."""
    from tests.standins.upstash import stop, wait_started

    options = {"host": "127.0.0.1", "port": 0, "log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{wait_started(server, thread, 10.0)}"
    finally:
        stop(server, thread)


@asynccontextmanager
async def running(
    settings: Settings, clock: Clock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with its lifespan running, and a client for it: for tests with their own settings."""
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running (storage connected)."""
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def sign(
    body: bytes | str,
    *,
    secret: str = SIGNING_SECRET,
    msg_id: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """Svix headers for a body, signed by the real svix library, at `timestamp` (default: now on
    the service's clock, `service_now()`)."""
    text = body.decode() if isinstance(body, bytes) else body
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = timestamp or service_now()
    signature = Webhook(secret).sign(msg_id, timestamp, text)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(timestamp.timestamp())),
        "svix-signature": signature,
        "content-type": "application/json",
    }


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, documented or not, however it is mounted."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for item in contexts() if contexts is not None else [route]:
            methods = getattr(item, "methods", None)
            methods = methods or getattr(getattr(item, "original_route", None), "methods", None)
            found |= {(str(item.path), method) for method in methods or () if method != "HEAD"}
    for path, operations in app.openapi()["paths"].items():
        found |= {(path, method.upper()) for method in operations}
    return found


def concrete(path: str, value: str = USER) -> str:
    """A path with every `{parameter}` filled in (with a user id, unless told another value)."""
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = f"{path[:start]}{value}{path[end + 1 :]}"
    return path


# --- a small loops folder for the engine's end-to-end tests -------------------------------------

TEST_LOOPS = {
    "welcome": """
        type: activation
        opinion: welcome on the first project, nudge after 5 minutes, tips 2 days later
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: first_project_created, count: 1, timeout: 5m}
            action:
              type: email
              template: welcome
              personalization: {name: "{{ user.name }}"}
            on_timeout: {type: email, template: nudge}
          - delay: 2d
            action: {type: email, template: tips}
        """,
    "ten": """
        type: milestone
        opinion: celebrate the tenth project
        steps:
          - trigger: {type: action, action: project_created, count: 10}
            action: {type: email, template: ten}
        """,
}


@pytest.fixture
def loops_dir(tmp_path: Path) -> Path:
    """A small loops folder: `welcome` (5 m timeout, nudge, tips 2 d later) and `ten`."""
    (tmp_path / "templates").mkdir()
    for name in ("welcome", "nudge", "tips", "ten"):
        html = f"---\nsubject: {name}\n---\n<p>{name}</p>\n"
        (tmp_path / "templates" / f"{name}.html").write_text(html)
    for loop_id, text in TEST_LOOPS.items():
        (tmp_path / f"{loop_id}.yaml").write_text(dedent(text))
    return tmp_path


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """`folder` with each file (a path inside it: its text, dedented) written; returns it."""
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip())
    return folder


# --- the local Resend API ---------------------------------------------------------------------

SENDER = "Acme <hello@acme.dev>"


@pytest.fixture(scope="session")
def resend_server() -> Iterator["ResendStandin"]:
    """The Resend stand-in (tests/standins/resend.py), served on a real port for the session."""
    from tests.standins.resend import run_standin

    with run_standin() as standin:
        yield standin


@pytest.fixture
def resend(resend_server: "ResendStandin") -> "ResendStandin":
    """The stand-in with an empty inbox, no scripted faults and fresh counters."""
    resend_server.reset()
    return resend_server


def resend_settings(resend: "ResendStandin", **overrides: Any) -> dict[str, Any]:
    """Settings that send through the stand-in: no client-side rate limit, a short timeout."""
    return {
        "resend_api_key": resend.api_key,
        "resend_api_url": resend.url,
        "email_from": SENDER,
        "resend_rate_limit_per_s": 0,
        "resend_timeout_s": 1.0,
        **overrides,
    }
