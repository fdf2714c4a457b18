"""Dashboard sessions (`app.web.sessions`): a cookie that cannot make a page fail whatever it holds,
logout that revokes the session in storage, and login attempts limited per client address."""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings
from app.web import sessions
from tests.conftest import API_KEY, AUTH, FakeClock
from tests.support.marks import embedded_only

NOW_MS = 1_764_000_000_000
PAGES = ("/dashboard", "/outbox")


@asynccontextmanager
async def client_of(app: FastAPI, address: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 50123))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@asynccontextmanager
async def started(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        yield app


# --- reading a cookie never fails ---------------------------------------------------------------

TAMPERINGS = st.sampled_from(["flip", "cut", "extend", "swap halves"])


def tamper(token: str, how: str, position: int) -> str:
    at = position % len(token)
    if how == "flip":
        return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
    if how == "cut":
        return token[:at]
    if how == "extend":
        return token + token[at:]
    payload, _, signature = token.partition(".")
    return f"{signature}.{payload}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789.-_", max_size=6000),
        st.from_regex(r"\A[0-9]{1,6000}\.[A-Za-z0-9_-]{0,60}\Z"),
        st.binary().map(lambda raw: raw.decode("latin-1")),  # what a header can carry
    )
)
def test_reading_any_cookie_never_raises(value: str) -> None:
    assert sessions.read(API_KEY, value, NOW_MS) is None


@settings(max_examples=200, deadline=None)
@given(how=TAMPERINGS, position=st.integers(min_value=0, max_value=500))
def test_a_tampered_session_is_never_valid(how: str, position: int) -> None:
    token = sessions.issue(API_KEY, NOW_MS)
    forged = tamper(token, how, position)
    if forged != token:
        assert sessions.read(API_KEY, forged, NOW_MS + 1) is None


@embedded_only
@pytest.mark.parametrize("page", PAGES)
async def test_a_cookie_of_5000_digits_answers_the_login_form(
    settings: Settings, clock: FakeClock, page: str
) -> None:
    """It used to reach int() and its digit limit: a 500."""
    async with started(settings, clock) as app, client_of(app) as http:
        for value in ("9" * 5000, "9" * 5000 + ".abc", "1" * 4301 + "." + "A" * 43):
            http.cookies.set(sessions.COOKIE, value)
            response = await http.get(page)
            assert response.status_code == 401, (value[:10], response.text[:200])
            assert 'name="key"' in response.text  # the login form


# --- logout revokes ------------------------------------------------------------------------------


async def log_in(http: httpx.AsyncClient) -> str:
    response = await http.post("/dashboard/login", data={"key": API_KEY})
    assert response.status_code == 303, response.text
    return http.cookies[sessions.COOKIE]


async def test_logout_revokes_the_session_for_whoever_kept_the_cookie(
    settings: Settings, clock: FakeClock
) -> None:
    async with started(settings, clock) as app, client_of(app) as http:
        cookie = await log_in(http)
        assert (await http.get("/dashboard")).status_code == 200
        logout = await http.post("/dashboard/logout")
        assert logout.status_code == 303
        http.cookies.set(sessions.COOKIE, cookie)  # a copy of the cookie, kept after logout
        for page in PAGES:
            response = await http.get(page)
            assert response.status_code == 401, page
            assert 'name="key"' in response.text
        clock.advance(sessions.SESSION_S * 1000 - 60_000)  # still refused until it would expire
        assert (await http.get("/dashboard")).status_code == 401
        http.cookies.clear()
        await log_in(http)  # a new session works
        assert (await http.get("/dashboard")).status_code == 200


async def test_logout_ends_only_its_own_session(settings: Settings, clock: FakeClock) -> None:
    async with started(settings, clock) as app, client_of(app) as first, client_of(app) as second:
        await log_in(first)
        await log_in(second)
        assert (await first.post("/dashboard/logout")).status_code == 303
        assert (await second.get("/dashboard")).status_code == 200


@embedded_only
async def test_logout_without_a_session_just_drops_the_cookie(
    settings: Settings, clock: FakeClock
) -> None:
    async with started(settings, clock) as app, client_of(app) as http:
        http.cookies.set(sessions.COOKIE, "9" * 5000)
        response = await http.post("/dashboard/logout")
    assert response.status_code == 303
    assert f'{sessions.COOKIE}=""' in response.headers["set-cookie"]


# --- login attempts are limited ------------------------------------------------------------------


async def fail_logins(http: httpx.AsyncClient, times: int) -> None:
    for _ in range(times):
        response = await http.post("/dashboard/login", data={"key": "a-guess"})
        assert response.status_code == 401, response.text


async def test_login_attempts_are_limited_per_client(
    settings: Settings, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        started(settings, clock) as app,
        client_of(app, "203.0.113.7") as guesser,
        client_of(app, "198.51.100.9") as operator,
    ):
        await fail_logins(guesser, sessions.LOGIN_FAILURES_ALLOWED)
        for key in ("another-guess", API_KEY):  # the right key too: no oracle for a guesser
            blocked = await guesser.post("/dashboard/login", data={"key": key})
            assert blocked.status_code == 429
            assert 0 < int(blocked.headers["retry-after"]) <= sessions.LOGIN_WINDOW_S
            assert "set-cookie" not in blocked.headers
            assert "Too many failed attempts" in blocked.text
        assert (await guesser.get("/dashboard", headers=AUTH)).status_code == 200  # scripts
        await log_in(operator)  # another address is not locked out
        assert (await operator.get("/dashboard")).status_code == 200

    messages = [
        record.getMessage() for record in caplog.records if record.name == "app.web.pages.dashboard"
    ]
    assert any("203.0.113.7" in message and "10 failed" in message for message in messages)
    assert any("too many failed attempts" in message for message in messages)
    assert not [message for message in messages if API_KEY in message or "a-guess" in message]


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
async def test_web_processes_share_the_count_of_failed_logins(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = make_settings()
    async with (
        started(settings, clock) as one,
        started(settings, clock) as two,
        client_of(one) as first,
        client_of(two) as second,
    ):
        await fail_logins(first, 6)
        await fail_logins(second, sessions.LOGIN_FAILURES_ALLOWED - 6)
        for http in (first, second):
            response = await http.post("/dashboard/login", data={"key": API_KEY})
            assert response.status_code == 429


@embedded_only
async def test_a_right_login_does_not_lift_the_count_of_wrong_ones(
    settings: Settings, clock: FakeClock
) -> None:
    async with started(settings, clock) as app, client_of(app) as http:
        await fail_logins(http, sessions.LOGIN_FAILURES_ALLOWED - 1)
        await log_in(http)
        await fail_logins(http, 1)
        response = await http.post("/dashboard/login", data={"key": API_KEY})
    assert response.status_code == 429
