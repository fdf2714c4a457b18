"""GET /health and GET /health/ready, with storage up and down."""

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import UPSTASH_TOKEN, FakeClock, free_port, running


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


def unreachable_storage(transport: str) -> dict[str, Any]:
    port = free_port()
    if transport == "upstash":
        url = f"http://127.0.0.1:{port}"
        return {"upstash_redis_rest_url": url, "upstash_redis_rest_token": UPSTASH_TOKEN}
    return {"redis_url": f"redis://127.0.0.1:{port}/0"}


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
    assert body["checks"]["storage"].startswith("failed: ")
    assert liveness.status_code == 200
