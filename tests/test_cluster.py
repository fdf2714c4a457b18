"""The service on a Redis Cluster (3 masters, 3 replicas, started by the test session): found from
any one node, every script in one slot, users and the schedule spread over every master, and
exactly the right email once per user through a graceful failover."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.clock import system_clock_ms
from app.settings import Settings
from app.storage.connections import ClusterConnection
from app.storage.records import OutboxFilter
from tests.conftest import (
    API_KEY,
    AUTH,
    SIGNING_SECRET,
    clerk_event,
    free_port,
    post_webhook,
    running,
    sign,
    store_of,
)
from tests.standins.redis_cluster import LocalCluster
from tests.support.constants import REPO
from tests.support.processes import worker_env

on_redis = pytest.mark.parametrize("transport", ["redis"], indirect=True)


def signup(user_id: str) -> bytes:
    return json.dumps(clerk_event("created", user_id)).encode()


@on_redis
async def test_one_node_is_enough_to_find_the_cluster_and_its_shards(
    make_settings: Callable[..., Settings], redis_cluster: LocalCluster, key_prefix: str
) -> None:
    settings = make_settings(redis_url=redis_cluster.url)
    async with running(settings, system_clock_ms) as (app, http):
        store = store_of(app)
        assert isinstance(store.conn, ClusterConnection)
        assert store.keys.shard_count == len(redis_cluster.masters())
        tag_owners = {redis_cluster.master_of(f"{{{tag}}}") for tag in store.keys.shard_tags}

        users = [f"user_cluster_{n:03d}" for n in range(60)]
        answers = [await post_webhook(http, signup(uid)) for uid in users]
        actions = [{"user_id": uid, "action": "first_project_created"} for uid in users]
        recorded = await http.post("/v1/actions", json={"actions": actions}, headers=AUTH)
        ran = await app.state.runtime.worker.drain()
        states = [await http.get(f"/v1/users/{uid}", headers=AUTH) for uid in users[:5]]
        outbox = await store.queries.outbox(limit=1000)
        pages = [await store.queries.outbox_page(offset, 50) for offset in (0, 50)]
        theirs = await store.queries.outbox_page(0, 50, OutboxFilter(user_id=users[7]))
        stats = await store.queries.read_stats(["activation"], [])

    assert tag_owners == set(redis_cluster.masters())  # one shard on every master
    assert {answer.status_code for answer in answers} == {200}
    assert recorded.json() == {"accepted": 60, "duplicates": 0}
    assert ran >= 60  # a turn per user: the welcome decided and sent
    assert all(state.json()["emails"][0]["status"] == "sent" for state in states)
    assert sorted(entry["to"] for entry in outbox).count("example@example.org") == 60
    paged = [entry for page in pages for entry in page.entries]  # the shards' lists merged
    assert [page.more for page in pages] == [True, False]
    assert sorted(entry["job"] for entry in paged) == sorted(entry["job"] for entry in outbox)
    assert [entry["at"] for entry in paged] == sorted((e["at"] for e in paged), reverse=True)
    assert [entry["job"] for entry in theirs.entries] == [f"email|{users[7]}|activation|0|action"]
    assert stats.loops["activation"]["emails_sent"] == 60
    assert all(count > 0 for count in redis_cluster.keys_per_master().values())


# --- two web processes and a worker, through a failover ---------------------------------------

USERS = 200
LOOP = """\
type: activation
opinion: welcome on the first project, or a nudge after 3 seconds
steps:
  - trigger: {type: database, table: users, event: insert}
    condition: {type: action, action: first_project_created, count: 1, timeout: 3s}
    action: {type: email, template: welcome}
    on_timeout: {type: email, template: nudge}
"""


def loops_folder(root: Path) -> Path:
    (root / "templates").mkdir(parents=True)
    for name in ("welcome", "nudge"):
        (root / "templates" / f"{name}.html").write_text(
            f"---\nsubject: {name}\n---\n<p>{name}</p>\n"
        )
    (root / "welcome.yaml").write_text(LOOP)
    return root


def process_env(cluster: LocalCluster, resend: Any, loops: Path, prefix: str) -> dict[str, str]:
    """A worker process's settings (test_faults), plus the web processes' and the short loop."""
    return {
        **worker_env(cluster.url, prefix, resend),
        "LOOPS_DIR": str(loops),
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        "ACTIVATION_API_KEY": API_KEY,
        "WORKER_IN_PROCESS": "false",
        "LOG_LEVEL": "WARNING",
    }


@contextmanager
def service_processes(env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """Two `uvicorn app.main:app` processes and one `activation worker`; yields the web URLs."""
    ports = [free_port(), free_port()]
    commands = [
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--no-access-log"]
        for port in ports
    ]
    commands.append([sys.executable, "-m", "app.cli", "worker"])
    processes = []
    with ExitStack() as files:
        try:
            for n, command in enumerate(commands):
                out = files.enter_context((logs / f"process-{n}.log").open("wb"))
                processes.append(
                    subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
                )

            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url in urls:
                wait_healthy(url)
            yield urls
        finally:
            stop(processes)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not start"
        time.sleep(0.1)


async def deliver(http: httpx.AsyncClient, send: Callable[[], Any], what: str) -> None:
    """Send until stored, as Svix and a careful app do: a 503 (storage failing over) is retried."""
    deadline = time.monotonic() + 30
    while True:
        response = await send()
        if response.status_code < 300:
            return
        assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
        assert time.monotonic() < deadline, f"{what}: still 503 after 30 s"
        await asyncio.sleep(0.2)


async def users_sign_up_and_act(urls: list[str], cluster: LocalCluster) -> None:
    old_masters = set(cluster.masters())
    async with httpx.AsyncClient(timeout=10) as http:
        failover = None
        for n in range(USERS):
            url, user_id = urls[n % 2], f"user_fo_{n:04d}"
            body = signup(user_id)
            headers = sign(body)
            await deliver(
                http,
                lambda url=url, body=body, headers=headers: http.post(
                    f"{url}/webhooks/clerk", content=body, headers=headers
                ),
                f"signup {user_id}",
            )
            if n % 2 == 0:
                action = {"user_id": user_id, "action": "first_project_created", "id": user_id}
                await deliver(
                    http,
                    lambda url=url, action=action: http.post(
                        f"{url}/v1/actions", json=action, headers=AUTH
                    ),
                    f"action {user_id}",
                )
            if n == USERS // 2:  # mid-run: a master hands over to its replica
                failover = asyncio.create_task(
                    asyncio.to_thread(cluster.failover, cluster.masters()[0])
                )
        assert failover is not None
        promoted = await failover
        assert promoted not in old_masters  # a replica took over mid-run


async def all_sent(resend: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while len(resend.inbox) < USERS:  # noqa: ASYNC110  (the stand-in runs in another thread)
            await asyncio.sleep(0.2)


def expected_keys() -> list[str]:
    reasons = ["action" if n % 2 == 0 else "timeout" for n in range(USERS)]
    return sorted(f"email|user_fo_{n:04d}|welcome|0|{reasons[n]}" for n in range(USERS))


async def test_two_web_processes_and_a_worker_send_each_email_once_through_a_failover(
    redis_cluster: LocalCluster, resend: Any, tmp_path: Path, key_prefix: str
) -> None:
    env = process_env(redis_cluster, resend, loops_folder(tmp_path / "loops"), key_prefix)
    with service_processes(env, tmp_path) as urls:
        await users_sign_up_and_act(urls, redis_cluster)
        await all_sent(resend, timeout_s=60)
        await asyncio.sleep(2)  # anything sent twice would arrive by now
    keys = sorted(resend.jobs)
    assert keys == expected_keys()
    assert all(count > 0 for count in redis_cluster.keys_per_master().values())
