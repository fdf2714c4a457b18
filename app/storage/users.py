"""A user's profile and standing: Clerk's user events, unsubscribes, Resend's delivery events and
suppressions, each one script on the user's hash."""

from collections.abc import Iterable
from dataclasses import dataclass

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.job_ids import email_id_prefix, evaluation_id
from app.storage import keys as k
from app.storage.connections import Connection
from app.storage.keys import LOG_LENGTH, SEEN_LIMIT, Keys, oldest_minute, recent_entry
from app.storage.records import (
    EmailEvent,
    StoredUser,
    UserProfile,
    UserWrite,
    as_fields,
    encode_job,
    outbox_prefix,
    parse_user,
    timeline_entry,
)
from app.storage.redis_client import CommandArg
from app.storage.scripts import (
    DELETE_USER,
    EMAIL_EVENT,
    RECORD_USER,
    UNSUBSCRIBE,
    UNSUPPRESS,
    ScriptRunner,
    as_enum,
)


@dataclass(frozen=True, slots=True)
class SeenDelivery:
    """A webhook delivery as `seen` keeps it: its entry, the oldest minute kept, the most kept."""

    entry: str
    since_minute: int
    limit: int


class Users(ScriptRunner):
    """The users aggregate: one hash per user, each delivery applied once."""

    def __init__(self, conn: Connection, keys: Keys, *, webhook_dedupe_ttl_s: int) -> None:
        super().__init__(conn, keys)
        self.webhook_dedupe_ttl_s = webhook_dedupe_ttl_s

    def _seen(self, delivery_id: str, now_ms: int) -> SeenDelivery:
        """A delivery's `seen` entry, the oldest minute kept, and how many are kept."""
        since = oldest_minute(now_ms, self.webhook_dedupe_ttl_s)
        return SeenDelivery(recent_entry(delivery_id, now_ms), since, SEEN_LIMIT)

    async def record(
        self, delivery_id: str, profile: UserProfile, *, created: bool, version_ms: int, now_ms: int
    ) -> UserWrite:
        """Store the profile of `user.created` (created=True) or `user.updated`, once."""
        uid = profile.id
        shard = self.keys.of_user(uid)
        keys = [self.keys.user(uid), shard.schedule]
        # a signup is in `reg`; an update has no field of its own: its line says when
        line = "" if created else timeline_entry(now_ms, "user.updated", delivery=delivery_id)
        args = record_user_args(
            profile=profile.stored(), version_ms=version_ms, created=created, now_ms=now_ms,
            seen=self._seen(delivery_id, now_ms), turn=evaluation_id(uid), log_line=line,
        )  # fmt: skip
        return as_enum(UserWrite, RECORD_USER, await self.run(RECORD_USER, keys, args))

    async def delete(self, delivery_id: str, user_id: str, *, now_ms: int) -> UserWrite:
        """Remove the user's personal data and leave a tombstone, once per delivery."""
        shard = self.keys.of_user(user_id)
        keys = [self.keys.user(user_id), shard.schedule, shard.suppressed, shard.outbox, shard.dead]
        args = delete_user_args(
            now_ms=now_ms, seen=self._seen(delivery_id, now_ms), user_id=user_id
        )
        return as_enum(UserWrite, DELETE_USER, await self.run(DELETE_USER, keys, args))

    async def get(self, user_id: str) -> StoredUser | None:
        fields = (k.PROFILE, k.VERSION, k.REGISTERED)
        profile, version, registered_at = await self.conn.call(
            "HMGET", self.keys.user(user_id), *fields
        )
        if profile is None:
            return None
        return StoredUser(
            profile=UserProfile.model_validate_json(profile),
            version_ms=int(version),
            registered_at_ms=int(registered_at) if registered_at is not None else None,
        )

    async def is_deleted(self, user_id: str) -> bool:
        return bool(await self.conn.call("HEXISTS", self.keys.user(user_id), k.DELETED))

    async def unsubscribe(self, user_id: str, *, now_ms: int) -> int | None:
        """Stop loop email for the user; queued jobs are dropped. Returns how many, or None when
        the user is deleted or not stored (then nothing is written)."""
        fields = as_fields(await self.conn.call("HGETALL", self.keys.user(user_id)))
        record = parse_user(user_id, fields)
        args = unsubscribe_args(now_ms=now_ms, dropped=dropped_jobs(record.jobs.values(), now_ms))
        dropped_count = int(await self.run(UNSUBSCRIBE, [self.keys.user(user_id)], args))
        return None if dropped_count < 0 else dropped_count

    async def record_email_event(self, event: EmailEvent, *, now_ms: int) -> str:
        """Put a Resend event in the user's log once per delivery, suppressing on a hard bounce
        or complaint; returns the script's one-word outcome (see email_event.lua)."""
        uid = event.user_id
        keys = [self.keys.user(uid), self.keys.of_user(uid).suppressed]
        args = email_event_args(
            now_ms=now_ms, seen=self._seen(event.delivery_id, now_ms),
            log_line=event.timeline_entry(now_ms), suppression=event.suppression, user_id=uid,
        )  # fmt: skip
        return str(await self.run(EMAIL_EVENT, keys, args))

    async def unsuppress(self, user_id: str, *, now_ms: int) -> bool:
        """Lift the user's suppression; False when they were not suppressed."""
        keys = [self.keys.user(user_id), self.keys.of_user(user_id).suppressed]
        args = unsuppress_args(user_id=user_id, log_line=timeline_entry(now_ms, "unsuppressed"))
        return bool(await self.run(UNSUPPRESS, keys, args))

    async def suppressed(self, limit: int = 1000) -> list[tuple[str, int]]:
        """(user id, suppressed at ms) pairs, oldest first: an operator's listing, one read per
        user (scores are not read: transports disagree on their shape), every shard's."""
        users = []
        for shard in self.keys.shards():
            for uid in await self.conn.call("ZRANGE", shard.suppressed, 0, limit - 1):
                at = await self.conn.call("HGET", self.keys.user(str(uid)), k.SUPPRESSED)
                if at is not None:
                    users.append((str(uid), int(at)))
        return sorted(users, key=lambda pair: pair[1])[:limit]


def dropped_jobs(jobs: Iterable[EmailJob], now_ms: int) -> list[CommandArg]:
    """(field, the job as dropped) for each email not ended yet: what an unsubscribe drops (a
    webhook step's call tells the team, not the user: it goes on)."""
    pairs: list[CommandArg] = []
    for job in jobs:
        if not job.terminal and not job.is_webhook:
            update = {"status": JobStatus.DROPPED, "last_error": "unsubscribed", "ended_at": now_ms}
            pairs += [k.job_field(job.id), encode_job(job.model_copy(update=update))]
    return pairs


# --- the scripts' arguments, each in the order its header gives ---------------------------------


def record_user_args(
    *, profile: str, version_ms: int, created: bool, now_ms: int, seen: SeenDelivery, turn: str,
    log_line: str,
) -> list[CommandArg]:  # fmt: skip
    """record_user.lua's ARGV."""
    kind = "created" if created else "updated"
    return [profile, version_ms, kind, now_ms, seen.entry, seen.since_minute, seen.limit, turn,
            log_line, LOG_LENGTH]  # fmt: skip


def delete_user_args(*, now_ms: int, seen: SeenDelivery, user_id: str) -> list[CommandArg]:
    """delete_user.lua's ARGV."""
    return [now_ms, seen.entry, seen.since_minute, seen.limit, evaluation_id(user_id), user_id,
            outbox_prefix(user_id), email_id_prefix(user_id)]  # fmt: skip


def unsubscribe_args(*, now_ms: int, dropped: list[CommandArg]) -> list[CommandArg]:
    """unsubscribe.lua's ARGV: now, then (field, the job as dropped) pairs."""
    return [now_ms, *dropped]


def email_event_args(
    *, now_ms: int, seen: SeenDelivery, log_line: str, suppression: str | None, user_id: str
) -> list[CommandArg]:
    """email_event.lua's ARGV."""
    return [now_ms, seen.entry, seen.since_minute, seen.limit, log_line, LOG_LENGTH,
            suppression or "", user_id]  # fmt: skip


def unsuppress_args(*, user_id: str, log_line: str) -> list[CommandArg]:
    """unsuppress.lua's ARGV."""
    return [user_id, log_line, LOG_LENGTH]
