"""What storage keeps and answers, as types: the stored profile, the user's record as a snapshot
reads it, the scripts' one-word answers, and the lines of a user's timeline (JSON)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.delivery.jobs import EmailJob
from app.engine.evaluate import ActionStats, StepState
from app.engine.job_ids import email_id_prefix
from app.storage.scripts import int_or_none


def timeline_entry(at_ms: int, event: str, **details: Any) -> str:
    """One timeline line: when, what, and the details that matter (JSON)."""
    return json.dumps({"at": at_ms, "event": event, **details}, separators=(",", ":"))


class UserProfile(BaseModel):
    """A user as stored (JSON in `P{uid}:user` field `profile`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    image_url: str | None = None
    created_at: int | None = None
    updated_at: int | None = None
    public_metadata: dict[str, Any] = Field(default_factory=dict)
    unsafe_metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        """First and last name, else the username, else the email's local part."""
        full = " ".join(part for part in (self.first_name, self.last_name) if part)
        if full:
            return full
        if self.username:
            return self.username
        return self.email.partition("@")[0] if self.email else ""


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """A Resend delivery event about one of our emails, matched to its user."""

    delivery_id: str
    user_id: str
    type: str
    job_id: str | None = None
    provider_id: str | None = None
    suppression: str | None = None  # "bounced" or "complained" when it stops loop email
    details: Mapping[str, Any] = field(default_factory=dict)

    def timeline_entry(self, at_ms: int) -> str:
        return timeline_entry(
            at_ms, self.type, email=self.job_id, provider_id=self.provider_id, **self.details
        )


@dataclass(frozen=True, slots=True)
class NewAction:
    """One "user did X" to record."""

    user_id: str
    action: str
    occurred_at_ms: int
    id: str | None = None
    properties: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UserRecord:
    """Everything stored about one user, parsed."""

    user_id: str
    profile: UserProfile | None
    registered_at_ms: int | None
    unsubscribed_at_ms: int | None
    rev: str
    actions: dict[str, ActionStats]
    steps: dict[str, StepState]
    jobs: dict[str, EmailJob] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    suppressed_at_ms: int | None = None
    suppression: str | None = None

    @property
    def known(self) -> bool:
        return self.profile is not None or bool(self.actions) or bool(self.steps)


@dataclass(frozen=True, slots=True)
class Attempt:
    """An email job about to be sent, and what decides whether it may be."""

    job: EmailJob | None  # None: its user was deleted
    previous_attempts: int = 0
    first_reached_at_ms: int | None = None  # the first attempt that may have reached Resend
    unsubscribed: bool = False
    suppressed: bool = False

    @property
    def stop_reason(self) -> str | None:
        """Why no loop email may go to this user now: "unsubscribed", "suppressed", or None."""
        if self.unsubscribed:
            return "unsubscribed"
        return "suppressed" if self.suppressed else None


class Settled(StrEnum):
    """What `settle` did (settle.lua's one-word answers)."""

    SETTLED = "settled"
    GONE = "gone"  # the user was deleted meanwhile
    FINAL = "final"  # the job had already ended (sent, or ended under this lease): nothing written
    STALE = "stale"  # another worker holds the job now: nothing written


class Applied(StrEnum):
    """What `apply_decisions` did (apply.lua's one-word answers)."""

    APPLIED = "applied"
    CONFLICT = "conflict"  # the user changed since the snapshot: evaluate again
    STALE = "stale"  # another worker holds the evaluation now
    DELETED = "deleted"  # the user was deleted


@dataclass(frozen=True, slots=True)
class Claim:
    """Jobs claimed under one fenced lease (`token`), and when the schedule next needs a look."""

    job_ids: list[str]
    wake_at_ms: int | None
    token: str = ""
    shard: int = 0


@dataclass(frozen=True, slots=True)
class StatsReply:
    """The dashboard's counters as stored: per loop, per day, and the dead-letter set."""

    loops: dict[str, dict[str, int]]
    days: dict[str, dict[str, int]]
    dead_count: int
    dead_ids: list[str]


class UserWrite(StrEnum):
    """What a Clerk user event did to storage (the scripts' one-word answers)."""

    CREATED = "created"
    UPDATED = "updated"
    STALE = "stale"
    DELETED = "deleted"
    TOMBSTONED = "tombstoned"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class StoredUser:
    profile: UserProfile
    version_ms: int
    registered_at_ms: int | None


def outbox_prefix(user_id: str) -> str:
    """How the user's outbox entries begin, as `json.dumps` writes them (`delivery` puts the job
    id first), so `user.deleted` finds them without decoding every entry."""
    return '{"job":' + json.dumps(email_id_prefix(user_id))[:-1]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def parse_snapshot(user_id: str, reply: Sequence[Any]) -> UserRecord:
    (
        (profile, _version, registered_at, unsubscribed_at, suppressed_at, suppression),
        activity,
        loops,
        jobs,
        timeline,
        deleted,
    ) = reply
    fields = _pairs(activity)
    return UserRecord(
        user_id=user_id,
        profile=UserProfile.model_validate_json(profile) if profile else None,
        registered_at_ms=int_or_none(registered_at),
        unsubscribed_at_ms=int_or_none(unsubscribed_at),
        rev=fields.get("rev", "0"),
        actions=parse_activity(fields),
        steps={name: StepState.model_validate_json(raw) for name, raw in _pairs(loops).items()},
        jobs={job_id: EmailJob.model_validate_json(raw) for job_id, raw in _pairs(jobs).items()},
        timeline=[json.loads(line) for line in timeline],
        deleted=bool(deleted),
        suppressed_at_ms=int_or_none(suppressed_at),
        suppression=suppression,
    )


def parse_activity(fields: Mapping[str, str]) -> dict[str, ActionStats]:
    """`n:<a>`, `first:<a>`, `last:<a>`, `ts:<a>` and `at:<a>:<n>` fields into per-action stats.

    `ts:<a>` (the earliest times, ascending) says when each count was reached by time; `at:<a>:<n>`
    serves the counts it does not hold (an upper bound; from older data, the n-th to arrive).
    """
    bounds: dict[str, dict[int, int]] = {}
    for name, value in fields.items():
        if name.startswith("at:"):
            action, _, count = name[3:].rpartition(":")
            bounds.setdefault(action, {})[int(count)] = int(value)
    return {
        name[2:]: _action_stats(name[2:], int(value), fields, bounds.get(name[2:], {}))
        for name, value in fields.items()
        if name.startswith("n:")
    }


def _action_stats(
    action: str, count: int, fields: Mapping[str, str], bounds: Mapping[int, int]
) -> ActionStats:
    ranked = fields.get(f"ts:{action}")
    by_time = {n: int(at) for n, at in enumerate(ranked.split(","), 1)} if ranked else {}
    return ActionStats(
        count=count,
        first_at=int_or_none(fields.get(f"first:{action}")),
        last_at=int_or_none(fields.get(f"last:{action}")),
        reached_at={**bounds, **by_time},
    )
