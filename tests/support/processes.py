"""The `activation` command as a user runs it, and a worker process (`activation worker`), each in
a process of its own with the environment it is given."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.conftest import SENDER, load_fixture
from tests.standins.resend import ResendStandin
from tests.support.constants import REPO, SHIPPED_LOOPS


def env_for(redis_url: str, key_prefix: str, **extra: str) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME")}
    return {
        **keep,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "LOOPS_DIR": str(SHIPPED_LOOPS),
        "ACTIVATION_API_KEY": "cli-test-key",
        **extra,
    }


def activation(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def seed_activated_user(redis_url: str, key_prefix: str) -> None:
    """A registered user whose first project was recorded: the worker has a welcome to send."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    profile = load_fixture("clerk_user_created.json")["data"]
    uid = profile["id"]
    user = {
        "id": uid, "email": "example@example.org", "first_name": "Example",
        "last_name": "Example",
    }  # fmt: skip
    now = int(time.time() * 1000)
    client.hset(f"{key_prefix}{{{uid}}}", mapping={
        "p": json.dumps(user), "v": 1, "reg": now, "rev": 1,
        "a:first_project_created": f"1,{now},{now};0",  # reached 1 at its first time
    })  # fmt: skip
    client.zadd(f"{key_prefix}schedule", {f"eval|{uid}": now})
    client.close()


def worker_env(redis_url: str, key_prefix: str, resend: ResendStandin) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME")}
    return {
        **keep,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "LOOPS_DIR": str(SHIPPED_LOOPS),
        "RESEND_API_KEY": resend.api_key,
        "RESEND_API_URL": resend.url,
        "EMAIL_FROM": SENDER,
        "RESEND_RATE_LIMIT_PER_S": "0",
        # the shortest lease a send can fit in (see Settings): the first worker renews it
        # until it is killed, then the second takes the job over when it runs out
        "RESEND_TIMEOUT_S": "2",
        "STORAGE_TIMEOUT_S": "1",
        "WORKER_LEASE_S": "8",
        "WORKER_IDLE_S": "1",
    }


@contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
