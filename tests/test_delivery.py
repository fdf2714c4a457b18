"""Email delivery end to end: the shipped loops, the real resend SDK against the local Resend
stand-in, the worker driven by hand on a fake clock. Every fault ends in exactly one email."""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.delivery.attempts import Delivery, retry_delay_ms
from app.delivery.outbox import OutboxMailer, mask
from app.delivery.pacing import RateLimiter
from app.engine.backoff import Growth
from app.engine.email_jobs import RenderedEmail
from app.engine.loops import Recovery
from app.main import create_app
from app.settings import Settings
from tests.conftest import AUTH, SENDER, FakeClock, load_fixture, sign, store_of, worker_of
from tests.standins.resend import ResendStandin
from tests.support.constants import MIN, SEC, USER
from tests.support.timing import no_sleep


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        resend_api_key=resend.api_key,
        resend_api_url=resend.url,
        email_from=SENDER,
        resend_rate_limit_per_s=0,
        resend_timeout_s=1.0,
        app_url="https://app.acme.dev",
        public_url="https://loops.acme.dev",
    )
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        # the fake clock drives the mailer's 429 hold-off too, so no test sleeps for real
        mailer = application.state.runtime.worker.evaluator.delivery.mailer
        mailer.rate_limiter = RateLimiter(0, clock=lambda: clock.now_ms / 1000, sleep=no_sleep)
        yield application


async def signup(client: httpx.AsyncClient, user_id: str = USER) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"]["id"] = user_id
    body = json.dumps(event).encode()
    response = await client.post("/webhooks/clerk", content=body, headers=sign(body))
    assert response.status_code == 200


async def activate(client: httpx.AsyncClient, user_id: str = USER) -> None:
    body = {"user_id": user_id, "action": "first_project_created"}
    assert (await client.post("/v1/actions", json=body, headers=AUTH)).status_code == 202


async def emails(client: httpx.AsyncClient, user_id: str = USER) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/users/{user_id}", headers=AUTH)
    found: list[dict[str, Any]] = response.json()["emails"]
    return found


async def test_signup_and_first_project_send_one_personalised_welcome(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    await signup(client)
    await activate(client)
    await worker_of(app).drain()

    assert len(resend.inbox) == 1
    sent = resend.inbox[0]
    body = sent["body"]
    assert body["from"] == SENDER
    assert body["to"] == ["example@example.org"]
    assert body["subject"] == "Welcome aboard, Example Example!"
    assert "Hi Example Example," in body["html"]
    assert 'href="https://app.acme.dev"' in body["html"]
    assert "Hi Example Example," in body["text"]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["List-Unsubscribe"].startswith("<https://loops.acme.dev/unsubscribe?")
    assert sent["idempotency_key"] == f"email|{USER}|activation|0|action"
    [email] = await emails(client)
    assert (email["status"], email["attempts"], email["subject"]) == (
        "sent",
        1,
        "Welcome aboard, Example Example!",
    )


async def test_no_first_project_in_five_minutes_sends_the_nudge_instead(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    await signup(client)
    await worker_of(app).drain()
    clock.advance(5 * MIN)
    await worker_of(app).drain()
    await activate(client)  # after the deadline: no welcome any more
    await worker_of(app).drain()

    assert [sent["idempotency_key"] for sent in resend.inbox] == [
        f"email|{USER}|activation|0|timeout"
    ]


async def test_server_errors_are_retried_with_backoff_then_sent_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(("status", 500), ("status", 503))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    [email] = await emails(client)
    assert (email["status"], email["attempts"]) == ("queued", 1)
    assert 8 * SEC <= email["due_at"] - clock.now_ms <= 12 * SEC  # about 10 s, jittered

    clock.advance(12 * SEC)
    await worker_of(app).drain()  # the second attempt fails too: about 20 s more
    clock.advance(25 * SEC)
    await worker_of(app).drain()

    assert len(resend.inbox) == 1
    [email] = await emails(client)
    assert (email["status"], email["attempts"], email["last_error"]) == ("sent", 3, None)


async def test_rate_limited_send_waits_for_retry_after(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(("status", 429, 40))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    clock.advance(30 * SEC)
    await worker_of(app).drain()
    assert resend.inbox == []

    clock.advance(11 * SEC)
    await worker_of(app).drain()
    assert len(resend.inbox) == 1


async def test_permanent_error_goes_to_the_dead_letters_and_an_operator_retries_it(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(("status", 422))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    [email] = await emails(client)
    assert email["status"] == "failed"
    assert "422" in email["last_error"] or "validation" in email["last_error"]
    [dead] = await store_of(app).queue.dead_jobs()
    assert dead.id == email["id"]

    assert await store_of(app).queue.retry_dead(dead, now_ms=clock.now_ms)
    await worker_of(app).drain()
    assert len(resend.inbox) == 1
    assert await store_of(app).queue.dead_jobs() == []


async def test_exhausted_retries_go_to_the_dead_letters(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(*[("status", 500)] * 4)
    await signup(client)
    await activate(client)
    for _ in range(5):
        await worker_of(app).drain()
        clock.advance(2 * MIN)
    [email] = await emails(client)
    assert (email["status"], email["attempts"]) == ("failed", 4)  # the first try + 3 retries
    assert resend.inbox == []
    assert [job.id for job in await store_of(app).queue.dead_jobs()] == [email["id"]]


async def test_an_operators_retry_after_an_accepted_attempt_keeps_the_job_id_as_its_key(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    """Resend accepted the first attempt but answered 500; a failing gateway refused every
    retry; the welcome died. An operator's retry minutes later goes alone, under the job id,
    never in a batch under a new key: Resend answers with its first answer and nobody gets a
    second email."""
    resend.script(("accept_then_fail", 500), *[("status", 502)] * 3)
    await signup(client)
    await activate(client)
    for _ in range(5):
        await worker_of(app).drain()
        clock.advance(2 * MIN)
    [dead] = await store_of(app).queue.dead_jobs()
    assert dead.first_attempt_at is not None  # it may have been accepted: its key is kept

    clock.advance(5 * MIN)
    assert await store_of(app).queue.retry_dead(dead, now_ms=clock.now_ms) == "queued"
    await worker_of(app).drain()
    [email] = await emails(client)
    assert email["status"] == "sent"
    assert [entry["idempotency_key"] for entry in resend.inbox] == [dead.id]  # one, one key


async def test_a_key_used_with_another_payload_is_not_read_as_sent(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    """Resend's 409 invalid_idempotent_request says an email went under the key with another
    payload, not this one (our payload under a key never changes): dead-lettered, never counted
    as sent."""
    resend.script(("status", 409, None, "invalid_idempotent_request"))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    [email] = await emails(client)
    assert email["status"] == "failed"
    assert "invalid_idempotent_request" in email["last_error"]
    assert resend.inbox == []


async def test_a_user_who_unsubscribes_while_their_email_waits_for_a_slot_gets_nothing(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    """After a wait for a rate-limit slot the user is read again, right before the request."""
    mailer = worker_of(app).evaluator.delivery.mailer  # type: ignore[union-attr]

    async def meanwhile(seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert await store_of(app).users.unsubscribe(USER, now_ms=0) is not None

    mailer.rate_limiter = RateLimiter(1, sleep=meanwhile)
    mailer.rate_limiter.hold_off(0.2)
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    [email] = await emails(client)
    assert (email["status"], email["last_error"]) == ("dropped", "unsubscribed")
    assert resend.inbox == []


@pytest.mark.parametrize("failure", [500, "drop"])
async def test_accepted_but_the_answer_was_lost_sends_one_email(
    client: httpx.AsyncClient,
    app: FastAPI,
    resend: ResendStandin,
    clock: FakeClock,
    failure: object,
) -> None:
    resend.script(("accept_then_fail", failure))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    clock.advance(MIN)
    await worker_of(app).drain()

    assert len(resend.inbox) == 1
    [email] = await emails(client)
    assert (email["status"], email["attempts"]) == ("sent", 2)


class DiesAfterSending:
    """A mailer whose worker dies the moment Resend accepted: the outcome is never recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.deaths = 1

    async def pace(self, max_wait_s: float) -> float:
        waited_s: float = await self.inner.pace(max_wait_s)
        return waited_s

    async def send(self, email: RenderedEmail, idempotency_key: str, **options: Any) -> str:
        provider_id: str = await self.inner.send(email, idempotency_key, **options)
        if self.deaths:
            self.deaths -= 1
            raise RuntimeError("worker killed after Resend accepted")
        return provider_id


async def test_worker_killed_after_resend_accepted_resends_with_the_same_key_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    worker = worker_of(app)
    delivery = worker.evaluator.delivery
    assert isinstance(delivery, Delivery)
    delivery.mailer = DiesAfterSending(delivery.mailer)
    await signup(client)
    await activate(client)
    await worker.drain()
    assert len(resend.inbox) == 1
    assert (await emails(client))[0]["status"] == "queued"  # the dead worker recorded nothing

    clock.advance(61 * SEC)  # the lease runs out and the job comes back
    await worker.drain()

    assert len(resend.inbox) == 1
    assert resend.requests >= 2
    [email] = await emails(client)
    assert email["status"] == "sent"


async def test_attempt_outcome_unknown_past_resends_window_is_not_sent_again(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    worker = worker_of(app)
    delivery = worker.evaluator.delivery
    assert isinstance(delivery, Delivery)
    delivery.mailer = DiesAfterSending(delivery.mailer)
    await signup(client)
    await activate(client)
    await worker.drain()
    clock.advance(25 * 60 * MIN)  # the worker was down for a day: Resend forgot the key
    await worker.drain()

    assert len(resend.inbox) == 1
    [email] = await emails(client)
    assert email["status"] == "failed"
    assert "outcome is unknown" in email["last_error"]


async def test_several_workers_on_one_queue_send_each_email_once(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    users = [f"user_multi_{index}" for index in range(8)]
    for user in users:
        await signup(client, user)
        await activate(client, user)
    worker = worker_of(app)
    await asyncio.gather(*(worker.drain() for _ in range(4)))

    assert sorted(resend.jobs) == sorted(f"email|{user}|activation|0|action" for user in users)


async def test_user_without_an_email_address_is_recorded_not_sent(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"]["primary_email_address_id"] = None
    body = json.dumps(event).encode()
    await client.post("/webhooks/clerk", content=body, headers=sign(body))
    await activate(client)
    await worker_of(app).drain()

    assert resend.inbox == []
    [email] = await emails(client)
    assert email["status"] == "dropped"


# --- unsubscribe ----------------------------------------------------------------------------


def unsubscribe_token(sent: dict[str, Any]) -> str:
    link = sent["body"]["headers"]["List-Unsubscribe"].strip("<>")
    return parse_qs(urlsplit(link).query)["token"][0]


async def test_one_click_unsubscribe_stops_further_loop_email(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    token = unsubscribe_token(resend.inbox[0])

    page = await client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200
    assert re.search(r"<form method=\"?post", page.text)
    assert (await emails(client))[0]["status"] == "sent"  # opening the page changed nothing

    response = await client.post(
        "/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    clock.advance(3 * 24 * 60 * MIN)  # the day-2 tips would be due now
    await worker_of(app).drain()
    assert len(resend.inbox) == 1


async def test_unsubscribe_drops_emails_already_queued(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin, clock: FakeClock
) -> None:
    resend.script(("status", 500))
    await signup(client)
    await activate(client)
    await worker_of(app).drain()  # queued for a retry
    token = app.state.runtime.tokens.issue(USER)
    await client.post("/unsubscribe", params={"token": token})
    clock.advance(MIN)
    await worker_of(app).drain()

    assert resend.inbox == []
    [email] = await emails(client)
    assert (email["status"], email["last_error"]) == ("dropped", "unsubscribed")


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("dXNlcl8x.AAAA", id="forged-signature"),
        pytest.param("!!!.???", id="not-base64"),
    ],
)
async def test_bad_unsubscribe_token_is_refused(client: httpx.AsyncClient, token: str) -> None:
    assert (await client.get("/unsubscribe", params={"token": token})).status_code == 400
    assert (await client.post("/unsubscribe", params={"token": token})).status_code == 400


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_a_token_cannot_be_moved_to_another_user(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    import base64

    token = app.state.runtime.tokens.issue("user_a")
    _, signature = token.split(".")
    other = base64.urlsafe_b64encode(b"user_b").rstrip(b"=").decode()
    response = await client.post("/unsubscribe", params={"token": f"{other}.{signature}"})
    assert response.status_code == 400


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "retry", "retry_after_s", "jitter", "expected_ms"),
    [
        (Growth.EXPONENTIAL, 1, None, 0.5, 10_000),
        (Growth.EXPONENTIAL, 3, None, 0.5, 40_000),
        (Growth.EXPONENTIAL, 30, None, 0.5, 3_600_000),  # capped at max_delay
        (Growth.LINEAR, 3, None, 0.5, 30_000),
        (Growth.FIXED, 3, None, 0.5, 10_000),
        (Growth.EXPONENTIAL, 1, None, 0.0, 8_000),  # jitter: -20 %
        (Growth.EXPONENTIAL, 1, None, 1.0, 12_000),  # jitter: +20 %
        (Growth.EXPONENTIAL, 1, 90.0, 0.5, 90_000),  # never sooner than retry-after
    ],
)
def test_retry_delay(
    backoff: Growth, retry: int, retry_after_s: float | None, jitter: float, expected_ms: int
) -> None:
    recovery = Recovery(3, backoff, 10_000, 3_600_000)
    assert retry_delay_ms(recovery, retry, retry_after_s, lambda: jitter) == expected_ms


def test_addresses_are_masked_in_logs() -> None:
    assert mask("ada@example.org") == "a***@example.org"
    assert mask("nonsense") == "***"


async def test_outbox_mailer_sends_nothing_and_names_the_key() -> None:
    email = RenderedEmail(sender=SENDER, to="ada@example.org", subject="Hi", html="<p>", text="")
    assert await OutboxMailer().send(email, "email|u|l|0|action") == "outbox:email|u|l|0|action"


async def test_a_sent_email_keeps_its_subject_not_its_body(
    client: httpx.AsyncClient, app: FastAPI, resend: ResendStandin
) -> None:
    """Redis keeps what was sent to whom and its subject; the body was only needed to send it."""
    await signup(client)
    await activate(client)
    await worker_of(app).drain()
    [job] = (await store_of(app).queries.snapshot(USER)).jobs.values()

    assert len(resend.inbox) == 1
    assert job.rendered is not None
    assert (job.rendered.subject, job.rendered.to) == (
        resend.inbox[0]["body"]["subject"],
        "example@example.org",
    )
    assert (job.rendered.html, job.rendered.text, job.rendered.headers) == ("", "", {})
