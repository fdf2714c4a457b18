"""`GET /metrics` after real traffic: a signup, actions, the worker's sends, refused webhooks and
storage going away. Parsed with prometheus-client's own text parser."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from app.settings import Settings
from tests.conftest import (
    API_KEY,
    AUTH,
    FakeClock,
    RedisProcess,
    load_fixture,
    running,
    sign,
    worker_of,
)
from tests.support.constants import USER

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, headers: dict[str, str] = AUTH) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def signup(client: httpx.AsyncClient) -> httpx.Response:
    event = load_fixture("clerk_user_created.json")
    event["data"]["id"] = USER
    body = json.dumps(event).encode()
    return await client.post("/webhooks/clerk", content=body, headers=sign(body))


async def act(client: httpx.AsyncClient, **extra: Any) -> None:
    body = {"user_id": USER, "action": "first_project_created", **extra}
    assert (await client.post("/v1/actions", json=body, headers=AUTH)).status_code == 202


async def test_counts_follow_a_signup_an_action_and_a_send(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    before = await scrape(client)
    assert value(before, "activation_emails_total", outcome="sent") == 0
    assert value(before, "activation_schedule_jobs") == 0

    assert (await signup(client)).status_code == 200
    await act(client, id="a-1")
    await act(client, id="a-1")  # the client's retry: a duplicate
    queued = await scrape(client)
    assert value(queued, "activation_schedule_jobs") == 1  # the user's evaluation job
    clock.advance(2_000)
    await worker_of(app).drain()
    after = await scrape(client)

    webhook = {"source": "clerk", "type": "user.created", "outcome": "created"}
    assert value(after, "activation_webhooks_total", **webhook) == 1
    assert value(after, "activation_actions_total", outcome="accepted") == 1
    assert value(after, "activation_actions_total", outcome="duplicate") == 1
    assert value(after, "activation_step_transitions_total", loop="activation", status="fired") == 1
    assert value(after, "activation_emails_total", outcome="sent") == 1
    assert value(after, "activation_job_latency_seconds_count", kind="email") == 1
    assert value(after, "activation_job_latency_seconds_sum", kind="email") == 0  # due now
    assert value(after, "activation_dead_letter_jobs") == 0
    assert value(after, "activation_storage_errors_total", kind="unavailable") == 0


async def test_duplicate_and_refused_webhooks_are_counted_by_outcome(
    client: httpx.AsyncClient,
) -> None:
    event = load_fixture("clerk_user_created.json")
    body = json.dumps(event).encode()
    headers = sign(body, msg_id="msg_same")
    await client.post("/webhooks/clerk", content=body, headers=headers)
    await client.post("/webhooks/clerk", content=body, headers=headers)
    bad = {**headers, "svix-signature": "v1,AAAA"}
    assert (await client.post("/webhooks/clerk", content=body, headers=bad)).status_code == 400

    samples = await scrape(client)
    created = value(samples, "activation_webhooks_total", source="clerk", type="user.created",
                    outcome="duplicate")  # fmt: skip
    rejected = value(samples, "activation_webhooks_total", source="clerk", type="-",
                     outcome="rejected")  # fmt: skip
    assert (created, rejected) == (1, 1)


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_metrics_need_a_bearer_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get("/metrics", headers=wrong)).status_code == 401
    assert (await client.get("/metrics", headers=AUTH)).status_code == 200


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_a_metrics_token_replaces_the_api_key_for_scrapes(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(metrics_token="scrape-only"), clock) as (_, client):
        token = {"Authorization": "Bearer scrape-only"}
        assert (await client.get("/metrics", headers=token)).status_code == 200
        api_key = {"Authorization": f"Bearer {API_KEY}"}
        assert (await client.get("/metrics", headers=api_key)).status_code == 401


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
async def test_no_key_at_all_refuses_every_scrape(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    async with running(make_settings(activation_api_key=None), clock) as (_, client):
        assert (await client.get("/metrics", headers=AUTH)).status_code == 401


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_storage_outage_is_counted_and_the_scrape_still_answers(
    make_settings: Callable[..., Settings], clock: FakeClock, own_redis: RedisProcess
) -> None:
    settings = make_settings(redis_url=own_redis.url, storage_timeout_s=0.5)
    async with running(settings, clock) as (_, client):
        own_redis.stop()
        assert (await signup(client)).status_code == 503
        samples = await scrape(client)
        own_redis.start()

    outcome = {"source": "clerk", "type": "-", "outcome": "unavailable"}
    assert value(samples, "activation_webhooks_total", **outcome) == 1
    # the webhook's 503, then the scrape's own ZCARD
    assert value(samples, "activation_storage_errors_total", kind="unavailable") == 2


def test_each_metrics_object_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.actions_recorded(3, 1)
    assert b'activation_actions_total{outcome="accepted"} 3.0' in first.render()
    assert b'activation_actions_total{outcome="accepted"} 0.0' in second.render()
