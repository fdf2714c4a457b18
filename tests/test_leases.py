"""Fenced leases: a worker whose lease was taken over can neither start an attempt nor settle
anything over the newer worker's outcome (a send that happened still lands), leases of jobs in hand
are renewed, and an attempt that never reached Resend uses up no retry. Store-level on all three
transports; end to end through the worker, the real resend SDK and the Resend stand-in."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.clock import system_clock_ms
from app.delivery.attempts import Delivery
from app.delivery.outbox import OutboxMailer
from app.delivery.turns import begin_attempt
from app.engine.email_jobs import EmailJob, JobStatus, RenderedEmail
from app.engine.evaluate import Decisions
from app.runtime import build_runtime
from app.settings import Settings
from app.storage.connections import connect
from app.storage.keys import Keys
from app.storage.records import Applied, Claim, Held, NewAction, Settled
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
from tests.standins.resend import ResendStandin
from tests.support.constants import HOUR, MIN, SEC
from tests.support.timing import fake_time_rate_limiter, wait_until

USER = "user_lease"
WELCOME = f"email|{USER}|welcome|0|action"


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    instance = Store(connect(settings), Keys(settings.key_prefix), webhook_dedupe_ttl_s=172800)
    yield instance
    await instance.close()


TURN = f"eval|{USER}"
LEASE = 1_000


async def queue_job(store: Store, now_ms: int, job_id: str = WELCOME) -> EmailJob:
    """A rendered email job, due now, and the user's turn on the schedule, as the engine queues
    one."""
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
    record = await store.queries.snapshot(USER)
    applied = await store.queue.apply_decisions(
        USER, rev=record.rev, states={}, jobs=[job], wake_at_ms=now_ms
    )
    assert applied is Applied.APPLIED
    return job


async def claim(store: Store, now_ms: int) -> Claim:
    return await store.queue.claim_due(now_ms=now_ms, lease_ms=LEASE, limit=10)


async def begin(store: Store, lease: Claim, now_ms: int) -> EmailJob | Applied:
    """What a worker's turn does with the due job: its attempt begun under the lease."""
    record = await store.queries.snapshot(USER)
    job = begin_attempt(record.jobs[WELCOME], now_ms)
    applied = await store.queue.apply_decisions(
        USER, rev=record.rev, states={}, jobs=[job], wake_at_ms=None,
        token=lease.token, begun=True,
    )  # fmt: skip
    return job if applied is Applied.APPLIED else applied


async def settle(store: Store, job: EmailJob, lease: Claim, now_ms: int, **kwargs: Any) -> Settled:
    held = Held(TURN, lease.token)
    return await store.queue.settle(
        job, now_ms=now_ms, seq=job.seq, under=held, turn=held, **kwargs
    )


def sent(job: EmailJob, at_ms: int) -> EmailJob:
    update = {"status": JobStatus.SENT, "sent_at": at_ms, "started_at": None}
    return job.model_copy(update=update)


async def emails_sent(store: Store) -> int:
    stats = await store.queries.read_stats(["welcome"], [])
    return stats.loops["welcome"].get("emails_sent", 0)


# --- the store ----------------------------------------------------------------------------------


async def test_a_worker_whose_lease_was_taken_over_can_neither_start_nor_settle(
    store: Store,
) -> None:
    await queue_job(store, 100)
    first = await claim(store, 100)
    mine = await begin(store, first, 100)
    assert isinstance(mine, EmailJob)
    # the first worker stalls past its lease: the second takes the turn over and, once the
    # first attempt's time is up, begins its own
    second = await claim(store, 1_100)
    assert (second.job_ids, second.token != first.token) == ([TURN], True)
    assert await begin(store, first, 1_150) is Applied.STALE
    theirs = await begin(store, second, 1_150)
    assert isinstance(theirs, EmailJob)
    assert (theirs.seq, theirs.attempts, theirs.first_attempt_at) == (2, 2, 100)

    queued = mine.model_copy(update={"last_error": "stale", "due_at": 9_000, "started_at": None})
    failed = mine.model_copy(update={"status": JobStatus.FAILED, "last_error": "stale"})
    for late, action in ((queued, "retry"), (queued, "defer"), (failed, None)):
        answer = await settle(store, late, first, 1_300, action=action, wake_at_ms=9_000)
        assert answer is Settled.STALE
    assert (await store.queries.get_job(WELCOME)) == theirs  # nothing the stale worker said
    assert await store.queue.dead_jobs() == []

    assert await settle(store, sent(theirs, 1_400), second, 1_400, wake_at_ms=None) is (
        Settled.SETTLED
    )
    # the stale worker's own send came back later: the job stays as the newer worker left it
    assert await settle(store, sent(mine, 1_500), first, 1_500) is Settled.FINAL
    stored = await store.queries.get_job(WELCOME)
    assert stored is not None
    assert (stored.sent_at, stored.attempts) == (1_400, 2)
    assert await emails_sent(store) == 1
    assert (await claim(store, 99_000)).job_ids == []  # the turn ended with the send


async def test_a_send_from_a_lost_lease_lands_and_nothing_overwrites_it(store: Store) -> None:
    """The last retry's worker gets a 409 while the first worker's slow send is accepted: the
    send is recorded, never dead-lettered, and counted once."""
    await queue_job(store, 100)
    first = await claim(store, 100)
    mine = await begin(store, first, 100)
    second = await claim(store, 1_100)
    theirs = await begin(store, second, 1_100)
    assert isinstance(mine, EmailJob)
    assert isinstance(theirs, EmailJob)

    answer = await settle(store, sent(mine, 1_300), first, 1_300, wake_at_ms=None)
    assert answer is Settled.SETTLED  # a send is a fact, whoever began it
    failed = theirs.model_copy(update={"status": JobStatus.FAILED, "last_error": "409"})
    assert await settle(store, failed, second, 1_400, wake_at_ms=None) is Settled.FINAL
    assert await settle(store, sent(theirs, 1_500), second, 1_500) is Settled.FINAL

    stored = await store.queries.get_job(WELCOME)
    assert stored is not None
    assert stored.status is JobStatus.SENT
    assert await store.queue.dead_jobs() == []
    assert await emails_sent(store) == 1
    assert (await claim(store, 99_000)).job_ids == []  # the turn is over: nothing to take


async def test_renewed_leases_are_not_taken_over_and_a_stale_token_renews_nothing(
    store: Store,
) -> None:
    await queue_job(store, 100)
    lease = await claim(store, 100)
    stranger = Claim(job_ids=[TURN], wake_at_ms=None, token=str(int(lease.token) + 1000))
    assert await store.queue.renew_leases(stranger, [TURN], now_ms=900, lease_ms=LEASE) == []
    assert await store.queue.renew_leases(lease, [TURN], now_ms=900, lease_ms=LEASE) == [TURN]

    assert (await claim(store, 1_500)).job_ids == []  # renewed to 1900: not due
    assert isinstance(await begin(store, lease, 1_600), EmailJob)  # still the holder
    taken = await claim(store, 1_900)
    assert taken.job_ids == [TURN]
    assert int(taken.token) > int(lease.token)  # a new number, never one used before
    # renewing a lease taken over renews nothing, and leaves the old holder fenced
    assert await store.queue.renew_leases(lease, [TURN], now_ms=1_950, lease_ms=LEASE) == []
    assert await begin(store, lease, 2_000) is Applied.STALE


async def test_an_action_on_a_held_turn_never_lets_a_second_worker_claim_it(
    store: Store,
) -> None:
    """The defect of time-range fencing: an action put a held turn back at `now`, a second
    worker claimed it, and both passed the check. Now the action is noted on the lease, the
    turn stays with its holder, and its release makes it due at once."""
    await queue_job(store, 100)
    first = await claim(store, 100)
    watched = {"first_project_created": [1]}
    action = NewAction(USER, "first_project_created", 150, id="evt_1")
    assert await store.actions.record([action], now_ms=150, tracked=watched) == (1, 0)
    assert (await claim(store, 200)).job_ids == []  # not due: its holder still has it
    record = await store.queries.snapshot(USER)
    applied = await store.queue.apply_decisions(
        USER, rev=record.rev, states={}, jobs=[], wake_at_ms=50_000, token=first.token
    )
    assert applied is Applied.APPLIED
    again = await claim(store, 300)  # the release made it due at the action's time
    assert again.job_ids == [TURN]
    assert int(again.token) > int(first.token)


async def test_a_frozen_worker_that_wakes_after_others_finished_writes_nothing(
    store: Store,
) -> None:
    """A worker paused past its lease (a GC pause, a stopped VM) while a second one took the
    turn, sent, released it, and a third claimed it again: every write of the first is refused,
    whatever the clocks say."""
    await queue_job(store, 100)
    frozen = await claim(store, 100)
    second = await claim(store, 1_200)
    theirs = await begin(store, second, 1_200)
    assert isinstance(theirs, EmailJob)
    assert await settle(store, sent(theirs, 1_300), second, 1_300, wake_at_ms=1_400) is (
        Settled.SETTLED
    )
    third = await claim(store, 1_500)
    assert third.job_ids == [TURN]
    assert await begin(store, frozen, 1_600) is Applied.STALE
    assert await store.queue.renew_leases(frozen, [TURN], now_ms=1_600, lease_ms=LEASE) == []
    record = await store.queries.snapshot(USER)
    late = record.jobs[WELCOME].model_copy(update={"status": JobStatus.FAILED})
    assert await settle(store, late, frozen, 1_600, wake_at_ms=None) is Settled.FINAL
    assert (await store.queries.get_job(WELCOME)) == record.jobs[WELCOME]
    # and the third holder is still the holder
    assert await store.queue.renew_leases(third, [TURN], now_ms=1_700, lease_ms=LEASE) == [TURN]


async def test_an_evaluation_taken_over_is_not_applied(store: Store) -> None:
    await queue_job(store, 100)
    first = await claim(store, 100)
    second = await claim(store, 1_200)
    assert first.job_ids == second.job_ids == [TURN]
    record = await store.queries.snapshot(USER)
    apply = {"rev": record.rev, "states": {}, "jobs": [], "wake_at_ms": None}
    stale = await store.queue.apply_decisions(USER, token=first.token, **apply)
    fresh = await store.queue.apply_decisions(USER, token=second.token, **apply)
    assert (stale, fresh) == (Applied.STALE, Applied.APPLIED)


async def test_an_attempt_in_flight_is_not_begun_again_until_its_time_is_up(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Another lane looking at the user while an attempt is in flight (an action moved their
    turn up) waits for the attempt, however it ends, instead of sending a second request."""
    settings = make_settings(loops_dir=single_loop(tmp_path, retries=3))
    runtime = build_runtime(settings, FakeClock(100))
    plan = runtime.worker.evaluator.plan
    await queue_job(store, 100)
    lease = await claim(store, 100)
    assert isinstance(await begin(store, lease, 100), EmailJob)
    record = await store.queries.snapshot(USER)
    no_decisions = Decisions({}, [], None)
    during = plan(record, no_decisions, 100 + runtime.worker.config.lease_ms - 1)
    after = plan(record, no_decisions, 100 + runtime.worker.config.lease_ms)
    assert (during.deliver, during.wake_at_ms) == ([], 100 + runtime.worker.config.lease_ms)
    assert [job.seq for job in after.deliver] == [2]
    await runtime.close()


def test_an_attempt_that_never_reached_resend_is_not_counted() -> None:
    delivery = Delivery(None, {}, OutboxMailer(), FakeClock(5_000))  # type: ignore[arg-type]
    job = begin_attempt(welcome_job(100), 100)
    assert (job.attempts, job.first_attempt_at) == (1, 100)
    deferred = delivery._deferred(job, "429", retry_after_s=None)
    assert (deferred.job.attempts, deferred.job.first_attempt_at, deferred.job.started_at) == (
        0, None, None,
    )  # fmt: skip
    again = begin_attempt(deferred.job, 6_000)
    assert (again.attempts, again.first_attempt_at, again.seq) == (1, 6_000, 2)


def test_resends_window_is_counted_from_the_first_attempt_that_may_have_reached_it() -> None:
    job = begin_attempt(welcome_job(100), 100)  # timed out: its outcome is unknown
    retried = job.model_copy(update={"due_at": 2 * HOUR, "started_at": None})
    again = begin_attempt(retried, 2 * HOUR)
    assert (again.attempts, again.first_attempt_at) == (2, 100)


def welcome_job(now_ms: int) -> EmailJob:
    rendered = RenderedEmail(
        sender="a@acme.dev", to="u@example.org", subject="Hi", html="", text=""
    )
    return EmailJob(
        id=WELCOME, user_id=USER, loop_id="welcome", step=0, kind="action", template="welcome",
        queued_at=now_ms, due_at=now_ms, rendered=rendered,
    )  # fmt: skip


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
    job = await store_of(app).queries.get_job(job_id)
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
        resend.script(("hang", 1.5))
        a = asyncio.create_task(worker.run_once())  # A's turn: the welcome decided and sent
        await wait_in_flight(resend)
        clock.advance(61 * SEC)  # A's lease (60 s) runs out on the shared clock
        await worker.run_once()  # B: takes the turn, 409 (A's request holds the key), defers
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
        resend.script(("hang", 1.2))
        sending = asyncio.create_task(worker.run_once())  # the welcome decided and sent
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
