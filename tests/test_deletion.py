"""`user.deleted` leaves nothing personal behind, anywhere: not in the user's keys, not in the
outbox or on `/outbox`; and nothing that arrives later (an unsubscribe click, an action, a Resend
event, a worker's late decision or send) brings any of their keys back. On all three transports."""

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState, StepStatus
from app.storage.records import EmailEvent, NewAction, UserProfile
from app.storage.store import Store
from tests.conftest import AUTH, clerk_event, post_webhook, store_of, worker_of

GONE = "user_2deleted00000000000000000"
KEPT = "user_2kept000000000000000000000"
GONE_ADDRESS = "gone.person@private.example"


def event(kind: str, user_id: str, address: str) -> bytes:
    data = clerk_event(kind, user_id)
    if "email_addresses" in data["data"]:
        data["data"]["email_addresses"][0]["email_address"] = address
    return json.dumps(data).encode()


async def welcome(client: httpx.AsyncClient, app: FastAPI, user_id: str, address: str) -> None:
    """A user who signed up and got the welcome (the outbox keeps it: no Resend key)."""
    assert (await post_webhook(client, event("created", user_id, address))).status_code == 200
    action = {"user_id": user_id, "action": "first_project_created"}
    assert (await client.post("/v1/actions", json=action, headers=AUTH)).status_code == 202
    await worker_of(app).drain()


async def personal_keys(store: Store, user_id: str) -> list[str]:
    """What is left of the user that may hold personal data: every key under their hash tag,
    and their hash's fields but the tombstone and the delivery digests it knows again."""
    found = await store.conn.call("KEYS", f"{store.keys.prefix}{{{user_id}}}*")
    left = [str(key) for key in found if str(key) != store.keys.user(user_id)]
    fields = await store.conn.call("HKEYS", store.keys.user(user_id))
    return sorted(left + [str(name) for name in fields if str(name) not in ("del", "seen")])


async def test_a_deleted_users_emails_leave_the_outbox_and_its_page(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await welcome(client, app, GONE, GONE_ADDRESS)
    await welcome(client, app, KEPT, "kept.person@example.org")
    before = (await client.get("/outbox", headers=AUTH)).text
    assert GONE_ADDRESS in before

    deleted = await post_webhook(client, event("deleted", GONE, GONE_ADDRESS))
    assert deleted.json() == {"status": "deleted"}

    page = (await client.get("/outbox", headers=AUTH)).text
    entries = await store_of(app).queries.outbox()
    assert GONE_ADDRESS not in page
    assert [entry["to"] for entry in entries] == ["kept.person@example.org"]
    assert await personal_keys(store_of(app), GONE) == []


async def test_nothing_arriving_after_the_deletion_brings_the_user_back(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await welcome(client, app, GONE, GONE_ADDRESS)
    store = store_of(app)
    [job] = (await store.queries.snapshot(GONE)).jobs.values()
    token = app.state.runtime.tokens.issue(GONE)
    assert "p" in await personal_keys(store, GONE)  # the profile, before
    assert (await post_webhook(client, event("deleted", GONE, GONE_ADDRESS))).status_code == 200

    # the user clicks the unsubscribe link of an email they got before
    click = await client.post("/unsubscribe", params={"token": token})
    # and everything else that may still be on its way
    await late_writes(store, job)

    assert click.status_code == 200
    assert await personal_keys(store, GONE) == []
    assert not (await store.queries.snapshot(GONE)).known


async def late_writes(store: Store, job: EmailJob) -> None:
    now = job.queued_at + 1000
    profile = UserProfile(id=GONE, email=GONE_ADDRESS)
    state = StepState(status=StepStatus.WAITING, started_at=now)
    queued = job.model_copy(update={"status": JobStatus.QUEUED, "id": f"{job.id}x"})
    writes: list[Any] = [
        store.users.unsubscribe(GONE, now_ms=now),
        store.actions.record([NewAction(GONE, "x", now, id="late")], now_ms=now, tracked={}),
        store.users.record("msg_late", profile, created=True, version_ms=now, now_ms=now),
        store.users.record_email_event(EmailEvent("msg_ev", GONE, "email.opened"), now_ms=now),
        store.users.record_email_event(
            EmailEvent("msg_bounce", GONE, "email.bounced", suppression="bounced"), now_ms=now
        ),
        store.users.unsuppress(GONE, now_ms=now),
        # a worker's evaluation made before the deletion, applied after it
        store.queue.apply_decisions(
            GONE, rev="0", states={"l/0": state}, jobs=[queued], wake_at_ms=now
        ),
        # ... and a worker's attempt begun before it, settled after it
        store.queue.settle(job.model_copy(update={"status": JobStatus.SENT}), now_ms=now, seq=1),
        store.queue.retry_dead(job, now_ms=now),
    ]
    for write in writes:
        await write


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_deletion_leaves_other_users_outbox_entries_alone_however_their_ids_look(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The outbox is searched by the deleted user's exact job-id prefix: a user whose id begins
    with the deleted one's keeps their emails."""
    await welcome(client, app, GONE, GONE_ADDRESS)
    await welcome(client, app, GONE + "x", "prefix.sharer@example.org")
    assert (await post_webhook(client, event("deleted", GONE, GONE_ADDRESS))).status_code == 200
    entries = await store_of(app).queries.outbox()
    assert [entry["to"] for entry in entries] == ["prefix.sharer@example.org"]
