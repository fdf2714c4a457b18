"""The service's own send ledger, read from Redis once the run settled: each user's email jobs
(the `j:<loop>|<step>|<kind>` fields of the user's hash, as app/storage/keys.py describes them)
and the loops' `held:<why>` counters. Parsed here, not with the app's code: the checker reads
what the service wrote, and the cap's rules (`checker`) compare it with the stand-in's ledger.

A deleted user's hash keeps only its tombstone: no jobs, so the cap's rules that need the
service's ledger skip them (`over_cap` by arrival still covers them).
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from tests.soak.ledger import KINDS

JOB_FIELD = "j:"
HELD_COUNTER = "held:"
CHUNK = 500  # users per pipeline


@dataclass(frozen=True, slots=True)
class Job:
    """One email job as the user's hash keeps it: the fields the cap's rules read (epoch ms of
    the service's clock, Redis's)."""

    name: str  # welcome, nudge, tips, ten_projects, upgraded; else loop/step/kind
    loop: str
    status: str  # queued, sent, failed, dropped
    queued_at: int
    due_at: int
    attempts: int = 0
    first_attempt_at: int | None = None  # the first attempt that may have reached Resend began
    sent_at: int | None = None
    ended_at: int | None = None  # failed or dropped, when
    held: str | None = None  # while a queued job's first attempt waits: cap or quiet_hours
    last_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status != "queued"

    def counted_at(self, at_ms: int) -> int | None:
        """When the service's cap counted this email at `at_ms`, as its final state tells:
        sent by then, from `sent_at`; begun by then and not yet ended, from its first attempt;
        else not counted (None). `engine.holds` says why: an email counts once it may have
        reached Resend, and keeps counting once sent; a failed or dropped one never counts."""
        if self.status == "sent" and self.sent_at is not None and self.sent_at <= at_ms:
            return self.sent_at
        first = self.first_attempt_at
        if first is None or first > at_ms:
            return None
        ended = self.sent_at if self.status == "sent" else self.ended_at
        return first if ended is None or ended > at_ms else None


def parse_job(field: str, value: str) -> Job:
    """A `j:<loop>|<step>|<kind>` field: JSON without what its name says, without fields that
    hold nothing, and without `due_at` when it equals `queued_at`."""
    loop, step, kind = field.removeprefix(JOB_FIELD).split("|")
    data = json.loads(value)
    return Job(
        name=KINDS.get((loop, step, kind), f"{loop}/{step}/{kind}"),
        loop=loop,
        status=data.get("status", "queued"),
        queued_at=data["queued_at"],
        due_at=data.get("due_at", data["queued_at"]),
        attempts=data.get("attempts", 0),
        first_attempt_at=data.get("first_attempt_at"),
        sent_at=data.get("sent_at"),
        ended_at=data.get("ended_at"),
        held=data.get("held"),
        last_error=data.get("last_error"),
    )


def user_key(prefix: str, user: str) -> str:
    """The user's hash on a single Redis (app/storage/keys.py: `P{<uid>}`)."""
    return f"{prefix}{{{user}}}"


def read_jobs(url: str, prefix: str, users: Iterable[str]) -> dict[str, dict[str, Job]]:
    """Each user's jobs by email name; a user whose hash holds no job (never registered, or
    deleted) is left out."""
    found: dict[str, dict[str, Job]] = {}
    users = list(users)
    with redis.Redis.from_url(url, decode_responses=True) as client:
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            pipe = client.pipeline(transaction=False)
            for user in chunk:
                pipe.hgetall(user_key(prefix, user))
            for user, fields in zip(chunk, pipe.execute(), strict=True):
                jobs = [parse_job(f, v) for f, v in fields.items() if f.startswith(JOB_FIELD)]
                if jobs:
                    found[user] = {job.name: job for job in jobs}
    return found


def read_holds(url: str, prefix: str, loops: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each loop's `held:<why>` counters (`P:stats:<loop>`): emails held, once per reason."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return {loop: held_counts(client.hgetall(f"{prefix}stats:{loop}")) for loop in loops}


def held_counts(stats: Mapping[str, str]) -> dict[str, int]:
    return {
        name.removeprefix(HELD_COUNTER): int(value)
        for name, value in stats.items()
        if name.startswith(HELD_COUNTER)
    }
