"""What storage keeps and answers, as types: the stored profile, the user's record as one HGETALL
reads it (and the compact forms its fields take), the scripts' one-word answers, and the user's
timeline, built from what is stored."""

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import ActionStats, StepState, StepStatus
from app.engine.job_ids import JobId, email_id, email_id_prefix
from app.engine.loops import is_filtered
from app.storage import keys as k


def timeline_entry(at_ms: int, event: str, **details: Any) -> str:
    """One line of the user's `log` (JSON): when, what, and the details that matter."""
    return json.dumps({"at": at_ms, "event": event, **details}, separators=(",", ":"))


class UserProfile(BaseModel):
    """A user as stored (JSON in the user hash's `p`, defaults left out)."""

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

    def stored(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    def view(self) -> dict[str, Any]:
        """What audiences and variants may look at (`loops.PROFILE_FIELDS`, the metadata)."""
        return {
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "name": self.name,
            "username": self.username,
            "public_metadata": self.public_metadata,
            "unsafe_metadata": self.unsafe_metadata,
        }


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
    log: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    suppressed_at_ms: int | None = None
    suppression: str | None = None

    @property
    def known(self) -> bool:
        return self.profile is not None or bool(self.actions) or bool(self.steps)

    @property
    def timeline(self) -> list[dict[str, Any]]:
        """What happened to the user, newest first (`timeline_of`)."""
        return timeline_of(self)


@dataclass(frozen=True, slots=True)
class Attempt:
    """An email job in a worker's hands: begun (its attempt counted, `seq` its number) or ended
    already (it failed to render, or had no address), and what decides whether it may be sent."""

    job: EmailJob
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
    FINAL = "final"  # the job had already ended (sent, or ended under this attempt): unchanged
    STALE = "stale"  # a newer attempt was begun since: nothing written


class Applied(StrEnum):
    """What `apply_decisions` did (apply.lua's one-word answers)."""

    APPLIED = "applied"
    CONFLICT = "conflict"  # the user changed since the snapshot: evaluate again
    STALE = "stale"  # another worker holds the user's turn now
    DELETED = "deleted"  # the user was deleted


@dataclass(frozen=True, slots=True)
class Claim:
    """Schedule members claimed under one lease, and when the schedule next needs a look.
    `token`: the claim's number, drawn from the shard's fence counter: every write on behalf of
    the claim shows it, and passes only while the member's lease is still this claim's."""

    job_ids: list[str]
    wake_at_ms: int | None
    token: str = ""
    shard: int = 0


@dataclass(frozen=True, slots=True)
class Held:
    """A lease as its holder shows it: the schedule member and the claim's token for it ("":
    the caller acts for no claim, and passes only while nobody holds the member)."""

    member: str
    token: str = ""


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


def outbox_entry(job: EmailJob) -> str:
    """An email "sent" to the outbox (no Resend key), as `P:outbox` keeps it: JSON, the job id
    first (`outbox_prefix` finds a user's), then when and what went."""
    assert job.rendered is not None
    entry = {"job": job.id, "at": job.sent_at, **job.rendered.model_dump()}
    return json.dumps(entry, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class OutboxFilter:
    """Which outbox entries a page shows: one user's, one loop's, both, or (None) any."""

    user_id: str | None = None
    loop_id: str | None = None

    @property
    def any(self) -> bool:
        return self.user_id is None and self.loop_id is None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether an entry (`outbox_entry`, decoded) is one of these, read from its job id."""
        if self.any:
            return True
        try:
            job = JobId.parse(str(entry.get("job", "")))
        except ValueError:
            return False
        return self.user_id in (None, job.user_id) and self.loop_id in (None, job.loop_id)


ANY_ENTRY = OutboxFilter()


@dataclass(frozen=True, slots=True)
class OutboxPage:
    """One page of the outbox, newest first; `more`: older entries match past it."""

    entries: list[dict[str, Any]]
    more: bool


def outbox_prefix(user_id: str) -> str:
    """How the user's outbox entries begin (`outbox_entry`), so `user.deleted` finds them
    without decoding every entry."""
    return '{"job":' + json.dumps(email_id_prefix(user_id))[:-1]


# --- the user hash's fields ----------------------------------------------------------------------


def as_fields(reply: Any) -> dict[str, str]:
    """HGETALL's reply as a dict, whatever the transport made of it (a dict or a flat list)."""
    if isinstance(reply, Mapping):
        return {str(name): str(value) for name, value in reply.items()}
    items = [str(item) for item in reply or ()]
    return dict(zip(items[::2], items[1::2], strict=True))


def parse_user(user_id: str, fields: Mapping[str, str]) -> UserRecord:
    """The user hash (`keys` describes its fields) as a record."""
    profile = fields.get(k.PROFILE)
    return UserRecord(
        user_id=user_id,
        profile=UserProfile.model_validate_json(profile) if profile else None,
        registered_at_ms=_int(fields.get(k.REGISTERED)),
        unsubscribed_at_ms=_int(fields.get(k.UNSUBSCRIBED)),
        rev=fields.get(k.REV, "0"),
        actions={
            name.removeprefix(k.ACTION): parse_action(value)
            for name, value in fields.items()
            if name.startswith(k.ACTION)
        },
        steps={
            name.removeprefix(k.STEP): decode_step(user_id, name.removeprefix(k.STEP), value)
            for name, value in fields.items()
            if name.startswith(k.STEP)
        },
        jobs={
            k.job_id_of(user_id, name): decode_job(user_id, name, value)
            for name, value in fields.items()
            if name.startswith(k.JOB)
        },
        log=[json.loads(line) for line in fields.get(k.LOG, "").splitlines() if line],
        deleted=k.DELETED in fields,
        suppressed_at_ms=_int(fields.get(k.SUPPRESSED)),
        suppression=fields.get(k.SUPPRESSION),
    )


def parse_action(value: str) -> ActionStats:
    """`<count>,<first>,<last>[;<t1>,<t2>...[;<n>=<ms>,...]]` (record_actions.lua writes it).

    The listed times (offsets from <first>) are the earliest, ascending: the n-th is when the
    count reached n, by time;
    a `<n>=<ms>` bound serves a count the list does not hold (the latest time when it was
    reached)."""
    counts, _, rest = value.partition(";")
    ranked, _, bounds = rest.partition(";")
    count, first, last = counts.split(",")
    reached = {int(n): int(at) for n, _, at in (p.partition("=") for p in _items(bounds))}
    reached |= {n: int(first) + int(off) for n, off in enumerate(_items(ranked), 1)}
    return ActionStats(count=int(count), first_at=int(first), last_at=int(last), reached_at=reached)


def encode_step(state: StepState) -> str:
    """A step state as stored: `<status>,<started_at>,<deadline>,<met>,<decided>,<email kind>`
    and, for step 0 of a loop with arms, `,<arm>`; the three times as offsets from the start,
    empty when unknown. The email's job is the step's own (`email|<uid>|<loop>|<step>|<kind>`),
    so its kind names it; `h` says the email was held back (the user is in the holdout)."""
    start = state.started_at
    offsets = [_offset(at, start) for at in (state.deadline_at, state.met_at, state.decided_at)]
    kind = JobId.parse(state.email_job).kind if state.email_job else ""
    parts = [state.status.value, str(start), *offsets, HELD_OUT if state.held_out else kind or ""]
    return ",".join([*parts, state.arm] if state.arm else parts)


HELD_OUT = "h"


def decode_step(user_id: str, name: str, value: str) -> StepState:
    status, start, deadline, met, decided, kind, *arm = value.split(",")
    started_at = int(start)
    loop_id, _, step = name.rpartition("/")
    held_out = kind == HELD_OUT
    return StepState(
        status=StepStatus(status),
        started_at=started_at,
        deadline_at=_at(deadline, started_at),
        met_at=_at(met, started_at),
        decided_at=_at(decided, started_at),
        email_job=email_id(user_id, loop_id, int(step), kind) if kind and not held_out else None,
        arm=arm[0] if arm else None,
        held_out=held_out,
    )


def _offset(at: int | None, start: int) -> str:
    return "" if at is None else str(at - start)


def _at(offset: str, start: int) -> int | None:
    return None if offset == "" else start + int(offset)


# What a job's field name already says, and what a sent job no longer needs.
_NAMED = frozenset({"id", "user_id", "loop_id", "step", "kind"})
_SPENT = frozenset({"personalization", "started_at", "seq", "batch"})


def encode_job(job: EmailJob) -> str:
    """A job as stored in its `j:` field: JSON without what the field name says, a field that
    holds nothing (null), or a due time equal to when it was queued; every other field written,
    its default too (`status`, `seq`, `attempts`: the scripts read them and never guess), but an
    email's `channel` (no script reads it, and every user has emails). A sent job keeps no
    personalization (its rendered summary says what went out), and its summary only what it
    holds (no script reads inside it: empty parts cost every sent email 64 bytes)."""
    leave_out = _NAMED | (_SPENT if job.status is JobStatus.SENT else frozenset())
    leave_out |= {"channel"} if not job.is_webhook else frozenset()
    data = job.model_dump(mode="json", exclude=set(leave_out), exclude_none=True)
    if job.rendered is not None:
        data["rendered"] = job.rendered.model_dump(mode="json", exclude_defaults=True)
    if data.get("due_at") == job.queued_at:
        del data["due_at"]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def decode_job(user_id: str, field_name: str, value: str) -> EmailJob:
    job_id = JobId.parse(k.job_id_of(user_id, field_name))
    data = json.loads(value)
    named: dict[str, object] = {"id": str(job_id), "user_id": user_id}
    named |= {"loop_id": job_id.loop_id, "step": job_id.step, "kind": job_id.kind}
    return EmailJob.model_validate({"due_at": data.get("queued_at"), **data, **named})


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _items(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


# --- the timeline --------------------------------------------------------------------------------

# At one moment, what comes first: a signup, then actions, steps, emails, then the rest.
_RANK = {"user.created": 0, "user.updated": 1, "action": 2, "unsubscribed": 3, "suppressed": 3}
_STEP_RANK, _EMAIL_RANK, _OTHER_RANK = 4, 5, 6
_STEP_ORDER = {"waiting": 0, "fired": 1, "timed_out": 1, "closed": 1, "activated_late": 2}


def timeline_of(record: UserRecord) -> list[dict[str, Any]]:
    """What happened to the user, newest first: the `log`'s lines and what the other fields say
    (the signup, each action's recorded times, each step's moves, each email's end)."""
    logged = {(e.get("action"), e.get("at")) for e in record.log if e.get("event") == "action"}
    entries = [
        entry
        for entry in _derived(record)
        if entry["event"] != "action" or (entry["action"], entry["at"]) not in logged
    ]
    entries += record.log
    return sorted(entries, key=_order, reverse=True)


def _order(entry: Mapping[str, Any]) -> tuple[int, int, int, int]:
    event = str(entry["event"])
    if event.startswith("step."):
        index = int(str(entry.get("step", "/0")).rpartition("/")[2] or 0)
        return entry["at"], _STEP_RANK, index, _STEP_ORDER.get(event[5:], 3)
    sent = event.startswith(("email.", "webhook."))
    rank = _RANK.get(event, _EMAIL_RANK if sent else _OTHER_RANK)
    return entry["at"], rank, 0, 0


def _derived(record: UserRecord) -> Iterator[dict[str, Any]]:
    if record.registered_at_ms is not None:
        yield {"at": record.registered_at_ms, "event": "user.created"}
    for name, stats in record.actions.items():
        if not is_filtered(name):  # a filtered count repeats actions already there
            yield from _action_entries(name, stats)
    yield from _step_entries(record.steps)
    for job in record.jobs.values():
        ended = job.sent_at if job.status is JobStatus.SENT else job.ended_at
        if job.terminal and ended is not None:
            channel = job.channel.value  # `email.sent`, `webhook.failed`, ...
            yield {"at": ended, "event": f"{channel}.{job.status.value}", channel: job.id,
                   "attempts": job.attempts, "error": job.last_error}  # fmt: skip
        elif not job.terminal and job.held is not None and job.held_at is not None:
            yield {"at": job.held_at, "event": "email.held", "email": job.id,
                   "reason": job.held, "until": job.due_at}  # fmt: skip
    if record.unsubscribed_at_ms is not None:
        yield {"at": record.unsubscribed_at_ms, "event": "unsubscribed"}
    if record.suppressed_at_ms is not None:
        yield {"at": record.suppressed_at_ms, "event": "suppressed", "reason": record.suppression}


def _action_entries(name: str, stats: ActionStats) -> Iterator[dict[str, Any]]:
    """An action's known times: when each count a loop tracks was reached, the first and the
    latest (the counters keep no more)."""
    reached = dict(stats.reached_at)
    if 1 not in reached and stats.first_at is not None:
        reached[1] = stats.first_at
    if stats.count not in reached and stats.last_at is not None:
        reached[stats.count] = stats.last_at
    for count in sorted(reached):
        yield {"at": reached[count], "event": "action", "action": name, "count": count}


def _step_entries(steps: Mapping[str, StepState]) -> Iterable[dict[str, Any]]:
    """Each step's moves: waiting (when the step was set up: its trigger, or the previous step's
    decision), then fired or timed out, then a late activation (the condition met after). A
    closed step (its trigger's window ended first) never waited: it only closed."""
    for name, state in steps.items():
        loop_id, _, index = name.rpartition("/")
        previous = steps.get(f"{loop_id}/{int(index) - 1}") if index.isdigit() else None
        set_up = previous.decided_at if previous and previous.decided_at else state.started_at
        if state.status is not StepStatus.CLOSED:
            yield {"at": set_up, "event": "step.waiting", "step": name}
        if state.final and state.decided_at is not None:
            event = f"step.{state.status.value}"
            yield {"at": state.decided_at, "event": event, "step": name, "email": state.email_job}
        if state.status is StepStatus.TIMED_OUT and state.met_at is not None:
            yield {"at": state.met_at, "event": "step.activated_late", "step": name}
