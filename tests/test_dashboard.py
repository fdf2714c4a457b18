"""The operator pages: `/dashboard` and `/outbox` behind the API key or the login cookie, what
they show after a realistic flow, and the same pages in headless Chromium against the app served
for real by uvicorn (screenshots kept in `test-output/`)."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.engine.email_jobs import EmailJob, JobStatus
from app.main import create_app
from app.settings import Settings
from app.storage.store import Store
from app.web import sessions
from tests.conftest import API_KEY, AUTH, FakeClock, load_fixture, running, sign, worker_of
from tests.standins.upstash import serve
from tests.support.browser import browser, chromium_binary
from tests.support.constants import MIN

ACTIVE, LATE, BUILDER = "user_active", "user_late", "user_builder"
OUTPUT = Path(__file__).parent.parent / "test-output"


@pytest.fixture
def transport() -> str:
    # the browser test serves a second app on the same storage: a real Redis
    return "redis"


async def signup(client: httpx.AsyncClient, user_id: str, first_name: str) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"].update(id=user_id, first_name=first_name, last_name="Tester")
    event["data"]["email_addresses"][0]["email_address"] = f"{first_name.lower()}@example.org"
    body = json.dumps(event).encode()
    response = await client.post("/webhooks/clerk", content=body, headers=sign(body))
    assert response.status_code == 200, response.text


async def act(client: httpx.AsyncClient, user_id: str, action: str, times: int = 1) -> None:
    actions = [{"user_id": user_id, "action": action} for _ in range(times)]
    response = await client.post("/v1/actions", json={"actions": actions}, headers=AUTH)
    assert response.status_code == 202, response.text


async def dead_letter(store: Store, now_ms: int) -> None:
    """An email Resend refused for good (the outbox mode never fails on its own)."""
    job = EmailJob(
        id="email|user_bounced|activation|0|action", user_id="user_bounced",
        loop_id="activation", step=0, kind="action", template="activation_welcome",
        queued_at=now_ms, due_at=now_ms,
    )  # fmt: skip
    await store.queue.apply_decisions(job.user_id, rev="0", states={}, jobs=[job],
                                      wake_at_ms=None)  # fmt: skip
    failed = job.model_copy(update={"status": JobStatus.FAILED, "attempts": 4,
                                    "last_error": "Resend 422: invalid `to` address"})  # fmt: skip
    await store.queue.settle(failed, now_ms=now_ms, seq=0)


async def realistic_flow(client: httpx.AsyncClient, app: FastAPI, clock: FakeClock) -> None:
    """Three sign-ups: one activates in a minute, one times out and activates later, one
    builds ten projects; plus one email Resend refused."""
    for user_id, name in ((ACTIVE, "Ada"), (LATE, "Grace"), (BUILDER, "Linus")):
        await signup(client, user_id, name)
    await worker_of(app).drain()
    clock.advance(MIN)
    await act(client, ACTIVE, "first_project_created")
    await act(client, BUILDER, "project_created", times=10)
    await worker_of(app).drain()
    clock.advance(5 * MIN)
    await worker_of(app).drain()
    await act(client, LATE, "first_project_created")
    await worker_of(app).drain()
    await dead_letter(app.state.runtime.store, clock.now_ms)


def funnel(page: str, loop_id: str) -> dict[str, int]:
    """The funnel numbers a person reads in one loop's card."""
    card = page.split(f'id="loop-{loop_id}"', 1)[1].split('class="card loop"', 1)[0]
    rows = re.findall(r'data-counter="(\w+)">.*?<td class="n">(\d+)</td>', card, re.DOTALL)
    return {name: int(value) for name, value in rows}


async def test_dashboard_shows_each_loops_funnel_after_a_flow(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await realistic_flow(client, app, clock)
    response = await client.get("/dashboard", headers=AUTH)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    page = response.text
    assert funnel(page, "activation") == {
        "entered": 3, "met": 1, "sent": 1, "timed_out": 2, "nudged": 2,
        "activated_after_nudge": 1,
    }  # fmt: skip
    assert funnel(page, "milestone_ten_projects") == {
        "entered": 1, "met": 1, "sent": 1, "timed_out": 0, "nudged": 0,
        "activated_after_nudge": 0,
    }  # fmt: skip
    assert 'data-rate="activation">33%' in page
    assert "<title>&lt; 5 min: 1</title>" in page  # the histogram's bars
    assert "<title>1 week +: 0</title>" in page
    assert "1</strong> email(s) failed for good" in page
    assert "Resend 422: invalid `to` address" in page
    assert page.count("<svg") == 2 * 3  # two charts per shipped loop


async def test_outbox_shows_rendered_emails_newest_first(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await realistic_flow(client, app, clock)
    page = (await client.get("/outbox", headers=AUTH)).text

    subjects = re.findall(r"<h2>(.*?)</h2>", page)
    assert subjects[-1] == "Welcome aboard, Ada Tester!"  # the first sent, shown last
    assert set(subjects) == {
        "Welcome aboard, Ada Tester!", "Ten projects, Linus! 🎉",
        "Your first project takes two minutes",
    }  # fmt: skip
    assert "<dd>ada@example.org</dd>" in page
    assert (
        '<iframe sandbox title="HTML part of Welcome aboard, Ada Tester!" srcdoc="&lt;p&gt;Hi'
        in page
    )


async def test_pages_refuse_everyone_without_an_api_key(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(activation_api_key=None), clock) as (_, client):
        for path in ("/dashboard", "/outbox"):
            response = await client.get(path, headers={"Authorization": "Bearer anything"})
            assert response.status_code == 401
            assert "ACTIVATION_API_KEY</code> is not set" in response.text
        login = await client.post("/dashboard/login", data={"key": ""})
        assert login.status_code == 401
        assert "set-cookie" not in login.headers


async def test_without_credentials_the_pages_answer_the_login_form(
    client: httpx.AsyncClient,
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await client.get("/outbox", headers=headers)
        assert response.status_code == 401
        assert '<input type="hidden" name="next" value="/outbox">' in response.text


async def test_login_sets_a_signed_strict_httponly_cookie(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    wrong = await client.post("/dashboard/login", data={"key": "nope", "next": "/outbox"})
    assert wrong.status_code == 401
    assert "That is not the API key." in wrong.text

    response = await client.post("/dashboard/login", data={"key": API_KEY, "next": "/outbox"})
    assert response.status_code == 303
    assert response.headers["location"] == "/outbox"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http on localhost: a Secure cookie would not come back
    assert API_KEY not in cookie
    assert (await client.get("/dashboard")).status_code == 200  # the client keeps the cookie

    client.cookies.set(sessions.COOKIE, client.cookies[sessions.COOKIE][:-2] + "xx")
    assert (await client.get("/dashboard")).status_code == 401


async def test_a_session_expires_and_logout_ends_it(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    response = await client.post("/dashboard/login", data={"key": API_KEY, "next": "https://x"})
    assert response.headers["location"] == "/dashboard"  # never a redirect elsewhere
    clock.advance(sessions.SESSION_S * 1000 + 1)
    assert (await client.get("/dashboard")).status_code == 401

    client.cookies.clear()
    await client.post("/dashboard/login", data={"key": API_KEY})
    logout = await client.post("/dashboard/logout")
    assert logout.status_code == 303
    assert 'activation_session=""' in logout.headers["set-cookie"]


def test_session_tokens_are_bound_to_the_api_key() -> None:
    token = sessions.issue("key-one", now_ms=1000)
    session = sessions.read("key-one", token, now_ms=2000)
    assert session is not None
    assert session.expires_at_ms == 1000 + sessions.SESSION_S * 1000
    assert sessions.read("key-two", token, now_ms=2000) is None
    assert sessions.read("key-one", token, now_ms=session.expires_at_ms) is None
    assert sessions.read("key-one", "123.abc", now_ms=2000) is None
    assert sessions.read("key-one", "garbage", now_ms=2000) is None
    assert sessions.read("key-one", "²." + token.split(".")[1], now_ms=2000) is None
    assert sessions.read("key-one", token.split(".")[0] + ".é", now_ms=2000) is None
    assert sessions.issue("key-one", now_ms=1000) != token  # each session has its own id


async def test_a_person_logs_in_and_reads_the_pages_in_chromium(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, settings: Settings, tmp_path: Path
) -> None:
    binary = chromium_binary()
    await realistic_flow(client, app, clock)
    served = create_app(settings, clock=clock)  # a second process's view of the same Redis

    with serve(served) as url, browser(binary, tmp_path / "profile") as page:
        page.goto(f"{url}/dashboard")
        assert page.evaluate("document.title") == "Log in · Activation loops"
        page.evaluate(
            f"document.getElementById('key').value = {json.dumps(API_KEY)};"
            "document.querySelector('form.login').submit()"
        )
        page.wait_for("document.title === 'Activation loops · Activation loops'")
        dashboard = page.dom()
        page.screenshot(OUTPUT / "dashboard.png")
        page.goto(f"{url}/outbox")
        outbox = page.dom()
        frames = page.evaluate("document.querySelectorAll('iframe[sandbox]').length")
        page.screenshot(OUTPUT / "outbox.png")

    assert funnel(dashboard, "activation")["activated_after_nudge"] == 1
    assert funnel(dashboard, "milestone_ten_projects")["sent"] == 1
    assert "Celebrate a user's tenth project" in dashboard
    assert "Resend 422: invalid `to` address" in dashboard
    assert "Welcome aboard, Ada Tester!" in outbox
    assert frames == 4
    assert (OUTPUT / "dashboard.png").stat().st_size > 10_000


async def test_the_cookie_is_secure_when_the_service_is_public_over_https(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(public_url="https://loops.acme.dev"), clock) as (_, client):
        response = await client.post("/dashboard/login", data={"key": API_KEY})
    assert "; Secure" in response.headers["set-cookie"]
