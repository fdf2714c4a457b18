"""GET /health and GET /health/ready, with storage up and down."""

from collections.abc import Callable

import httpx
import pytest

from app.settings import Settings
from tests.conftest import AUTH, FakeClock, running
from tests.support.storage import unreachable_storage


async def test_liveness(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_storage_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"storage": "ok", "loops": "ok", "worker": "ok"},
        "failing": [],
    }


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
async def test_not_ready_names_storage_when_it_is_down(
    make_settings: Callable[..., Settings], clock: FakeClock, transport: str
) -> None:
    async with running(make_settings(**unreachable_storage(transport)), clock) as (_, http):
        response = await http.get("/health/ready")
        liveness = await http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"] == "failed"
    assert liveness.status_code == 200


METRICS_TOKEN = "readiness-metrics-token"


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
async def test_only_a_caller_with_the_key_or_metrics_token_reads_why(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    transport: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reason names the storage's internal address: an anonymous caller (a load balancer)
    gets the failing part's name, an operator the reason, and the log keeps it."""
    storage = unreachable_storage(transport)
    port = (storage.get("redis_url") or storage.get("upstash_redis_rest_url", "")).rsplit(":")[-1]
    port = port.split("/")[0]
    settings = make_settings(metrics_token=METRICS_TOKEN, **storage)
    callers = {
        "anonymous": {},
        "wrong token": {"Authorization": "Bearer not-it"},
        "API key": AUTH,
        "metrics token": {"Authorization": f"Bearer {METRICS_TOKEN}"},
    }
    async with running(settings, clock) as (_, http):
        answers = {name: await http.get("/health/ready", headers=h) for name, h in callers.items()}

    for name, response in answers.items():
        assert response.status_code == 503, name
        assert response.json()["failing"] == ["storage"], name
    for name in ("anonymous", "wrong token"):
        assert answers[name].json()["checks"] == {
            "storage": "failed",
            "loops": "ok",
            "worker": "ok",
        }
        assert port not in answers[name].text
        assert "127.0.0.1" not in answers[name].text
    for name in ("API key", "metrics token"):
        reason = answers[name].json()["checks"]["storage"]
        assert reason.startswith("failed: "), name
        assert len(reason) > len("failed: "), name
    logged = [r.getMessage() for r in caplog.records if r.name == "app.web.health"]
    assert any("readiness check storage failed: " in message for message in logged)
