"""The stand-in's inbox read as deliveries: every email Resend accepted (replays of a key are not
in it), parsed once, indexed by user; the workload waits on it for a user's first email (whose
id and unsubscribe link a complaint or an unsubscribe needs)."""

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The logical emails of the shipped loops, by (loop, step, kind) as the emails' tags spell them.
KINDS = {
    ("activation", "0", "action"): "welcome",
    ("activation", "0", "timeout"): "nudge",
    ("activation", "1", "action"): "tips",
    ("milestone_ten_projects", "0", "action"): "ten_projects",
    ("milestone_upgraded", "0", "action"): "upgraded",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted email: the logical email it is (user, loop, step, kind), the key it came
    under, and when its request arrived at the stand-in and when it was recorded (epoch ms)."""

    user: str
    loop: str
    step: str
    kind: str
    key: str | None
    email_id: str
    to: str
    arrived_ms: int
    received_ms: int
    unsubscribe_url: str | None

    @property
    def logical(self) -> tuple[str, str, str, str]:
        return self.user, self.loop, self.step, self.kind

    @property
    def name(self) -> str:
        """welcome, nudge, tips, ten_projects, upgraded; else loop/step/kind."""
        return KINDS.get((self.loop, self.step, self.kind), f"{self.loop}/{self.step}/{self.kind}")


def parse(entry: dict[str, Any]) -> Delivery:
    body = entry["body"]
    tags = {tag["name"]: tag["value"] for tag in body.get("tags", [])}
    to = body["to"] if isinstance(body["to"], str) else ",".join(body["to"])
    link = body.get("headers", {}).get("List-Unsubscribe")
    return Delivery(
        user=tags.get("user", ""),
        loop=tags.get("loop", ""),
        step=tags.get("step", ""),
        kind=tags.get("kind", ""),
        key=entry["idempotency_key"],
        email_id=entry["id"],
        to=to,
        arrived_ms=entry.get("arrived_at_ms", entry["received_at_ms"]),
        received_ms=entry["received_at_ms"],
        unsubscribe_url=link.strip("<>") if link else None,
    )


class Ledger:
    """Deliveries so far, read from the stand-in's inbox (a list it only appends to)."""

    def __init__(self, inbox: list[dict[str, Any]]) -> None:
        self.inbox = inbox
        self.deliveries: list[Delivery] = []
        self.by_user: dict[str, list[Delivery]] = defaultdict(list)
        self.last_change_s = time.monotonic()
        self.waiting: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self.deliveries)

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries)

    def refresh(self) -> None:
        """Read the entries added since the last look."""
        for entry in self.inbox[len(self.deliveries) :]:
            delivery = parse(entry)
            self.deliveries.append(delivery)
            self.by_user[delivery.user].append(delivery)
            self.last_change_s = time.monotonic()
            if delivery.user in self.waiting:
                self.waiting.pop(delivery.user).set()

    async def first_email(self, user: str, until_s: float) -> Delivery | None:
        """The user's first delivered email, waiting for it until `until_s` (monotonic)."""
        if not self.by_user.get(user):
            arrived = self.waiting.setdefault(user, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), max(until_s - time.monotonic(), 0))
        found = self.by_user.get(user)
        return found[0] if found else None

    async def follow(self, every_s: float = 0.1) -> None:
        """Refresh until cancelled."""
        while True:
            self.refresh()
            await asyncio.sleep(every_s)
