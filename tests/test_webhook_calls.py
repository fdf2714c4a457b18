"""Webhook steps end to end, through the worker, on every transport (embedded, Redis, the Upstash
REST stand-in and a Redis Cluster), against a real local receiver (tests/standins/webhook_receiver):
Standard Webhooks headers that svix verifies, the event's exact body and Slack's, one `webhook-id`
for every retry of a step for a user (a 5xx, a hang bounded by WEBHOOK_TIMEOUT_S, an operator's
retry of a dead letter), a 4xx dead-lettered, an email step and a webhook step of one loop each
done once, a webhook neither held by nor counted toward the frequency cap and quiet hours, racing
workers calling each once, and what the timeline and the dashboard show of it."""

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from app.cli.simulate import parse_actions, simulate
from app.delivery.attempts import Lease
from app.engine.email_jobs import JobStatus
from app.engine.job_ids import email_id
from app.runtime import build_store, build_worker
from app.settings import Settings
from tests.conftest import (
    AUTH,
    TRANSPORTS,
    FakeClock,
    clerk_event,
    post_webhook,
    running,
    store_of,
    worker_of,
    write_files,
)
from tests.standins.webhook_receiver import WebhookReceiver, run_receiver
from tests.support.constants import MIN
from tests.support.flow import act, freeze_mid_turn, state
from tests.support.pages import funnel

LOOPS = {
    "first_project.yaml": """
        type: milestone
        recovery: {retries: 2, initial_delay: 10s, max_delay: 1m}
        steps:
          - trigger: {type: action, action: first_project_created}
            action:
              type: webhook
              url: "${TEAM_HOOK_URL}/events"
              secret: "${TEAM_HOOK_SECRET}"
    """,
    "slack.yaml": """
        type: milestone
        steps:
          - trigger: {type: action, action: invited}
            action:
              type: webhook
              url: "${TEAM_HOOK_URL}/slack"
              format: slack
              text: "{{ user.name }} ({{ user.email }}) invited a teammate"
    """,
    "onboarding.yaml": """
        type: activation
        steps:
          - trigger: {type: clerk, event: user.created}
            action: {type: email, template: welcome}
          - condition: {type: action, action: upgraded, timeout: 1d}
            action:
              type: webhook
              url: "${TEAM_HOOK_URL}/upgraded"
    """,
    "templates/welcome.html": "---\nsubject: Welcome\n---\n<p>Hi {{ user.first_name }}</p>\n",
}
TEAM_HOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXJlY2VpdmVyLWtleQ=="
SHORT_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[WebhookReceiver]:
    with run_receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_server: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> WebhookReceiver:
    """The receiver, emptied, and the environment the loops' `${...}` read."""
    receiver_server.reset()
    monkeypatch.setenv("TEAM_HOOK_URL", receiver_server.url)
    monkeypatch.setenv("TEAM_HOOK_SECRET", TEAM_HOOK_SECRET)
    assert receiver_server.secret == TEAM_HOOK_SECRET
    return receiver_server


@pytest.fixture(params=[*TRANSPORTS, "cluster"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_webhook_settings(
    make_settings: Callable[..., Settings],
    transport: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> Callable[..., Settings]:
    folder = write_files(tmp_path / "loops", LOOPS)

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"loops_dir": folder, "webhook_timeout_s": SHORT_TIMEOUT_S}
        if transport == "cluster":
            values["redis_url"] = request.getfixturevalue("redis_cluster").url
        return make_settings(**(values | overrides))

    return build


@pytest.fixture
async def served(
    make_webhook_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(make_webhook_settings(), clock) as parts:
        yield parts


async def signup(client: httpx.AsyncClient, user_id: str) -> None:
    response = await post_webhook(client, _created(user_id))
    assert response.status_code == 200, response.text


def _created(user_id: str) -> bytes:
    return json.dumps(clerk_event("created", user_id)).encode()


def message_id(user_id: str, loop_id: str, step: int = 0, kind: str = "action") -> str:
    """The `webhook-id` the contract promises: the same for every retry of one step for one user."""
    job_id = email_id(user_id, loop_id, step, kind)
    return "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def webhook_jobs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["loop"]: e for e in body["emails"] if e["channel"] == "webhook"}


async def test_a_signed_event_goes_once_with_standard_webhooks_headers(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    app, client = served
    await signup(client, "user_hook1")
    await act(client, "first_project_created", "user_hook1")
    await worker_of(app).drain()
    await worker_of(app).drain()  # nothing more to do
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.path == "/events"
    assert request.verified is True
    assert request.headers["webhook-id"] == message_id("user_hook1", "first_project")
    assert request.headers["webhook-timestamp"] == str(clock() // 1000)
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["content-type"] == "application/json"
    job = webhook_jobs(await state(client, "user_hook1"))["first_project"]
    assert request.json() == {
        "type": "loop.step",
        "loop": "first_project",
        "step": 0,
        "kind": "action",
        "user": {
            "id": "user_hook1",
            "email": "example@example.org",
            "first_name": "Example",
            "last_name": "Example",
        },
        "occurred_at": _iso(job["queued_at"]),
    }
    assert (job["status"], job["attempts"], job["template"]) == ("sent", 1, "")


def _iso(at_ms: int) -> str:
    seconds, ms = divmod(at_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


async def test_a_slack_webhook_posts_its_text_unsigned_without_a_secret(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver
) -> None:
    app, client = served
    await signup(client, "user_hook2")
    await act(client, "invited", "user_hook2")
    await worker_of(app).drain()
    [request] = receiver.requests
    assert request.path == "/slack"
    assert request.json() == {"text": "Example Example (example@example.org) invited a teammate"}
    assert "webhook-signature" not in request.headers
    assert request.id == message_id("user_hook2", "slack")


async def test_a_5xx_is_retried_under_the_same_webhook_id(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    app, client = served
    receiver.answer(503, 500)
    await signup(client, "user_hook3")
    await act(client, "first_project_created", "user_hook3")
    await worker_of(app).drain()
    job = webhook_jobs(await state(client, "user_hook3"))["first_project"]
    assert (job["status"], job["last_error"]) == ("queued", "the endpoint answered 503")
    for _ in range(2):
        clock.advance(MIN)
        await worker_of(app).drain()
    job = webhook_jobs(await state(client, "user_hook3"))["first_project"]
    assert (job["status"], job["attempts"]) == ("sent", 3)
    assert receiver.ids() == [message_id("user_hook3", "first_project")] * 3
    assert all(request.verified for request in receiver.requests)
    registry = app.state.runtime.metrics.registry
    calls = {
        outcome: registry.get_sample_value("activation_webhook_calls_total", {"outcome": outcome})
        for outcome in ("retry", "sent")
    }
    assert calls == {"retry": 2, "sent": 1}
    assert registry.get_sample_value("activation_emails_total", {"outcome": "retry"}) == 0
    assert len({request.body for request in receiver.requests}) == 1  # the same body each time


async def test_a_4xx_is_dead_lettered_and_an_operators_retry_keeps_the_webhook_id(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    app, client = served
    receiver.answer(410)
    await signup(client, "user_hook4")
    await act(client, "first_project_created", "user_hook4")
    await worker_of(app).drain()
    body = await state(client, "user_hook4")
    job = webhook_jobs(body)["first_project"]
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["last_error"] == "the endpoint answered 410"
    assert any(e["event"] == "webhook.failed" for e in body["timeline"])
    store = store_of(app)
    [dead] = await store.queue.dead_jobs()
    assert dead.id == email_id("user_hook4", "first_project", 0, "action")
    assert dead.is_webhook
    page = (await client.get("/dashboard", headers=AUTH)).text
    rows = funnel(page, "first_project")
    assert (rows["webhooks_sent"], rows["webhooks_failed"]) == (0, 1)
    assert not {"sent", "emails_failed"} & set(rows)  # it sends no email: no email rows

    assert (await store.queue.retry_dead(dead, now_ms=clock())).value == "queued"
    await worker_of(app).drain()
    job = webhook_jobs(await state(client, "user_hook4"))["first_project"]
    assert job["status"] == "sent"
    assert receiver.ids() == [message_id("user_hook4", "first_project")] * 2
    assert await store.queue.dead_jobs() == []


async def test_an_endpoint_that_hangs_is_cut_off_by_the_timeout_and_retried(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    app, client = served
    receiver.hang()
    await signup(client, "user_hook5")
    await act(client, "first_project_created", "user_hook5")
    began = time.monotonic()
    await worker_of(app).drain()
    assert time.monotonic() - began < SHORT_TIMEOUT_S + 2
    job = webhook_jobs(await state(client, "user_hook5"))["first_project"]
    assert (job["status"], job["last_error"]) == ("queued", f"no answer within {SHORT_TIMEOUT_S} s")
    clock.advance(MIN)
    await worker_of(app).drain()
    job = webhook_jobs(await state(client, "user_hook5"))["first_project"]
    assert (job["status"], job["attempts"]) == ("sent", 2)
    assert receiver.ids() == [message_id("user_hook5", "first_project")] * 2


async def test_an_email_step_then_a_webhook_step_of_one_loop_each_go_once(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    app, client = served
    await signup(client, "user_hook6")
    await worker_of(app).drain()
    clock.advance(MIN)
    await act(client, "upgraded", "user_hook6")
    for _ in range(3):
        await worker_of(app).drain()
        clock.advance(MIN)
    body = await state(client, "user_hook6")
    mine = [(e["channel"], e["step"], e["status"], e["attempts"]) for e in body["emails"]]
    assert sorted(mine) == [("email", 0, "sent", 1), ("webhook", 1, "sent", 1)]
    assert [r.path for r in receiver.requests] == ["/upgraded"]
    events = [e["event"] for e in body["timeline"]]
    assert events.count("email.sent") == 1
    assert events.count("webhook.sent") == 1
    page = (await client.get("/dashboard", headers=AUTH)).text
    rows = funnel(page, "onboarding")
    assert (rows["webhooks_sent"], rows["sent"]) == (1, 1)
    assert rows["webhooks_failed"] == 0  # a loop with webhook steps shows both rows


async def test_the_cap_and_quiet_hours_neither_hold_nor_count_a_webhook(
    make_webhook_settings: Callable[..., Settings], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    """A cap of one email a day, and quiet hours from a minute ago for half an hour: the
    webhooks go at once, and, not counted, leave the day's one email its place."""
    minute = clock() // MIN
    quiet = f"{_hh_mm(minute - 1)}-{_hh_mm(minute + 30)}"
    settings = make_webhook_settings(frequency_cap="1/1d", quiet_hours=quiet)
    async with running(settings, clock) as (app, client):
        await signup(client, "user_hook7")
        await act(client, "first_project_created", "user_hook7")
        await worker_of(app).drain()
        body = await state(client, "user_hook7")
        welcome = next(e for e in body["emails"] if e["channel"] == "email")
        assert welcome["held"] == "quiet_hours"
        assert webhook_jobs(body)["first_project"]["status"] == "sent"
        clock.advance(31 * MIN)
        await worker_of(app).drain()
        await act(client, "invited", "user_hook7")  # the day's one email has gone by now
        await worker_of(app).drain()
        body = await state(client, "user_hook7")
        welcome = next(e for e in body["emails"] if e["channel"] == "email")
        assert (welcome["status"], welcome["held"]) == ("sent", None)  # no webhook counted
        assert webhook_jobs(body)["slack"]["status"] == "sent"  # nor waited for the cap
    assert sorted(r.path for r in receiver.requests) == ["/events", "/slack"]


def _hh_mm(minute: int) -> str:
    """The UTC time of day of an epoch minute, HH:MM."""
    hours, minutes = divmod(minute % (24 * 60), 60)
    return f"{hours:02d}:{minutes:02d}"


async def test_a_user_who_stopped_loop_email_still_tells_the_team(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    """A webhook notifies the team, not the user: an unsubscribe does not stop it."""
    app, client = served
    await signup(client, "user_hook8")
    await act(client, "upgraded", "user_hook8")
    await store_of(app).users.unsubscribe("user_hook8", now_ms=clock())
    await act(client, "first_project_created", "user_hook8")
    await worker_of(app).drain()
    assert sorted(r.path for r in receiver.requests) == ["/events", "/upgraded"]
    body = await state(client, "user_hook8")
    assert [e["loop"] for e in body["emails"] if e["channel"] == "email"] == []  # no welcome


@pytest.mark.parametrize("transport", ["redis", "cluster"], indirect=True)
async def test_racing_workers_call_each_webhook_once(
    make_webhook_settings: Callable[..., Settings], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    """Three workers, each with its own connection, drain 30 users at once, each with a webhook
    due (some answered 503 first): every step's webhook-id reaches the receiver, each once a
    successful attempt."""
    settings = make_webhook_settings()
    receiver.answer(*[503] * 5)
    async with running(settings, clock) as (app, client):
        users = [f"user_race{i}" for i in range(30)]
        for user_id in users:
            await signup(client, user_id)
            await act(client, "first_project_created", user_id)
        runtime = app.state.runtime
        parts = (runtime.loops, runtime.worker.evaluator.composer, runtime.mailer, clock)
        workers = [
            build_worker(settings, build_store(settings), *parts, webhooks=runtime.webhooks)
            for _ in range(3)
        ]
        for worker in workers:
            await worker.store.open()
        try:
            for _ in range(3):
                await asyncio.gather(*(worker.drain() for worker in workers))
                clock.advance(MIN)
        finally:
            for worker in workers:
                await worker.store.close()
        for user_id in users:
            record = await store_of(app).queries.snapshot(user_id)
            [job] = [job for job in record.jobs.values() if job.is_webhook]
            assert job.status is JobStatus.SENT
    answered = [r.id for r in receiver.requests[5:]]  # after the five 503s: all 200
    assert sorted(answered) == sorted(message_id(u, "first_project") for u in users)


async def test_a_frozen_workers_call_is_made_by_the_worker_that_takes_over_and_counted_once(
    served: tuple[FastAPI, httpx.AsyncClient], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    """A worker begins a webhook's attempt and freezes before it posts; its lease runs out and
    another worker takes the user's turn: the call is made then. When the frozen worker wakes
    and posts after all, the receiver sees the same webhook-id (its idempotency key), and the
    fence keeps the job sent once and counted once."""
    app, client = served
    await signup(client, "user_frozen")
    await act(client, "first_project_created", "user_frozen")
    store, evaluator = store_of(app), worker_of(app).evaluator
    lease = await freeze_mid_turn(app, "user_frozen", clock, MIN)
    assert lease is not None
    delivery = evaluator.delivery
    jobs = (await store.queries.snapshot("user_frozen")).jobs.values()
    [begun] = [job for job in jobs if job.is_webhook]
    assert (begun.attempts, begun.started_at, receiver.requests) == (1, clock(), [])

    clock.advance(2 * evaluator.lease_ms)  # the turn is anyone's to claim
    await worker_of(app).drain()
    job = webhook_jobs(await state(client, "user_frozen"))["first_project"]
    assert (job["status"], job["attempts"]) == ("sent", 2)
    assert delivery is not None
    await delivery.deliver([begun], lease, None)  # the frozen worker wakes and posts after all
    assert receiver.ids() == [message_id("user_frozen", "first_project")] * 2
    job = webhook_jobs(await state(client, "user_frozen"))["first_project"]
    assert (job["status"], job["attempts"]) == ("sent", 2)
    page = (await client.get("/dashboard", headers=AUTH)).text
    assert funnel(page, "first_project")["webhooks_sent"] == 1


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_a_simulation_posts_nothing(
    make_webhook_settings: Callable[..., Settings], receiver: WebhookReceiver
) -> None:
    settings = make_webhook_settings()
    run = await simulate(settings, "onboarding", "user_sim", parse_actions("upgraded@1h"), None)
    assert "     +1h  step onboarding/1 fired -> webhook queued" in run.lines
    assert any("webhook ready, not posted (dry run)" in line for line in run.lines)
    assert receiver.requests == []


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
def test_the_webhook_timeout_defaults_to_resends_and_the_lease_must_outlast_it(
    make_settings: Callable[..., Settings],
) -> None:
    assert make_settings(resend_timeout_s=4).webhook_timeout == 4
    assert make_settings(resend_timeout_s=4, webhook_timeout_s="").webhook_timeout == 4
    assert make_settings(webhook_timeout_s=3).webhook_timeout == 3
    with pytest.raises(ValueError, match=r"at least twice WEBHOOK_TIMEOUT_S \+ 2 x STORAGE"):
        make_settings(webhook_timeout_s=60, worker_lease_s=60)


# --- a property: whatever the endpoint answers, in whatever order ---------------------------------

PROPERTY = hypothesis.settings(
    deadline=None,
    database=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ANSWER = st.sampled_from([200, 201, 204, 301, 400, 404, 408, 410, 422, 429, 500, 502, 503])
ATTEMPTS = 3  # the first_project loop's first attempt and its 2 retries


def expected(answers: list[int]) -> tuple[str, int]:
    """The job's end and the POSTs made, from the answers alone: the first 2xx sends it, the
    first 4xx other than 408/429 fails it for good, and after ATTEMPTS retryable ones it fails."""
    for attempt, status in enumerate(answers[:ATTEMPTS], start=1):
        if 200 <= status < 300:
            return "sent", attempt
        if 400 <= status < 500 and status not in (408, 429):
            return "failed", attempt
    return ("failed", ATTEMPTS) if len(answers) >= ATTEMPTS else ("sent", len(answers) + 1)


@pytest.mark.parametrize("transport", ["embedded", "redis"], indirect=True)
@PROPERTY
@given(answers=st.lists(ANSWER, max_size=4))
async def test_whatever_the_answers_one_step_is_posted_under_one_id_and_ends_by_the_rules(
    served: tuple[FastAPI, httpx.AsyncClient],
    receiver: WebhookReceiver,
    clock: FakeClock,
    answers: list[int],
) -> None:
    app, client = served
    receiver.reset()
    receiver.answer(*answers)
    user = f"user_p{uuid.uuid4().hex[:10]}"
    await signup(client, user)
    await act(client, "first_project_created", user)
    for _ in range(ATTEMPTS + 1):
        await worker_of(app).drain()
        clock.advance(MIN)
    job = webhook_jobs(await state(client, user))["first_project"]
    status, posts = expected(answers)
    assert (job["status"], job["attempts"]) == (status, posts)
    assert receiver.ids() == [message_id(user, "first_project")] * posts
    assert len({request.body for request in receiver.requests}) == 1


async def test_no_log_line_names_the_webhooks_url(
    served: tuple[FastAPI, httpx.AsyncClient],
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A webhook's URL may carry a token (a Slack hook's path is one): never logged, not even by
    httpx's own request line."""
    caplog.set_level(logging.DEBUG)
    app, client = served
    await signup(client, "user_quiet")
    await act(client, "first_project_created", "user_quiet")
    await worker_of(app).drain()
    assert len(receiver.requests) == 1
    assert caplog.records
    assert receiver.url.removeprefix("http://") not in caplog.text


# --- a property: a frozen worker and another, in any order ----------------------------------------

A_BEGINS, A_POSTS, B_DRAINS, LEASE_ENDS = "a begins", "a posts", "b drains", "lease ends"


@st.composite
def schedules(draw: st.DrawFn) -> list[str]:
    """Worker A's turn (it begins the attempt, then, later, posts and settles it), worker B's
    drains and the end of A's lease, in any order: A begins before it posts."""
    events = draw(st.permutations([A_BEGINS, A_POSTS, B_DRAINS, LEASE_ENDS, B_DRAINS]))
    if events.index(A_POSTS) < events.index(A_BEGINS):
        events.remove(A_POSTS)
        events.append(A_POSTS)
    return events


@pytest.mark.parametrize("transport", ["embedded", "redis"], indirect=True)
@PROPERTY
@given(events=schedules(), answers=st.lists(st.sampled_from([200, 503]), max_size=3))
async def test_two_workers_in_any_order_post_under_one_id_and_record_one_call(
    served: tuple[FastAPI, httpx.AsyncClient],
    receiver: WebhookReceiver,
    clock: FakeClock,
    events: list[str],
    answers: list[int],
) -> None:
    """Whatever the order of a worker that begins a call and freezes, the end of its lease,
    another worker's drains and the frozen one's late POST: every POST carries the step's one
    webhook-id and body, and the call ends sent, recorded and counted once (a POST the fence
    refuses to record is the receiver's to deduplicate, by that id)."""
    app, client = served
    receiver.reset()
    receiver.answer(*answers[:1])  # at most one 503: the loop's retries always suffice
    user = f"user_o{uuid.uuid4().hex[:10]}"
    await signup(client, user)
    await act(client, "first_project_created", user)
    worker = worker_of(app)
    before = await counted_calls(app)  # the examples before this one share the loop's counters
    frozen: tuple[Lease, list[Any], Any] | None = None
    for event in events:
        if event == A_BEGINS:
            frozen = await begin_and_freeze(app, user, clock)
        elif event == A_POSTS and frozen is not None:
            lease, begun, delivery = frozen
            await delivery.deliver(begun, lease, None)
        elif event == B_DRAINS:
            await worker.drain()
        else:
            clock.advance(2 * worker.evaluator.lease_ms)
    for _ in range(ATTEMPTS):
        clock.advance(2 * worker.evaluator.lease_ms)
        await worker.drain()

    job = webhook_jobs(await state(client, user))["first_project"]
    assert job["status"] == "sent"
    assert set(receiver.ids()) == {message_id(user, "first_project")}
    assert len({request.body for request in receiver.requests}) == 1
    after = await counted_calls(app)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)  # one call, counted once


async def counted_calls(app: FastAPI) -> tuple[int, int]:
    """The first_project loop's webhook calls counted sent and failed so far."""
    stats = (await store_of(app).queries.read_stats(["first_project"], [])).loops["first_project"]
    return stats.get("webhooks_sent", 0), stats.get("webhooks_failed", 0)


async def begin_and_freeze(
    app: FastAPI, user: str, clock: FakeClock
) -> tuple[Lease, list[Any], Any] | None:
    """Worker A claims the user's turn and begins its attempts, then freezes before sending:
    its lease, the jobs it began, and the delivery it would send them with; None when the turn
    was not A's to claim (another holds it, or nothing is due)."""
    evaluator = worker_of(app).evaluator
    lease = await freeze_mid_turn(app, user, clock, evaluator.lease_ms)
    if lease is None:
        return None
    record = await store_of(app).queries.snapshot(user)
    begun = [job for job in record.jobs.values() if job.is_webhook and job.started_at == clock()]
    return lease, begun, evaluator.delivery


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_call_whose_step_is_no_longer_a_webhook_fails_for_good(
    make_webhook_settings: Callable[..., Settings],
    receiver: WebhookReceiver,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A call waiting for its retry when the loop file changed its step to an email: it fails
    for good, saying why, and posts nothing more (the URL and secret are the loaded loop's)."""
    receiver.answer(503)
    async with running(make_webhook_settings(), clock) as (app, client):
        await signup(client, "user_changed")
        await act(client, "first_project_created", "user_changed")
        await worker_of(app).drain()
    changed = dict(LOOPS)
    changed["first_project.yaml"] = """
        type: milestone
        steps:
          - trigger: {type: action, action: first_project_created}
            action: {type: email, template: welcome}
    """
    folder = write_files(tmp_path / "changed", changed)
    async with running(make_webhook_settings(loops_dir=folder), clock) as (app, client):
        clock.advance(MIN)
        await worker_of(app).drain()
        job = webhook_jobs(await state(client, "user_changed"))["first_project"]
    assert (job["status"], job["last_error"]) == (
        "failed",
        "its loop no longer has this webhook step",
    )
    assert len(receiver.requests) == 1
