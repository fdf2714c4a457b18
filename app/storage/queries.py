"""What is read without a decision: one user's whole record, the dashboard's counters, a job, the
outbox, the queue's depth, and the server's clock and liveness."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.engine.email_jobs import EmailJob
from app.engine.funnel import funnel_view, parse_counters, split_days
from app.engine.job_ids import user_of
from app.storage import keys as k
from app.storage.connections import Connection
from app.storage.keys import OUTBOX_LENGTH, Keys, ShardKeys
from app.storage.records import (
    ANY_ENTRY,
    OutboxFilter,
    OutboxPage,
    StatsReply,
    UserRecord,
    as_fields,
    decode_job,
    parse_user,
)
from app.storage.redis_client import CommandArg
from app.storage.scripts import STATS, ScriptRunner

# Outbox entries read per LRANGE while looking for a filter's matches: the whole capped list
# (OUTBOX_LENGTH) in four reads at most.
OUTBOX_SCAN = 250


async def read_job(conn: Connection, keys: Keys, job_id: str) -> EmailJob | None:
    """An email job as stored (one HGET of its user's field); None when it is gone."""
    uid, name = user_of(job_id), k.job_field(job_id)
    raw = await conn.call("HGET", keys.user(uid), name)
    return None if raw is None else decode_job(uid, name, str(raw))


class Queries(ScriptRunner):
    """Reads across the aggregates, each one round trip."""

    async def ping(self) -> None:
        await self.conn.call("PING")

    async def server_time_ms(self) -> int:
        """Redis's own clock (TIME), epoch ms: the one clock every process of the service keeps."""
        seconds, micros = await self.conn.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    async def snapshot(self, user_id: str) -> UserRecord:
        """One user's stored state: one HGETALL of their hash."""
        reply = await self.conn.call("HGETALL", self.keys.user(user_id))
        return parse_user(user_id, as_fields(reply))

    async def read_stats(
        self, loop_ids: Sequence[str], days: Sequence[str], *, dead_limit: int = 1000
    ) -> StatsReply:
        """Every loop's counters, its emails of each of `days`, and the dead-letter ids: one round
        trip per shard (one on a single Redis), the shards' numbers added up. (The `daily` hashes
        are v1's, read until they expire.)"""
        replies = [
            await self._read_shard_stats(shard, loop_ids, days, dead_limit)
            for shard in self.keys.shards()
        ]
        return replies[0] if len(replies) == 1 else merge_stats(replies, dead_limit)

    async def _read_shard_stats(
        self, shard: ShardKeys, loop_ids: Sequence[str], days: Sequence[str], dead_limit: int
    ) -> StatsReply:
        keys = [shard.dead]
        keys += [shard.stats(loop_id) for loop_id in loop_ids]
        keys += [shard.daily(day) for day in days]
        count, dead_ids, *hashes = await self.run(STATS, keys, stats_args(dead_limit=dead_limit))
        parsed = [parse_counters(flat) for flat in hashes]
        per_day = {day: dict(legacy) for day, legacy in zip(days, parsed[len(loop_ids) :],
                                                              strict=True)}  # fmt: skip
        loops = {}
        for loop, stored in zip(loop_ids, parsed[: len(loop_ids)], strict=True):
            totals, counted = split_days(stored)
            loops[loop] = funnel_view(totals)
            for day in days:
                for event, value in counted.get(day, {}).items():
                    name = f"{loop}:{event}"
                    per_day[day][name] = per_day[day].get(name, 0) + value
        return StatsReply(
            loops=loops,
            days=per_day,
            dead_count=int(count),
            dead_ids=[str(job_id) for job_id in dead_ids],
        )

    async def stop_reason(self, job: EmailJob) -> str | None:
        """Why `job`'s attempt may no longer go out, read now (one HMGET): "deleted",
        "unsubscribed", "suppressed", "moved" (ended, or a newer attempt began); None when it
        still may. What a send checks again after waiting for a rate-limit slot."""
        fields = (k.DELETED, k.UNSUBSCRIBED, k.SUPPRESSED, k.job_field(job.id))
        deleted, unsubscribed, suppressed, raw = await self.conn.call(
            "HMGET", self.keys.user(job.user_id), *fields
        )
        if deleted is not None or raw is None:
            return "deleted"
        if unsubscribed is not None:
            return "unsubscribed"
        if suppressed is not None:
            return "suppressed"
        stored = decode_job(job.user_id, k.job_field(job.id), str(raw))
        return "moved" if stored.terminal or stored.seq != job.seq else None

    async def get_job(self, job_id: str) -> EmailJob | None:
        return await read_job(self.conn, self.keys, job_id)

    async def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """Emails written to the outbox (no Resend key), newest first, every shard's."""
        return (await self.outbox_page(0, limit)).entries

    async def outbox_page(
        self, offset: int, limit: int, only: OutboxFilter = ANY_ENTRY
    ) -> OutboxPage:
        """The outbox's entries matching `only`, newest first, from the `offset`th: `limit` of
        them, and whether more match. Unfiltered on one Redis, one LRANGE of the page. Else each
        shard in question (a user's only: theirs) is read from its newest, `OUTBOX_SCAN`
        entries at a time, until the page and one more are found or the capped list ends."""
        shards = [self.keys.of_user(only.user_id)] if only.user_id else list(self.keys.shards())
        if only.any and len(shards) == 1:
            entries = await self._outbox_range(shards[0].outbox, offset, limit + 1)
            return OutboxPage(entries[:limit], len(entries) > limit)
        found = []
        for shard in shards:
            found += await self._outbox_scan(shard.outbox, only, offset + limit + 1)
        if len(shards) > 1:
            found.sort(key=lambda entry: entry.get("at") or 0, reverse=True)
        return OutboxPage(found[offset : offset + limit], len(found) > offset + limit)

    async def _outbox_scan(self, key: str, only: OutboxFilter, wanted: int) -> list[dict[str, Any]]:
        """Up to `wanted` matching entries of one outbox list, newest first (at most
        OUTBOX_LENGTH / OUTBOX_SCAN reads: the list is capped)."""
        found: list[dict[str, Any]] = []
        for start in range(0, OUTBOX_LENGTH, OUTBOX_SCAN):
            chunk = await self._outbox_range(key, start, OUTBOX_SCAN)
            found += [entry for entry in chunk if only.matches(entry)]
            if len(found) >= wanted or len(chunk) < OUTBOX_SCAN:
                break
        return found[:wanted]

    async def _outbox_range(self, key: str, start: int, count: int) -> list[dict[str, Any]]:
        entries = await self.conn.call("LRANGE", key, start, start + count - 1)
        return [json.loads(entry) for entry in entries]

    async def schedule_size(self) -> int:
        """Users with a turn on the schedule (due or not), every shard's: the queue depth."""
        return sum([int(await self.conn.call("ZCARD", s.schedule)) for s in self.keys.shards()])

    async def dead_letter_count(self) -> int:
        return sum([int(await self.conn.call("ZCARD", s.dead)) for s in self.keys.shards()])


def merge_stats(replies: Sequence[StatsReply], dead_limit: int) -> StatsReply:
    """The shards' counters added up."""
    return StatsReply(
        loops=add_counters([reply.loops for reply in replies]),
        days=add_counters([reply.days for reply in replies]),
        dead_count=sum(reply.dead_count for reply in replies),
        dead_ids=[job_id for reply in replies for job_id in reply.dead_ids][:dead_limit],
    )


def add_counters(parts: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for part in parts:
        for name, counters in part.items():
            sums = total.setdefault(name, {})
            for field, value in counters.items():
                sums[field] = sums.get(field, 0) + value
    return total


def stats_args(*, dead_limit: int) -> list[CommandArg]:
    """stats.lua's ARGV."""
    return [dead_limit]
