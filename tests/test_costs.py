"""What Upstash would bill: the commands (a script's own included, INFO commandstats) of each
step of a signup's life, on a real Redis, through the service's own HTTP API and worker."""

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.settings import Settings
from tests.conftest import (
    AUTH,
    FakeClock,
    clerk_event,
    post_webhook,
    resend_settings,
    running,
    worker_of,
    write_files,
)
from tests.standins.resend import ResendStandin
from tests.standins.webhook_receiver import run_receiver
from tests.support.constants import DAY
from tests.support.growth import LOOPS, write_loops
from tests.support.storage import Meter

pytestmark = pytest.mark.parametrize("transport", ["redis"], indirect=True)

USERS = 10


def per_user(delta: dict[str, int], shared: dict[str, int], users: int = USERS) -> dict[str, float]:
    """What each of the users cost, once what the whole batch shared is taken off."""
    return {
        name: (count - shared.get(name, 0)) / users
        for name, count in delta.items()
        if count - shared.get(name, 0)
    }


# one claim for the batch (a look at the schedule, the due members read, the script: still due?,
# the fence's next token, their leases (counted per user), their new scores, the next look), and
# the drain's last look, which finds nothing due
WARM = ("user_warm", "user_warm2")
CLAIM = {"zrange": 3, "evalsha": 1, "zrangebyscore": 1, "zadd": 1, "incr": 1, "zmscore": 1}
# the claim's emails in one batch: recorded (one script: each member's user read again (counted
# per user), the record with the batch's lease, its place on the schedule), its end recorded (a
# script: the record read, its lease checked, written), then removed once every member is
# settled (a script: the record read, removed, its place on the schedule)
BATCH = {"evalsha": 3, "hset": 2, "zadd": 1, "hget": 2, "hdel": 1, "zrem": 1}
CLAIM_AND_BATCH = {name: CLAIM.get(name, 0) + BATCH.get(name, 0) for name in {*CLAIM, *BATCH}}


# the frequency cap and quiet hours read only what a turn reads anyway: not one command more
# (the clock below is 08:00 UTC, outside these quiet hours, and no user reaches the cap)
PACING = {"frequency_cap": "100/1d,200/7d", "quiet_hours": "20:00-21:00"}


@pytest.mark.parametrize("pacing", [{}, PACING], ids=["plain", "cap-and-quiet-hours"])
async def test_a_signups_life_costs_what_the_readme_says(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    resend: ResendStandin,
    pacing: dict[str, str],
) -> None:
    """Each row of the README's cost table, per user, over a batch of ten."""
    meter = Meter(redis_client)
    clock = FakeClock(1_800_000_000_000)
    users = [f"user_cost{i:02d}" for i in range(USERS)]
    settings = make_settings(**resend_settings(resend), **pacing)
    async with running(settings, clock) as (app, http):
        await warm_up(app, http)

        async def signups() -> None:
            for uid in users:
                body = json.dumps(clerk_event("created", uid)).encode()
                assert (await post_webhook(http, body)).json() == {"status": "created"}

        async def act(name: str) -> None:
            body = {"actions": [{"user_id": uid, "action": name} for uid in users]}
            assert (await http.post("/v1/actions", json=body, headers=AUTH)).status_code == 202

        async def turns() -> None:
            await worker_of(app).drain()

        created = await meter.of(signups)
        # the registration asks for the user's turn (its lease read with the rest of the user)
        assert per_user(created, {}) == {"evalsha": 1, "hmget": 1, "hset": 1, "zadd": 1}

        entered = per_user(await meter.of(turns), CLAIM)
        # the claim's lease on the user; read the user; apply: the user with its lease, write
        # (the lease released with the rest), `entered`, the next turn
        assert entered == {"hset": 2, "hgetall": 1, "evalsha": 1, "hmget": 1, "hincrby": 1,
                           "zadd": 1}  # fmt: skip

        watched = per_user(await meter.of(lambda: act("first_project_created")), {"evalsha": 1})
        assert watched == {"hmget": 1, "hset": 1, "zadd": 1}  # one script for the batch

        welcome = per_user(await meter.of(turns), CLAIM_AND_BATCH)
        # the claim's lease; read; apply (the user with its lease, write, `tta`, `activated`);
        # the batch's record reads the user again; send; settle (the user with its lease, write
        # with the lease released, the day's `sent`, the next turn: the tips in two days)
        assert welcome == {"hset": 3, "hgetall": 1, "evalsha": 2, "hmget": 3, "hincrby": 3,
                           "zadd": 1}  # fmt: skip
        assert sum(welcome.values()) <= 15

        unwatched = per_user(await meter.of(lambda: act("project_created")), {"evalsha": 1})
        assert unwatched == {"hmget": 1, "hset": 1}  # the tenth is far: nobody woken
        assert await meter.of(turns) == {"zrange": 1}  # nothing due: one look

        clock.advance(2 * DAY)
        # a new day: its first count looks for days to fold into the totals, once
        tips = per_user(await meter.of(turns), {**CLAIM_AND_BATCH, "hgetall": 1}, USERS + 2)
        assert tips == {"hset": 3, "hgetall": 1, "evalsha": 2, "hmget": 3, "hincrby": 1,
                        "zrem": 1}  # fmt: skip
        assert len(resend.inbox) == 2 * (USERS + len(WARM))


async def warm_up(app: FastAPI, http: httpx.AsyncClient) -> None:
    """Two users through every step first (two: their emails go in a batch): scripts loaded,
    the day's counter created."""
    for uid in WARM:
        await post_webhook(http, json.dumps(clerk_event("created", uid)).encode())
    await worker_of(app).drain()
    actions = [{"user_id": uid, "action": "first_project_created"} for uid in WARM]
    await http.post("/v1/actions", json={"actions": actions}, headers=AUTH)
    await worker_of(app).drain()


async def test_a_filtered_condition_costs_what_any_watched_action_costs(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """`where:` is matched as the action arrives, in its one script: a matching action costs
    what a watched one does (4), one that does not match what an unwatched one does (3)."""
    meter = Meter(redis_client)
    users = [f"user_where{i:02d}" for i in range(USERS)]
    loops = write_loops(tmp_path, {"upgrade": LOOPS["upgrade"]})
    async with running(make_settings(loops_dir=loops), FakeClock(1_800_000_000_000)) as (_, http):

        async def act(plan: str) -> None:
            body = {"actions": [
                {"user_id": uid, "action": "plan_changed", "properties": {"plan": plan}}
                for uid in users
            ]}  # fmt: skip
            assert (await http.post("/v1/actions", json=body, headers=AUTH)).status_code == 202

        await act("free")  # scripts loaded
        missed = per_user(await meter.of(lambda: act("hobby")), {"evalsha": 1})
        assert missed == {"hmget": 1, "hset": 1}
        matched = per_user(await meter.of(lambda: act("pro")), {"evalsha": 1})
        assert matched == {"hmget": 1, "hset": 1, "zadd": 1}  # the trigger's count: woken


WEBHOOK_LOOP = {
    "team.yaml": """
        type: milestone
        steps:
          - trigger: {type: action, action: first_project_created}
            action: {type: webhook, url: "${TEAM_HOOK_URL}", secret: "${TEAM_HOOK_SECRET}"}
    """,
}


async def test_a_webhook_call_costs_what_an_email_sent_alone_does(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The turn that decides and calls a webhook step, per user, the claim's share apart: the
    claim's lease on the user; read; apply (the user with its lease, write, `entered`, `tta`,
    `activated`); the POST (no command); settle (the user with its lease, write with the lease
    released, the day's `webhook_sent`, off the schedule: nothing more to do): 13 commands, what
    an email sent alone costs (13.1), the webhook never going in a batch."""
    meter = Meter(redis_client)
    users = [f"user_hookcost{i:02d}" for i in range(USERS)]
    with run_receiver() as receiver:
        monkeypatch.setenv("TEAM_HOOK_URL", receiver.url)
        monkeypatch.setenv("TEAM_HOOK_SECRET", receiver.secret)
        settings = make_settings(loops_dir=write_files(tmp_path / "loops", WEBHOOK_LOOP))
        async with running(settings, FakeClock(1_800_000_000_000)) as (app, http):

            async def act(uids: list[str]) -> None:
                body = {
                    "actions": [{"user_id": u, "action": "first_project_created"} for u in uids]
                }
                assert (await http.post("/v1/actions", json=body, headers=AUTH)).status_code == 202

            for uid in [*WARM, *users]:
                await post_webhook(http, json.dumps(clerk_event("created", uid)).encode())
            await act(list(WARM))  # scripts loaded, the day's counter created
            await worker_of(app).drain()
            await act(users)
            await app.state.runtime.flush_sightings()  # the action-health counts: not the turn's
            raw = await meter.of(lambda: worker_of(app).drain())
            called = per_user(raw, CLAIM)
        assert len(receiver.requests) == USERS + len(WARM)
    assert called == {"hset": 3, "hgetall": 1, "evalsha": 2, "hmget": 2, "hincrby": 4, "zrem": 1}
    assert sum(called.values()) == WEBHOOK_CALL_COMMANDS


WEBHOOK_CALL_COMMANDS = 13  # per webhook call (docs/performance.md)
