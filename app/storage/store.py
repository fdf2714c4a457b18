"""The storage layer: typed domain methods over one `Connection`, each one round trip.

Every read-decide-write is one Lua script from `app/storage/lua/` (EVALSHA, EVAL when the server
does not know it yet), so the three transports behave the same and each request costs one round
trip.
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, TypeVar

from app.delivery.jobs import EmailJob, JobStatus
from app.engine.evaluate import ActionStats, StepState
from app.engine.funnel import Counter, parse_counters, send_counter, utc_day
from app.errors import StorageError
from app.intake.users import UserProfile
from app.storage.connections import Connection, NoScript
from app.storage.keys import DAILY_TTL_S, OUTBOX_LENGTH, TIMELINE_LENGTH, Keys, eval_job, job_user
from app.storage.wire import CommandArg

logger = logging.getLogger(__name__)

AnswerT = TypeVar("AnswerT", bound=StrEnum)

# Upstash refuses a request over 1 MB (its smallest plan's limit); stay well under it.
MAX_SCRIPT_PAYLOAD_BYTES = 512 * 1024
# Each action keeps its earliest occurred-at times up to the largest count a loop waits for, so
# the n-th action by time is exact; past this many (14 bytes each, read by every evaluation) a
# count's time is the latest action's when it was reached, an upper bound (record_actions.lua).
MAX_RANKED_TIMES = 1000


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script from `app/storage/lua/<name>.lua`, with its SHA1 for EVALSHA."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> "Script":
        source = resources.files("app.storage").joinpath("lua", f"{name}.lua").read_text("utf-8")
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


RECORD_USER = Script.load("record_user")
DELETE_USER = Script.load("delete_user")
RECORD_ACTIONS = Script.load("record_actions")
SNAPSHOT = Script.load("snapshot")
APPLY = Script.load("apply")
CLAIM = Script.load("claim")
RENEW = Script.load("renew")
BEGIN_ATTEMPT = Script.load("begin_attempt")
SETTLE = Script.load("settle")
UNSUBSCRIBE = Script.load("unsubscribe")
RETRY_DEAD = Script.load("retry_dead")
STATS = Script.load("stats")
EMAIL_EVENT = Script.load("email_event")
UNSUPPRESS = Script.load("unsuppress")
LOGIN_FAILURES = Script.load("login_failures")


def timeline_entry(at_ms: int, event: str, **details: Any) -> str:
    """One timeline line: when, what, and the details that matter (JSON)."""
    return json.dumps({"at": at_ms, "event": event, **details}, separators=(",", ":"))


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


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    DROPPED = "dropped"
    DEFER = "defer"  # the attempt never reached Resend: queued again, not counted as an attempt


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


class Store:
    """Typed access to everything the service keeps in Redis."""

    def __init__(
        self,
        conn: Connection,
        keys: Keys,
        *,
        webhook_dedupe_ttl_s: int,
        action_dedupe_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.webhook_dedupe_ttl_s = webhook_dedupe_ttl_s
        self.action_dedupe_ttl_s = action_dedupe_ttl_s

    def __repr__(self) -> str:
        return f"Store(kind={self.conn.kind.value}, prefix={self.keys.prefix!r})"

    async def run(self, script: Script, keys: list[str], args: list[CommandArg]) -> Any:
        """Run a script in one round trip; the first run on a fresh server costs a second."""
        try:
            return await self.conn.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScript:
            logger.info("loading script %s into the server", script.name)
            return await self.conn.call("EVAL", script.source, len(keys), *keys, *args)

    async def ping(self) -> None:
        await self.conn.call("PING")

    async def server_time_ms(self) -> int:
        """Redis's own clock (TIME), epoch ms: the one clock every process of the service keeps."""
        seconds, micros = await self.conn.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    async def close(self) -> None:
        await self.conn.close()

    async def record_user(
        self, delivery_id: str, profile: UserProfile, *, created: bool, version_ms: int, now_ms: int
    ) -> UserWrite:
        """Store the profile of `user.created` (created=True) or `user.updated`, once."""
        uid = profile.id
        keys = [
            self.keys.user(uid),
            self.keys.tombstone(uid),
            self.keys.webhook_seen(uid, delivery_id),
            self.keys.activity(uid),
            self.keys.timeline(uid),
            self.keys.schedule,
        ]
        kind = "created" if created else "updated"
        entry = timeline_entry(now_ms, f"user.{kind}", delivery=delivery_id)
        args: list[CommandArg] = [
            profile.model_dump_json(),
            version_ms,
            kind,
            now_ms,
            self.webhook_dedupe_ttl_s,
            entry,
            TIMELINE_LENGTH,
            eval_job(uid),
        ]
        return _as_write(RECORD_USER, await self.run(RECORD_USER, keys, args))

    async def delete_user(self, delivery_id: str, user_id: str, *, now_ms: int) -> UserWrite:
        """Remove the user's personal data and leave a tombstone, once per delivery."""
        keys = [
            self.keys.tombstone(user_id),
            self.keys.webhook_seen(user_id, delivery_id),
            self.keys.schedule,
            self.keys.leases,
            self.keys.jobs(user_id),
            self.keys.suppressed,
            self.keys.lease_tokens,
            self.keys.outbox,
            *self.keys.personal(user_id),
        ]
        args: list[CommandArg] = [
            now_ms,
            self.webhook_dedupe_ttl_s,
            eval_job(user_id),
            user_id,
            outbox_prefix(user_id),
        ]
        reply = await self.run(DELETE_USER, keys, args)
        return _as_write(DELETE_USER, reply)

    async def get_user(self, user_id: str) -> StoredUser | None:
        fields = ("profile", "version", "registered_at")
        reply = await self.conn.call("HMGET", self.keys.user(user_id), *fields)
        profile, version, registered_at = reply
        if profile is None:
            return None
        return StoredUser(
            profile=UserProfile.model_validate_json(profile),
            version_ms=int(version),
            registered_at_ms=int(registered_at) if registered_at is not None else None,
        )

    async def record_actions(
        self, actions: Sequence[NewAction], *, now_ms: int, tracked: Mapping[str, Iterable[int]]
    ) -> tuple[int, int]:
        """Record actions once per client id; returns (accepted, duplicates).

        One round trip, unless the batch is larger than one request may be (Upstash refuses
        requests over 1 MB): then one per `MAX_SCRIPT_PAYLOAD_BYTES` of it.
        """
        accepted = duplicates = 0
        for keys, args in self._action_chunks(actions, tracked):
            header: list[CommandArg] = [now_ms, self.action_dedupe_ttl_s, TIMELINE_LENGTH]
            added, repeated = await self.run(
                RECORD_ACTIONS, [*keys, self.keys.schedule], [*header, *args]
            )
            accepted, duplicates = accepted + int(added), duplicates + int(repeated)
        return accepted, duplicates

    def _action_chunks(
        self, actions: Sequence[NewAction], tracked: Mapping[str, Iterable[int]]
    ) -> Iterator[tuple[list[str], list[CommandArg]]]:
        keys: list[str] = []
        args: list[CommandArg] = []
        size = 0
        for action in actions:
            action_keys = self._action_keys(action)
            action_args = self._action_args(action, tracked.get(action.action, ()))
            action_size = sum(len(str(part)) for part in (*action_keys, *action_args))
            if keys and size + action_size > MAX_SCRIPT_PAYLOAD_BYTES:
                yield keys, args
                keys, args, size = [], [], 0
            keys, args, size = keys + action_keys, args + action_args, size + action_size
        if keys:
            yield keys, args

    def _action_keys(self, action: NewAction) -> list[str]:
        uid = action.user_id
        marker = self.keys.action_seen(uid, action.id) if action.id else self.keys.activity(uid)
        return [marker, self.keys.tombstone(uid), self.keys.activity(uid), self.keys.timeline(uid)]

    def _action_args(self, action: NewAction, counts: Iterable[int]) -> list[CommandArg]:
        details = {"action": action.action, "id": action.id, "properties": action.properties or {}}
        entry = timeline_entry(action.occurred_at_ms, "action", **details)
        ordered = sorted(counts)
        return [
            "1" if action.id else "0",
            action.action,
            action.occurred_at_ms,
            min(ordered[-1], MAX_RANKED_TIMES) if ordered else 0,
            ",".join(str(count) for count in ordered),
            entry,
            eval_job(action.user_id),
        ]

    async def snapshot(self, user_id: str, *, full: bool = False) -> UserRecord:
        """One user's stored state in one round trip (jobs and timeline only when `full`)."""
        keys = [
            self.keys.user(user_id),
            self.keys.activity(user_id),
            self.keys.loops(user_id),
            self.keys.jobs(user_id),
            self.keys.timeline(user_id),
            self.keys.tombstone(user_id),
        ]
        reply = await self.run(SNAPSHOT, keys, ["full" if full else "engine"])
        return parse_snapshot(user_id, reply)

    async def apply_decisions(
        self,
        user_id: str,
        *,
        rev: str,
        states: Mapping[str, StepState],
        jobs: Sequence[EmailJob],
        timeline: Sequence[str],
        wake_at_ms: int | None,
        counters: Sequence[Counter] = (),
        token: str = "",
    ) -> Applied:
        """Write the engine's decisions unless the user changed meanwhile, was deleted, or the
        evaluation's lease (`token`; "" = none held) was taken over."""
        keys = [
            self.keys.activity(user_id),
            self.keys.loops(user_id),
            self.keys.jobs(user_id),
            self.keys.timeline(user_id),
            self.keys.schedule,
            self.keys.leases,
            self.keys.tombstone(user_id),
            self.keys.lease_tokens,
        ]
        stats_keys = list(dict.fromkeys(self.keys.stats(counter.loop_id) for counter in counters))
        keys += stats_keys
        args: list[CommandArg] = [rev, eval_job(user_id), wake_at_ms or "", TIMELINE_LENGTH, token]
        args.append(len(states))
        for name, state in states.items():
            args += [name, state.model_dump_json()]
        args.append(len(jobs))
        for job in jobs:
            args += [job.id, job.model_dump_json(), job.due_at]
        args += [len(timeline), *timeline, len(counters)]
        for counter in counters:
            args += [
                stats_keys.index(self.keys.stats(counter.loop_id)) + 1,
                counter.field,
                counter.by,
            ]
        return _as_enum(Applied, APPLY, await self.run(APPLY, keys, args))

    def _lease_keys(self) -> list[str]:
        return [self.keys.schedule, self.keys.leases, self.keys.lease_tokens, self.keys.lease_seq]

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int) -> Claim:
        """Take due jobs under one fenced lease (expired leases first go back on the schedule)."""
        args: list[CommandArg] = [now_ms, lease_ms, limit]
        wake_at, token, *job_ids = await self.run(CLAIM, self._lease_keys(), args)
        return Claim(
            job_ids=[str(job) for job in job_ids],
            wake_at_ms=_int_or_none(wake_at),
            token=str(token) if token is not None else "",
        )

    async def renew_leases(
        self, job_ids: Sequence[str], *, token: str, now_ms: int, lease_ms: int
    ) -> int:
        """Extend the leases of a claim's jobs still in hand; returns how many were extended."""
        if not job_ids:
            return 0
        keys = [self.keys.leases, self.keys.lease_tokens]
        args: list[CommandArg] = [now_ms + lease_ms, token, *job_ids]
        return int(await self.run(RENEW, keys, args))

    async def begin_attempt(self, job_id: str, *, token: str, now_ms: int) -> Attempt | None:
        """Count one send attempt under the lease `token`; None when another worker holds the job
        now (do nothing), an `Attempt` without a job when its user was deleted."""
        uid = job_user(job_id)
        keys = [
            self.keys.jobs(uid),
            self.keys.attempts(uid),
            self.keys.user(uid),
            self.keys.leases,
            self.keys.lease_tokens,
        ]
        status, *reply = await self.run(BEGIN_ATTEMPT, keys, [job_id, now_ms, token])
        if status == "stale":
            return None
        if status == "gone":
            return Attempt(job=None)
        job, before, first, unsubscribed, suppressed = reply
        return Attempt(
            job=EmailJob.model_validate_json(job),
            previous_attempts=int(before),
            first_reached_at_ms=_int_or_none(first),
            unsubscribed=unsubscribed is not None,
            suppressed=suppressed is not None,
        )

    async def settle(
        self,
        job: EmailJob,
        outcome: Outcome,
        *,
        now_ms: int,
        retry_at_ms: int | None = None,
        outbox_entry: str = "",
        token: str = "",
        attempt_started_at_ms: int | None = None,
    ) -> Settled:
        """Record the job's outcome under the lease `token` ("" = none held) and release it.

        A send lands whatever the lease (it happened); any other outcome only from the lease's
        holder, and nothing overwrites a sent job (see settle.lua). `attempt_started_at_ms`, with
        DEFER: the attempt that never reached Resend, which is then not counted."""
        uid = job.user_id
        keys = [
            self.keys.jobs(uid),
            self.keys.leases,
            self.keys.schedule,
            self.keys.dead,
            self.keys.timeline(uid),
            self.keys.outbox,
            self.keys.stats(job.loop_id),
            self.keys.daily(utc_day(now_ms)),
            self.keys.lease_tokens,
            self.keys.attempts(uid),
        ]
        entry = timeline_entry(
            now_ms,
            f"email.{job.status.value}",
            email=job.id,
            attempts=job.attempts,
            error=job.last_error,
        )
        args: list[CommandArg] = [
            job.id,
            job.model_dump_json(),
            outcome.value,
            retry_at_ms or "",
            now_ms,
            entry,
            TIMELINE_LENGTH,
            outbox_entry,
            OUTBOX_LENGTH,
            job.loop_id,
            send_counter(job),
            DAILY_TTL_S,
            token,
            attempt_started_at_ms if attempt_started_at_ms is not None else "",
        ]
        return _as_enum(Settled, SETTLE, await self.run(SETTLE, keys, args))

    async def unsubscribe(self, user_id: str, *, now_ms: int) -> int | None:
        """Stop loop email for the user; queued jobs are dropped. Returns how many, or None when
        the user is deleted or not stored (then nothing is written)."""
        record = await self.snapshot(user_id, full=True)
        keys = [
            self.keys.user(user_id),
            self.keys.jobs(user_id),
            self.keys.schedule,
            self.keys.timeline(user_id),
            self.keys.tombstone(user_id),
        ]
        args: list[CommandArg] = [now_ms, timeline_entry(now_ms, "unsubscribed"), TIMELINE_LENGTH]
        for job in record.jobs.values():
            if not job.terminal:
                dropped = job.model_copy(
                    update={"status": JobStatus.DROPPED, "last_error": "unsubscribed"}
                )
                args += [job.id, dropped.model_dump_json()]
        dropped_count = int(await self.run(UNSUBSCRIBE, keys, args))
        return None if dropped_count < 0 else dropped_count

    async def dead_jobs(self, limit: int = 100) -> list[EmailJob]:
        """Dead-letter jobs, oldest first, with their last error."""
        job_ids = await self.conn.call("ZRANGE", self.keys.dead, 0, limit - 1)
        jobs = []
        for job_id in job_ids:
            raw = await self.conn.call("HGET", self.keys.jobs(job_user(job_id)), job_id)
            if raw is not None:
                jobs.append(EmailJob.model_validate_json(raw))
        return jobs

    async def retry_dead(self, job: EmailJob, *, now_ms: int) -> bool:
        """Queue a dead-letter job again, attempts reset; False when it was not dead."""
        uid = job.user_id
        again = job.model_copy(update={"status": JobStatus.QUEUED, "attempts": 0, "due_at": now_ms})
        keys = [self.keys.dead, self.keys.schedule, self.keys.jobs(uid), self.keys.attempts(uid)]
        return bool(await self.run(RETRY_DEAD, keys, [job.id, again.model_dump_json(), now_ms]))

    async def read_stats(
        self, loop_ids: Sequence[str], days: Sequence[str], *, dead_limit: int = 1000
    ) -> "StatsReply":
        """Every loop's counters, the daily hashes and the dead-letter ids, in one round trip."""
        keys = [self.keys.dead]
        keys += [self.keys.stats(loop_id) for loop_id in loop_ids]
        keys += [self.keys.daily(day) for day in days]
        count, dead_ids, *hashes = await self.run(STATS, keys, [dead_limit])
        parsed = [parse_counters(flat) for flat in hashes]
        return StatsReply(
            loops=dict(zip(loop_ids, parsed[: len(loop_ids)], strict=True)),
            days=dict(zip(days, parsed[len(loop_ids) :], strict=True)),
            dead_count=int(count),
            dead_ids=[str(job_id) for job_id in dead_ids],
        )

    async def get_job(self, job_id: str) -> EmailJob | None:
        raw = await self.conn.call("HGET", self.keys.jobs(job_user(job_id)), job_id)
        return None if raw is None else EmailJob.model_validate_json(raw)

    async def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """Emails written to the outbox (no Resend key), newest first."""
        entries = await self.conn.call("LRANGE", self.keys.outbox, 0, limit - 1)
        return [json.loads(entry) for entry in entries]

    async def is_deleted(self, user_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.tombstone(user_id)))

    async def schedule_size(self) -> int:
        """Jobs on the schedule (due or not): the queue depth."""
        return int(await self.conn.call("ZCARD", self.keys.schedule))

    async def dead_letter_count(self) -> int:
        return int(await self.conn.call("ZCARD", self.keys.dead))

    async def record_email_event(self, event: EmailEvent, *, now_ms: int) -> str:
        """Put a Resend event on the user's timeline once per delivery, suppressing on a hard
        bounce or complaint; returns the script's one-word outcome (see email_event.lua)."""
        uid = event.user_id
        keys = [
            self.keys.user(uid),
            self.keys.tombstone(uid),
            self.keys.webhook_seen(uid, event.delivery_id),
            self.keys.timeline(uid),
            self.keys.suppressed,
        ]
        reason = event.suppression or ""
        args: list[CommandArg] = [
            now_ms,
            self.webhook_dedupe_ttl_s,
            event.timeline_entry(now_ms),
            TIMELINE_LENGTH,
            reason,
            uid,
            timeline_entry(now_ms, "suppressed", reason=reason, email=event.job_id),
        ]
        return str(await self.run(EMAIL_EVENT, keys, args))

    async def unsuppress(self, user_id: str, *, now_ms: int) -> bool:
        """Lift the user's suppression; False when they were not suppressed."""
        keys = [self.keys.user(user_id), self.keys.timeline(user_id), self.keys.suppressed]
        entry = timeline_entry(now_ms, "unsuppressed")
        return bool(await self.run(UNSUPPRESS, keys, [user_id, entry, TIMELINE_LENGTH]))

    async def suppressed_users(self, limit: int = 1000) -> list[tuple[str, int]]:
        """(user id, suppressed at ms) pairs, oldest first: an operator's listing, one read per
        user (scores are not read: transports disagree on their shape)."""
        users = []
        for uid in await self.conn.call("ZRANGE", self.keys.suppressed, 0, limit - 1):
            at = await self.conn.call("HGET", self.keys.user(str(uid)), "suppressed_at")
            if at is not None:
                users.append((str(uid), int(at)))
        return users

    async def revoke_session(self, session_id: str, *, ttl_ms: int) -> None:
        """A dashboard session logged out: refused from now until it would have expired."""
        key = self.keys.session_revoked(session_id)
        await self.conn.call("SET", key, "1", "PX", max(ttl_ms, 1))

    async def session_revoked(self, session_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.session_revoked(session_id)))

    async def login_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        """Failed dashboard logins from `client` in the current window, and ms until it ends."""
        return await self._login_failures("read", client, window_ms)

    async def count_login_failure(self, client: str, *, window_ms: int) -> tuple[int, int]:
        """One more failed login from `client` (the first starts a window); the new count."""
        return await self._login_failures("count", client, window_ms)

    async def _login_failures(self, mode: str, client: str, window_ms: int) -> tuple[int, int]:
        keys = [self.keys.login_failures(client)]
        failures, left_ms = await self.run(LOGIN_FAILURES, keys, [mode, window_ms])
        return int(failures), int(left_ms)


def _as_write(script: Script, reply: object) -> UserWrite:
    return _as_enum(UserWrite, script, reply)


def _as_enum(kind: type[AnswerT], script: Script, reply: object) -> AnswerT:
    """A script's one-word answer as its enum; anything else is a bug: StorageError."""
    try:
        return kind(str(reply))
    except ValueError:
        raise StorageError(f"script {script.name} answered {reply!r}") from None


def outbox_prefix(user_id: str) -> str:
    """How the user's outbox entries begin, as `json.dumps` writes them (`delivery` puts the job
    id first), so `user.deleted` finds them without decoding every entry."""
    return '{"job":' + json.dumps(f"email|{user_id}|")[:-1]


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


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
        registered_at_ms=_int_or_none(registered_at),
        unsubscribed_at_ms=_int_or_none(unsubscribed_at),
        rev=fields.get("rev", "0"),
        actions=parse_activity(fields),
        steps={name: StepState.model_validate_json(raw) for name, raw in _pairs(loops).items()},
        jobs={job_id: EmailJob.model_validate_json(raw) for job_id, raw in _pairs(jobs).items()},
        timeline=[json.loads(line) for line in timeline],
        deleted=bool(deleted),
        suppressed_at_ms=_int_or_none(suppressed_at),
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
        first_at=_int_or_none(fields.get(f"first:{action}")),
        last_at=_int_or_none(fields.get(f"last:{action}")),
        reached_at={**bounds, **by_time},
    )
