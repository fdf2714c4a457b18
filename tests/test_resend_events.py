"""POST /webhooks/resend: Resend's delivery events, signed by the real svix library, about emails
the worker really sent through the real resend SDK (to the local Resend stand-in)."""

import asyncio
import base64
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.cli.main import main
from app.delivery.attempts import tags_of
from app.engine.email_jobs import EmailJob
from app.settings import Settings
from tests.conftest import (
    AUTH,
    SENDER,
    SIGNING_SECRET,
    FakeClock,
    load_fixture,
    running,
    sign,
    store_of,
    worker_of,
)
from tests.standins.resend import ResendStandin
from tests.support.constants import DAY, USER
from tests.support.marks import embedded_only
from tests.support.processes import env_for

RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-webhook-test-secret-0123").decode()
EVENTS = load_fixture("resend_webhook_events.json")


@pytest.fixture
def make_app_settings(
    make_settings: Callable[..., Settings], resend: ResendStandin
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "resend_api_key": resend.api_key,
            "resend_api_url": resend.url,
            "email_from": SENDER,
            "resend_rate_limit_per_s": 0,
            "resend_webhook_secret": RESEND_SECRET,
        }
        return make_settings(**{**values, **overrides})

    return build


@pytest.fixture
async def app_and_client(
    make_app_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(make_app_settings(), clock) as both:
        yield both


@pytest.fixture
def app(app_and_client: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return app_and_client[0]


@pytest.fixture
def client(app_and_client: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_client[1]


async def send_welcome(client: httpx.AsyncClient, app: FastAPI) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"]["id"] = USER
    body = json.dumps(event).encode()
    assert (await client.post("/webhooks/clerk", content=body, headers=sign(body))).is_success
    action = {"user_id": USER, "action": "first_project_created"}
    assert (await client.post("/v1/actions", json=action, headers=AUTH)).status_code == 202
    await worker_of(app).drain()


def event_about(sent: dict[str, Any], event_type: str, **data: Any) -> dict[str, Any]:
    """A Resend event about an email the stand-in accepted: its id, recipients and tags."""
    event: dict[str, Any] = copy.deepcopy(EVENTS[event_type])
    tags = {tag["name"]: tag["value"] for tag in sent["body"]["tags"]}
    event["data"].update({"email_id": sent["id"], "to": sent["body"]["to"], "tags": tags, **data})
    return event


def tagged_event(event_type: str, user_id: str = USER, **data: Any) -> dict[str, Any]:
    """A Resend event about the user's welcome email, which may not have been sent."""
    event: dict[str, Any] = copy.deepcopy(EVENTS[event_type])
    tags = {"loop": "activation", "step": "0", "kind": "action", "user": user_id}
    event["data"].update(tags=tags, **data)
    return event


async def post_event(
    client: httpx.AsyncClient, event: dict[str, Any] | bytes, **sign_kwargs: Any
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = sign(body, secret=sign_kwargs.pop("secret", RESEND_SECRET), **sign_kwargs)
    return await client.post("/webhooks/resend", content=body, headers=headers)


async def status_of(client: httpx.AsyncClient, event: dict[str, Any], **sign_kwargs: Any) -> str:
    response = await post_event(client, event, **sign_kwargs)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def user_state(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(f"/v1/users/{USER}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def events_of(state: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [entry for entry in state["timeline"] if entry["event"] == name]


# --- matching events to users, on every transport -------------------------------------------------


async def test_loop_emails_carry_the_user_tag(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox
    assert {"name": "user", "value": USER} in sent["body"]["tags"]


async def test_opened_and_clicked_join_the_timeline_once_per_delivery(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox
    opened = event_about(sent, "email.opened")

    assert await status_of(client, opened, msg_id="msg_open_1") == "recorded"
    assert await status_of(client, opened, msg_id="msg_open_1") == "duplicate"
    assert await status_of(client, event_about(sent, "email.clicked")) == "recorded"
    assert await status_of(client, event_about(sent, "email.delivered")) == "recorded"

    state = await user_state(client)
    [entry] = events_of(state, "email.opened")
    assert entry["email"] == f"email|{USER}|activation|0|action"
    assert entry["provider_id"] == sent["id"]
    assert len(events_of(state, "email.clicked")) == len(events_of(state, "email.delivered")) == 1
    assert state["suppressed_at"] is None
    assert "delivered@resend.dev" not in json.dumps(state["timeline"])  # no address is kept


async def test_hard_bounce_suppresses_the_user_and_no_further_email_goes_out(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox

    assert await status_of(client, event_about(sent, "email.bounced")) == "suppressed"
    state = await user_state(client)
    assert (state["suppression"], state["suppressed_at"]) == ("bounced", clock.now_ms)
    [bounce] = events_of(state, "email.bounced")
    assert (bounce["bounce_type"], bounce["bounce_subtype"]) == ("Permanent", "Suppressed")
    assert events_of(state, "suppressed")[0]["reason"] == "bounced"
    assert await store_of(app).users.suppressed() == [(USER, clock.now_ms)]

    clock.advance(3 * DAY)  # the day-2 tips would be due now
    await worker_of(app).drain()
    assert len(resend.inbox) == 1
    assert len((await user_state(client))["emails"]) == 1  # the tips step decided: no email


async def test_suppression_drops_an_email_already_queued(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(("status", 500))
    await send_welcome(client, app)  # the welcome waits for its retry
    assert await status_of(client, tagged_event("email.complained")) == "suppressed"
    clock.advance(60_000)
    await worker_of(app).drain()

    assert resend.inbox == []
    [email] = (await user_state(client))["emails"]
    assert (email["status"], email["last_error"]) == ("dropped", "suppressed")


async def test_complaint_suppresses_and_a_second_event_keeps_the_first_reason(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox
    assert await status_of(client, event_about(sent, "email.complained")) == "suppressed"
    assert await status_of(client, event_about(sent, "email.bounced")) == "recorded"
    assert (await user_state(client))["suppression"] == "complained"


async def test_soft_bounce_is_recorded_but_does_not_suppress(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox
    soft = {"type": "Transient", "subType": "MailboxFull", "message": "mailbox full"}
    assert await status_of(client, event_about(sent, "email.bounced", bounce=soft)) == "recorded"
    assert (await user_state(client))["suppressed_at"] is None


# --- what is acknowledged without being recorded --------------------------------------------------


@embedded_only
async def test_tags_as_a_list_of_name_value_pairs_are_understood(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    [sent] = resend.inbox
    event = event_about(sent, "email.opened", tags=sent["body"]["tags"])
    assert await status_of(client, event) == "recorded"


@embedded_only
async def test_events_for_other_emails_and_types_are_acknowledged_and_ignored(
    client: httpx.AsyncClient,
) -> None:
    assert await status_of(client, copy.deepcopy(EVENTS["email.bounced"])) == "unmatched"
    assert await status_of(client, tagged_event("email.sent")) == "ignored"
    nobody = tagged_event("email.bounced", user_id="user_nobody")
    assert await status_of(client, nobody) == "unknown"


@embedded_only
async def test_a_deleted_users_events_change_nothing(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await send_welcome(client, app)
    deleted = load_fixture("clerk_user_deleted.json")
    deleted["data"]["id"] = USER
    body = json.dumps(deleted).encode()
    assert (await client.post("/webhooks/clerk", content=body, headers=sign(body))).is_success
    assert await status_of(client, tagged_event("email.bounced")) == "tombstoned"
    assert await store_of(app).users.suppressed() == []


@embedded_only
@pytest.mark.parametrize(
    ("body", "sign_kwargs"),
    [
        pytest.param(
            json.dumps(EVENTS["email.opened"]).encode(),
            {"secret": SIGNING_SECRET},
            id="signed-with-another-secret",
        ),
        pytest.param(b"{not json", {}, id="not-json"),
        pytest.param(b'{"type": "email.opened"}', {}, id="no-data"),
    ],
)
async def test_bad_requests_are_refused_with_400(
    client: httpx.AsyncClient, body: bytes, sign_kwargs: dict[str, Any]
) -> None:
    response = await post_event(client, body, **sign_kwargs)
    assert response.status_code == 400
    assert "error" in response.json()


@embedded_only
async def test_missing_signature_is_refused(client: httpx.AsyncClient) -> None:
    body = json.dumps(EVENTS["email.opened"]).encode()
    response = await client.post("/webhooks/resend", content=body)
    assert response.status_code == 400


@embedded_only
@pytest.mark.parametrize("skew_ms", [10 * 60_000, -10 * 60_000], ids=["ahead", "behind"])
async def test_timestamps_are_judged_on_the_services_clock_not_this_machines(
    make_app_settings: Callable[..., Settings], skew_ms: int
) -> None:
    """The service keeps Redis's time, here 10 minutes from this machine's: an event signed now
    on the service's clock is taken, one signed on this machine's clock is too old or new."""
    service = FakeClock(int(time.time() * 1000) + skew_ms)
    at_service = datetime.fromtimestamp(service() / 1000, tz=UTC)
    async with running(make_app_settings(), service) as (_, client):
        taken = await post_event(client, tagged_event("email.opened"), timestamp=at_service)
        refused = await post_event(
            client, tagged_event("email.clicked"), timestamp=datetime.now(tz=UTC)
        )
    assert taken.status_code == 200, taken.text
    assert refused.status_code == 400
    assert ("too old" if skew_ms > 0 else "too new") in refused.json()["error"]


@embedded_only
async def test_unconfigured_endpoint_answers_503(
    make_app_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_app_settings(resend_webhook_secret=None), clock) as (_, client):
        response = await post_event(client, tagged_event("email.bounced"))
    assert response.status_code == 503
    assert "RESEND_WEBHOOK_SECRET" in response.json()["error"]


@embedded_only
def test_a_secret_that_is_not_whsec_base64_stops_startup(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="RESEND_WEBHOOK_SECRET"):
        make_settings(resend_webhook_secret="whsec_!!!")


def test_only_ids_resend_accepts_as_a_tag_value_become_the_user_tag() -> None:
    job = EmailJob(id="email|u.1|l|0|action", user_id="u.1", loop_id="l", step=0,
                   kind="action", template="t", queued_at=0, due_at=0)  # fmt: skip
    assert "user" not in tags_of(job)
    assert tags_of(job.model_copy(update={"user_id": "user_1"}))["user"] == "user_1"


# --- the operator lifts a suppression -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_cli_lists_and_lifts_a_suppression_and_loop_email_resumes(
    client: httpx.AsyncClient,
    app: FastAPI,
    resend: ResendStandin,
    clock: FakeClock,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await send_welcome(client, app)
    assert await status_of(client, event_about(resend.inbox[0], "email.bounced")) == "suppressed"
    monkeypatch.chdir(tmp_path)
    for name, value in env_for(redis_url, key_prefix).items():
        monkeypatch.setenv(name, value)

    assert await asyncio.to_thread(main, ["suppress", "list"]) == 0
    assert f"{USER}\tsuppressed_at={clock.now_ms}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["suppress", "remove", USER]) == 0
    assert await asyncio.to_thread(main, ["suppress", "remove", USER]) == 1  # not suppressed now
    assert await asyncio.to_thread(main, ["suppress", "remove"]) == 1
    assert await store_of(app).users.suppressed() == []

    state = await user_state(client)
    assert (state["suppressed_at"], state["suppression"]) == (None, None)
    assert events_of(state, "unsuppressed")
    clock.advance(3 * DAY)  # the day-2 tips were waiting: they go out now
    await worker_of(app).drain()
    assert len(resend.inbox) == 2
