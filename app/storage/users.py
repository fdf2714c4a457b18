"""A user's profile and standing: Clerk's user events, unsubscribes, Resend's delivery events and
suppressions, each one script."""

from collections.abc import Iterable

from app.delivery.jobs import EmailJob, JobStatus
from app.engine.job_ids import evaluation_id
from app.storage.connections import Connection
from app.storage.keys import TIMELINE_LENGTH, Keys
from app.storage.records import (
    EmailEvent,
    StoredUser,
    UserProfile,
    UserWrite,
    outbox_prefix,
    parse_snapshot,
    timeline_entry,
)
from app.storage.scripts import (
    DELETE_USER,
    EMAIL_EVENT,
    RECORD_USER,
    SNAPSHOT,
    UNSUBSCRIBE,
    UNSUPPRESS,
    ScriptRunner,
    as_enum,
)
from app.storage.wire import CommandArg


class Users(ScriptRunner):
    """The users aggregate: every key of one user, written once per delivery."""

    def __init__(self, conn: Connection, keys: Keys, *, webhook_dedupe_ttl_s: int) -> None:
        super().__init__(conn, keys)
        self.webhook_dedupe_ttl_s = webhook_dedupe_ttl_s

    async def record(
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
            self.keys.of_user(uid).schedule,
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
            evaluation_id(uid),
        ]
        return as_enum(UserWrite, RECORD_USER, await self.run(RECORD_USER, keys, args))

    async def delete(self, delivery_id: str, user_id: str, *, now_ms: int) -> UserWrite:
        """Remove the user's personal data and leave a tombstone, once per delivery."""
        shard = self.keys.of_user(user_id)
        keys = [
            self.keys.tombstone(user_id),
            self.keys.webhook_seen(user_id, delivery_id),
            shard.schedule,
            shard.leases,
            self.keys.jobs(user_id),
            shard.suppressed,
            shard.lease_tokens,
            shard.outbox,
            *self.keys.personal(user_id),
        ]
        args: list[CommandArg] = [
            now_ms,
            self.webhook_dedupe_ttl_s,
            evaluation_id(user_id),
            user_id,
            outbox_prefix(user_id),
        ]
        reply = await self.run(DELETE_USER, keys, args)
        return as_enum(UserWrite, DELETE_USER, reply)

    async def get(self, user_id: str) -> StoredUser | None:
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

    async def is_deleted(self, user_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.tombstone(user_id)))

    async def unsubscribe(self, user_id: str, *, now_ms: int) -> int | None:
        """Stop loop email for the user; queued jobs are dropped. Returns how many, or None when
        the user is deleted or not stored (then nothing is written)."""
        reply = await self.run(SNAPSHOT, self.keys.snapshot(user_id), ["full"])
        record = parse_snapshot(user_id, reply)
        keys = [
            self.keys.user(user_id),
            self.keys.jobs(user_id),
            self.keys.of_user(user_id).schedule,
            self.keys.timeline(user_id),
            self.keys.tombstone(user_id),
        ]
        args: list[CommandArg] = [now_ms, timeline_entry(now_ms, "unsubscribed"), TIMELINE_LENGTH]
        args += dropped_jobs(record.jobs.values())
        dropped_count = int(await self.run(UNSUBSCRIBE, keys, args))
        return None if dropped_count < 0 else dropped_count

    async def record_email_event(self, event: EmailEvent, *, now_ms: int) -> str:
        """Put a Resend event on the user's timeline once per delivery, suppressing on a hard
        bounce or complaint; returns the script's one-word outcome (see email_event.lua)."""
        uid = event.user_id
        keys = [
            self.keys.user(uid),
            self.keys.tombstone(uid),
            self.keys.webhook_seen(uid, event.delivery_id),
            self.keys.timeline(uid),
            self.keys.of_user(uid).suppressed,
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
        suppressed = self.keys.of_user(user_id).suppressed
        keys = [self.keys.user(user_id), self.keys.timeline(user_id), suppressed]
        entry = timeline_entry(now_ms, "unsuppressed")
        return bool(await self.run(UNSUPPRESS, keys, [user_id, entry, TIMELINE_LENGTH]))

    async def suppressed(self, limit: int = 1000) -> list[tuple[str, int]]:
        """(user id, suppressed at ms) pairs, oldest first: an operator's listing, one read per
        user (scores are not read: transports disagree on their shape), every shard's."""
        users = []
        for shard in self.keys.shards():
            for uid in await self.conn.call("ZRANGE", shard.suppressed, 0, limit - 1):
                at = await self.conn.call("HGET", self.keys.user(str(uid)), "suppressed_at")
                if at is not None:
                    users.append((str(uid), int(at)))
        return sorted(users, key=lambda pair: pair[1])[:limit]


def dropped_jobs(jobs: Iterable[EmailJob]) -> list[CommandArg]:
    """(job id, the job as dropped) for each job not ended yet: what an unsubscribe drops."""
    pairs: list[CommandArg] = []
    for job in jobs:
        if not job.terminal:
            dropped = job.model_copy(
                update={"status": JobStatus.DROPPED, "last_error": "unsubscribed"}
            )
            pairs += [job.id, dropped.model_dump_json()]
    return pairs
