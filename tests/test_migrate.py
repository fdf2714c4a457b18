"""Moving a store from schema v1 to v2: refused until `activation migrate`, then every user is
where v1 left them. `fixtures/v1_store.json` is what the v1 service (f46c90e) wrote through its
own HTTP API, worker and the Resend stand-in: eight users in every state a user can be in."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.cli.main import main
from app.engine.email_jobs import JobStatus
from app.settings import Settings
from tests.conftest import (
    AUTH,
    FIXTURES,
    FakeClock,
    clerk_event,
    post_webhook,
    resend_settings,
    running,
    sign,
    store_of,
    worker_of,
)
from tests.standins.resend import ResendStandin
from tests.support.constants import DAY, MIN

pytestmark = pytest.mark.parametrize("transport", ["redis"], indirect=True)

V1 = json.loads((FIXTURES / "v1_store.json").read_text())


def load_v1(client: redis.Redis, prefix: str) -> None:
    """The fixture's keys under `prefix`, with their values, order and TTLs."""
    for name, key in V1["keys"].items():
        target = prefix + name.removeprefix(V1["prefix"])
        value, kind = key["value"], key["type"]
        if kind == "hash":
            client.hset(target, mapping=value)
        elif kind == "string":
            client.set(target, value)
        elif kind == "list":
            client.rpush(target, *value)
        elif kind == "zset":
            client.zadd(target, {member: score for member, score in value})
        if key["ttl_ms"] > 0:
            client.pexpire(target, key["ttl_ms"])


@pytest.fixture
async def v1_app(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    key_prefix: str,
    resend: ResendStandin,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, FakeClock]]:
    load_v1(redis_client, key_prefix)
    clock = FakeClock(V1["now_ms"] + MIN)
    async with running(make_settings(**resend_settings(resend)), clock) as (app, http):
        yield app, http, clock


async def migrate(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    assert await asyncio.to_thread(main, ["migrate"]) == 0  # the command, as an operator runs it


async def user(http: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/users/{user_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_v1_data_is_refused_until_migrated_then_every_user_carries_on(
    v1_app: tuple[FastAPI, httpx.AsyncClient, FakeClock],
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    resend: ResendStandin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, http, clock = v1_app
    signup = json.dumps(clerk_event("created", "user_v1_new")).encode()
    refused = await post_webhook(http, signup)
    assert refused.status_code == 503  # Svix keeps it and retries: nothing lost
    ready = await http.get("/health/ready", headers=AUTH)
    assert ready.status_code == 503
    assert "activation migrate" in ready.text

    await migrate(monkeypatch, redis_url, key_prefix)
    assert "migrated 8 user(s)" in capsys.readouterr().out
    assert await app.state.runtime.try_open_store()  # the service's own retry, without the wait
    assert (await post_webhook(http, signup)).json() == {"status": "created"}

    # nothing of v1 is left: a hash per user, and the shared keys v2 still has
    left = sorted(key.removeprefix(key_prefix) for key in redis_client.keys(f"{key_prefix}*"))
    users = [key for key in left if key.startswith("{")]
    assert all(key.endswith("}") for key in users), users
    assert set(left) - set(users) == {"schema", "schedule", "dead", "suppressed",
                                      "stats:activation", "daily:2025-12-01"}  # fmt: skip

    sent = await user(http, "user_v1_sent")
    assert sent["actions"] == {"first_project_created": 1, "project_created": 9}
    assert sent["profile"]["first_name"] == "Renamed"
    assert [(e["template"], e["status"]) for e in sent["emails"]] == [
        ("activation_welcome", "sent")
    ]
    assert any(entry.get("properties") == {"plan": "pro"} for entry in sent["timeline"])
    # deliveries and action ids v1 had applied are known again
    again = clerk_event("created", "user_v1_sent")
    body = json.dumps(again).encode()
    duplicate = await post_webhook(http, body, sign(body, msg_id="msg_v1_sent_created"))
    assert duplicate.json() == {"status": "duplicate"}
    repeat = {"user_id": "user_v1_sent", "action": "project_created", "id": "act_v1_p3"}
    assert (await http.post("/v1/actions", json=repeat, headers=AUTH)).json() == {
        "accepted": 0, "duplicates": 1,
    }  # fmt: skip

    # the retry v1 had queued goes out once, under its key
    await worker_of(app).drain()
    queued = await user(http, "user_v1_queued")
    assert [(e["status"], e["attempts"]) for e in queued["emails"]] == [("sent", 2)]
    assert resend.jobs == ["email|user_v1_queued|activation|0|action"]

    # a deleted user stays deleted; a bounced one stays suppressed
    late = json.dumps(clerk_event("created", "user_v1_deleted")).encode()
    assert (await post_webhook(http, late)).json() == {"status": "deleted"}
    assert (await http.get("/v1/users/user_v1_deleted", headers=AUTH)).status_code == 404
    bounced = await user(http, "user_v1_bounced")
    assert bounced["suppression"] == "bounced"
    events = [entry["event"] for entry in bounced["timeline"]]
    assert (events.count("suppressed"), events.count("email.bounced")) == (1, 1)

    # time goes on: the waiting user is nudged, the unsubscribed one is not, the tips go out
    # (not to the bounced user)
    clock.advance(10 * MIN)
    await worker_of(app).drain()
    clock.advance(2 * DAY)
    await worker_of(app).drain()
    keys = sorted(resend.jobs)
    assert keys == sorted([
        "email|user_v1_queued|activation|0|action",
        "email|user_v1_dead|activation|1|action",  # the tips follow the step, as in v1
        "email|user_v1_waiting|activation|0|timeout",
        "email|user_v1_new|activation|0|timeout",
        "email|user_v1_sent|activation|1|action",
        "email|user_v1_queued|activation|1|action",
    ])  # fmt: skip
    unsub = await user(http, "user_v1_unsub")
    assert [e["status"] for e in unsub["emails"]] in ([], ["dropped"])

    # the dead letter is still one, and an operator's retry sends it
    [dead] = await store_of(app).queue.dead_jobs()
    assert (dead.id, dead.status) == ("email|user_v1_dead|activation|0|action", JobStatus.FAILED)
    assert await store_of(app).queue.retry_dead(dead, now_ms=clock.now_ms)
    await worker_of(app).drain()
    assert "email|user_v1_dead|activation|0|action" in resend.jobs

    # the counters go on from v1's
    stats = (await store_of(app).queries.read_stats(["activation"], [])).loops["activation"]
    assert (stats["entered"], stats["met"]) == (8, 4)
    assert stats["emails_sent"] == 2 + 6 + 1  # v1's two, the six above, the retried one
    assert stats["emails_failed"] == 1

    # and running it again changes nothing
    await migrate(monkeypatch, redis_url, key_prefix)
    assert "already in schema 2" in capsys.readouterr().out


async def test_a_new_store_is_marked_with_the_schema_and_opens(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, key_prefix: str
) -> None:
    async with running(make_settings(), FakeClock(1_000)) as (_, http):
        assert (await http.get("/health/ready", headers=AUTH)).status_code == 200
    assert redis_client.get(f"{key_prefix}schema") == "2"
