"""POST /v1/actions: auth, validation with the failing field named, idempotency, batches."""

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import AUTH, FakeClock, running, store_of
from tests.support.marks import embedded_only


async def post(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    return await client.post("/v1/actions", json=body, headers={**AUTH, **headers})


async def test_one_action_is_accepted_and_counted(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await post(client, {"user_id": "user_1", "action": "first_project_created"})

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0}
    record = await store_of(app).queries.snapshot("user_1")
    assert record.actions["first_project_created"].count == 1


async def test_same_id_is_counted_once(client: httpx.AsyncClient, app: FastAPI) -> None:
    body = {"user_id": "user_1", "action": "project_created", "id": "evt_1"}
    answers = [(await post(client, body)).json() for _ in range(5)]

    assert answers[0] == {"accepted": 1, "duplicates": 0}
    assert answers[1:] == [{"accepted": 0, "duplicates": 1}] * 4
    assert (await store_of(app).queries.snapshot("user_1")).actions["project_created"].count == 1


async def test_batch_with_repeats_inside_and_across_users(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    actions = [
        {"user_id": "user_1", "action": "project_created", "id": "p1"},
        {"user_id": "user_2", "action": "project_created", "id": "p1"},  # ids are per user
        {"user_id": "user_1", "action": "project_created", "id": "p1"},
        {"user_id": "user_1", "action": "invited"},
    ]
    response = await post(client, {"actions": actions})

    assert response.json() == {"accepted": 3, "duplicates": 1}
    store = store_of(app)
    assert (await store.queries.snapshot("user_1")).actions["project_created"].count == 1
    assert (await store.queries.snapshot("user_2")).actions["project_created"].count == 1


@embedded_only
async def test_a_thousand_actions_in_one_batch(client: httpx.AsyncClient, app: FastAPI) -> None:
    actions = [{"user_id": f"user_{i % 50}", "action": "tick", "id": f"t{i}"} for i in range(1000)]
    response = await post(client, {"actions": actions})

    assert response.json() == {"accepted": 1000, "duplicates": 0}
    assert (await store_of(app).queries.snapshot("user_7")).actions["tick"].count == 20


@embedded_only
@pytest.mark.parametrize(
    ("occurred_at", "expected_ms"),
    [
        pytest.param("2026-11-20T10:00:00Z", 1_795_168_800_000, id="rfc3339-z"),
        pytest.param("2026-11-20T11:00:00+01:00", 1_795_168_800_000, id="rfc3339-offset"),
        pytest.param(1_795_168_800_000, 1_795_168_800_000, id="epoch-ms"),
        pytest.param(1_795_168_800, 1_795_168_800_000, id="epoch-seconds"),  # as webhooks are
        pytest.param(None, None, id="default-now"),
        pytest.param("2999-01-01T00:00:00Z", None, id="future-is-now"),
    ],
)
async def test_occurred_at_forms(
    client: httpx.AsyncClient,
    app: FastAPI,
    clock: FakeClock,
    occurred_at: Any,
    expected_ms: int | None,
) -> None:
    body = {"user_id": "user_1", "action": "x", "occurred_at": occurred_at}
    assert (await post(client, body)).status_code == 202
    stats = (await store_of(app).queries.snapshot("user_1")).actions["x"]
    assert stats.first_at == (expected_ms or clock.now_ms)


@embedded_only
async def test_properties_are_kept_on_the_timeline(client: httpx.AsyncClient, app: FastAPI) -> None:
    body = {"user_id": "user_1", "action": "x", "properties": {"plan": "pro"}, "id": "i1"}
    await post(client, body)
    timeline = (await store_of(app).queries.snapshot("user_1")).timeline
    assert timeline[0]["properties"] == {"plan": "pro"}
    assert timeline[0]["id"] == "i1"


# --- refusals -------------------------------------------------------------------------------


@embedded_only
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
        pytest.param({"Authorization": "Basic dGVzdA=="}, id="not-bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty"),
    ],
)
async def test_missing_or_wrong_key_is_401(
    client: httpx.AsyncClient, app: FastAPI, headers: dict[str, str]
) -> None:
    body = {"user_id": "user_1", "action": "x"}
    response = await client.post("/v1/actions", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert not (await store_of(app).queries.snapshot("user_1")).known


@embedded_only
async def test_without_a_configured_key_every_request_is_401(
    make_settings: Any, clock: FakeClock
) -> None:
    async with running(make_settings(activation_api_key=None), clock) as (_, http):
        response = await post(http, {"user_id": "user_1", "action": "x"})
    assert response.status_code == 401


def failing_fields(response: httpx.Response) -> list[str]:
    return [error["field"] for error in response.json()["fields"]]


@embedded_only
@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"action": "x"}, "user_id", id="no-user"),
        pytest.param({"user_id": "user_1"}, "action", id="no-action"),
        pytest.param({"user_id": "user_{1}", "action": "x"}, "user_id", id="brace-user"),
        pytest.param({"user_id": "user_1", "action": "has space"}, "action", id="bad-action"),
        pytest.param(
            {"user_id": "user_1", "action": "x", "occurred_at": "yesterday"}, "occurred_at"
        ),
        pytest.param({"user_id": "user_1", "action": "x", "id": ""}, "id", id="empty-id"),
        pytest.param({"user_id": "user_1", "action": "x", "colour": "red"}, "colour", id="extra"),
        pytest.param(
            {"user_id": "user_1", "action": "x", "properties": {"p": "x" * 5000}},
            "properties",
            id="big-properties",
        ),
        pytest.param({"actions": []}, "actions", id="empty-batch"),
        pytest.param({"actions": [{"user_id": "u"}]}, "actions.0.action", id="batch-item"),
        pytest.param(
            {"actions": [{"user_id": "u", "action": "x"}] * 1001}, "actions", id="batch-1001"
        ),
        pytest.param([1, 2], "body", id="not-an-object"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient, body: Any, field: str
) -> None:
    response = await post(client, body)
    assert response.status_code == 422
    assert any(field in name for name in failing_fields(response)), response.json()


@embedded_only
async def test_non_json_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/actions", content=b"{nope", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 422


@embedded_only
async def test_naive_time_is_utc(client: httpx.AsyncClient, app: FastAPI) -> None:
    await post(client, {"user_id": "user_1", "action": "x", "occurred_at": "2026-11-20T10:00:00"})
    stats = (await store_of(app).queries.snapshot("user_1")).actions["x"]
    assert stats.first_at == int(datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp() * 1000)


@embedded_only
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-content-type"),
        pytest.param({"content-type": "text/plain"}, id="text"),
        pytest.param({"content-type": "application/x-www-form-urlencoded"}, id="form"),
    ],
)
async def test_a_body_not_sent_as_json_is_told_what_to_send(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body = b'{"user_id": "user_1", "action": "x"}'
    response = await client.post("/v1/actions", content=body, headers={**AUTH, **headers})
    assert response.status_code == 422
    (error,) = response.json()["fields"]
    assert error["field"] == "body"  # no internal tag (`single`, `batch`) in what a caller reads
    assert "Content-Type: application/json" in error["message"]
    assert "single" not in response.text


@embedded_only
async def test_a_batch_items_error_names_its_place_without_internal_tags(
    client: httpx.AsyncClient,
) -> None:
    response = await post(client, {"actions": [{"user_id": "u"}]})
    assert failing_fields(response) == ["body.actions.0.action"]


@embedded_only
async def test_not_configured_and_wrong_key_answers_have_one_shape(
    make_settings: Any, clock: FakeClock
) -> None:
    """Every refusal is `{"error": reason}`; only a 422 lists fields (`fields`)."""
    async with running(make_settings(), clock) as (_, http):
        wrong = await http.post("/v1/actions", json={}, headers={"Authorization": "Bearer no"})
        webhook = await http.post("/webhooks/clerk", content=b"{}")
    async with running(make_settings(clerk_webhook_signing_secret=None), clock) as (_, http):
        unconfigured = await http.post("/webhooks/clerk", content=b"{}")
    assert (wrong.status_code, unconfigured.status_code, webhook.status_code) == (401, 503, 400)
    for response in (wrong, unconfigured, webhook):
        assert list(response.json()) == ["error"], response.text
