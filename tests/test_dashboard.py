"""The operator pages: `/dashboard` and `/outbox` behind the API key or the login cookie, what
they show after a realistic flow (an activation loop's funnel, a milestone's own rows, an
experiment's arms and comparisons), that no label is said twice and every page shares one layout
(the unsubscribe pages too), and the same pages in headless Chromium against the app served for
real by uvicorn (screenshots kept in `test-output/`). The outbox's paging and filters:
tests/test_outbox.py."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.web import sessions
from app.web.pages.layout import HEADERS
from tests.conftest import API_KEY, AUTH, FakeClock, running, worker_of
from tests.standins.upstash import serve
from tests.support.browser import browser, chromium_binary
from tests.support.constants import REPO, SHIPPED_LOOPS
from tests.support.growth import users_in_arm
from tests.support.pages import (
    ACTIVE,
    BUILDER,
    LATE,
    act,
    card,
    doubled_labels,
    doubled_words,
    funnel,
    page_title,
    realistic_flow,
    signup,
)

OUTPUT = Path(__file__).parent.parent / "test-output"
ACTIVATION_ROWS = {"entered", "met", "sent", "timed_out", "nudged", "activated_after_nudge"}


@pytest.fixture
def transport() -> str:
    # the browser test serves a second app on the same storage: a real Redis
    return "redis"


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
    assert funnel(page, "milestone_ten_projects") == {"entered": 1, "sent": 1, "emails_failed": 0}
    assert funnel(page, "milestone_upgraded") == {"entered": 0, "sent": 0, "emails_failed": 0}
    assert 'data-rate="activation">33%' in page
    assert "<title>&lt; 5 min: 1</title>" in page  # the histogram's bars
    assert "<title>1 week +: 0</title>" in page
    assert "1</strong> email(s) failed for good" in page
    assert "Resend 422: invalid `to` address" in page
    assert page.count("<svg") == 2 + 1 + 1  # activation: time to activation and emails per day


async def test_a_milestone_loop_shows_its_own_rows_not_activations(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    """A milestone fires when it is reached: no deadline, no nudge, no rate to activate."""
    await realistic_flow(client, app, clock)
    page = (await client.get("/dashboard", headers=AUTH)).text

    milestone, activation = card(page, "milestone_ten_projects"), card(page, "activation")
    for words in ("Reached (milestone hit)", "Email sent", "Emails failed for good"):
        assert words in milestone
    for words in ("Timed out", "Nudged", "Activation rate", "Time to activation", "data-rate"):
        assert words not in milestone
        assert words in activation
    assert "Reached (milestone hit)" not in activation
    assert "<h3>Reached and sent</h3>" in milestone
    assert '<span class="tag">type: milestone</span>' in milestone
    assert set(funnel(page, "activation")) == ACTIVATION_ROWS


async def test_no_label_is_said_twice(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await realistic_flow(client, app, clock)
    pages = {
        path: (await client.get(path, headers=AUTH)).text for path in ("/dashboard", "/outbox")
    }
    pages["login"] = (await client.get("/dashboard")).text
    token = app.state.runtime.tokens.issue(BUILDER)
    pages["unsubscribe"] = (await client.get("/unsubscribe", params={"token": token})).text

    for name, html in pages.items():
        assert doubled_labels(html) == [], name
        first, _, rest = page_title(html).partition(" · ")
        assert first, name
        assert first != rest, (name, page_title(html))
    assert page_title(pages["/dashboard"]) == "Dashboard · Activation loops"
    assert doubled_labels("<h3>Activation <span>ACTIVATION</span></h3>") == [
        "Activation ACTIVATION"
    ]
    assert doubled_labels("<td>0</td><td>0</td><td>< 1 min</td><td>< 5 min</td>") == []


async def test_every_page_shares_one_layout_the_unsubscribe_pages_too(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    token = app.state.runtime.tokens.issue(BUILDER)
    answers = {
        "dashboard": await client.get("/dashboard", headers=AUTH),
        "outbox": await client.get("/outbox", headers=AUTH),
        "login": await client.get("/dashboard"),
        "unsubscribe": await client.get("/unsubscribe", params={"token": token}),
        "unsubscribed": await client.post("/unsubscribe", params={"token": token}),
    }
    base = (REPO / "app" / "web" / "pages" / "templates" / "base.html").read_text()
    style = base[base.index("<style>") : base.index("</style>")]
    for name, answer in answers.items():
        assert answer.headers["content-type"].startswith("text/html"), name
        assert style in answer.text, f"{name} does not use the pages' stylesheet"
        assert '<header class="top">' in answer.text, name
        assert "<main>" in answer.text, name
        for header, value in HEADERS.items():
            assert answer.headers[header] == value, (name, header)
    confirm = answers["unsubscribe"].text
    assert "<title>Unsubscribe · Email preferences</title>" in confirm
    assert f'<form method="post" action="/unsubscribe?token={token}">' in confirm
    assert 'href="/outbox"' not in confirm  # a user sees no operator page's navigation
    assert "<h1>You are unsubscribed</h1>" in answers["unsubscribed"].text


def experiment_loops(folder: Path) -> Path:
    """The shipped loops, the activation loop with a 20 % holdout and a two-template experiment
    (the bug was its arms headed "ACTIVATION ACTIVATION": id and type)."""
    folder.mkdir()
    (folder / "templates").mkdir()
    for source in SHIPPED_LOOPS.glob("*.yaml"):
        (folder / source.name).write_text(source.read_text())
    for source in (SHIPPED_LOOPS / "templates").glob("*"):
        (folder / "templates" / source.name).write_text(source.read_text())
    welcome = (folder / "templates" / "activation_welcome.html").read_text()
    short = welcome.replace("subject: Welcome aboard", "subject: You are in")
    (folder / "templates" / "activation_short.html").write_text(short)
    loop = yaml.safe_load((folder / "activation.yaml").read_text())
    loop["holdout"] = "20%"
    loop["steps"][0]["action"]["experiment"] = [
        {"template": "activation_welcome", "weight": 1},
        {"template": "activation_short", "weight": 1},
    ]
    (folder / "activation.yaml").write_text(yaml.safe_dump(loop))
    return folder


async def test_an_experiment_shows_arm_against_arm_beside_the_pooled_uplift(
    make_settings: Callable[..., Settings], clock: FakeClock, tmp_path: Path
) -> None:
    folder = experiment_loops(tmp_path / "loops")
    async with running(make_settings(loops_dir=folder), clock) as (app, client):
        loop = app.state.runtime.loops["activation"]
        arms = {arm: users_in_arm(loop, arm, 3) for arm in loop.arms}
        for n, user in enumerate(user for users in arms.values() for user in users):
            await signup(client, user, f"User{n}")
        for arm, activated in (("activation_welcome", 3), ("activation_short", 1), ("holdout", 1)):
            for user in arms[arm][:activated]:
                await act(client, user, "first_project_created")
        await worker_of(app).drain()
        page = (await client.get("/dashboard", headers=AUTH)).text
        figures = (await client.get("/v1/loops", headers=AUTH)).json()["loops"][0]

    part = page.split('id="experiment-activation"', 1)[1].split('class="card loop ', 1)[0]
    assert doubled_labels(page) == []
    assert '<h3 class="loop-id">activation</h3>' in page
    header_cells = re.findall(r'<th scope="col" class="n">(\w+)</th>', part)
    assert header_cells == ["activation_welcome", "activation_short", "holdout"]
    for row in ("Entered", "Activated", "Activation rate"):  # a number under each arm's heading
        cells = re.search(rf'<th scope="row">{row}</th>(.*?)</tr>', part)
        assert cells is not None
        assert len(re.findall(r'<td class="n"', cells.group(1))) == len(header_cells), row
    assert "Pooled uplift against the holdout" in part
    assert "activation_welcome + activation_short against holdout" in part
    assert "activation_welcome \u2212 activation_short" in part
    vs_arms = figures["vs_arms"]
    assert (vs_arms["a"], vs_arms["b"]) == ("activation_welcome", "activation_short")
    low, high = (f"{value * 100:+.1f}".replace("-", "\u2212") for value in
                 (vs_arms["low"], vs_arms["high"]))  # fmt: skip
    assert f"runs from {low} to {high} points" in part
    assert part.count('<svg class="uplift"') == 2  # the two intervals, side by side
    axes = re.findall(r'<svg class="uplift" viewBox="0 0 ([\d.]+) ', part)
    ticks = re.findall(r'text-anchor="middle">([^<]+)</text>', part)
    assert len(set(axes)) == 1
    assert ticks[:3] == ticks[3:]  # one scale for both, so their widths compare


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


# Each arm's heading against the numbers under it: how far their right edges lie apart (px).
ARMS_MISALIGNED_PX = """Math.max(0,
  ...[...document.querySelectorAll('table.arms')].flatMap(table => {
  const [head, ...rows] = [...table.rows];
  return [...head.cells].slice(1).flatMap((th, i) => rows.map(row =>
    Math.abs(th.getBoundingClientRect().right - row.cells[i + 1].getBoundingClientRect().right)));
}))"""


async def test_a_person_logs_in_and_reads_the_pages_in_chromium(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, settings: Settings, tmp_path: Path
) -> None:
    """The served app (a second process's view of the same Redis) loads the activation loop with
    a holdout and an experiment, so the arms table is drawn too: its arms' counters are zero,
    the flow ran before they existed, and only its layout is looked at."""
    binary = chromium_binary()
    await realistic_flow(client, app, clock)
    loops = experiment_loops(tmp_path / "loops")
    served = create_app(settings.model_copy(update={"loops_dir": loops}), clock=clock)

    with serve(served) as url, browser(binary, tmp_path / "profile") as page:
        page.goto(f"{url}/dashboard")
        assert page.evaluate("document.title") == "Log in · Activation loops"
        page.evaluate(
            f"document.getElementById('key').value = {json.dumps(API_KEY)};"
            "document.querySelector('form.login').submit()"
        )
        page.wait_for("document.title === 'Dashboard · Activation loops'")
        dashboard = page.dom()
        seen = page.evaluate("document.body.innerText")  # as rendered: CSS upper-cases headings
        milestone = page.evaluate(
            "document.getElementById('loop-milestone_ten_projects').innerText"
        )
        misaligned_px = page.evaluate(ARMS_MISALIGNED_PX)
        page.screenshot(OUTPUT / "dashboard.png")
        page.goto(f"{url}/outbox")
        outbox = page.dom()
        frames = page.evaluate("document.querySelectorAll('iframe[sandbox]').length")
        users = page.evaluate("[...document.querySelectorAll('dd.user')].map(d => d.innerText)")
        page.screenshot(OUTPUT / "outbox.png")
        page.goto(f"{url}/outbox?user_id={BUILDER}")
        builders = page.evaluate("[...document.querySelectorAll('dd.user')].map(d => d.innerText)")

    assert funnel(dashboard, "activation")["activated_after_nudge"] == 1
    assert funnel(dashboard, "milestone_ten_projects")["sent"] == 1
    assert "Celebrate a user's tenth project" in dashboard
    assert "Resend 422: invalid `to` address" in dashboard
    assert doubled_words(seen.split()) == []
    assert "Reached (milestone hit)" in milestone
    assert "Timed out" not in milestone
    assert "ACTIVATION RATE" not in milestone
    assert dashboard.count('<table class="arms">') == 1
    assert misaligned_px < 1
    assert "Welcome aboard, Ada Tester!" in outbox
    assert frames == 4
    # each card names its user: the welcome, the milestone, two nudges
    assert sorted(users) == [ACTIVE, BUILDER, BUILDER, LATE]
    assert builders == [BUILDER, BUILDER]
    assert (OUTPUT / "dashboard.png").stat().st_size > 10_000


async def test_the_cookie_is_secure_when_the_service_is_public_over_https(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(public_url="https://loops.acme.dev"), clock) as (_, client):
        response = await client.post("/dashboard/login", data={"key": API_KEY})
    assert "; Secure" in response.headers["set-cookie"]
