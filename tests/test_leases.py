"""Fenced leases: a worker whose lease was taken over can neither start an attempt nor settle
anything over the newer worker's outcome (a send that happened still lands), leases of jobs in hand
are renewed, and an attempt that never reached Resend uses up no retry. Store-level on all three
transports; end to end through the worker, the real resend SDK and the Resend stand-in."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from textwrap import dedent

import httpx
import pytest
from fastapi import FastAPI

from app.clock import system_clock_ms
from app.delivery.jobs import EmailJob, JobStatus, RenderedEmail
from app.settings import Settings
from app.storage.connections import connect
from app.storage.keys import Keys
from app.storage.records import Applied, Settled
from app.storage.store import Store
from tests.conftest import (
    AUTH,
    FakeClock,
    clerk_event,
    post_webhook,
    resend_settings,
    running,
    store_of,
    worker_of,
)
from tests.resend_standin import ResendStandin
from tests.test_faults import fake_time_rate_limiter, wait_until

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
USER = "user_lease"
WELCOME = f"email|{USER}|welcome|0|action"


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    instance = Store(connect(settings), Keys(settings.key_prefix), webhook_dedupe_ttl_s=172800)
    yield instance
    await instance.close()


async def queue_job(store: Store, now_ms: int, job_id: str = WELCOME) -> EmailJob:
    """A rendered email job on the schedule, due now, as the engine queues one."""
    rendered = RenderedEmail(
        sender="a@acme.dev", to="u@example.org", subject="Hi", html="", text=""
    )
    job = EmailJob(
        id=job_id,
        user_id=USER,
        loop_id="welcome",
        step=0,
        kind="action",
        template="welcome",
        queued_at=now_ms,
        due_at=now_ms,
        rendered=rendered,
    )
    applied = await store.queue.apply_decisions(
        USER, rev="0", states={}, jobs=[job], timeline=[], wake_at_ms=None
    )
    assert applied is Applied.APPLIED
    return job


def sent(job: EmailJob, at_ms: int, attempts: int = 1) -> EmailJob:
    update = {"status": JobStatus.SENT, "sent_at": at_ms, "attempts": attempts}
    return job.model_copy(update=update)


async def emails_sent(store: Store) -> int:
    stats = await store.reads.read_stats(["welcome"], [])
    return stats.loops["welcome"].get("emails_sent", 0)


# --- the store ----------------------------------------------------------------------------------


async def test_a_worker_whose_lease_was_taken_over_can_neither_start_nor_settle(
    store: Store,
) -> None:
    job = await queue_job(store, 100)
    first = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    assert await store.queue.begin_attempt(job.id, token=first.token, now_ms=100) is not None
    # the first worker stalls past its lease: the second takes the job over
    second = await store.queue.claim_due(now_ms=1_200, lease_ms=1_000, limit=10)
    assert (second.job_ids, second.token != first.token) == ([job.id], True)

    assert await store.queue.begin_attempt(job.id, token=first.token, now_ms=1_300) is None
    queued = job.model_copy(update={"last_error": "stale", "due_at": 9_000})
    failed = job.model_copy(update={"status": JobStatus.FAILED, "last_error": "stale"})
    for late, deferred_ms in ((queued, None), (queued, 1_300), (failed, None)):
        answer = await store.queue.settle(
            late,
            now_ms=1_300,
            retry_at_ms=9_000,
            token=first.token,
            deferred_attempt_ms=deferred_ms,
        )
        assert answer is Settled.STALE
    assert (await store.reads.get_job(job.id)) == job  # nothing the stale worker said was written
    assert await store.queue.dead_jobs() == []

    assert await store.queue.begin_attempt(job.id, token=second.token, now_ms=1_300) is not None
    answer = await store.queue.settle(sent(job, 1_400), now_ms=1_400, token=second.token)
    assert answer is Settled.SETTLED
    # the stale worker's own send came back later: the job stays as the newer worker left it
    late = await store.queue.settle(sent(job, 1_500, 2), now_ms=1_500, token=first.token)
    assert late is Settled.FINAL
    stored = await store.reads.get_job(job.id)
    assert stored is not None
    assert (stored.sent_at, stored.attempts) == (1_400, 1)
    assert await emails_sent(store) == 1


async def test_a_send_from_a_lost_lease_lands_and_nothing_overwrites_it(store: Store) -> None:
    """The last retry's worker gets a 409 while the first worker's slow send is accepted: the
    send is recorded, never dead-lettered, and counted once."""
    job = await queue_job(store, 100)
    first = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    await store.queue.begin_attempt(job.id, token=first.token, now_ms=100)
    second = await store.queue.claim_due(now_ms=1_200, lease_ms=1_000, limit=10)

    answer = await store.queue.settle(sent(job, 1_300), now_ms=1_300, token=first.token)
    assert answer is Settled.SETTLED  # a send is a fact, whoever holds the lease
    failed = job.model_copy(update={"status": JobStatus.FAILED, "last_error": "409"})
    assert await store.queue.settle(failed, now_ms=1_400, token=second.token) in (Settled.FINAL,)
    again = await store.queue.settle(sent(job, 1_500, 2), now_ms=1_500, token=second.token)
    assert again is Settled.FINAL

    stored = await store.reads.get_job(job.id)
    assert stored is not None
    assert stored.status is JobStatus.SENT
    assert await store.queue.dead_jobs() == []
    assert await emails_sent(store) == 1
    nothing = await store.queue.claim_due(now_ms=99_000, lease_ms=1_000, limit=10)
    assert nothing.job_ids == []  # not on the schedule, not leased: nothing to take over


async def test_renewed_leases_are_not_taken_over_and_a_stale_token_renews_nothing(
    store: Store,
) -> None:
    job = await queue_job(store, 100)
    claim = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    assert await store.queue.renew_leases([job.id], token="not-it", now_ms=900, lease_ms=1_000) == 0
    assert (
        await store.queue.renew_leases([job.id], token=claim.token, now_ms=900, lease_ms=1_000) == 1
    )

    assert (await store.queue.claim_due(now_ms=1_500, lease_ms=1_000, limit=10)).job_ids == []
    assert (await store.queue.claim_due(now_ms=1_900, lease_ms=1_000, limit=10)).job_ids == [job.id]


async def test_an_attempt_that_never_reached_resend_is_not_counted(store: Store) -> None:
    job = await queue_job(store, 100)
    claim = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    attempt = await store.queue.begin_attempt(job.id, token=claim.token, now_ms=100)
    assert attempt is not None
    assert attempt.previous_attempts == 0
    deferred = job.model_copy(update={"last_error": "429", "due_at": 5_000})
    answer = await store.queue.settle(
        deferred,
        now_ms=150,
        retry_at_ms=5_000,
        token=claim.token,
        deferred_attempt_ms=100,
    )
    assert answer is Settled.SETTLED

    claim = await store.queue.claim_due(now_ms=5_000, lease_ms=1_000, limit=10)
    attempt = await store.queue.begin_attempt(job.id, token=claim.token, now_ms=5_000)
    assert attempt is not None
    assert (attempt.previous_attempts, attempt.first_reached_at_ms) == (0, None)


async def test_resends_window_is_counted_from_the_first_attempt_that_may_have_reached_it(
    store: Store,
) -> None:
    job = await queue_job(store, 100)
    claim = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    await store.queue.begin_attempt(job.id, token=claim.token, now_ms=100)  # timed out: unknown
    retry = job.model_copy(update={"attempts": 1, "due_at": 2 * HOUR})
    await store.queue.settle(retry, now_ms=200, retry_at_ms=2 * HOUR, token=claim.token)

    claim = await store.queue.claim_due(now_ms=2 * HOUR, lease_ms=1_000, limit=10)
    attempt = await store.queue.begin_attempt(job.id, token=claim.token, now_ms=2 * HOUR)
    assert attempt is not None
    assert (attempt.previous_attempts, attempt.first_reached_at_ms) == (1, 100)


async def test_an_evaluation_taken_over_is_not_applied(store: Store) -> None:
    await queue_job(store, 100)
    evaluation = f"eval|{USER}"
    await store.conn.call("ZADD", store.keys.shard(0).schedule, 100, evaluation)
    first = await store.queue.claim_due(now_ms=100, lease_ms=1_000, limit=10)
    second = await store.queue.claim_due(now_ms=1_200, lease_ms=1_000, limit=10)
    assert evaluation in first.job_ids
    assert evaluation in second.job_ids
    record = await store.reads.snapshot(USER)
    stale = await store.queue.apply_decisions(
        USER, rev=record.rev, states={}, jobs=[], timeline=[], wake_at_ms=None, token=first.token
    )
    fresh = await store.queue.apply_decisions(
        USER, rev=record.rev, states={}, jobs=[], timeline=[], wake_at_ms=None, token=second.token
    )
    assert (stale, fresh) == (Applied.STALE, Applied.APPLIED)


# --- end to end ---------------------------------------------------------------------------------

NO_RETRY_LOOP = """
    type: activation
    opinion: welcome once, with RETRIES retries
    steps:
      - trigger: {type: database, table: users, event: insert}
        condition: {type: action, action: first_project_created, count: 1, timeout: 5m}
        action: {type: email, template: welcome}
    recovery: {retries: RETRIES}
    """


def single_loop(tmp_path: Path, retries: int) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "welcome.html").write_text("---\nsubject: hi\n---\n<p>hi</p>\n")
    text = dedent(NO_RETRY_LOOP).replace("RETRIES", str(retries))
    (tmp_path / "welcome.yaml").write_text(text)
    return tmp_path


async def signed_up_and_active(http: httpx.AsyncClient, user_id: str = USER) -> None:
    body = httpx.Request("POST", "/", json=clerk_event("created", user_id)).content
    assert (await post_webhook(http, body)).status_code == 200
    action = {"user_id": user_id, "action": "first_project_created"}
    assert (await http.post("/v1/actions", json=action, headers=AUTH)).status_code == 202


async def wait_in_flight(resend: ResendStandin) -> None:
    await wait_until(lambda: bool(resend.app.state.in_flight), 5, "a send in flight")


async def job_status(app: FastAPI, job_id: str) -> EmailJob:
    job = await store_of(app).reads.get_job(job_id)
    assert job is not None
    return job


@pytest.mark.parametrize("transport", ["embedded", "redis", "upstash"], indirect=True)
async def test_a_concurrent_request_on_the_last_retry_is_deferred_not_dead_lettered(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    tmp_path: Path,
) -> None:
    """Worker A's send hangs past its lease; B takes the job over and gets Resend's 409
    `concurrent_idempotent_requests`; then A's send is accepted. One email, recorded as sent,
    never dead-lettered (before: B dead-lettered it on its last retry, and a `dead retry` could
    send it again once Resend forgot the key)."""
    settings = make_settings(
        loops_dir=single_loop(tmp_path, retries=0), **resend_settings(resend, resend_timeout_s=4)
    )
    async with running(settings, clock) as (app, http):
        worker = worker_of(app)
        fake_time_rate_limiter(worker, clock)
        await signed_up_and_active(http)
        await worker.run_once()  # evaluates: the welcome is queued, due now
        resend.script(("hang", 1.5))
        a = asyncio.create_task(worker.run_once())
        await wait_in_flight(resend)
        clock.advance(61 * SEC)  # A's lease (60 s) runs out on the shared clock
        await worker.run_once()  # B: reclaims, 409 (A's request holds the key), defers
        assert (await job_status(app, WELCOME)).status is JobStatus.QUEUED
        await a  # A's send is accepted and lands
        clock.advance(MIN)
        await worker.drain()  # B's deferred attempt finds the job sent

        job = await job_status(app, WELCOME)
        assert (job.status, job.attempts) == (JobStatus.SENT, 1)
        assert await store_of(app).queue.dead_jobs() == []
        assert [sent["idempotency_key"] for sent in resend.inbox] == [WELCOME]
        assert await emails_sent(store_of(app)) == 1


@pytest.mark.parametrize("transport", ["embedded", "redis", "upstash"], indirect=True)
async def test_a_send_slower_than_its_lease_keeps_it_by_renewal(
    make_settings: Callable[..., Settings], resend: ResendStandin, tmp_path: Path
) -> None:
    """A 0.3 s lease, a 1.2 s send: renewed every 0.1 s, nobody else can take the job meanwhile
    (before: another worker took it after 0.3 s and sent a second request)."""
    settings = make_settings(
        loops_dir=single_loop(tmp_path, retries=3), **resend_settings(resend, resend_timeout_s=4)
    )
    async with running(settings, system_clock_ms) as (app, http):
        worker = worker_of(app)
        worker.config = type(worker.config)(lease_ms=300)
        await signed_up_and_active(http)
        await worker.run_once()  # evaluates: the welcome is queued, due now
        resend.script(("hang", 1.2))
        sending = asyncio.create_task(worker.run_once())
        await wait_in_flight(resend)
        taken: list[str] = []
        while not sending.done():
            claim = await store_of(app).queue.claim_due(
                now_ms=system_clock_ms(), lease_ms=300, limit=9
            )
            taken += claim.job_ids
            await asyncio.sleep(0.05)
        await sending

    assert taken == []
    assert resend.requests == 1
    assert [sent["idempotency_key"] for sent in resend.inbox] == [WELCOME]


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)  # the mailer is the subject
async def test_rate_limited_attempts_use_up_no_retry(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    tmp_path: Path,
) -> None:
    """Two workers at 2/s against a 2/s team limit get 429s: with one retry allowed, five 429s
    in a row still end in one email sent (before: dead-lettered after the second 429)."""
    settings = make_settings(loops_dir=single_loop(tmp_path, retries=1), **resend_settings(resend))
    async with running(settings, clock) as (app, http):
        worker = worker_of(app)
        fake_time_rate_limiter(worker, clock)
        resend.script(*[("status", 429, 1)] * 5)
        await signed_up_and_active(http)
        for _ in range(8):
            await worker.drain()
            clock.advance(2 * SEC)
        job = await job_status(app, WELCOME)

    assert (job.status, job.attempts) == (JobStatus.SENT, 1)
    assert [sent["idempotency_key"] for sent in resend.inbox] == [WELCOME]


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_no_attempt_goes_out_24_hours_after_the_first_one_that_may_have_been_accepted(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    tmp_path: Path,
) -> None:
    """Attempt 1 is accepted but its answer lost; attempt 2, two hours later, gets a 500; the
    retry comes a day after attempt 1 (the worker was down): it must not go out, Resend no longer
    knows the key (before: the window was counted from attempt 2, and a third request went out)."""
    settings = make_settings(loops_dir=single_loop(tmp_path, retries=5), **resend_settings(resend))
    async with running(settings, clock) as (app, http):
        worker = worker_of(app)
        fake_time_rate_limiter(worker, clock)
        resend.script(("accept_then_fail", "drop"), ("status", 500))
        await signed_up_and_active(http)
        await worker.drain()  # attempt 1: accepted, the answer lost
        clock.advance(2 * HOUR)
        await worker.drain()  # attempt 2: 500
        clock.advance(22 * HOUR + MIN)
        await worker.drain()
        job = await job_status(app, WELCOME)

    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert "24 h idempotency window" in job.last_error
    assert resend.requests == 2
