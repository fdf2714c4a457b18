"""Driving the running service over HTTP, and its worker in-process, for cost and delivery."""

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import httpx

from app.clock import Clock, system_clock_ms
from app.runtime import Runtime, build_runtime
from app.settings import Settings
from bench.cost import Cost, Monitor
from bench.load import API_KEY, SIGNING_SECRET, action, signed_lines

AUTH = {"authorization": f"Bearer {API_KEY}"}
TWO_DAYS_MS = 2 * 24 * 3600 * 1000
RESEND_KEY = "re_standin_test_key"  # tests.standins.resend.API_KEY


def app_env(redis_url: str, prefix: str, *, worker: bool, resend_url: str = "") -> dict[str, str]:
    """The service's settings as environment variables (see .env.example)."""
    env = {
        "REDIS_URL": redis_url,
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        "ACTIVATION_API_KEY": API_KEY,
        "KEY_PREFIX": prefix,
        "LOOPS_DIR": "loops",
        "LOG_LEVEL": "WARNING",
        "WORKER_IN_PROCESS": "true" if worker else "false",
    }
    if resend_url:
        env |= {"RESEND_API_KEY": RESEND_KEY, "RESEND_API_URL": resend_url}
        env |= {"EMAIL_FROM": "Bench <bench@example.org>", "RESEND_RATE_LIMIT_PER_S": "0"}
    return env


class InProcessWorker:
    """What `activation worker` builds, run in the bench process on one event loop."""

    def __init__(
        self, env: Mapping[str, str], clock: Clock = system_clock_ms, **overrides: object
    ) -> None:
        values = {name.lower(): value for name, value in env.items()} | overrides
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        self.runner = asyncio.Runner()
        self.runtime: Runtime = build_runtime(settings, clock)

    def drain(self, max_rounds: int = 1000) -> int:
        return self.runner.run(self.runtime.worker.drain(max_rounds))

    def run_for(self, seconds: float) -> None:
        """The worker's own loop (`activation worker`), stopped after `seconds`."""

        async def bounded() -> None:
            task = asyncio.create_task(self.runtime.worker.run())
            await asyncio.sleep(seconds)
            self.runtime.worker.stop()
            await asyncio.wait_for(task, 30)

        self.runner.run(bounded())

    def close(self) -> None:
        self.runner.run(self.runtime.close())
        self.runner.close()


@contextmanager
def in_process_worker(
    env: Mapping[str, str], clock: Clock = system_clock_ms, **overrides: object
) -> Iterator[InProcessWorker]:
    worker = InProcessWorker(env, clock, **overrides)
    try:
        yield worker
    finally:
        worker.close()


def signup(http: httpx.Client, user_ids: list[str]) -> None:
    for line in signed_lines(user_ids):
        *headers, body = line.split("\t")
        pairs = dict(header.split(": ", 1) for header in headers)
        response = http.post("/webhooks/clerk", content=body, headers=pairs)
        assert response.json() == {"status": "created"}, response.text


def act(
    http: httpx.Client,
    user_ids: list[str],
    name: str,
    batch: bool = False,
    properties: dict[str, object] | None = None,
) -> list[int]:
    """Post one action per user (or all in one batch); returns when each 202 arrived (ms)."""
    actions = [
        action(uid, name) | ({"properties": properties} if properties else {}) for uid in user_ids
    ]
    bodies = [{"actions": actions}] if batch else actions
    arrived = []
    for body in bodies:
        response = http.post("/v1/actions", json=body, headers=AUTH)
        assert response.status_code == 202, response.text
        arrived.append(system_clock_ms())
    return arrived


def inbox(resend_url: str) -> dict[str, int]:
    """The job id (`email|<uid>|...`) -> received_at_ms, for every email the stand-in accepted."""
    return dict(httpx.get(f"{resend_url}/_inbox", timeout=30).json())


def all_act_at_once(app_url: str, tag: str, n: int) -> list[str]:
    """`n` new users sign up, then all report the welcome's action at once (batches of 100)."""
    users = [f"user_{tag}{i:020d}" for i in range(n)]
    with httpx.Client(base_url=app_url, timeout=30) as http:
        signup(http, users)
        time.sleep(2)
        for start in range(0, n, 100):
            act(http, users[start : start + 100], "first_project_created", batch=True)
    return users


def backlog_drain(app_url: str, resend_url: str, tag: str, n: int) -> tuple[float, int]:
    """All `n` users act at once (batches of 100): seconds from the last action's 202 to the
    last email's arrival, and how many arrived."""
    users = all_act_at_once(app_url, tag, n)
    acted_ms = system_clock_ms()
    arrived = wait_for_emails(resend_url, users, timeout_s=120).values()
    return (max(arrived) - acted_ms) / 1000 if arrived else 0.0, len(arrived)


def batch_sizes(resend_url: str) -> list[int]:
    """The size of each batch request the stand-in accepted."""
    sizes: list[int] = httpx.get(f"{resend_url}/_batches", timeout=30).json()
    return sizes


def wait_for_emails(resend_url: str, user_ids: list[str], timeout_s: float) -> dict[str, int]:
    """Each user's first email's arrival (ms), once all have one or the time is up."""
    wanted = set(user_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        arrived: dict[str, int] = {}
        for key, at_ms in inbox(resend_url).items():
            uid = (key or "").split("|")[1:2]  # job ids are email|<uid>|...
            if uid and uid[0] in wanted:
                uid = uid[0]
                arrived[uid] = min(at_ms, arrived.get(uid, at_ms))
        if len(arrived) == len(wanted) or time.monotonic() > deadline:
            return arrived
        time.sleep(0.2)


def measured(redis_url: str, work: Callable[[], object]) -> Cost:
    with Monitor(redis_url) as monitor:
        work()
    return monitor.cost()


def costs(
    redis_url: str, app_url: str, env: Mapping[str, str], tag: str, n: int = 50
) -> dict[str, Cost]:
    """Per-operation windows on `n` fresh users; the app runs without its own worker."""
    users = [f"user_{tag}{i:020d}" for i in range(n)]
    windows: dict[str, Cost] = {}
    with httpx.Client(base_url=app_url, timeout=30) as http, in_process_worker(env) as worker:
        warm = [f"user_{tag}warm{i:016d}" for i in range(2)]
        signup(http, warm)
        act(http, warm, "first_project_created")
        worker.drain()  # scripts loaded, pools connected: the windows see steady state
        windows["user.created"] = measured(redis_url, lambda: signup(http, users))
        windows["signup's turn"] = measured(redis_url, worker.drain)
        windows["watched action"] = measured(
            redis_url, lambda: act(http, users, "first_project_created")
        )
        windows["turn: welcome decided and sent"] = measured(redis_url, worker.drain)
        # project_created: the milestone waits for the tenth, so the first wakes nobody
        windows["unwatched action"] = measured(
            redis_url, lambda: act(http, users, "project_created")
        )
        worker.drain()
        # milestone_upgraded counts only the plan_changed whose plan is pro or team: the
        # filter is matched as the action arrives, in the same script, and the turn is woken
        windows["watched action with a filter"] = measured(
            redis_url, lambda: act(http, users, "plan_changed", properties={"plan": "pro"})
        )
        worker.drain()
        # one flush, not one per user: scaled as if each of the n users had caused one
        windows["action-health flush, 3 names"] = flush_cost(redis_url, worker).scaled(n)
    # the worker's clock two days on: the tips are due (the warm-up users' too: the window is
    # counted per turn run, like the others per user)
    with in_process_worker(env, lambda: system_clock_ms() + TWO_DAYS_MS + 60_000) as later:
        turns: list[int] = []
        tips = measured(redis_url, lambda: turns.append(later.drain()))
        windows["turn: tips decided and sent, 2 days on"] = tips.scaled(n / turns[0])
    with httpx.Client(base_url=app_url, timeout=30) as http:
        windows["batch of n actions"] = measured(
            redis_url, lambda: act(http, users, "project_created", batch=True)
        )
    return windows


def flush_cost(redis_url: str, worker: InProcessWorker) -> Cost:
    """One flush of a process's action sightings (3 names this hour), after a first one has
    created the day's hash: what a process writes every SIGHTINGS_FLUSH_S while actions come."""
    names = ["first_project_created", "project_created", "plan_changed"]
    runtime = worker.runtime
    runtime.sightings.saw(names, system_clock_ms())
    worker.runner.run(runtime.flush_sightings())
    runtime.sightings.saw(names, system_clock_ms())
    return measured(redis_url, lambda: worker.runner.run(runtime.flush_sightings()))


def delivery_latency(app_url: str, resend_url: str, tag: str, n: int, rate_per_s: float) -> dict:
    """Signup then one `first_project_created` per user, paced; ms from each 202 to the email."""
    users = [f"user_{tag}{i:020d}" for i in range(n)]
    with httpx.Client(base_url=app_url, timeout=30) as http:
        signup(http, users)
        time.sleep(2)  # the worker evaluates the new users (their 5-minute timeouts start)
        accepted = {}
        for uid in users:
            accepted[uid] = act(http, [uid], "first_project_created")[0]
            time.sleep(1 / rate_per_s)
    arrived = wait_for_emails(resend_url, users, timeout_s=60)
    return {uid: arrived[uid] - accepted[uid] for uid in users if uid in arrived}


def delivery_rate(app_url: str, resend_url: str, tag: str, n: int) -> tuple[float, int]:
    """All `n` users act at once (batches of 100): emails/s from the first to the last arrival."""
    users = all_act_at_once(app_url, tag, n)
    arrived = sorted(wait_for_emails(resend_url, users, timeout_s=120).values())
    span_s = (arrived[-1] - arrived[0]) / 1000 if len(arrived) > 1 else 0.0
    return ((len(arrived) - 1) / span_s if span_s else 0.0), len(arrived)
