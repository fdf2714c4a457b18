"""The soak's users, concurrent, at an even rate: each signs up (a Svix-signed Clerk
`user.created`), most report `first_project_created` at once, some go on to the milestones
(ten `project_created`, a `plan_changed`), and some stop: a complaint or a hard bounce about
their first email (Svix-signed Resend events), an unsubscribe through its List-Unsubscribe link
(GET the page, then POST), or a Clerk `user.deleted` (right after the first action, or after the
first email). Every request is retried, as Svix or an app would, until it is answered (5xx, 429
and dropped connections are retried with the same svix-id or action id); `History` keeps what
was sent and acknowledged, when.
"""

import asyncio
import copy
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import httpx

from tests.conftest import AUTH, clerk_event, load_fixture, sign
from tests.soak.harness import RESEND_WEBHOOK_SECRET
from tests.soak.history import History, Op, now_ms
from tests.soak.ledger import Delivery, Ledger

PLANS = ("pro", "team", "free")  # pro and team count for milestone_upgraded; free does not
PROJECTS = 10  # milestone_ten_projects waits for 10 project_created
IN_FLIGHT = 24  # requests at once, at most: enough to keep the web process busy
REQUEST_TIMEOUT_S = 10.0
EVENTS = load_fixture("resend_webhook_events.json")
SIGNUP = clerk_event("created")
DELETION = clerk_event("deleted")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one user will do."""

    act: bool
    projects: bool
    plan: str | None
    stopper: str | None  # complaint, bounce, unsubscribe, delete_early, delete
    company: bool


@dataclass(frozen=True)
class Mix:
    """Each user's chances: reporting the first action, the milestones, one stopper."""

    act: float = 0.8
    projects: float = 0.1
    upgrade: float = 0.1
    complaint: float = 0.03
    bounce: float = 0.03
    unsubscribe: float = 0.04
    delete: float = 0.06  # half right after the first action, half after the first email
    projects_if_stopped: float = 0.5  # so that something is pending when the stop arrives

    def plan(self, rng: random.Random) -> Plan:
        stopper = self.stopper(rng)
        projects = rng.random() < (self.projects_if_stopped if stopper else self.projects)
        plan = rng.choice(PLANS) if rng.random() < self.upgrade else None
        return Plan(rng.random() < self.act, projects, plan, stopper, rng.random() < 0.5)

    def stopper(self, rng: random.Random) -> str | None:
        roll = rng.random()
        chances = {
            "complaint": self.complaint,
            "bounce": self.bounce,
            "unsubscribe": self.unsubscribe,
            "delete_early": self.delete / 2,
            "delete": self.delete / 2,
        }
        for name, chance in chances.items():
            if roll < chance:
                return name
            roll -= chance
        return None


# With a frequency cap: more users upgrade, so that many have two capped emails due seconds apart
# (the welcome or the nudge, and the thank-you), which is where the cap has something to decide.
CAP_MIX = Mix(upgrade=0.4)


def user_id(seed: int, n: int) -> str:
    return f"user_soak{seed}_{n:06d}"


def address(user: str) -> str:
    return f"{user}@soak.example.org"


Send: TypeAlias = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


class Connections:
    """`size` clients of one connection each, lent one per request. One client with many
    connections cost this process most of its time (httpx's pool looks at each of its
    connections for every request, measured with cProfile), and starved the web process."""

    def __init__(self, base_url: str, size: int = IN_FLIGHT) -> None:
        tls = ssl.create_default_context()  # unused (plain http), but built once, not per client
        self.clients = [one_connection(base_url, tls) for _ in range(size)]
        self.idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self.clients:
            self.idle.put_nowait(client)

    async def __aenter__(self) -> "Connections":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[httpx.AsyncClient]:
        client = await self.idle.get()
        try:
            yield client
        finally:
            self.idle.put_nowait(client)


def one_connection(base_url: str, tls: ssl.SSLContext) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = REQUEST_TIMEOUT_S
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, verify=tls)


class Workload:
    """Runs the users against the web process: a stopper waits for the user's first email until
    `stop_at_s`, a request is retried until `give_up_at_s` (monotonic seconds)."""

    def __init__(
        self,
        connections: Connections,
        history: History,
        ledger: Ledger,
        *,
        seed: int,
        mix: Mix,
        stop_at_s: float,
        give_up_at_s: float,
    ) -> None:
        self.connections, self.history, self.ledger = connections, history, ledger
        self.seed, self.mix = seed, mix
        self.stop_at_s, self.give_up_at_s = stop_at_s, give_up_at_s
        self.last_signup_ms = 0

    async def run(self, users: int, seconds: float) -> None:
        """Start `users` users evenly over `seconds` (none after twice that, should the service
        fall that far behind); return when every one has finished."""
        start = time.monotonic()
        tasks = []
        for n in range(users):
            await asyncio.sleep(max(start + n * seconds / users - time.monotonic(), 0))
            if time.monotonic() >= start + 2 * seconds:
                break
            tasks.append(asyncio.create_task(self.user(n)))
        await asyncio.gather(*tasks)

    async def user(self, n: int) -> None:
        rng = random.Random(f"{self.seed}:{n}")
        plan, user = self.mix.plan(rng), user_id(self.seed, n)
        if not await self.signup(user, plan):
            return
        if plan.act:
            await self.act(user, "first_project_created")
        more: list[Awaitable[None]] = []
        if plan.projects:
            more.append(self.projects(user, rng))
        if plan.plan is not None:
            more.append(self.upgrade(user, plan.plan, rng))
        if plan.stopper is not None:
            more.append(self.stop(user, plan.stopper, rng))
        await asyncio.gather(*more)

    # --- the users' requests ---------------------------------------------------------------

    async def signup(self, user: str, plan: Plan) -> bool:
        self.history.addresses[user] = address(user)
        acked = await self.clerk(Op(user, "signup"), signup_event(user, plan.company))
        self.last_signup_ms = max(self.last_signup_ms, now_ms())
        return acked

    async def act(self, user: str, name: str, number: int = 0, **properties: str) -> None:
        op = self.record(Op(user, "action", name, plan=properties.get("plan", "")))
        action = {
            "user_id": user,
            "action": name,
            "id": f"{user}-{name}-{number}",
            "occurred_at": op.sent_ms,
            **({"properties": properties} if properties else {}),
        }
        await self.call(op, lambda client: client.post("/v1/actions", json=action, headers=AUTH))

    async def projects(self, user: str, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, 2))
        for number in range(PROJECTS):
            await self.act(user, "project_created", number)
            await asyncio.sleep(rng.uniform(0, 0.3))

    async def upgrade(self, user: str, plan: str, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, 3))
        await self.act(user, "plan_changed", plan=plan)

    async def stop(self, user: str, stopper: str, rng: random.Random) -> None:
        if stopper == "delete_early":
            await asyncio.sleep(rng.uniform(0, 1))
            await self.delete(user)
            return
        first = await self.ledger.first_email(user, self.stop_at_s)
        if first is None:
            return
        await asyncio.sleep(rng.uniform(0, 0.5))
        if stopper == "delete":
            await self.delete(user)
        elif stopper == "unsubscribe":
            await self.unsubscribe(user, first)
        else:
            await self.resend_event(user, stopper, first)

    async def delete(self, user: str) -> None:
        event = copy.deepcopy(DELETION)
        event["data"]["id"] = user
        await self.clerk(Op(user, "delete"), event)

    async def unsubscribe(self, user: str, first: Delivery) -> None:
        url = first.unsubscribe_url
        assert url is not None, f"no List-Unsubscribe header in {first}"
        await self.call(Op(user, "unsubscribe_page"), lambda client: client.get(url))
        await self.call(Op(user, "unsubscribe"), lambda client: client.post(url))

    async def resend_event(self, user: str, stopper: str, first: Delivery) -> None:
        event: dict[str, Any] = copy.deepcopy(EVENTS[f"email.{STOPPER_EVENTS[stopper]}"])
        tags = {"user": first.user, "loop": first.loop, "step": first.step, "kind": first.kind}
        event["data"].update(email_id=first.email_id, to=[first.to], tags=tags)
        if stopper == "bounce":
            event["data"]["bounce"]["type"] = "Permanent"
        await self.signed(Op(user, stopper), "/webhooks/resend", event, RESEND_WEBHOOK_SECRET)

    async def clerk(self, op: Op, event: dict[str, Any]) -> bool:
        return await self.signed(op, "/webhooks/clerk", event)

    async def signed(self, op: Op, path: str, event: dict[str, Any], *secret: str) -> bool:
        """A Svix-signed webhook; every attempt is signed anew under the same svix-id."""
        body = json.dumps(event).encode()
        msg_id = f"msg_soak_{op.user}_{op.kind}"
        keys = {"secret": secret[0]} if secret else {}

        def post(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
            return client.post(path, content=body, headers=sign(body, msg_id=msg_id, **keys))

        return await self.call(op, post)

    # --- sending, with retries ---------------------------------------------------------------

    def record(self, op: Op) -> Op:
        op.sent_ms = now_ms()
        return self.history.add(op)

    async def call(self, op: Op, send: Send) -> bool:
        """Send until answered (2xx, or a 4xx other than 429) or `give_up_at_s`; True if 2xx."""
        if not op.sent_ms:
            self.record(op)
        delay_s = 0.1
        while True:
            response = await self.attempt(op, send)
            if response is not None and response.status_code < 500 and response.status_code != 429:
                return self.answered(op, response)
            if time.monotonic() + delay_s >= self.give_up_at_s:
                return False
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)

    async def attempt(self, op: Op, send: Send) -> httpx.Response | None:
        op.attempts += 1
        try:
            async with self.connections.lend() as client:
                started_s = time.monotonic()
                response = await send(client)
        except httpx.TransportError:
            return None
        op.status = response.status_code
        op.answer_ms = round((time.monotonic() - started_s) * 1000)
        return response

    def answered(self, op: Op, response: httpx.Response) -> bool:
        if not response.is_success:
            return False
        op.acked_ms = now_ms()
        if response.headers.get("content-type", "").startswith("application/json"):
            op.answer = str(response.json().get("status", ""))
        return True


STOPPER_EVENTS = {"complaint": "complained", "bounce": "bounced"}


def signup_event(user: str, company: bool) -> dict[str, Any]:
    """Clerk's `user.created` for a user created now, with an address of their own (and a
    company, which picks milestone_upgraded's team variant)."""
    event: dict[str, Any] = copy.deepcopy(SIGNUP)
    at = now_ms()
    data = event["data"]
    data.update(id=user, created_at=at, updated_at=at)
    data["email_addresses"][0]["email_address"] = address(user)
    data["public_metadata"] = {"company": "Acme"} if company else {}
    event["timestamp"] = at
    return event
