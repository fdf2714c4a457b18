"""The hot routes (`app.web.gate`): served ahead of FastAPI's router, answering exactly as
the routed endpoint does, and still documented in OpenAPI."""

import asyncio
import gc
import json
from typing import Any

import pytest
from opentelemetry import trace

from app.main import ActivationApp, create_app, native_telemetry
from app.settings import Settings
from app.web.webhooks import clerk
from app.web.webhooks.svix import MAX_BODY_BYTES
from tests.conftest import API_KEY, AUTH, FakeClock, running, sign
from tests.support.flow import created_event
from tests.support.gate import answer, hot_and_routed, routed_only, serving
from tests.support.marks import embedded_only
from tests.support.storage import unreachable_storage


def signed(event: dict[str, Any] | bytes, **headers: str) -> dict[str, Any]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return {"content": body, "headers": sign(body) | headers}


def webhook_requests() -> list[dict[str, Any]]:
    """One of each answer: stored, duplicate, refused for several reasons, too large, ignored."""
    first = signed(created_event())
    other = created_event("user_other")
    other["type"] = "session.created"
    return [
        first,
        first,  # the same delivery again
        signed(created_event("user_2"), **{"svix-signature": "v1,AAAA"}),
        signed(b"not json"),
        signed(b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}"),
        signed(other),
        {"content": b"{}", "headers": {"content-type": "application/json"}},
    ]


@embedded_only
async def test_a_webhook_is_served_without_reaching_the_router(
    settings: Settings, clock: FakeClock
) -> None:
    async with serving(create_app(settings, clock=clock)) as (http, spy):
        hot = await http.post("/webhooks/clerk", **signed(created_event()))
        routed = await http.get("/health")

    assert hot.status_code == 200
    assert hot.json() == {"status": "created"}
    assert routed.status_code == 200
    assert "endpoint" in spy.scopes[1]  # what the router leaves on a scope it routed...
    assert "endpoint" not in spy.scopes[0]  # ...and the hot route never got there


@embedded_only
async def test_hot_and_routed_webhooks_answer_alike(settings: Settings, clock: FakeClock) -> None:
    answers = await hot_and_routed(settings, clock, "/webhooks/clerk", webhook_requests())
    assert answers["hot"] == answers["routed"]
    statuses = [status for status, *_ in answers["hot"]]
    assert statuses == [200, 200, 400, 400, 413, 200, 400]
    assert [body for _, body, *_ in answers["hot"]][:2] == [
        {"status": "created"},
        {"status": "duplicate"},
    ]


def action_requests() -> list[dict[str, Any]]:
    """Good and bad bodies for /v1/actions: each way FastAPI could parse or refuse them."""
    action = {"user_id": "user_a", "action": "first_project_created", "id": "evt_1"}
    as_json = {**AUTH, "content-type": "application/json"}

    def raw(body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
        headers = dict(AUTH) | ({"content-type": content_type} if content_type else {})
        return {"content": body, "headers": headers}

    return [
        {"json": action, "headers": AUTH},
        {"json": action, "headers": AUTH},  # the same id again: a duplicate
        {"json": {"actions": [action, {**action, "id": "evt_2"}]}, "headers": AUTH},
        {"json": {**action, "occurred_at": "2026-11-30T12:00:00Z", "id": "evt_3"}, "headers": AUTH},
        {"json": {"actions": []}, "headers": AUTH},
        {"json": {**action, "colour": "red"}, "headers": AUTH},
        {"json": {**action, "user_id": "no spaces please"}, "headers": AUTH},
        {"json": {**action, "occurred_at": -1}, "headers": AUTH},
        {"json": {**action, "properties": {"x": "y" * 5000}}, "headers": AUTH},
        {"json": {"user_id": "user_a"}, "headers": AUTH},
        {"json": [action], "headers": AUTH},
        raw(b'{"user_id": "user_a", "action": "x", "id": "evt_\\ud800"}'),
        raw(b"{not json"),
        raw(b""),
        raw(b"null"),
        raw(b"\xff\xfe not utf-8"),
        raw(b"[" * 100_000 + b"]" * 100_000),
        raw(json.dumps(action).encode(), "text/plain"),
        raw(json.dumps(action).encode(), None),
        raw(json.dumps({**action, "id": "evt_4"}).encode(), "application/vnd.api+json"),
        raw(json.dumps({**action, "id": "evt_5"}).encode(), "application/json; charset=utf-8"),
        {"content": json.dumps(action).encode(), "headers": as_json | {"content-length": "5"}},
    ]


@embedded_only
async def test_hot_and_routed_actions_answer_alike(settings: Settings, clock: FakeClock) -> None:
    requests = action_requests()
    answers = await hot_and_routed(settings, clock, "/v1/actions", requests)

    for hot, routed, request in zip(answers["hot"], answers["routed"], requests, strict=True):
        assert hot == routed, request
    statuses = [a[0] if isinstance(a, tuple) else a for a in answers["hot"]]
    assert statuses[:4] == [202, 202, 202, 202]
    assert set(statuses[4:17]) <= {400, 422}
    assert answers["hot"][1][1] == {"accepted": 0, "duplicates": 1}


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_hot_and_routed_agree_when_storage_is_down(
    make_settings: Any, clock: FakeClock, transport: str
) -> None:
    settings = make_settings(**unreachable_storage(transport))
    request = signed(created_event())
    answers = []
    for app in (create_app(settings, clock=clock), routed_only(create_app(settings, clock=clock))):
        async with serving(app) as (http, _):
            answers.append(answer(await http.post("/webhooks/clerk", **request)))
    assert answers[0] == answers[1] == (503, {"error": "storage unavailable"}, answers[0][2], "5")


@embedded_only
async def test_a_hot_route_behind_a_root_path(settings: Settings, clock: FakeClock) -> None:
    async with serving(create_app(settings, clock=clock), root_path="/hooks") as (http, spy):
        response = await http.post("/hooks/webhooks/clerk", **signed(created_event()))
    assert response.json() == {"status": "created"}
    assert "endpoint" not in spy.scopes[0]


@embedded_only
async def test_other_methods_on_a_hot_path_reach_the_router(
    settings: Settings, clock: FakeClock
) -> None:
    async with serving(create_app(settings, clock=clock)) as (http, _):
        response = await http.get("/webhooks/clerk")
    assert response.status_code == 405


def test_every_hot_route_is_in_the_openapi_document() -> None:
    paths = create_app().openapi()["paths"]
    for method, path in clerk.HOT_ROUTES:
        operation = paths[path][method.lower()]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]


@embedded_only
async def test_while_serving_the_startup_heap_is_out_of_the_collectors_sight(
    settings: Settings, clock: FakeClock
) -> None:
    """Each full collection walked every object startup built: a 30 ms pause, the p99 under load.
    Frozen while serving, collected again once the app winds down."""
    assert gc.get_freeze_count() == 0
    async with running(settings, clock) as (_, client):
        frozen = gc.get_freeze_count()
        assert (await client.get("/health")).status_code == 200
    assert frozen > 10_000
    assert gc.get_freeze_count() == 0


@embedded_only
@pytest.mark.parametrize("path", [clerk.CLERK_PATH, "/v1/actions"])
async def test_traffic_counts_the_requests_in_flight_hot_or_routed(
    settings: Settings, clock: FakeClock, path: str
) -> None:
    """What the in-process worker asks before it runs more than one job at a time."""
    body_sent = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await body_sent.wait()
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1234),
        "headers": [(b"authorization", f"Bearer {API_KEY}".encode())],
    }  # fmt: skip
    async with running(settings, clock) as (app, _):
        assert isinstance(app, ActivationApp)
        assert not app.traffic.busy()
        request = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.01)
        assert app.traffic.busy()  # waiting for its body
        assert app.state.runtime.worker.busy()  # what the in-process worker asks
        body_sent.set()
        await request
        assert not app.traffic.busy()


def test_fastapis_own_telemetry_is_off_unless_opentelemetry_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off, FastAPI skips its per-request check for a provider; configured before the app is
    built (opentelemetry-instrument), FastAPI's own defaults apply."""
    assert native_telemetry() == {"tracing": False, "metrics": False, "logs": False}
    assert not create_app()._native_telemetry.enabled()

    class Configured(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", Configured)
    assert native_telemetry() is None
