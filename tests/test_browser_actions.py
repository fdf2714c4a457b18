"""Actions from the browser (`POST /v1/actions` with a Clerk session token): RS256 tokens made
here with PyJWT from keys made here, verified with the PEM key or a local JWKS; a token holds for
its own user's BROWSER_ACTIONS only, at most 60 a minute; CORS for ALLOWED_ORIGINS only; nothing
stored on a refusal; the API key's path as before."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.errors import ConfigError
from app.settings import Settings
from app.web.gate import MAX_AUTHORIZATION_BYTES
from app.web.session_tokens import (
    JWKS_MAX_AGE_MS,
    JWKS_REFRESH_MIN_MS,
    JWKS_TIMEOUT_S,
    session_tokens,
)
from app.web.v1.browser_limits import BROWSER_ACTIONS_PER_MINUTE
from tests.conftest import (
    API_KEY,
    AUTH,
    FakeClock,
    running,
    service_now,
    store_of,
    uvicorn_thread,
)
from tests.support.constants import OTHER, USER
from tests.support.gate import Body, hot_and_routed
from tests.support.marks import embedded_only

every_transport = pytest.mark.parametrize(
    "transport", ["embedded", "redis", "upstash"], indirect=True
)

ORIGIN = "https://app.example.com"
ELSEWHERE = "https://evil.example.net"
ALLOWED = frozenset({"first_project_created", "project_created"})
ACTION = {"user_id": USER, "action": "first_project_created", "id": "evt_browser_1"}
WRONG_KEY = {"error": "missing or wrong API key"}

PrivateKey = rsa.RSAPrivateKey


def new_key() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = new_key()
STRANGER = new_key()  # the right shape, the wrong instance


def pem(key: PrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def token(
    key: PrivateKey = KEY,
    *,
    kid: str | None = None,
    azp: str | None = ORIGIN,
    exp_s: int = 60,
    nbf_s: int = -1,
    now_s: int | None = None,
    **claims: Any,
) -> str:
    """A Clerk-shaped session token, times relative to `now_s` (default: now on the service's
    clock, as Clerk's and Redis's agree); a claim given as None is left out."""
    now = int(service_now().timestamp()) if now_s is None else now_s
    payload = {"sub": USER, "sid": "sess_1", "iss": "https://clerk.example.com", "iat": now}
    payload |= {"nbf": now + nbf_s, "exp": now + exp_s, "azp": azp} | claims
    present = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(present, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def bearer(value: str, origin: str | None = ORIGIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"} | ({"Origin": origin} if origin else {})


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.fixture
def browser_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings accepting session tokens checked with KEY's PEM from ORIGIN; overridable."""

    def build(**overrides: Any) -> Settings:
        values = {"clerk_jwt_key": pem(KEY), "browser_actions": ALLOWED}
        return make_settings(**values | {"allowed_origins": (ORIGIN,)} | overrides)

    return build


async def stored_count(app: FastAPI, user_id: str = USER, action: str = ACTION["action"]) -> int:
    record = await store_of(app).queries.snapshot(user_id)
    stats = record.actions.get(action)
    return stats.count if stats is not None else 0


# --- a good token -------------------------------------------------------------------------------


@every_transport
async def test_a_session_token_records_its_users_action(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(), clock) as (app, http):
        response = await http.post("/v1/actions", json=ACTION, headers=bearer(token()))
        again = await http.post("/v1/actions", json=ACTION, headers=bearer(token()))
        assert await stored_count(app) == 1
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert again.json() == {"accepted": 0, "duplicates": 1}
    assert cors_headers(response) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-expose-headers": "Retry-After",
    }
    assert response.headers["vary"] == "Origin"


@embedded_only
async def test_a_session_token_within_the_leeway_holds(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(), clock) as (app, http):
        late = await http.post("/v1/actions", json=ACTION, headers=bearer(token(exp_s=-2)))
        early = await http.post(
            "/v1/actions", json={**ACTION, "id": "evt_2"}, headers=bearer(token(nbf_s=3))
        )
        assert await stored_count(app) == 2
    assert (late.status_code, early.status_code) == (202, 202)


@embedded_only
@pytest.mark.parametrize(
    ("skew_s", "reason"), [(600, "expired"), (-600, "not valid yet")], ids=["ahead", "behind"]
)
async def test_token_times_are_judged_on_the_services_clock_not_this_machines(
    browser_settings: Callable[..., Settings], skew_s: int, reason: str
) -> None:
    """The service keeps Redis's time, here 10 minutes from this machine's: a token Clerk issued
    now holds, one whose times are this machine's does not."""
    host_s = int(time.time())
    service = FakeClock((host_s + skew_s) * 1000)
    async with running(browser_settings(), service) as (app, http):
        fresh = await http.post(
            "/v1/actions", json=ACTION, headers=bearer(token(now_s=host_s + skew_s))
        )
        on_host = await http.post(
            "/v1/actions", json={**ACTION, "id": "evt_2"}, headers=bearer(token(now_s=host_s))
        )
        assert await stored_count(app) == 1
    assert fresh.status_code == 202, fresh.text
    assert on_host.status_code == 401
    assert on_host.json() == {"error": f"session token refused: {reason}"}


@embedded_only
async def test_the_pem_key_may_be_given_on_one_line(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    """A `.env` holds the key on one line, its newlines written `\\n`."""
    one_line = pem(KEY).strip().replace("\n", "\\n")
    async with running(browser_settings(clerk_jwt_key=one_line), clock) as (_, http):
        response = await http.post("/v1/actions", json=ACTION, headers=bearer(token()))
    assert response.status_code == 202


# --- refusals: nothing stored -------------------------------------------------------------------

REFUSED_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "expired": (lambda: token(exp_s=-10), "expired"),
    "not valid yet": (lambda: token(nbf_s=30), "not valid yet"),
    "wrong signature": (lambda: token(STRANGER), "bad signature"),
    "wrong azp": (lambda: token(azp=ELSEWHERE), "azp is not one of ALLOWED_ORIGINS"),
    "no azp": (lambda: token(azp=None), "azp is not one of ALLOWED_ORIGINS"),
    "no exp": (lambda: token(exp=None), "no exp or no sub"),
    "HS256": (lambda: jwt.encode({"sub": USER}, "x" * 32, algorithm="HS256"), "not RS256"),
    "unsigned": (lambda: jwt.encode({"sub": USER}, "", algorithm="none"), "not RS256"),
    "sub not a user id": (lambda: token(sub="no {braces}"), "sub is not a user id"),
}


@embedded_only
@pytest.mark.parametrize("case", list(REFUSED_TOKENS))
async def test_a_token_that_does_not_hold_is_refused_before_the_body_is_read(
    browser_settings: Callable[..., Settings], clock: FakeClock, case: str
) -> None:
    make, reason = REFUSED_TOKENS[case]
    streamed = Body(1024)
    async with running(browser_settings(), clock) as (app, http):
        response = await http.post("/v1/actions", json=ACTION, headers=bearer(make()))
        unread = await http.post("/v1/actions", content=streamed, headers=bearer(make()))
        assert await stored_count(app) == 0
    assert unread.status_code == 401
    assert streamed.pulled_bytes == 0
    assert response.status_code == 401
    assert response.json() == {"error": f"session token refused: {reason}"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["access-control-allow-origin"] == ORIGIN  # the page can read why


REFUSED_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "another user's action": (
        {**ACTION, "user_id": OTHER},
        "a session token reports its own user's actions only: user_id must be its sub",
    ),
    "a batch with another user's": (
        {"actions": [ACTION, {**ACTION, "user_id": OTHER, "id": "evt_other"}]},
        "a session token reports its own user's actions only: user_id must be its sub",
    ),
    "an action not in BROWSER_ACTIONS": (
        {"actions": [ACTION, {**ACTION, "action": "plan_upgraded", "id": "evt_upgrade"}]},
        "action plan_upgraded may not be reported from a browser (BROWSER_ACTIONS)",
    ),
}


@embedded_only
@pytest.mark.parametrize("case", list(REFUSED_BODIES))
async def test_a_session_reports_only_its_users_browser_actions(
    browser_settings: Callable[..., Settings], clock: FakeClock, case: str
) -> None:
    body, message = REFUSED_BODIES[case]
    async with running(browser_settings(), clock) as (app, http):
        response = await http.post("/v1/actions", json=body, headers=bearer(token()))
        counts = [await stored_count(app, user) for user in (USER, OTHER)]
        assert await stored_count(app, USER, "plan_upgraded") == 0
    assert response.status_code == 403
    assert response.json() == {"error": message}
    assert counts == [0, 0]  # the batch's good actions neither


@embedded_only
@pytest.mark.parametrize(
    "overrides",
    [{"browser_actions": frozenset()}, {"clerk_jwt_key": None}],
    ids=["no BROWSER_ACTIONS", "no key"],
)
async def test_unconfigured_a_session_token_is_a_wrong_api_key(
    browser_settings: Callable[..., Settings], clock: FakeClock, overrides: dict[str, Any]
) -> None:
    async with running(browser_settings(**overrides), clock) as (app, http):
        response = await http.post("/v1/actions", json=ACTION, headers=bearer(token()))
        wrong_key = await http.post("/v1/actions", json=ACTION, headers=bearer("not-the-key"))
        assert await stored_count(app) == 0
    assert response.status_code == wrong_key.status_code == 401
    assert response.json() == wrong_key.json() == WRONG_KEY
    assert response.headers["www-authenticate"] == "Bearer"


@embedded_only
def test_a_key_that_is_no_rsa_public_key_refuses_startup(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    private = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    for wrong in ("not a key", private):
        with pytest.raises(ConfigError, match="CLERK_JWT_KEY must be the PEM public key"):
            session_tokens(browser_settings(clerk_jwt_key=wrong), clock)


@embedded_only
def test_a_jwks_url_that_is_no_http_url_refuses_startup(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    for wrong in ("file:///etc/passwd", "https://", "jwks.json"):
        settings = browser_settings(clerk_jwt_key=None, clerk_jwks_url=wrong)
        with pytest.raises(ConfigError, match="CLERK_JWKS_URL: not an http"):
            session_tokens(settings, clock)


# --- the API key, as before ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_the_api_key_path_is_unchanged_and_pays_no_rate_limit(
    browser_settings: Callable[..., Settings],
    clock: FakeClock,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    batch = {"actions": [{**ACTION, "id": f"evt_{i}"} for i in range(100)]}  # past the limit
    async with running(browser_settings(), clock) as (app, http):
        response = await http.post("/v1/actions", json=batch, headers=AUTH)
        other = await http.post("/v1/actions", json={**ACTION, "user_id": OTHER}, headers=AUTH)
        assert await stored_count(app) == 100
    assert response.status_code == other.status_code == 202
    assert "access-control-allow-origin" not in response.headers
    assert redis_client.keys(f"{key_prefix}browser_rate:*") == []


@embedded_only
async def test_session_tokens_work_without_an_api_key(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(activation_api_key=None), clock) as (_, http):
        browser = await http.post("/v1/actions", json=ACTION, headers=bearer(token()))
        server = await http.post("/v1/actions", json=ACTION, headers=bearer(API_KEY))
    assert (browser.status_code, server.status_code) == (202, 401)


@embedded_only
async def test_hot_and_routed_answer_browsers_alike(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    headers = bearer(token(exp_s=300))
    requests: list[dict[str, Any]] = [
        {"json": ACTION, "headers": headers},
        {"json": ACTION, "headers": headers},
        {"json": {**ACTION, "user_id": OTHER}, "headers": headers},
        {"json": {**ACTION, "action": "plan_upgraded"}, "headers": headers},
        {"json": {"actions": [{**ACTION, "id": f"e{i}"} for i in range(61)]}, "headers": headers},
        {"json": {**ACTION, "user_id": "no spaces"}, "headers": headers},
    ]
    answers = await hot_and_routed(browser_settings(), clock, "/v1/actions", requests)
    assert answers["hot"] == answers["routed"]
    assert [status for status, *_ in answers["hot"]] == [202, 202, 403, 403, 429, 422]


# --- the JWKS -----------------------------------------------------------------------------------


class Jwks:
    """A local JWKS endpoint that counts its fetches; `keys` may change between them. With
    `trickle_s` it answers as a slow server does: a byte of leading whitespace every `trickle_s`,
    TRICKLE_BYTES of them, then the keys (each read is quick, the whole answer is not)."""

    def __init__(self) -> None:
        self.keys: dict[str, PrivateKey] = {}
        self.fetches = 0
        self.trickle_s: float | None = None
        self.trickling = 0  # answers being trickled right now
        self.app = Starlette(routes=[Route("/.well-known/jwks.json", self.serve)])

    async def serve(self, request: Request) -> Response:
        self.fetches += 1
        document = json.dumps({"keys": [jwk(kid, key) for kid, key in self.keys.items()]})
        if self.trickle_s is None:
            return Response(document, media_type="application/json")
        return StreamingResponse(self.trickle(document.encode()), media_type="application/json")

    async def trickle(self, document: bytes) -> AsyncIterator[bytes]:
        self.trickling += 1
        try:
            for _ in range(TRICKLE_BYTES):
                yield b" "
                await asyncio.sleep(self.trickle_s or 0)
            yield document
        finally:
            self.trickling -= 1


TRICKLE_BYTES = 40  # at 0.5 s a byte: 20 s for the whole answer, 4 times JWKS_TIMEOUT_S


def jwk(kid: str, key: PrivateKey) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return found | {"kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def jwks() -> Iterator[tuple[Jwks, str]]:
    served = Jwks()
    with uvicorn_thread(served.app, lifespan="off") as url:
        yield served, f"{url}/.well-known/jwks.json"


async def post_as(http: httpx.AsyncClient, signed: str, action_id: str) -> int:
    body = {**ACTION, "id": action_id}
    return (await http.post("/v1/actions", json=body, headers=bearer(signed))).status_code


@embedded_only
async def test_jwks_keys_are_fetched_once_and_again_for_an_unknown_kid_at_a_bounded_rate(
    browser_settings: Callable[..., Settings], clock: FakeClock, jwks: tuple[Jwks, str]
) -> None:
    served, url = jwks
    served.keys = {"ins_1": KEY}
    rotated = new_key()
    settings = browser_settings(clerk_jwt_key=None, clerk_jwks_url=url)
    async with running(settings, clock) as (app, http):
        first = [post_as(http, token(kid="ins_1"), f"a{i}") for i in range(5)]
        assert await asyncio.gather(*first) == [202] * 5  # five at once, one fetch
        assert await post_as(http, token(kid="ins_1"), "b") == 202
        assert served.fetches == 1  # the keys are held
        served.keys["ins_2"] = rotated  # Clerk rotates its key
        assert await post_as(http, token(rotated, kid="ins_2"), "c") == 401  # fetched too recently
        clock.advance(JWKS_REFRESH_MIN_MS)
        assert await post_as(http, token(rotated, kid="ins_2"), "d") == 202  # unknown kid: a fetch
        assert served.fetches == 2
        for i in range(20):  # a flood of made-up kids
            assert await post_as(http, token(kid=f"made_up_{i}"), f"e{i}") == 401
        assert served.fetches == 2
        assert await post_as(http, token(kid="ins_1"), "f") == 202
        clock.advance(JWKS_MAX_AGE_MS)  # the keys held are old: fetched again, once
        assert await post_as(http, token(kid="ins_1"), "g") == 202  # the old key, meanwhile
        await wait_for(lambda: served.fetches == 3)
        assert await post_as(http, token(kid="ins_1"), "h") == 202
        assert served.fetches == 3
        assert await stored_count(app) == 10


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@embedded_only
async def test_a_held_key_answers_at_once_while_a_refresh_trickles_in(
    browser_settings: Callable[..., Settings], clock: FakeClock, jwks: tuple[Jwks, str]
) -> None:
    """A refresh never holds a request whose key is held: they are answered while it hangs."""
    served, url = jwks
    served.keys = {"ins_1": KEY}
    settings = browser_settings(clerk_jwt_key=None, clerk_jwks_url=url)
    async with running(settings, clock) as (app, http):
        assert await post_as(http, token(kid="ins_1"), "a") == 202  # fetched, held
        served.trickle_s = 0.5
        clock.advance(JWKS_MAX_AGE_MS)  # old: the next token starts a refresh
        assert await post_as(http, token(kid="ins_1"), "b") == 202
        await wait_for(lambda: served.trickling == 1)  # the refresh is trickling in
        answers = [await post_as(http, token(kid="ins_1"), f"c{i}") for i in range(3)]
        still_trickling = served.trickling
        assert await stored_count(app) == 5
    assert answers == [202] * 3
    assert still_trickling == 1  # they were answered while the refresh hung
    assert served.fetches == 2  # one refresh for them all


@embedded_only
async def test_a_key_not_held_is_refused_with_503_at_the_deadline_when_the_jwks_trickles(
    browser_settings: Callable[..., Settings], clock: FakeClock, jwks: tuple[Jwks, str]
) -> None:
    """The fetch has one deadline, JWKS_TIMEOUT_S, for the whole answer (not for each read): a
    token whose key could not be had is refused as our trouble (503), and asked again later."""
    served, url = jwks
    served.keys, served.trickle_s = {"ins_1": KEY}, 0.5
    settings = browser_settings(clerk_jwt_key=None, clerk_jwks_url=url)
    async with running(settings, clock) as (app, http):
        started = time.monotonic()
        response = await http.post("/v1/actions", json=ACTION, headers=bearer(token(kid="ins_1")))
        waited_s = time.monotonic() - started
        again = await http.post("/v1/actions", json=ACTION, headers=bearer(token(kid="ins_1")))
        assert await stored_count(app) == 0
    assert response.status_code == again.status_code == 503
    assert response.json() == {"error": KEYS_UNAVAILABLE}
    assert response.headers["retry-after"] == str(JWKS_REFRESH_MIN_MS // 1000)  # the next fetch
    assert response.headers["access-control-allow-origin"] == ORIGIN  # the page can read why
    assert waited_s < 2 * JWKS_TIMEOUT_S  # the whole answer would take 4 times that
    assert served.fetches == 1  # the second token waits for the next fetch, as unknown kids do


KEYS_UNAVAILABLE = (
    "session token not checked: Clerk's signing keys (CLERK_JWKS_URL) could not be fetched"
)


@embedded_only
async def test_an_unreachable_jwks_refuses_tokens_and_says_so(
    browser_settings: Callable[..., Settings],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = browser_settings(clerk_jwt_key=None, clerk_jwks_url="http://127.0.0.1:9/jwks")
    with caplog.at_level(logging.WARNING, logger="app.web.session_tokens"):
        async with running(settings, clock) as (app, http):
            response = await http.post("/v1/actions", json=ACTION, headers=bearer(token(kid="k")))
            assert await stored_count(app) == 0
    assert response.status_code == 503
    assert response.json() == {"error": KEYS_UNAVAILABLE}
    assert "Clerk JWKS not fetched" in caplog.text


# --- an Authorization no key or token is as long as ---------------------------------------------


def bearer_of(size_bytes: int) -> dict[str, str]:
    """A genuine session token made `size_bytes` long (give or take 3) by a claim, as a header."""
    short = len(f"Bearer {token(padding='')}")
    value = f"Bearer {token(padding='x' * ((size_bytes - short) * 3 // 4))}"
    assert size_bytes - 4 <= len(value) <= size_bytes
    return {"Authorization": value, "Origin": ORIGIN}


@embedded_only
async def test_an_authorization_over_8_kib_is_refused_before_it_is_parsed(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    """Up to MAX_AUTHORIZATION_BYTES a genuine token is checked and holds; past it, the same
    genuine token is refused as a wrong key is, unread (parsed, it would hold)."""
    async with running(browser_settings(), clock) as (app, http):
        fits = await http.post("/v1/actions", json=ACTION, headers=bearer_of(8 * 1024))
        over = await http.post(
            "/v1/actions", json={**ACTION, "id": "e2"}, headers=bearer_of(8 * 1024 + 8)
        )
        assert await stored_count(app) == 1
    assert MAX_AUTHORIZATION_BYTES == 8 * 1024
    assert fits.status_code == 202, fits.text
    assert over.status_code == 401
    assert over.json() == WRONG_KEY
    assert over.headers["www-authenticate"] == "Bearer"


# --- CORS ---------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST"} | {
    "Access-Control-Request-Headers": "authorization, content-type"
}


@embedded_only
async def test_the_preflight_answers_allowed_origins_only(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(), clock) as (_, http):
        allowed = await http.options("/v1/actions", headers=PREFLIGHT | {"Origin": ORIGIN})
        refused = await http.options("/v1/actions", headers=PREFLIGHT | {"Origin": ELSEWHERE})
    assert allowed.status_code == 204
    assert cors_headers(allowed) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "POST",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": "600",
    }
    assert allowed.headers["vary"] == "Origin"
    assert refused.status_code == 401
    assert cors_headers(refused) == {}
    assert "vary" not in refused.headers


@embedded_only
async def test_other_origins_and_other_routes_get_no_cors_headers(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(), clock) as (_, http):
        elsewhere = await http.post("/v1/actions", json=ACTION, headers=bearer(token(), ELSEWHERE))
        user = await http.get(f"/v1/users/{USER}", headers=AUTH | {"Origin": ORIGIN})
        health = await http.options("/v1/actions/health", headers=PREFLIGHT | {"Origin": ORIGIN})
    assert elsewhere.status_code == 202  # the token holds; the browser keeps the answer hidden
    assert cors_headers(elsewhere) == {}
    assert user.status_code == 200
    assert cors_headers(user) == {}
    assert health.status_code == 405
    assert cors_headers(health) == {}


# --- the rate limit ----------------------------------------------------------------------------


@every_transport
async def test_a_users_browser_is_limited_to_60_actions_a_minute(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    def batch(count: int, first: int = 0) -> dict[str, Any]:
        return {"actions": [{**ACTION, "id": f"evt_{first + i}"} for i in range(count)]}

    async with running(browser_settings(), clock) as (app, http):
        headers = bearer(token())
        too_large = await http.post("/v1/actions", json=batch(61), headers=headers)
        full = await http.post(
            "/v1/actions", json=batch(BROWSER_ACTIONS_PER_MINUTE), headers=headers
        )
        over = await http.post("/v1/actions", json=batch(1, 100), headers=headers)
        server = await http.post("/v1/actions", json=batch(1, 200), headers=AUTH)
        assert await stored_count(app) == 61
    assert (too_large.status_code, full.status_code) == (429, 202)
    assert over.status_code == 429
    assert 1 <= int(over.headers["retry-after"]) <= 60
    retry = over.headers["retry-after"]
    assert over.json() == {
        "error": f"at most 60 actions a minute from a user's browser: try again in {retry} s"
    }
    assert over.headers["access-control-allow-origin"] == ORIGIN
    assert server.status_code == 202  # the server's actions are not limited


@every_transport
async def test_the_rate_window_opens_with_the_first_action_and_expires(
    browser_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(browser_settings(), clock) as (app, _):
        rates = store_of(app).rates

        async def take(count: int) -> tuple[bool, int]:
            taken = await rates.take_browser_actions(USER, count, limit=3, window_ms=300)
            return taken.taken, taken.left_ms

        first = await take(2)
        refused = await take(2)  # 4 > 3: nothing counted
        last = await take(1)
        full = await take(1)
        await asyncio.sleep(0.35)
        again = await take(3)
        other_user = await rates.take_browser_actions(OTHER, 3, limit=3, window_ms=300)
    assert first == (True, 300)
    assert (refused[0], last[0], full[0], again[0]) == (False, True, False, True)
    assert 0 < full[1] <= 300
    assert other_user.taken
