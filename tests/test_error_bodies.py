"""Every error body has one shape (`app.web.errors`), whoever answers: the gate, a hot route,
FastAPI's router and validation, a route's own refusal, a failing storage, a bug. Every route is
walked with a bad request of each kind it can be refused for."""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.errors import StorageError
from app.main import ActivationApp, create_app
from app.settings import Settings
from app.web.gate import MAX_HEADER_BYTES
from tests.conftest import (
    AUTH,
    FakeClock,
    clerk_event,
    concrete,
    free_port,
    running,
    served_routes,
    sign,
    store_of,
)
from tests.support.constants import USER
from tests.support.marks import embedded_only

ACTION = {"user_id": USER, "action": "first_project_created"}
# the operator's pages answer a refused browser with a page (the login form), not JSON
PAGES = frozenset({"/dashboard", "/outbox", "/dashboard/login", "/dashboard/logout"})
FIELD_KEYS = {"field", "message", "type"}
READINESS_KEYS = {"status", "checks", "failing"}  # a 503 from /health/ready: its report too


def one_shape(response: httpx.Response, path: str = "") -> dict[str, Any]:
    """The body of an error answer, checked: `{"error": reason}`, a 422's `fields` beside it
    (each naming a field), readiness's report beside a 503 of `/health/ready`."""
    assert response.status_code >= 400, response.text
    assert response.headers["content-type"] == "application/json", response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    extra = set(body) - {"error"}
    if response.status_code == 422:
        assert extra == {"fields"}, body
        assert body["fields"], body
        for field in body["fields"]:
            assert set(field) == FIELD_KEYS, field
            assert all(isinstance(value, str) for value in field.values()), field
            assert field["field"] in body["error"] or "more" in body["error"], body
    elif response.status_code == 503 and path == "/health/ready":
        assert extra == READINESS_KEYS, body
    else:
        assert extra == set(), body
    return body


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sees the answer to an unhandled error as a caller would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def nothing() -> AsyncIterator[bytes]:
    """A body declared (Content-Length) but never sent: refused before it is read."""
    return
    yield b""


def declared(size: int) -> dict[str, Any]:
    return {"content": nothing(), "headers": AUTH | {"content-length": str(size)}}


# --- every route, every kind of bad request ---------------------------------------------------


@embedded_only
async def test_every_route_answers_every_refusal_in_one_shape(
    settings: Settings, clock: FakeClock
) -> None:
    seen: set[int] = set()

    def checked(answer: httpx.Response, path: str) -> None:
        """Any error answer: HTML only from a page, JSON in the one shape everywhere."""
        if answer.status_code < 400:
            return
        if answer.headers["content-type"].startswith("text/html"):
            assert path in PAGES, (path, answer.status_code)
        else:
            one_shape(answer, path)
        seen.add(answer.status_code)

    async with running(settings, clock) as (app, http):
        routes = sorted(served_routes(app))
        for path, method in routes:
            url = concrete(path)
            # no credentials: 401 from every route that wants some (pages: the login form)
            checked(await http.request(method, url, json={}), path)
            # a body declared over the route's limit, with the key: 413, unread
            too_large = await http.request(method, url, **declared(10**9))
            assert too_large.status_code == 413, (method, path)
            checked(too_large, path)
            # headers over the limit: 431, before any route
            huge = {"x-padding": "x" * (MAX_HEADER_BYTES + 1)}
            checked(await http.request(method, url, headers=huge), path)
        for path in {path for path, _ in routes}:
            served = {method for p, method in routes if p == path}
            unserved = next(m for m in ("PATCH", "DELETE", "PUT", "POST") if m not in served)
            wrong_method = await http.request(unserved, concrete(path), headers=AUTH)
            assert wrong_method.status_code == 405, (unserved, path)
            assert "allow" in wrong_method.headers
            checked(wrong_method, path)
        for answer in await the_other_refusals(http):
            checked(answer, answer.url.path)
    assert {400, 401, 404, 405, 413, 422, 431, 503} <= seen


async def the_other_refusals(http: httpx.AsyncClient) -> list[httpx.Response]:
    """The refusals that need a particular request: unknown paths and users, bad bodies and
    tokens, unsigned webhooks, a webhook not configured (RESEND_WEBHOOK_SECRET unset)."""
    unparsable = AUTH | {"content-type": "application/json"}
    answers = [
        await http.get("/nowhere"),
        await http.get("/v1/users/user_nobody", headers=AUTH),
        await http.get("/v1/users/not a user", headers=AUTH),
        await http.post("/v1/actions", json={"user_id": "u", "action": "a b"}, headers=AUTH),
        await http.post("/v1/actions", json={"actions": []}, headers=AUTH),
        await http.post("/v1/actions", content=b"{nope", headers=unparsable),
        await http.post("/v1/actions", content=b"[" * 100_000, headers=unparsable),  # too deep
        await http.get("/unsubscribe"),
        await http.post("/unsubscribe"),
        await http.get("/unsubscribe", params={"token": "forged.token"}),
        await http.post("/webhooks/clerk", content=b"{}"),
        await http.post("/webhooks/resend", content=b"{}"),
    ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [404, 404, 422, 422, 422, 422, 400, 422, 422, 400, 400, 503]
    return answers


@embedded_only
async def test_a_422_names_each_failing_field_in_its_fields_and_its_reason(
    settings: Settings, clock: FakeClock
) -> None:
    actions = [{"user_id": "user_1", "action": "ok"}, {"user_id": "user_{2}"}]
    async with running(settings, clock) as (_, http):
        batch = await http.post("/v1/actions", json={"actions": actions}, headers=AUTH)
        no_token = await http.get("/unsubscribe")
        not_json = await http.post(
            "/v1/actions",
            content=b'{"user_id": ',
            headers=AUTH | {"content-type": "application/json"},
        )
    body = one_shape(batch)
    assert body["error"] == "invalid request: body.actions.1.user_id, body.actions.1.action"
    assert [(field["field"], field["type"]) for field in body["fields"]] == [
        ("body.actions.1.user_id", "string_pattern_mismatch"),
        ("body.actions.1.action", "missing"),
    ]
    assert one_shape(no_token)["fields"] == [
        {"field": "query.token", "message": "Field required", "type": "missing"}
    ]
    assert one_shape(not_json)["fields"] == [
        {"field": "body", "message": "JSON decode error at character 12", "type": "json_invalid"}
    ]


@embedded_only
async def test_fastapis_own_errors_take_the_one_shape(settings: Settings, clock: FakeClock) -> None:
    async with running(settings, clock) as (_, http):
        nowhere = await http.get("/nowhere")
        wrong_method = await http.put("/health")
        unknown_user = await http.get("/v1/users/user_nobody", headers=AUTH)
    assert one_shape(nowhere) == {"error": "not found"}
    assert one_shape(wrong_method) == {"error": "method not allowed"}
    assert wrong_method.headers["allow"] == "GET"
    assert one_shape(unknown_user) == {"error": "unknown user"}


# --- 503: not configured, storage down ----------------------------------------------------------


@embedded_only
async def test_a_webhook_not_configured_answers_503_in_one_shape(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(clerk_webhook_signing_secret=None), clock) as (_, http):
        response = await http.post("/webhooks/clerk", content=b"{}")
    assert response.status_code == 503
    assert one_shape(response) == {"error": "not configured: set CLERK_WEBHOOK_SIGNING_SECRET"}


@embedded_only
async def test_with_storage_down_every_route_answers_in_one_shape(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    """Storage unreachable (nothing listens at its address): each route that needs it answers
    503 with Retry-After, readiness its report beside the reason."""
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", storage_timeout_s=0.5)
    unavailable = set()
    async with running(settings, clock) as (app, http):
        for path, method in sorted(served_routes(app)):
            url = concrete(path)
            good = clerk_event("created") if path == "/webhooks/clerk" else ACTION
            body = json.dumps(good).encode()
            headers = sign(body) | AUTH  # a signature too, which only the webhook reads
            answer = await http.request(method, url, content=body, headers=headers)
            if answer.status_code >= 400:
                one_shape(answer, path)
            if answer.status_code == 503:
                unavailable.add((path, method))
                if path not in ("/health/ready", "/webhooks/resend"):  # (that: not configured)
                    assert answer.headers.get("retry-after") == "5", (method, path)
    assert {
        ("/health/ready", "GET"),
        ("/webhooks/clerk", "POST"),
        ("/v1/actions", "POST"),
        ("/v1/users/{user_id}", "GET"),
        ("/v1/loops", "GET"),
        ("/dashboard", "GET"),
    } <= unavailable


@embedded_only
async def test_not_ready_names_the_failing_parts_in_its_reason(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", storage_timeout_s=0.5)
    async with running(settings, clock) as (_, http):
        response = await http.get("/health/ready")
    body = one_shape(response, "/health/ready")
    assert (body["error"], body["failing"]) == ("not ready: storage", ["storage"])


# --- 500: a bug -----------------------------------------------------------------------------------


@embedded_only
@pytest.mark.parametrize("hot", [True, False], ids=["hot", "routed"])
async def test_an_unexpected_error_is_a_500_in_one_shape(
    settings: Settings, clock: FakeClock, hot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a route (here: storage raising what it never raises) is answered in the one
    shape, hot or routed, and still reaches the server (which logs it)."""
    app: ActivationApp = create_app(settings, clock=clock)
    if not hot:
        app.hot_routes = {}
    async with serving(app) as http:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(store_of(app).actions, "record", broken)
        response = await http.post("/v1/actions", json=ACTION, headers=AUTH)
    assert response.status_code == 500
    assert one_shape(response) == {"error": "internal error"}


@embedded_only
async def test_a_storage_error_is_a_500_in_one_shape(
    settings: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, clock) as (app, http):

        async def wrong_type(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("WRONGTYPE Operation against a key holding the wrong kind of value")

        monkeypatch.setattr(store_of(app).queries, "snapshot", wrong_type)
        response = await http.get(f"/v1/users/{USER}", headers=AUTH)
    assert (response.status_code, one_shape(response)) == (500, {"error": "storage error"})


# --- the OpenAPI document says so ---------------------------------------------------------------


def test_the_openapi_document_describes_every_error_body_as_the_one_shape() -> None:
    document = create_app().openapi()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 body, never answered
    assert set(schemas["InvalidRequest"]["required"]) == {"error", "fields"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if status < "400" or schema is None:
                    continue
                name = schema["$ref"].rsplit("/", 1)[1]
                assert name in schemas, (method, path, status)
                assert "error" in schemas[name]["required"], (method, path, status, name)
                assert (name == "InvalidRequest") == (status == "422"), (method, path, status)
