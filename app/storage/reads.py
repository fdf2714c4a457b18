"""What is read without a decision: one user's whole record, the dashboard's counters, a job, the
outbox, the queue's depth, and the server's clock and liveness."""

import json
from collections.abc import Sequence
from typing import Any

from app.delivery.jobs import EmailJob
from app.engine.funnel import parse_counters
from app.engine.job_ids import user_of
from app.storage.records import StatsReply, UserRecord, parse_snapshot
from app.storage.scripts import SNAPSHOT, STATS, ScriptRunner


class Reads(ScriptRunner):
    """Reads across the aggregates, each one round trip."""

    async def ping(self) -> None:
        await self.conn.call("PING")

    async def server_time_ms(self) -> int:
        """Redis's own clock (TIME), epoch ms: the one clock every process of the service keeps."""
        seconds, micros = await self.conn.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    async def snapshot(self, user_id: str, *, full: bool = False) -> UserRecord:
        """One user's stored state in one round trip (jobs and timeline only when `full`)."""
        reply = await self.run(
            SNAPSHOT, self.keys.snapshot(user_id), ["full" if full else "engine"]
        )
        return parse_snapshot(user_id, reply)

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
        raw = await self.conn.call("HGET", self.keys.jobs(user_of(job_id)), job_id)
        return None if raw is None else EmailJob.model_validate_json(raw)

    async def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """Emails written to the outbox (no Resend key), newest first."""
        entries = await self.conn.call("LRANGE", self.keys.outbox, 0, limit - 1)
        return [json.loads(entry) for entry in entries]

    async def schedule_size(self) -> int:
        """Jobs on the schedule (due or not): the queue depth."""
        return int(await self.conn.call("ZCARD", self.keys.schedule))

    async def dead_letter_count(self) -> int:
        return int(await self.conn.call("ZCARD", self.keys.dead))
