"""Emails sent in batches through Resend's `POST /emails/batch` (`app.delivery.batch`): a
backlog drains in batches of up to 100, and every fault of a batch's life (a crash at each point
of it, a lease lost, a 429, a 5xx after Resend accepted, one bad address, a whole batch refused)
ends in exactly one email per job, counted in the Resend stand-in's inbox."""

import asyncio
import contextlib
import copy
import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.clock import system_clock_ms
from app.delivery.attempts import Lease
from app.delivery.batch import Batcher, BatchSender
from app.delivery.pacing import RateLimiter
from app.delivery.worker import Worker
from app.engine.email_jobs import EmailJob
from app.settings import Settings
from app.storage.queue import Requeued
from app.storage.records import Claim, EmailEvent
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
from tests.standins.resend import ResendStandin, job_of, run_standin
from tests.support.constants import MIN, SEC
from tests.support.processes import worker_env, worker_process
from tests.support.timing import fake_time_rate_limiter, wait_until

QUEUED = Requeued.QUEUED

LEASE_MS = 60 * SEC  # the default WORKER_LEASE_S

redis_only = pytest.mark.parametrize("transport", ["redis"], indirect=True)


class Crash(Exception):
    """A worker dying at a chosen point: nothing after it runs."""


def users(count: int, tag: str = "b") -> list[str]:
    return [f"user_{tag}{i:04d}" for i in range(count)]


def welcome(user_id: str) -> str:
    return f"email|{user_id}|activation|0|action"


async def signup_and_act(http: httpx.AsyncClient, user_ids: list[str], **data: Any) -> None:
    """Each user signs up (Clerk's webhook) and reports the welcome's action (batches of 100)."""
    for uid in user_ids:
        event = clerk_event("created", uid, **data.get(uid, {}))
        response = await post_webhook(http, json.dumps(event).encode())
        assert response.status_code == 200, response.text
    for start in range(0, len(user_ids), 100):
        actions = [
            {"user_id": uid, "action": "first_project_created"}
            for uid in user_ids[start : start + 100]
        ]
        response = await http.post("/v1/actions", json={"actions": actions}, headers=AUTH)
        assert response.status_code == 202, response.text


async def statuses(app: FastAPI, user_ids: list[str]) -> dict[str, str]:
    """Each user's welcome job's status as stored."""
    found = {}
    for uid in user_ids:
        record = await store_of(app).queries.snapshot(uid)
        found[uid] = record.jobs[welcome(uid)].status.value
    return found


async def stored_job(app: FastAPI, user_id: str) -> EmailJob:
    record = await store_of(app).queries.snapshot(user_id)
    return record.jobs[welcome(user_id)]


async def batches_left(app: FastAPI) -> tuple[list[str], list[str]]:
    """The batches still recorded, and the schedule's batch members."""
    store = store_of(app)
    shard = store.keys.shard(0)
    recorded = await store.conn.call("HKEYS", shard.batches)
    members = await store.conn.call("ZRANGE", shard.schedule, 0, -1)
    batch_members = [str(m) for m in members or [] if str(m).startswith("batch|")]
    return [str(batch_id) for batch_id in recorded or []], batch_members


def sender_of(worker: Worker) -> BatchSender:
    assert worker.batch_sender is not None
    return worker.batch_sender


# --- a backlog drains in batches ----------------------------------------------------------------


@redis_only
async def test_a_backlog_of_300_drains_in_batches_at_5_requests_a_second(
    make_settings: Callable[..., Settings], resend: ResendStandin
) -> None:
    """Resend holding the team to 5 requests a second (429 past it) and the service pacing
    itself at 5/s: 300 welcomes one per request would take 60 s; in batches they take a few."""
    resend.limit(5)
    settings = make_settings(**resend_settings(resend, resend_rate_limit_per_s=5))
    user_ids = users(300)
    async with running(settings, system_clock_ms) as (app, http):
        await signup_and_act(http, user_ids)
        started = time.monotonic()
        await worker_of(app).drain()
        elapsed_s = time.monotonic() - started
        assert set((await statuses(app, user_ids)).values()) == {"sent"}

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)  # each once
    assert elapsed_s <= 20, f"the backlog took {elapsed_s:.1f} s"
    assert [batch["size"] for batch in resend.batches] == [100, 100, 100]
    assert resend.limited == 0  # paced under the limit: not one 429
    for entry in resend.inbox:  # each email as it goes alone: its own headers and tags
        assert entry["body"]["headers"]["List-Unsubscribe"].startswith("<")
        assert {tag["name"] for tag in entry["body"]["tags"]} == {"loop", "step", "kind", "user"}


async def test_one_user_due_alone_is_sent_alone_under_its_job_id(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    """A trickle (one turn in a claim) costs what it did: one request to `/emails`, the job id
    as its key."""
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        [uid] = users(1)
        await signup_and_act(http, [uid])
        await worker_of(app).drain()
    assert [entry["idempotency_key"] for entry in resend.inbox] == [welcome(uid)]
    assert resend.batches == []


# --- a crash at each point of a batch's life ---------------------------------------------------

CRASH_POINTS = ["recorded", "accepted", "decided", "half settled", "settled"]


def crash_at(point: str, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker dies once, at `point`: after the batch was recorded (before its request),
    after Resend answered it (before its end was recorded), after its end was recorded (before
    any member was settled), when half its members were settled, or after all were but before
    the batch was removed."""
    sender = sender_of(worker)
    # the call that dies: on which object, which, and after how many calls returned (before
    # the next), or right after the first returned
    target, name, calls_before, after_first = {
        "recorded": (sender.store.batches, "record", 0, True),
        "accepted": (sender.mailer, "send_batch", 0, True),
        "decided": (sender.store.batches, "decide", 0, True),
        "half settled": (sender.delivery, "settle", 2, False),
        "settled": (sender.store.batches, "end", 0, False),
    }[point]
    real = getattr(target, name)
    calls: list[str] = []

    async def dying(*args: Any, **kwargs: Any) -> Any:
        if not after_first and len(calls) == calls_before:
            monkeypatch.setattr(target, name, real)
            raise Crash(point)
        calls.append(name)
        result = await real(*args, **kwargs)
        if after_first:
            monkeypatch.setattr(target, name, real)
            raise Crash(point)
        return result

    monkeypatch.setattr(target, name, dying)


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_worker_dying_at_any_point_of_a_batch_leaves_each_email_exactly_once(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    """The batch comes back when its lease runs out and is sent again, the same members under
    the same key (Resend answers with its first answer), or, a member already settled sent,
    settled without a request."""
    user_ids = users(5)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids)
        worker = worker_of(app)
        crash_at(point, worker, monkeypatch)
        with pytest.raises(Crash):
            await worker.drain()
        recorded, members = await batches_left(app)
        [key] = recorded
        assert members == [f"batch|{key}"]
        clock.advance(LEASE_MS + SEC)  # the dead worker's leases run out
        await worker.drain()
        assert set((await statuses(app, user_ids)).values()) == {"sent"}
        assert await batches_left(app) == ([], [])

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)  # each once
    assert [batch["key"] for batch in resend.batches] == [key]  # one request accepted, its key


async def test_a_batch_recorded_after_its_worker_lost_the_turns_sends_nothing(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker stalls past its lease between its turns and its batch: another worker takes the
    turns over, frees the jobs (never recorded, they never reached Resend) and sends them; the
    stalled worker's batch then records no member and sends nothing."""
    user_ids = users(4)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids)
        stalled = worker_of(app)
        other = Worker(store_of(app), stalled.evaluator, clock, config=stalled.config)
        record = sender_of(stalled).store.batches.record
        stalled_batch: list[object] = []

        async def stall_then_record(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(store_of(app).batches, "record", record)
            clock.advance(LEASE_MS + SEC)
            await other.drain()  # the turns come back to another worker, which sends
            stalled_batch.append(await record(*args, **kwargs))
            return stalled_batch[-1]

        monkeypatch.setattr(store_of(app).batches, "record", stall_then_record)
        await stalled.drain()
        assert stalled_batch == [None]  # not one member's turn was still held
        assert set((await statuses(app, user_ids)).values()) == {"sent"}

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)
    assert len(resend.batches) == 1  # the other worker's


# --- every answer of Resend with every crash ------------------------------------------------

ANSWERS: dict[str, tuple[Any, ...] | None] = {
    "accepted": None,
    "429": ("status", 429, 1),
    "500": ("status", 500),
    "accepted, then 500": ("accept_then_fail", 500),
    "refused whole (422)": ("status", 422),
    "one bad address": None,
}


@pytest.mark.parametrize("transport", ["embedded", "redis"], indirect=True)
@pytest.mark.parametrize("crash", [None, *CRASH_POINTS])
@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_every_answer_with_a_crash_anywhere_ends_each_email_once(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    crash: str | None,
) -> None:
    """Whatever Resend answers the first request, and wherever the worker dies: each email is
    sent once or failed once (dead-lettered), as the answer says, and no batch is left over."""
    user_ids = users(4)
    bad = user_ids[2] if answer == "one bad address" else None
    profiles = {bad: {"email_addresses": bad_address(bad)}} if bad else {}
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids, **profiles)
        if (fault := ANSWERS[answer]) is not None:
            resend.script(fault)
        if crash is not None:
            crash_at(crash, worker_of(app), monkeypatch)
        for _ in range(12):
            with contextlib.suppress(Crash):
                await worker_of(app).drain()
            ended = await statuses(app, user_ids)
            if "queued" not in ended.values() and await batches_left(app) == ([], []):
                break
            clock.advance(2 * MIN)  # past the leases and the retries' waits
        dead = sorted(job.id for job in await store_of(app).queue.dead_jobs())

    refused_whole = answer == "refused whole (422)"
    failed = {uid for uid in user_ids if refused_whole or uid == bad}
    assert ended == {uid: "failed" if uid in failed else "sent" for uid in user_ids}
    assert dead == sorted(welcome(uid) for uid in failed)
    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids if uid not in failed)


def bad_address(user_id: str) -> list[dict[str, Any]]:
    """The user's email addresses from Clerk's payload, the primary one without a dotted domain
    (Resend refuses it; the service takes it as it comes)."""
    addresses = copy.deepcopy(clerk_event("created", user_id)["data"]["email_addresses"])
    addresses[0]["email_address"] = "ada@localhost"
    return list(addresses)


# --- what Resend answers ------------------------------------------------------------------


async def test_a_429_on_a_batch_sends_it_again_after_retry_after_uncounted(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids)
        resend.script(("status", 429, 2))
        await worker_of(app).drain()
        job = await stored_job(app, user_ids[0])
        assert (job.status.value, job.attempts, job.started_at) == ("queued", 1, None)
        assert job.last_error is not None
        assert "429" in job.last_error
        recorded, members = await batches_left(app)
        assert recorded == [job.batch]
        assert members == [f"batch|{job.batch}"]
        await worker_of(app).drain()  # not due yet: retry-after is 2 s
        assert resend.jobs == []
        clock.advance(2 * SEC)
        await worker_of(app).drain()
        assert set((await statuses(app, user_ids)).values()) == {"sent"}
        assert (await stored_job(app, user_ids[0])).attempts == 1  # the 429 did not count
        assert await batches_left(app) == ([], [])

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)
    assert [(batch["key"], batch["size"]) for batch in resend.batches] == [(job.batch, 3)]


@pytest.mark.parametrize("fault", [("status", 500), ("accept_then_fail", 500)])
async def test_a_batch_failing_with_a_5xx_is_sent_again_whole_under_the_same_key(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    fault: tuple[Any, ...],
) -> None:
    """A 5xx may come after Resend accepted the batch: it is sent again whole, same members,
    same key, so Resend answers with its first answer and nobody gets two."""
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids)
        resend.script(fault)
        await worker_of(app).drain()
        job = await stored_job(app, user_ids[0])
        assert job.status.value == "queued"
        assert "500" in str(job.last_error)
        clock.advance(2 * MIN)  # past the loop's first retry delay
        await worker_of(app).drain()
        assert set((await statuses(app, user_ids)).values()) == {"sent"}

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)
    assert [batch["key"] for batch in resend.batches] == [job.batch]


async def test_one_bad_address_fails_only_its_own_email(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    """`x-batch-validation: permissive`: Resend refuses the one email, sends the rest; the
    refused job alone is dead-lettered, with Resend's reason."""
    user_ids = users(3)
    bad = user_ids[1]
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids, **{bad: {"email_addresses": bad_address(bad)}})
        await worker_of(app).drain()
        found = await statuses(app, user_ids)
        [dead] = await store_of(app).queue.dead_jobs()

    assert found == {user_ids[0]: "sent", bad: "failed", user_ids[2]: "sent"}
    assert dead.id == welcome(bad)
    assert "refused it in its batch" in str(dead.last_error)
    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids if uid != bad)
    assert [(batch["size"], batch["accepted"]) for batch in resend.batches] == [(3, 2)]


async def test_a_batch_refused_whole_fails_every_member_without_retry(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids)
        resend.script(("status", 403))
        await worker_of(app).drain()
        found = await statuses(app, user_ids)
        dead = await store_of(app).queue.dead_jobs()
        assert await batches_left(app) == ([], [])

        # refused whole: nothing was accepted, so nothing ties them to the batch's key, and an
        # operator's retry, once the key is fixed, sends them afresh
        for job in dead:
            assert (job.batch, job.first_attempt_at) == (None, None)
            assert await store_of(app).queue.retry_dead(job, now_ms=clock.now_ms) is QUEUED
        await worker_of(app).drain()
        assert set((await statuses(app, user_ids)).values()) == {"sent"}

    assert set(found.values()) == {"failed"}
    assert len(dead) == 3
    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)


async def test_an_operator_retrying_a_dead_member_before_its_batch_is_removed_is_not_undone(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused whole, every member dead-lettered, the worker dies before removing the batch; an
    operator retries the dead letters (the key fixed): when the batch comes back it leaves the
    retried jobs alone, and they go out, once."""
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids)
        resend.script(("status", 403))
        crash_at("settled", worker_of(app), monkeypatch)
        with pytest.raises(Crash):
            await worker_of(app).drain()
        dead = await store_of(app).queue.dead_jobs()
        assert len(dead) == 3
        for job in dead:
            assert await store_of(app).queue.retry_dead(job, now_ms=clock.now_ms) is QUEUED
        [batch_id], _ = await batches_left(app)
        await sender_of(worker_of(app)).resume(0, batch_id, Lease())  # before the users' turns
        assert set((await statuses(app, user_ids)).values()) == {"queued"}
        assert await store_of(app).queue.dead_jobs() == []
        clock.advance(LEASE_MS + SEC)
        await worker_of(app).drain()
        assert set((await statuses(app, user_ids)).values()) == {"sent"}
        assert await batches_left(app) == ([], [])

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)


async def test_a_user_deleted_while_their_batch_waits_is_left_out_of_it(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch recorded, the worker dies, one member's user is deleted: the batch is sent
    again without them (their email is gone with them), the others once."""
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        await signup_and_act(http, user_ids)
        worker = worker_of(app)
        crash_at("recorded", worker, monkeypatch)
        with pytest.raises(Crash):
            await worker.drain()
        deleted = json.dumps(clerk_event("deleted", user_ids[0])).encode()
        assert (await post_webhook(http, deleted)).status_code == 200
        clock.advance(LEASE_MS + SEC)
        await worker.drain()
        assert await batches_left(app) == ([], [])

    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids[1:])


def test_a_claims_batches_hold_at_most_100_emails_each_placed_once() -> None:
    sender: Any = object()
    batcher = Batcher(sender, Claim(job_ids=[], wake_at_ms=None), LEASE_MS)
    placed = [batcher.place(f"email|user_{i}|activation|0|action") for i in range(250)]
    assert [placed.count(batch_id) for batch_id in dict.fromkeys(placed)] == [100, 100, 50]
    assert batcher.place("email|user_7|activation|0|action") == placed[7]  # a turn run again


# --- a worker process SIGKILLed mid-batch ----------------------------------------------------


@redis_only
@pytest.mark.parametrize("accepted_first", [False, True], ids=["hung", "accepted"])
async def test_a_worker_process_killed_mid_batch_leaves_each_email_exactly_once(
    make_settings: Callable[..., Settings], redis_url: str, tmp_path: Path, accepted_first: bool
) -> None:
    """Worker 1 sends the batch; Resend hangs on it (and, if `accepted_first`, accepts it while
    worker 1 is frozen by SIGSTOP); worker 1 is SIGKILLed; worker 2 takes the batch over when
    its 8 s lease runs out and sends it again, same members, same key: nobody gets two."""
    key_prefix = f"batch-crash-{uuid.uuid4().hex[:12]}:"
    user_ids = users(5, "k")
    with run_standin() as resend:
        settings = make_settings(key_prefix=key_prefix, **resend_settings(resend))
        async with running(settings, system_clock_ms) as (app, http):
            await signup_and_act(http, user_ids)
            resend.script(("hang", 1.0 if accepted_first else 20.0))
            env = worker_env(redis_url, key_prefix, resend)
            in_flight: set[str] = resend.app.state.batch_in_flight
            with worker_process(env, tmp_path / "first.log") as first:
                await wait_until(lambda: bool(in_flight), 20, "the first batch")
                [key] = in_flight
                if accepted_first:
                    first.send_signal(signal.SIGSTOP)  # it can neither read nor record
                    await wait_until(lambda: len(resend.inbox) == 5, 10, "the accept")
                accepted = list(resend.inbox)
                with worker_process(env, tmp_path / "second.log"):
                    first.send_signal(signal.SIGKILL)
                    deadline = time.monotonic() + 40
                    while set((await statuses(app, user_ids)).values()) != {"sent"}:
                        assert time.monotonic() < deadline, await statuses(app, user_ids)
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(0.5)  # the second worker polls on: nothing more
            assert await batches_left(app) == ([], [])
        inbox, batches = list(resend.inbox), list(resend.batches)

    assert sorted(job_of(entry) for entry in inbox) == sorted(welcome(uid) for uid in user_ids)
    assert [batch["key"] for batch in batches] == [key]
    assert "sent again" in (tmp_path / "second.log").read_text()  # the batch, by worker 2
    assert (inbox == accepted) is accepted_first  # accepted first: the resend got its answer


# --- each request re-checks its members; a key that may have been used is kept ------------------


async def suppress(app: FastAPI, user_id: str, reason: str, now_ms: int) -> None:
    """A hard bounce or complaint, as Resend's webhook records it."""
    event = EmailEvent(f"msg_{reason}_{user_id}", user_id, "email.x", suppression=reason)
    assert await store_of(app).users.record_email_event(event, now_ms=now_ms) == "suppressed"


async def dead_after_retries(app: FastAPI, resend: ResendStandin, clock: FakeClock) -> None:
    """Every request fails (a gateway in front of Resend answering 502) until the loop's
    retries are used up: the welcomes die with their outcome unknown."""
    resend.script(*[("status", 502)] * 10)
    for _ in range(6):
        clock.advance(30 * MIN)
        await worker_of(app).drain()


@pytest.mark.parametrize("first", [("status", 500), ("accept_then_fail", 500)])
async def test_members_suppressed_while_their_batch_waits_for_its_retry_are_not_sent(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    first: tuple[Any, ...],
) -> None:
    """The first request fails; one member complains and one hard-bounces before the retry.
    The retry leaves them out: when nothing was accepted they get nothing; when the first
    request had been accepted after all, Resend refuses the smaller payload under the key (409),
    which says the first went out: every member is recorded sent, and nothing new goes."""
    user_ids = users(4)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids)
        resend.script(first)
        await worker_of(app).drain()
        key = (await stored_job(app, user_ids[0])).batch
        await suppress(app, user_ids[0], "complained", clock.now_ms)
        await suppress(app, user_ids[1], "bounced", clock.now_ms)
        clock.advance(2 * MIN)
        await worker_of(app).drain()
        found = await statuses(app, user_ids)
        assert await batches_left(app) == ([], [])

    accepted = first[0] == "accept_then_fail"
    if accepted:
        assert found == dict.fromkeys(user_ids, "sent")
        assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)  # once each
    else:
        assert found == {
            **dict.fromkeys(user_ids[:2], "dropped"),
            **dict.fromkeys(user_ids[2:], "sent"),
        }
        assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids[2:])
        assert [(batch["key"], batch["size"]) for batch in resend.batches] == [(key, 2)]


async def test_a_member_unsubscribed_while_its_batch_waits_for_a_slot_is_left_out(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    """The members are checked again right before the request, after the wait for a
    rate-limit slot: a user who unsubscribed (or was deleted) meanwhile gets nothing."""
    user_ids = users(4)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        worker = worker_of(app)
        mailer = worker.evaluator.delivery.mailer  # type: ignore[union-attr]
        waits: list[float] = []

        async def meanwhile(seconds: float) -> None:  # the wait for the slot
            waits.append(seconds)
            await asyncio.sleep(seconds)
            if len(waits) == 1:
                assert await store_of(app).users.unsubscribe(user_ids[0], now_ms=clock.now_ms)
                gone = json.dumps(clerk_event("deleted", user_ids[1])).encode()
                assert (await post_webhook(http, gone)).status_code == 200

        mailer.rate_limiter = RateLimiter(1, clock=time.monotonic, sleep=meanwhile)
        mailer.rate_limiter.hold_off(0.5)
        await signup_and_act(http, user_ids)
        await worker.drain()
        assert waits
        found = await statuses(app, user_ids[2:])
        dropped = await stored_job(app, user_ids[0])

    assert found == dict.fromkeys(user_ids[2:], "sent")
    assert (dropped.status.value, dropped.last_error) == ("dropped", "unsubscribed")
    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids[2:])


@pytest.mark.parametrize("retried", ["all", "one"])
async def test_an_operators_retry_of_a_batch_that_may_have_been_accepted_keeps_its_key(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    resend: ResendStandin,
    retried: str,
) -> None:
    """Resend accepted the batch but answered 500, then a gateway refused every retry: the
    members die with their outcome unknown. An operator's retry a few minutes later sends them
    again in the same batch, under its key, never another: Resend answers with its first
    answer (all retried) or refuses the smaller payload (one retried), which says the first went
    out; either way nobody gets a second email, and every member is recorded sent."""
    user_ids = users(3)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids)
        resend.script(("accept_then_fail", 500))
        await worker_of(app).drain()
        await dead_after_retries(app, resend, clock)
        dead = await store_of(app).queue.dead_jobs()
        assert {job.id for job in dead} == {welcome(uid) for uid in user_ids}
        [key] = {job.batch for job in dead}
        assert key is not None
        assert (await batches_left(app))[0] == [key]  # kept: the key may have been used
        resend.app.state.script.clear()  # the gateway is fixed
        clock.advance(5 * MIN)
        for job in dead if retried == "all" else dead[:1]:
            assert await store_of(app).queue.retry_dead(job, now_ms=clock.now_ms) is QUEUED
        await worker_of(app).drain()
        found = await statuses(app, user_ids)
        keys = {entry["idempotency_key"] for entry in resend.inbox}

    assert found == dict.fromkeys(user_ids, "sent")
    assert sorted(resend.jobs) == sorted(welcome(uid) for uid in user_ids)  # once each
    assert keys == {key}


async def test_a_spent_batch_is_removed_once_resend_forgets_its_key_and_a_retry_starts_afresh(
    make_settings: Callable[..., Settings], clock: FakeClock, resend: ResendStandin
) -> None:
    """Past Resend's 24 h, the key is gone: the batch's record goes, and an operator's retry
    sends the email under a new key (the README says such a retry may send it twice)."""
    user_ids = users(2)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        fake_time_rate_limiter(worker_of(app), clock)
        await signup_and_act(http, user_ids)
        resend.script(("status", 500))
        await worker_of(app).drain()
        await dead_after_retries(app, resend, clock)
        dead = await store_of(app).queue.dead_jobs()
        resend.app.state.script.clear()  # the gateway is fixed
        clock.advance(25 * 60 * MIN)
        await worker_of(app).drain()
        assert await batches_left(app) == ([], [])
        for job in dead:
            assert await store_of(app).queue.retry_dead(job, now_ms=clock.now_ms) is QUEUED
        await worker_of(app).drain()
        found = await statuses(app, user_ids)

    assert found == dict.fromkeys(user_ids, "sent")
    assert {entry["idempotency_key"] for entry in resend.inbox} != {dead[0].batch}
