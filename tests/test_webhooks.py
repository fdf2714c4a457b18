"""POST /webhooks/clerk through real HTTP requests, signed by the real svix library."""

import asyncio
import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import (
    FakeClock,
    clerk_event,
    load_fixture,
    post_webhook,
    running,
    sign,
    store_of,
)
from tests.support.constants import OTHER, USER
from tests.support.flow import created_event
from tests.support.marks import embedded_only
from tests.support.storage import unreachable_storage


def updated_event(user_id: str = USER, **data: Any) -> dict[str, Any]:
    return clerk_event("updated", user_id, **data)


def deleted_event(user_id: str = USER) -> dict[str, Any]:
    return clerk_event("deleted", user_id)


async def post_signed(
    client: httpx.AsyncClient, event: dict[str, Any] | bytes, **sign_kwargs: Any
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return await post_webhook(client, body, sign(body, **sign_kwargs))


# --- what a user.created / updated / deleted does, on every transport ---------------------------


async def test_user_created_stores_the_profile(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await post_signed(client, load_fixture("clerk_user_created.json"))

    assert response.status_code == 200
    assert response.json() == {"status": "created"}
    stored = await store_of(app).users.get(USER)
    assert stored is not None
    assert stored.profile.email == "example@example.org"
    assert stored.profile.first_name == "Example"
    assert stored.profile.last_name == "Example"
    assert stored.profile.name == "Example Example"
    assert stored.profile.image_url == "https://img.clerk.com/xxxxxx"
    assert stored.profile.created_at == 1654012591514
    assert stored.version_ms == 1654012591835
    assert stored.registered_at_ms is not None


async def test_user_created_keeps_metadata_but_never_private_metadata(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    event = created_event(
        public_metadata={"plan": "pro"},
        unsafe_metadata={"referrer": "hn"},
        private_metadata={"stripe_customer": "cus_secret"},
    )
    await post_signed(client, event)

    stored = await store_of(app).users.get(event["data"]["id"])
    assert stored is not None
    assert stored.profile.public_metadata == {"plan": "pro"}
    assert stored.profile.unsafe_metadata == {"referrer": "hn"}
    assert "cus_secret" not in stored.profile.model_dump_json()


async def test_same_delivery_twice_has_no_second_effect(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body = json.dumps(created_event()).encode()
    headers = sign(body, msg_id="msg_repeat")
    first = await client.post("/webhooks/clerk", content=body, headers=headers)
    second = await client.post("/webhooks/clerk", content=body, headers=headers)

    assert first.json() == {"status": "created"}
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}


async def test_same_delivery_five_times_at_once_applies_once(client: httpx.AsyncClient) -> None:
    body = json.dumps(created_event()).encode()
    headers = sign(body, msg_id="msg_concurrent")
    responses = await asyncio.gather(
        *(client.post("/webhooks/clerk", content=body, headers=headers) for _ in range(5))
    )

    statuses = sorted(response.json()["status"] for response in responses)
    assert [response.status_code for response in responses] == [200] * 5
    assert statuses == ["created", "duplicate", "duplicate", "duplicate", "duplicate"]


async def test_user_updated_replaces_the_profile(client: httpx.AsyncClient, app: FastAPI) -> None:
    await post_signed(client, created_event())
    response = await post_signed(client, updated_event(first_name="Renamed"))

    assert response.json() == {"status": "updated"}
    stored = await store_of(app).users.get(USER)
    assert stored is not None
    assert stored.profile.first_name == "Renamed"
    assert stored.profile.last_name is None
    assert stored.version_ms == 1654012824306


async def test_user_updated_before_created_creates_and_older_created_does_not_overwrite(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    updated = await post_signed(client, updated_event(first_name="Newer"))
    created = await post_signed(client, created_event(first_name="Older"))

    assert updated.json() == {"status": "created"}
    assert created.json() == {"status": "stale"}
    stored = await store_of(app).users.get(USER)
    assert stored is not None
    assert stored.profile.first_name == "Newer"
    # the late user.created still counts as the registration
    assert stored.registered_at_ms is not None


async def test_user_updated_alone_is_not_a_registration(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await post_signed(client, updated_event())

    stored = await store_of(app).users.get(USER)
    assert stored is not None
    assert stored.registered_at_ms is None


async def test_user_deleted_removes_data_and_late_events_do_not_revive(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await post_signed(client, created_event())
    deleted = await post_signed(client, deleted_event())
    late_created = await post_signed(client, created_event())
    late_updated = await post_signed(client, updated_event())

    assert deleted.json() == {"status": "deleted"}
    assert late_created.json() == {"status": "deleted"}
    assert late_updated.json() == {"status": "deleted"}
    store = store_of(app)
    assert await store.users.get(USER) is None
    assert await store.users.is_deleted(USER)


async def test_user_deleted_before_created_leaves_a_tombstone(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    deleted = await post_signed(client, deleted_event())
    created = await post_signed(client, created_event())

    assert deleted.json() == {"status": "tombstoned"}
    assert created.json() == {"status": "deleted"}
    assert await store_of(app).users.get(USER) is None


async def test_other_event_types_are_acknowledged_and_ignored(client: httpx.AsyncClient) -> None:
    event = {"type": "session.created", "object": "event", "data": {"id": "sess_123"}}
    response = await post_signed(client, event)

    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}


# --- both documented payload shapes -------------------------------------------------------------


@embedded_only
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"created_at": 1654012591}, {"created_at": 1654012591000}, id="seconds"),
        pytest.param({"created_at": 1654012591514}, {"created_at": 1654012591514}, id="millis"),
        pytest.param(
            {"first_name": None, "last_name": None, "username": "ada"},
            {"name": "ada"},
            id="no-names-username",
        ),
        pytest.param(
            {"first_name": None, "last_name": None, "username": None},
            {"name": "example"},
            id="no-names-no-username-email-local-part",
        ),
        pytest.param(
            {"primary_email_address_id": None},
            {"email": None, "name": "Example Example"},
            id="null",
        ),
        pytest.param({"primary_email_address_id": "idn_gone"}, {"email": None}, id="dangling"),
        pytest.param({"first_name": "", "last_name": "Lovelace"}, {"name": "Lovelace"}, id="blank"),
    ],
)
async def test_payload_variants(
    client: httpx.AsyncClient, app: FastAPI, data: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = await post_signed(client, created_event(**data))

    assert response.status_code == 200
    stored = await store_of(app).users.get(USER)
    assert stored is not None
    for field, value in expected.items():
        assert getattr(stored.profile, field) == value


@embedded_only
async def test_event_without_instance_id_and_with_seconds_timestamp(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    event = created_event(updated_at=None)
    del event["instance_id"]
    event["timestamp"] = 1654012600
    response = await post_signed(client, event)

    assert response.json() == {"status": "created"}
    stored = await store_of(app).users.get(event["data"]["id"])
    assert stored is not None
    assert stored.version_ms == 1654012600000


# --- every way a request is refused: 4xx, short JSON reason, nothing stored ---------------------


async def assert_refused(
    response: httpx.Response, app: FastAPI, status: int, reason_part: str
) -> None:
    assert response.status_code == status, response.text
    assert reason_part in response.json()["error"]
    assert await store_of(app).users.get(USER) is None


def signed_parts(event: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event or created_event()).encode()
    return body, sign(body)


@embedded_only
@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
async def test_missing_header_is_refused(
    client: httpx.AsyncClient, app: FastAPI, missing: str
) -> None:
    body, headers = signed_parts()
    del headers[missing]
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "signature check failed")


@embedded_only
@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("v1,dawfeoifkpqwoekfpqoekf", id="garbage"),
        pytest.param("v1,", id="empty-v1"),
        pytest.param("v1", id="no-comma"),
        pytest.param("v1,!!!not-base64!!!", id="not-base64"),
        pytest.param("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", id="only-other-version"),
        pytest.param("", id="empty"),
    ],
)
async def test_malformed_signature_is_refused(
    client: httpx.AsyncClient, app: FastAPI, signature: str
) -> None:
    body, headers = signed_parts()
    headers["svix-signature"] = signature
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "signature check failed")


@embedded_only
async def test_signature_with_one_character_changed_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body, headers = signed_parts()
    signature = headers["svix-signature"]
    # the third-last base64 character carries only signature bits (the last ones carry padding)
    changed = "A" if signature[-3] != "A" else "B"
    headers["svix-signature"] = signature[:-3] + changed + signature[-2:]
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "No matching signature")


@embedded_only
async def test_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body = json.dumps(created_event()).encode()
    headers = sign(body, secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "No matching signature")


@embedded_only
async def test_body_changed_after_signing_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body, headers = signed_parts()
    tampered = body.replace(b"Example", b"Mallory", 1)
    response = await client.post("/webhooks/clerk", content=tampered, headers=headers)
    await assert_refused(response, app, 400, "No matching signature")


@embedded_only
async def test_several_signatures_with_decoys_are_accepted(client: httpx.AsyncClient) -> None:
    body, headers = signed_parts()
    decoys = ["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/Wa"]
    headers["svix-signature"] = " ".join([*decoys, headers["svix-signature"], decoys[0]])
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    assert response.json() == {"status": "created"}


@embedded_only
@pytest.mark.parametrize(
    ("skew", "reason"),
    [
        pytest.param(timedelta(seconds=-301), "too old", id="301s-old"),
        pytest.param(timedelta(seconds=301), "too new", id="301s-ahead"),
        pytest.param(timedelta(days=-2), "too old", id="replayed-2-days-later"),
    ],
)
async def test_timestamp_outside_five_minutes_is_refused(
    client: httpx.AsyncClient, app: FastAPI, skew: timedelta, reason: str
) -> None:
    body = json.dumps(created_event()).encode()
    headers = sign(body, timestamp=datetime.now(tz=UTC) + skew)
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, reason)


@embedded_only
async def test_timestamp_just_inside_five_minutes_is_accepted(client: httpx.AsyncClient) -> None:
    body = json.dumps(created_event()).encode()
    headers = sign(body, timestamp=datetime.now(tz=UTC) - timedelta(seconds=290))
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    assert response.status_code == 200


@embedded_only
@pytest.mark.parametrize("timestamp", ["hello", "", "1e400", "nan", "-1"])
async def test_non_numeric_or_absurd_timestamp_is_refused(
    client: httpx.AsyncClient, app: FastAPI, timestamp: str
) -> None:
    body, headers = signed_parts()
    headers["svix-timestamp"] = timestamp
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "signature check failed")


@embedded_only
async def test_non_utf8_body_is_refused(client: httpx.AsyncClient, app: FastAPI) -> None:
    body = b'{"type": "user.created", "data": {"id": "\xff\xfe"}}'
    headers = sign(body.decode("latin-1"))
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 400, "not UTF-8")


@embedded_only
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "malformed event", id="array"),
        pytest.param(b'{"type": "user.created"}', "data", id="no-data"),
        pytest.param(b'{"type": "user.created", "data": {}}', "data.id", id="no-user-id"),
        pytest.param(b'{"type": "user.created", "data": {"id": 7}}', "data.id", id="numeric-id"),
        pytest.param(
            b'{"type": "user.created", "data": {"id": "user_{x}"}}', "data.id", id="brace-id"
        ),
        pytest.param(b'{"type": "user.deleted", "data": {}}', "data.id", id="deleted-no-id"),
        pytest.param(b'{"data": {"id": "user_1"}}', "type", id="no-type"),
    ],
)
async def test_malformed_signed_body_is_refused(
    client: httpx.AsyncClient, app: FastAPI, body: bytes, reason: str
) -> None:
    response = await client.post("/webhooks/clerk", content=body, headers=sign(body))
    await assert_refused(response, app, 400, reason)


@embedded_only
async def test_body_over_one_mib_is_refused(client: httpx.AsyncClient, app: FastAPI) -> None:
    event = created_event(unsafe_metadata={"padding": "x" * (1024 * 1024)})
    body, headers = signed_parts(event)
    response = await client.post("/webhooks/clerk", content=body, headers=headers)
    await assert_refused(response, app, 413, "body over")


@embedded_only
async def test_body_over_one_mib_without_content_length_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body, headers = signed_parts(created_event(unsafe_metadata={"pad": "x" * (1024 * 1024)}))

    async def chunks() -> Any:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await client.post("/webhooks/clerk", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    await assert_refused(response, app, 413, "body over")


@embedded_only
async def test_overlong_delivery_id_is_refused(client: httpx.AsyncClient, app: FastAPI) -> None:
    body = json.dumps(created_event()).encode()
    response = await client.post(
        "/webhooks/clerk", content=body, headers=sign(body, msg_id="m" * 300)
    )
    await assert_refused(response, app, 400, "svix-id")


@embedded_only
async def test_without_signing_secret_the_endpoint_answers_503(
    make_settings: Any, clock: Any
) -> None:
    async with running(make_settings(clerk_webhook_signing_secret=None), clock) as (_, http):
        response = await post_signed(http, created_event())
    assert response.status_code == 503
    assert "CLERK_WEBHOOK_SIGNING_SECRET" in response.json()["error"]


# --- the official Svix / Standard Webhooks vectors ----------------------------------------------


def test_official_sign_vectors_match_what_the_tests_sign_with() -> None:
    for vector in load_fixture("svix_vectors.json")["official_sign_vectors"]:
        timestamp = datetime.fromtimestamp(vector["timestamp"], tz=UTC)
        secret, msg_id = vector["secret"], vector["msg_id"]
        headers = sign(vector["payload"], secret=secret, msg_id=msg_id, timestamp=timestamp)
        assert headers["svix-signature"] == vector["expected_signature"]


@embedded_only
async def test_official_vector_is_refused_as_a_replay(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    # A genuine signature from 2021: only the timestamp tolerance stands between it and a replay.
    vector = load_fixture("svix_vectors.json")["official_sign_vectors"][0]
    headers = {
        "svix-id": vector["msg_id"],
        "svix-timestamp": str(vector["timestamp"]),
        "svix-signature": vector["expected_signature"],
    }
    response = await client.post("/webhooks/clerk", content=vector["payload"], headers=headers)
    await assert_refused(response, app, 400, "too old")


# --- judged on the service's clock (Redis's), not this machine's ---------------------------------


@embedded_only
@pytest.mark.parametrize("skew_ms", [10 * 60_000, -10 * 60_000], ids=["ahead", "behind"])
async def test_timestamps_are_judged_on_the_services_clock_not_this_machines(
    make_settings: Any, skew_ms: int
) -> None:
    """This machine's clock 10 minutes off the service's (Redis's, which Svix's agrees with): a
    delivery signed now is taken, one signed on this machine's clock is too old or too new."""
    service = FakeClock(int(time.time() * 1000) + skew_ms)
    at_service = datetime.fromtimestamp(service() / 1000, tz=UTC)
    async with running(make_settings(), service) as (app, http):
        taken = await post_signed(http, created_event(), timestamp=at_service)
        refused = await post_signed(http, created_event(OTHER), timestamp=datetime.now(tz=UTC))
        assert await store_of(app).users.get(OTHER) is None
    assert taken.json() == {"status": "created"}
    assert refused.status_code == 400
    assert ("too old" if skew_ms > 0 else "too new") in refused.json()["error"]


# --- storage down: 503 within seconds, never a 2xx for something not stored ---------------------


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
async def test_storage_down_answers_503_quickly(
    make_settings: Any, clock: Any, transport: str
) -> None:
    async with running(make_settings(**unreachable_storage(transport)), clock) as (_, http):
        started = time.monotonic()
        response = await post_signed(http, created_event())
        elapsed_s = time.monotonic() - started
    assert response.status_code == 503
    assert response.json() == {"error": "storage unavailable"}
    assert response.headers["retry-after"] == "5"
    assert elapsed_s < 4


@pytest.mark.parametrize("transport", ["upstash"], indirect=True)
@pytest.mark.parametrize("fault", ["hang", "500"])
async def test_upstash_fault_answers_503_then_redelivery_stores(
    client: httpx.AsyncClient, app: FastAPI, upstash_standin: tuple[str, Any], fault: str
) -> None:
    _, standin = upstash_standin
    body = json.dumps(created_event()).encode()
    headers = sign(body, msg_id="msg_retried")
    standin.state.fault = fault
    try:
        failed = await client.post("/webhooks/clerk", content=body, headers=headers)
    finally:
        standin.state.fault = None
    retried = await client.post("/webhooks/clerk", content=body, headers=headers)

    assert failed.status_code == 503
    assert retried.json() == {"status": "created"}
    assert await store_of(app).users.get(USER) is not None


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_redis_stopped_mid_run_then_redelivery_completes(
    make_settings: Any, clock: Any, own_redis: Any
) -> None:
    first = json.dumps(created_event("user_before")).encode()
    second = json.dumps(created_event("user_during")).encode()
    second_headers = sign(second, msg_id="msg_during_outage")
    async with running(make_settings(redis_url=own_redis.url), clock) as (_, http):
        stored = await http.post("/webhooks/clerk", content=first, headers=sign(first))
        own_redis.stop()
        during = await http.post("/webhooks/clerk", content=second, headers=second_headers)
        not_ready = await http.get("/health/ready")
        own_redis.start()
        redelivered = await http.post("/webhooks/clerk", content=second, headers=second_headers)
        ready = await http.get("/health/ready")

    assert stored.json() == {"status": "created"}
    assert during.status_code == 503
    assert not_ready.status_code == 503
    assert redelivered.json() == {"status": "created"}
    assert ready.status_code == 200


@embedded_only
async def test_a_sender_hanging_up_mid_body_is_refused_quietly(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    body, headers = signed_parts()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/webhooks/clerk", "raw_path": b"/webhooks/clerk",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body[:10], "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    assert await store_of(app).users.get(USER) is None


async def test_a_refused_webhook_says_why_in_the_log_and_names_the_secret(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(load_fixture("clerk_user_created.json")).encode()
    headers = sign(body, secret="whsec_" + base64.b64encode(b"another endpoint's key!!").decode())
    with caplog.at_level(logging.WARNING, logger="app"):
        response = await client.post("/webhooks/clerk", content=body, headers=headers)
    assert response.status_code == 400
    lines = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(lines) == 1
    assert "clerk webhook refused (400): signature check failed" in lines[0]
    assert "CLERK_WEBHOOK_SIGNING_SECRET" in lines[0]
    assert "whsec_" not in caplog.text  # no secret in the log
