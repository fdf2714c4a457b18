"""Storage for a test: settings that reach nothing, settings that reach a Redis directly or through
an Upstash stand-in in front of it, and the commands Redis ran (what Upstash would bill)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from tests.conftest import UPSTASH_TOKEN, RedisProcess, free_port
from tests.standins.upstash import create_standin, serve


def unreachable_storage(transport: str) -> dict[str, Any]:
    port = free_port()
    if transport == "upstash":
        url = f"http://127.0.0.1:{port}"
        return {"upstash_redis_rest_url": url, "upstash_redis_rest_token": UPSTASH_TOKEN}
    return {"redis_url": f"redis://127.0.0.1:{port}/0"}


@contextmanager
def storage_on(transport: str, redis: RedisProcess) -> Iterator[dict[str, Any]]:
    """Settings that reach `redis`: directly, or through an Upstash stand-in in front of it."""
    if transport == "redis":
        yield {"redis_url": redis.url}
        return
    with serve(create_standin(redis.url, UPSTASH_TOKEN)) as url:
        yield {"upstash_redis_rest_url": url, "upstash_redis_rest_token": UPSTASH_TOKEN}


class Meter:
    """Commands Redis ran between two reads of INFO commandstats (INFO itself left out)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def calls(self) -> dict[str, int]:
        stats: dict[str, Any] = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}

    async def of(self, work: Callable[[], Any]) -> dict[str, int]:
        before = self.calls()
        await work()
        after = self.calls()
        delta = {name: after[name] - before.get(name, 0) for name in after if name != "info"}
        return {name: count for name, count in delta.items() if count}


STORAGE_ENV = ("REDIS_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN")


def clear_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No storage setting in the process environment: a command falls back to the embedded store
    unless the test sets one."""
    for name in STORAGE_ENV:
        monkeypatch.delenv(name, raising=False)
