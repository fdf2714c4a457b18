"""The gate (`app.web.gate`): each request is matched to its route as FastAPI's router matches it,
and refused or let in by that route's declared policy and body limit before its body is read, the
same served plainly, under uvicorn's `--root-path`, mounted in another ASGI app or behind a proxy
that keeps or strips the prefix."""

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from app.main import ActivationApp, create_app
from app.settings import Settings
from app.web import auth, gate, head_limit
from app.web.auth import Access
from app.web.webhooks import clerk
from tests.conftest import (
    API_KEY,
    AUTH,
    FakeClock,
    concrete,
    served_routes,
    sign,
    store_of,
    uvicorn_thread,
)
from tests.support.constants import USER
from tests.support.flow import created_event
from tests.support.gate import CHUNK, Body, routed_only
from tests.support.marks import embedded_only

ROOT = "/activation"
ACTION = {"user_id": USER, "action": "first_project_created", "id": "evt_gate"}
NO_KEY: dict[str, dict[str, str]] = {
    "missing": {},
    "wrong": {"Authorization": "Bearer not-the-key"},
    "the key in another scheme": {"Authorization": f"Token {API_KEY}"},
}


# --- every route declares its policy ------------------------------------------------------------


def test_every_route_declares_an_access_policy() -> None:
    """Default deny: a route of ours without a declared policy fails here (and is refused)."""
    app = create_app()
    undeclared = [
        getattr(route, "path", route) for route in gate.leaves(app.routes) if policy(route) is None
    ]
    assert undeclared == []
    framework = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    for route in gate.leaves(app.routes):
        if getattr(route, "path", None) in framework:
            assert policy(route) == auth.Policy(Access.PUBLIC)


def test_the_declared_policies() -> None:
    """What each route of the service demands, and the largest body it reads."""
    app = create_app()
    declared = {
        (route.path, method): (found.access.value, found.max_body_bytes)  # type: ignore[attr-defined]
        for route in gate.leaves(app.routes)
        if (found := policy(route)) is not None
        for method in route.methods or ()  # type: ignore[attr-defined]
        if method != "HEAD" and not route.path.startswith(("/docs", "/redoc", "/openapi"))  # type: ignore[attr-defined]
    }
    kib, mib = 1024, 1024 * 1024
    assert declared == {
        ("/health", "GET"): ("public", 64 * kib),
        ("/health/ready", "GET"): ("public", 64 * kib),
        ("/webhooks/clerk", "POST"): ("public", mib),
        ("/webhooks/resend", "POST"): ("public", mib),
        ("/v1/actions", "POST"): ("api_key_or_clerk_session", 5 * mib),
        ("/v1/actions", "OPTIONS"): ("cors_preflight", 0),  # a browser's preflight: no body
        ("/v1/users/{user_id}", "GET"): ("api_key", 64 * kib),
        ("/v1/loops", "GET"): ("api_key", 64 * kib),
        ("/v1/actions/health", "GET"): ("api_key", 64 * kib),
        ("/unsubscribe", "GET"): ("public", 64 * kib),
        ("/unsubscribe", "POST"): ("public", 64 * kib),
        ("/dashboard", "GET"): ("operator", 64 * kib),
        ("/outbox", "GET"): ("operator", 64 * kib),
        ("/dashboard/login", "POST"): ("public", 4 * kib),
        ("/dashboard/logout", "POST"): ("public", 4 * kib),
        ("/metrics", "GET"): ("metrics", 64 * kib),
    }


def policy(route: BaseRoute) -> auth.Policy | None:
    return auth.policy_of(gate.endpoint_of(route))


@embedded_only
async def test_a_route_without_a_declared_policy_is_refused_to_everyone(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)

    async def undeclared() -> dict[str, str]:
        return {"secret": "stuff"}

    app.add_api_route("/undeclared", undeclared)
    async with serving(app) as http:
        for headers in ({}, AUTH):
            response = await http.get("/undeclared", headers=headers)
            assert response.status_code == 403
            assert "secret" not in response.text


# --- the API key, however the app is served ----------------------------------------------------


def v1_routes(app: FastAPI) -> list[tuple[str, str]]:
    routes = sorted(route for route in served_routes(app) if route[0].startswith("/v1/"))
    assert ("/v1/actions", "POST") in routes
    assert ("/v1/users/{user_id}", "GET") in routes
    return routes


async def assert_the_key_is_required(http: httpx.AsyncClient, app: FastAPI, prefix: str) -> None:
    """Every /v1 route refuses a missing or wrong key and stores nothing; the key opens them."""
    for path, method in v1_routes(app):
        for name, headers in NO_KEY.items():
            url = prefix + concrete(path)
            response = await http.request(method, url, json=ACTION, headers=headers)
            assert response.status_code == 401, (prefix, method, path, name, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    user_url = f"{prefix}/v1/users/{USER}"
    assert (await http.get(user_url, headers=AUTH)).status_code == 404  # nothing was stored
    response = await http.post(f"{prefix}/v1/actions", json=ACTION, headers=AUTH)
    assert response.status_code == 202, response.text  # the route is there under this prefix
    assert (await http.get(user_url, headers=AUTH)).status_code == 200


@asynccontextmanager
async def serving(
    app: FastAPI, *, root_path: str = "", client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan running, and a client for it (as a proxy's root path, if given)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path=root_path, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@embedded_only
async def test_the_key_is_required_served_plainly(settings: Settings, clock: FakeClock) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app) as http:
        await assert_the_key_is_required(http, app, "")


@embedded_only
async def test_the_key_is_required_under_uvicorns_root_path(
    settings: Settings, clock: FakeClock
) -> None:
    """uvicorn prefixes every path with the root path (the proxy in front stripped it): the key
    check used to compare that raw path with /v1/ and let every action in."""
    app = create_app(settings, clock=clock)
    with uvicorn_thread(app, root_path=ROOT) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            await assert_the_key_is_required(http, app, "")


@embedded_only
async def test_the_key_is_required_when_mounted_in_another_app(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    parent = Starlette(routes=[Mount(ROOT, app=app)])
    async with app.router.lifespan_context(app):  # Starlette does not run a mounted app's own
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            await assert_the_key_is_required(http, app, ROOT)
            assert (await http.post("/v1/actions", json=ACTION, headers=AUTH)).status_code == 404


@embedded_only
@pytest.mark.parametrize("prefix", [ROOT, ""], ids=["path keeps the prefix", "path stripped"])
async def test_the_key_is_required_behind_a_proxy_prefix(
    settings: Settings, clock: FakeClock, prefix: str
) -> None:
    """An ASGI server told the proxy's prefix (`root_path`), with the path as the proxy sent it."""
    app = create_app(settings, clock=clock)
    async with serving(app, root_path=ROOT) as http:
        await assert_the_key_is_required(http, app, prefix)


@embedded_only
async def test_a_refused_action_stores_nothing(settings: Settings, clock: FakeClock) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app, root_path=ROOT) as http:
        for headers in NO_KEY.values():
            response = await http.post(f"{ROOT}/v1/actions", json=ACTION, headers=headers)
            assert response.status_code == 401
        record = await store_of(app).queries.snapshot(USER)
    assert not record.known
    assert record.timeline == []


# --- header limits ------------------------------------------------------------------------------


def padding(total_bytes: int) -> dict[str, str]:
    """Headers of `total_bytes` together (names and values), in 1 KiB values."""
    values = {f"x-pad-{i:03d}": "p" * (1024 - 9) for i in range(total_bytes // 1024)}
    return values | {"x-pad-end": "p" * (total_bytes % 1024)}


@embedded_only
async def test_headers_over_32_kib_are_refused_with_431_before_any_route(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    body = json.dumps(created_event()).encode()
    async with serving(app) as http:
        near = await http.get("/health", headers=padding(gate.MAX_HEADER_BYTES - 1024))
        over = await http.get("/health", headers=padding(gate.MAX_HEADER_BYTES + 1))
        signed = sign(body) | padding(gate.MAX_HEADER_BYTES)
        webhook = await http.post("/webhooks/clerk", content=body, headers=signed)
        stored = await store_of(app).users.get(USER)
    assert near.status_code == 200
    assert over.status_code == webhook.status_code == 431
    assert over.json() == {"error": f"request headers over {gate.MAX_HEADER_BYTES} bytes"}
    assert over.headers["connection"] == "close"
    assert stored is None  # the route never ran


def unfinished_head(url: str, pad_bytes: int) -> bytes:
    """What the server answers a request whose head has sent `pad_bytes` of headers, in 4 KiB
    writes, and not ended; b"" when it closes without answering, after 5 s with no answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: testserver\r\n")
        with contextlib.suppress(OSError):  # the server may close while we still write
            for i in range(pad_bytes // 4096):
                sock.sendall(b"x-pad-%04d: " % i + b"p" * (4096 - 14) + b"\r\n")
                time.sleep(0.002)  # separate reads, as a slow client's
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b"no answer"


@embedded_only
async def test_uvicorn_serving_as_activation_serve_cuts_off_a_head_past_32_kib(
    settings: Settings, clock: FakeClock
) -> None:
    """uvicorn on httptools buffers a head of any size before the app is called; served as
    `activation serve` serves (`app.web.head_limit`), a head still unfinished past
    MAX_HEAD_BYTES is answered 431 and the connection closed, without waiting for the rest."""
    app = create_app(settings, clock=clock)
    with uvicorn_thread(app, http=head_limit.PROTOCOL) as url:
        answer = await asyncio.to_thread(unfinished_head, url, 48 * 1024)
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            fine = await http.get("/health", headers=padding(16 * 1024))
    assert head_limit.MAX_HEAD_BYTES == gate.MAX_HEADER_BYTES
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
    assert answer.endswith(b'{"error":"request headers over 32768 bytes"}')
    assert fine.status_code == 200


# --- body limits --------------------------------------------------------------------------------


def every_route(app: FastAPI) -> list[tuple[str, str, int]]:
    """(path, method, body limit) of every route, HEAD aside."""
    return sorted(
        (route.path, method, found.max_body_bytes)  # type: ignore[attr-defined]
        for route in gate.leaves(app.routes)
        if (found := policy(route)) is not None
        for method in route.methods or ()  # type: ignore[attr-defined]
        if method != "HEAD"
    )


@embedded_only
async def test_every_route_refuses_a_declared_body_over_its_limit_unread(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app) as http:
        for path, method, limit in every_route(app):
            body = Body(limit + 1)
            headers = AUTH | {"content-length": str(limit + 1)}
            url = concrete(path)
            response = await http.request(method, url, content=body, headers=headers)
            assert response.status_code == 413, (method, path, response.text)
            assert response.json() == {"error": f"body over {limit} bytes"}
            assert body.pulled_bytes == 0, (method, path)


@embedded_only
@pytest.mark.parametrize("hot", [True, False], ids=["hot", "routed"])
async def test_a_streamed_body_is_cut_off_at_the_limit_unbuffered(
    settings: Settings, clock: FakeClock, hot: bool
) -> None:
    """No Content-Length: the body is read as it comes, and not past the limit. Routes that read
    a body answer 413 (hot or routed alike); the others never read it."""
    app = create_app(settings, clock=clock)
    app = app if hot else routed_only(app)
    async with serving(app) as http:
        for path, method, limit in every_route(app):
            body = Body(limit + 4 * len(CHUNK))
            url = concrete(path)
            response = await http.request(method, url, content=body, headers=AUTH)
            assert body.pulled_bytes <= limit + len(CHUNK), (method, path)
            if body.pulled_bytes > limit:
                assert response.status_code == 413, (method, path, response.text)
                assert response.json() == {"error": f"body over {limit} bytes"}
            else:
                assert body.pulled_bytes == 0, (method, path)  # a route that reads no body
        record = await store_of(app).queries.snapshot(USER)
    assert not record.known


@embedded_only
async def test_the_login_form_is_refused_past_4_kib_before_anything_is_read(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app) as http:
        body = Body(400 * 1024 * 1024)  # the 400 MB that used to be read into memory
        headers = {"content-length": str(body.total_bytes), "content-type": "text/plain"}
        response = await http.post("/dashboard/login", content=body, headers=headers)
        small = await http.post("/dashboard/login", data={"key": API_KEY + "x" * 3000})
    assert response.status_code == 413
    assert response.json() == {"error": "body over 4096 bytes"}
    assert body.pulled_bytes == 0
    assert small.status_code == 401  # a form under 4 KiB is read, and the key checked


@embedded_only
async def test_actions_accept_a_full_batch_and_refuse_more(
    settings: Settings, clock: FakeClock
) -> None:
    """5 MiB holds 1,000 actions with 4 KiB of properties each."""
    batch = [
        {
            "user_id": USER,
            "action": "project_created",
            "id": f"evt_{i:04d}",
            "occurred_at": "2026-11-30T12:00:00.000Z",
            "properties": {"note": "n" * 4000},
        }
        for i in range(1000)
    ]
    content = json.dumps({"actions": batch}).encode()
    headers = AUTH | {"content-type": "application/json"}
    app = create_app(settings, clock=clock)
    async with serving(app) as http:
        accepted = await http.post("/v1/actions", content=content, headers=headers)
        too_much = await http.post(
            "/v1/actions", content=content + b" " * (6 * 1024 * 1024), headers=headers
        )
    assert accepted.status_code == 202, accepted.text[:200]
    assert accepted.json() == {"accepted": 1000, "duplicates": 0}
    assert too_much.status_code == 413


@embedded_only
async def test_unmatched_paths_and_methods_reach_fastapi_unread(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app) as http:
        answers = []
        for method, path in [("GET", "/nowhere"), ("GET", clerk.CLERK_PATH), ("PUT", "/health")]:
            body = Body(1024)
            answers.append((await http.request(method, path, content=body)).status_code)
            assert body.pulled_bytes == 0
        slash = await http.post("/v1/actions/", json=ACTION)  # redirected, never recorded
        record = await store_of(app).queries.snapshot(USER)
    assert answers == [404, 405, 405]
    assert slash.status_code == 307
    assert not record.known


# --- the hot routes still skip FastAPI ------------------------------------------------------------


@embedded_only
async def test_a_hot_route_is_served_hot_under_every_prefix(
    settings: Settings, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock)
    assert isinstance(app, ActivationApp)
    event = json.dumps(created_event()).encode()
    async with serving(app, root_path=ROOT) as http:
        for path in (f"{ROOT}{clerk.CLERK_PATH}", clerk.CLERK_PATH):
            response = await http.post(path, content=event, headers=sign(event))
            assert response.status_code == 200
    assert not app.traffic.busy()


def test_a_hot_route_that_is_no_route_of_the_app_is_refused_at_startup() -> None:
    app = create_app()
    app.hot_routes = {("POST", "/nowhere"): clerk.receive_clerk_webhook}
    with pytest.raises(RuntimeError, match="not a route"):
        app.build_middleware_stack()


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_websockets_are_refused(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/actions", "root_path": "", "headers": []}
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
