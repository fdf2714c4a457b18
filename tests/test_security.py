"""Security: every `/v1/*` route wants the key, webhooks cannot be replayed, unsubscribe tokens
cannot be forged or moved, and no secret, address or email body reaches the logs."""

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    API_KEY,
    AUTH,
    SIGNING_SECRET,
    UPSTASH_TOKEN,
    FakeClock,
    clerk_event,
    concrete,
    free_port,
    post_webhook,
    resend_settings,
    running,
    served_routes,
    sign,
    uvicorn_thread,
    worker_of,
)
from tests.standins.resend import ResendStandin
from tests.support.constants import OTHER, USER
from tests.support.marks import embedded_only

ADDRESS = "ada.lovelace-private@analytical-engine.example"
BODY_TEXT = "the hardest step is behind you"  # from loops/templates/activation_welcome.html
RESEND_WEBHOOK_SECRET = "whsec_QmVzdFJlc2VuZFdlYmhvb2tTZWNyZXQxMjM0NTY="
METRICS_TOKEN = "metrics-token-secret-0123456789"


# --- helpers --------------------------------------------------------------------------------


def user_event(kind: str, user_id: str = USER, address: str = ADDRESS) -> bytes:
    event = clerk_event(kind, user_id)
    if "email_addresses" in event["data"]:
        event["data"]["email_addresses"][0]["email_address"] = address
    return json.dumps(event).encode()


async def act(client: httpx.AsyncClient, user_id: str = USER) -> None:
    action = {"user_id": user_id, "action": "first_project_created"}
    assert (await client.post("/v1/actions", json=action, headers=AUTH)).status_code == 202


async def known(client: httpx.AsyncClient, user_id: str = USER) -> bool:
    response = await client.get(f"/v1/users/{user_id}", headers=AUTH)
    assert response.status_code in (200, 404)
    return response.status_code == 200


# --- the API key ----------------------------------------------------------------------------

WRONG_KEYS = {
    "missing": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong": {"Authorization": "Bearer not-the-key"},
    "key plus a character": {"Authorization": f"Bearer {API_KEY}x"},
    "key minus a character": {"Authorization": f"Bearer {API_KEY[:-1]}"},
    "key upper-cased": {"Authorization": f"Bearer {API_KEY.upper()}"},
    "no scheme": {"Authorization": API_KEY},
    "basic scheme": {"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()},
    "token scheme": {"Authorization": f"Token {API_KEY}"},
    "in another header": {"X-API-Key": API_KEY},
    "in the query": {},  # the key given as ?api_key=..., see below
}


@embedded_only
@pytest.mark.parametrize("wrong", list(WRONG_KEYS))
async def test_every_v1_route_refuses_a_missing_or_wrong_key(
    client: httpx.AsyncClient, app: FastAPI, wrong: str
) -> None:
    routes = sorted(route for route in served_routes(app) if route[0].startswith("/v1/"))
    assert ("/v1/actions", "POST") in routes
    assert ("/v1/users/{user_id}", "GET") in routes
    params = {"api_key": API_KEY, "token": API_KEY} if wrong == "in the query" else {}
    action = {"user_id": USER, "action": "first_project_created"}
    for path, method in routes:
        response = await client.request(
            method, concrete(path), json=action, headers=WRONG_KEYS[wrong], params=params
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert not await known(client)  # nothing was recorded on the way


@embedded_only
async def test_without_an_api_key_configured_every_v1_route_refuses_everyone(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(activation_api_key=None), clock) as (app, http):
        routes = [route for route in served_routes(app) if route[0].startswith("/v1/")]
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            for path, method in routes:
                response = await http.request(method, concrete(path), json={}, headers=headers)
                assert response.status_code == 401, (method, path, headers)


@embedded_only
async def test_the_right_key_is_let_through(client: httpx.AsyncClient) -> None:
    await act(client)
    lower_scheme = {"Authorization": f"bearer {API_KEY}"}
    assert (await client.get(f"/v1/users/{USER}", headers=lower_scheme)).status_code == 200


@embedded_only
@pytest.mark.parametrize("body", [b"{not json", b"\xd6\xd6"])
async def test_a_malformed_body_without_the_key_is_still_401(
    client: httpx.AsyncClient, body: bytes
) -> None:
    headers = {"content-type": "application/json"}
    response = await client.post("/v1/actions", content=body, headers=headers)
    assert response.status_code == 401, response.text


# --- operator pages -------------------------------------------------------------------------

OPERATOR_PAGES = ("/dashboard", "/outbox", "/metrics")


def forged_sessions(now_ms: int) -> dict[str, str]:
    sessions = pytest.importorskip("app.web.sessions")
    far = now_ms + 3_600_000
    return {
        "another key's session": sessions.issue("another-api-key", now_ms),
        "expired session": sessions.issue(API_KEY, now_ms - 13 * 3_600_000),
        "made-up signature": f"{far}.{b64('x' * 32)}",
        "no signature": f"{far}.",
        "not a time": "soon.abc",
        "empty": "",
    }


@embedded_only
async def test_operator_pages_refuse_without_the_key_and_show_nothing(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    """With no Resend key the outbox keeps whole emails: it must never be public."""
    body = user_event("created")
    assert (await post_webhook(client, body)).status_code == 200
    await act(client)
    await worker_of(app).drain()
    pages = [page for page in OPERATOR_PAGES if (page, "GET") in served_routes(app)]
    assert pages, "no operator page found: update OPERATOR_PAGES"
    cookie = getattr(pytest.importorskip("app.web.sessions"), "COOKIE", "activation_session")
    attempts = list(WRONG_KEYS.values())
    attempts += [{"Cookie": f"{cookie}={value}"} for value in forged_sessions(clock()).values()]
    for page in pages:
        for headers in attempts:
            response = await client.get(page, headers=headers)
            assert response.status_code == 401, (page, headers, response.status_code)
            assert ADDRESS not in response.text
            assert BODY_TEXT not in response.text
        assert (await client.get(page, headers=AUTH)).status_code == 200, page


# --- webhook replays ------------------------------------------------------------------------


@embedded_only
@pytest.mark.parametrize(
    "age", [timedelta(minutes=5, seconds=30), timedelta(hours=1), timedelta(days=1)]
)
@pytest.mark.parametrize("direction", [-1, 1], ids=["past", "future"])
async def test_a_webhook_signed_outside_five_minutes_is_refused(
    client: httpx.AsyncClient, age: timedelta, direction: int
) -> None:
    body = user_event("created")
    signed_at = datetime.now(tz=UTC) + direction * age
    response = await post_webhook(client, body, sign(body, timestamp=signed_at))
    assert response.status_code == 400
    assert not await known(client)


@embedded_only
async def test_a_captured_webhook_replayed_with_a_fresh_timestamp_or_id_is_refused(
    client: httpx.AsyncClient,
) -> None:
    body = user_event("created")
    captured = sign(body, timestamp=datetime.now(tz=UTC) - timedelta(minutes=10))
    fresh_time = {**captured, "svix-timestamp": str(int(datetime.now(tz=UTC).timestamp()))}
    fresh_id = {
        **captured,
        "svix-id": "msg_fresh_id",
        "svix-timestamp": fresh_time["svix-timestamp"],
    }
    for headers in (captured, fresh_time, fresh_id):
        assert (await post_webhook(client, body, headers)).status_code == 400
    assert not await known(client)


@embedded_only
async def test_a_replay_inside_the_window_is_applied_once(client: httpx.AsyncClient) -> None:
    created, deleted = user_event("created"), user_event("deleted")
    created_headers = sign(created)
    first = await post_webhook(client, created, created_headers)
    assert (await post_webhook(client, deleted)).status_code == 200
    replayed = await post_webhook(
        client, created, created_headers
    )  # an attacker replays the signup

    assert first.json() == {"status": "created"}
    assert replayed.json() == {"status": "duplicate"}
    assert not await known(client)


@embedded_only
async def test_a_webhook_signed_with_another_secret_is_refused(client: httpx.AsyncClient) -> None:
    body = user_event("created")
    other = "whsec_" + base64.b64encode(b"another endpoint's secret!").decode()
    assert (await post_webhook(client, body, sign(body, secret=other))).status_code == 400
    assert not await known(client)


# --- unsubscribe tokens ---------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def forged_tokens(app: FastAPI) -> dict[str, str]:
    genuine: str = app.state.runtime.tokens.issue(USER)
    encoded, _, signature = genuine.rpartition(".")
    other_encoded, _, other_signature = app.state.runtime.tokens.issue(OTHER).rpartition(".")
    other_secret = UnsubscribeTokens(b"another deployment's secret")
    return {
        "another secret": other_secret.issue(USER),
        "moved to another user": f"{other_encoded}.{signature}",
        "moved, as the first format spelled the user": f"{b64(OTHER)}.{signature}",
        "another user's token": f"{encoded}.{other_signature}",
        "signature truncated": f"{encoded}.{signature[:-1]}",
        "signature extended": f"{encoded}.{signature}A",
        "signature only": f".{signature}",
        "user only": f"{encoded}.",
        "no dot": f"{encoded}{signature}",
        "sha256 of the id": f"{encoded}.{b64('0' * 32)}",
    }


@embedded_only
async def test_forged_or_moved_unsubscribe_tokens_are_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    for name, token in forged_tokens(app).items():
        for method in ("GET", "POST"):
            response = await client.request(method, "/unsubscribe", params={"token": token})
            assert response.status_code == 400, (name, method, response.text)


@embedded_only
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_token_with_a_non_ascii_signature_is_refused(
    client: httpx.AsyncClient, method: str
) -> None:
    token = f"{b64('user_a')}.é"
    response = await client.request(method, "/unsubscribe", params={"token": token})
    assert response.status_code == 400, response.text


def sending_settings(resend: ResendStandin, **overrides: Any) -> dict[str, Any]:
    return resend_settings(
        resend,
        public_url="https://loops.acme.dev",
        log_level="DEBUG",
        resend_webhook_secret=RESEND_WEBHOOK_SECRET,
        metrics_token=METRICS_TOKEN,
        **overrides,
    )


@pytest.fixture
async def sending(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app sending through the Resend stand-in, running, and a client for it."""
    async with running(make_settings(**sending_settings(resend)), clock) as (app, http):
        yield app, http


def unsubscribe_token(sent: dict[str, Any]) -> str:
    link = sent["body"]["headers"]["List-Unsubscribe"].strip("<>")
    return parse_qs(urlsplit(link).query)["token"][0]


@embedded_only
async def test_a_users_token_unsubscribes_that_user_only(
    sending: tuple[FastAPI, httpx.AsyncClient], resend: ResendStandin
) -> None:
    app, http = sending
    for user_id in (USER, OTHER):
        body = user_event("created", user_id, address=f"{user_id}@example.org")
        assert (await post_webhook(http, body)).status_code == 200
    await act(http, USER)
    await worker_of(app).drain()
    token = unsubscribe_token(resend.inbox[0])
    for _ in range(2):  # used twice: still only that user
        response = await http.post("/unsubscribe", params={"token": token})
        assert response.status_code == 200
    await act(http, OTHER)
    await worker_of(app).drain()

    assert [sent["body"]["to"] for sent in resend.inbox] == [
        [f"{USER}@example.org"],
        [f"{OTHER}@example.org"],
    ]
    mine = (await http.get(f"/v1/users/{USER}", headers=AUTH)).json()
    theirs = (await http.get(f"/v1/users/{OTHER}", headers=AUTH)).json()
    assert any(entry["event"] == "unsubscribed" for entry in mine["timeline"])
    assert not any(entry["event"] == "unsubscribed" for entry in theirs["timeline"])


# --- nothing secret in the logs -------------------------------------------------------------


def record_texts(record: logging.LogRecord) -> Iterator[str]:
    """Everything of a record a handler could print: message, raw args, exception, extras."""
    yield record.getMessage()
    yield str(record.msg)
    yield repr(record.args)
    if record.exc_info:
        yield logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        yield record.exc_text
    yield repr({k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info")})


def leaks(records: list[logging.LogRecord], secrets: dict[str, str]) -> list[tuple[str, str]]:
    found = []
    for record in records:
        text = "\n".join(record_texts(record))
        found += [(name, record.name) for name, secret in secrets.items() if secret in text]
    return found


def ours(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.name.split(".")[0] in ("app", "uvicorn", "activation")]


async def run_everything(
    http: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> str:
    """Signup, action, a send that fails once then goes out, a dead letter, the unsubscribe
    page and click, a deletion, and a few refused requests: what a day in production logs."""
    resend.script(("status", 500), ("status", 429, 1))
    body = user_event("created")
    assert (await post_webhook(http, body)).status_code == 200
    await post_webhook(http, body, sign(body, timestamp=datetime.now(tz=UTC) - timedelta(hours=1)))
    await act(http)
    await http.post("/v1/actions", json={"user_id": USER, "action": "x"}, headers={})
    for _ in range(4):
        await worker_of(app).drain()
        clock.advance(10 * 60_000)
    [sent] = resend.inbox
    token = unsubscribe_token(sent)
    assert (await http.get("/unsubscribe", params={"token": token})).status_code == 200
    assert (await http.post("/unsubscribe", params={"token": token})).status_code == 200
    other = user_event("created", OTHER, address=f"second-{ADDRESS}")
    await post_webhook(http, other)
    resend.script(("status", 422))
    await act(http, OTHER)
    await worker_of(app).drain()
    for path in ("/health/ready", "/metrics", "/dashboard", "/outbox"):
        await http.get(path)
        await http.get(path, headers={"Authorization": f"Bearer {API_KEY}"})
    await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    deleted = user_event("deleted")
    assert (await post_webhook(http, deleted)).status_code == 200
    return token


@pytest.mark.parametrize("transport", ["embedded", "redis", "upstash"], indirect=True)
async def test_no_secret_address_or_email_body_in_the_logs(
    sending: tuple[FastAPI, httpx.AsyncClient],
    resend: ResendStandin,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app, http = sending
    token = await run_everything(http, app, resend, clock)

    assert resend.inbox  # the flow really sent an email, with the body checked below
    secrets = {
        "Resend API key": resend.api_key,
        "activation API key": API_KEY,
        "Clerk signing secret": SIGNING_SECRET,
        "Clerk signing secret (base64)": SIGNING_SECRET.removeprefix("whsec_"),
        "Upstash token": UPSTASH_TOKEN,
        "Resend webhook secret": RESEND_WEBHOOK_SECRET.removeprefix("whsec_"),
        "metrics token": METRICS_TOKEN,
        "email address": ADDRESS,
        "email address (local part)": ADDRESS.partition("@")[0],
        "email body": BODY_TEXT,
        "unsubscribe token": token,
    }
    assert [record for record in caplog.records if record.name.startswith("app")]
    assert leaks(ours(caplog.records), secrets) == []


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
async def test_storage_failures_do_not_log_credentials(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    transport: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "redis-password-do-not-log"
    port = free_port()
    storage: dict[str, Any] = {"redis_url": f"redis://default:{password}@127.0.0.1:{port}/0"}
    if transport == "upstash":
        storage = {
            "upstash_redis_rest_url": f"http://127.0.0.1:{port}",
            "upstash_redis_rest_token": password,
        }
    caplog.set_level(logging.DEBUG)
    async with running(make_settings(log_level="DEBUG", **storage), clock) as (_, http):
        body = user_event("created")
        assert (await post_webhook(http, body)).status_code == 503
        assert (await http.get("/health/ready")).status_code == 503
        response = await http.post(
            "/v1/actions", json={"user_id": USER, "action": "a"}, headers=AUTH
        )
        assert response.status_code == 503

    assert leaks(caplog.records, {"storage password": password, "address": ADDRESS}) == []


def serve_for_real(app: FastAPI) -> AbstractContextManager[str]:
    """uvicorn as `uvicorn app.main:app` runs it: INFO level, access log on; our logging config."""
    return uvicorn_thread(app, log_config=None, log_level="info", access_log=True)


def served_flow(url: str, resend: ResendStandin) -> str:
    """Signup and first project through real HTTP; the in-process worker sends the welcome;
    then the unsubscribe page and click. Returns the token."""
    with httpx.Client(base_url=url, timeout=5) as http:
        body = user_event("created")
        assert http.post("/webhooks/clerk", content=body, headers=sign(body)).status_code == 200
        action = {"user_id": USER, "action": "first_project_created"}
        assert http.post("/v1/actions", json=action, headers=AUTH).status_code == 202
        deadline = time.monotonic() + 10
        while not resend.inbox:
            assert time.monotonic() < deadline, "the in-process worker sent nothing"
            time.sleep(0.05)
        token = unsubscribe_token(resend.inbox[0])
        assert http.get("/unsubscribe", params={"token": token}).status_code == 200
        assert http.post("/unsubscribe", params={"token": token}).status_code == 200
    return token


@embedded_only
async def test_served_for_real_no_secret_or_address_in_app_or_uvicorn_logs(
    make_settings: Callable[..., Settings],
    resend: ResendStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(**sending_settings(resend, worker_in_process=True))
    caplog.set_level(logging.DEBUG)
    with serve_for_real(create_app(settings)) as url:
        await asyncio.to_thread(served_flow, url, resend)

    assert [record for record in caplog.records if record.name == "uvicorn.access"]
    secrets = {
        "Resend API key": resend.api_key,
        "activation API key": API_KEY,
        "Clerk signing secret": SIGNING_SECRET.removeprefix("whsec_"),
        "email address": ADDRESS,
        "email body": BODY_TEXT,
    }
    assert leaks(ours(caplog.records), secrets) == []


@embedded_only
async def test_served_for_real_the_unsubscribe_token_is_not_in_the_access_log(
    make_settings: Callable[..., Settings],
    resend: ResendStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(**sending_settings(resend, worker_in_process=True))
    caplog.set_level(logging.DEBUG)
    with serve_for_real(create_app(settings)) as url:
        token = await asyncio.to_thread(served_flow, url, resend)

    assert leaks(ours(caplog.records), {"unsubscribe token": token}) == []
