"""The durable schedule: users' turns claimed under leases (the schedule entry's own score),
renewed while in hand, the engine's decisions applied with the attempts they begin, attempts
settled, dead letters listed and retried."""

from collections.abc import Mapping, Sequence
from typing import Any

from app.delivery.jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState
from app.engine.funnel import Counter, kept_days_from, sent_field, utc_day
from app.engine.job_ids import evaluation_id
from app.storage import keys as k
from app.storage.keys import OUTBOX_LENGTH
from app.storage.reads import read_job
from app.storage.records import Applied, Claim, Settled, encode_job, encode_step
from app.storage.scripts import (
    APPLY,
    CLAIM,
    RENEW,
    RETRY_DEAD,
    SETTLE,
    ScriptRunner,
    as_enum,
)
from app.storage.wire import CommandArg

KEEP = "keep"  # settle: more of the turn's emails to settle, the lease stays


class Queue(ScriptRunner):
    """The queue aggregate: the shards' `schedule` (and its leases) and `dead` sets."""

    async def apply_decisions(
        self,
        user_id: str,
        *,
        rev: str,
        states: Mapping[str, StepState],
        jobs: Sequence[EmailJob],
        wake_at_ms: int | None,
        counters: Sequence[Counter] = (),
        token: str = "",
        lease_ms: int = 0,
        begun: bool = False,
    ) -> Applied:
        """Write the engine's decisions and `jobs` (new ones, and those whose attempt begins
        now) unless the user changed meanwhile, was deleted, or the turn's lease (`token`; "" =
        none held) was taken over. `begun`: attempts were begun, so the lease stays until they
        are settled; otherwise the user's next turn is at `wake_at_ms` (None: none)."""
        shard = self.keys.of_user(user_id)
        stats_keys = list(dict.fromkeys(shard.stats(counter.loop_id) for counter in counters))
        keys = [self.keys.user(user_id), shard.schedule, *stats_keys]
        fields: list[CommandArg] = []
        for name, state in states.items():
            fields += [k.step_field(name), encode_step(state)]
        for job in jobs:
            fields += [k.job_field(job.id), encode_job(job)]
        args: list[CommandArg] = [rev, evaluation_id(user_id), token, lease_ms, wake_at_ms or ""]
        args += ["1" if begun else "0", len(fields) // 2, *fields, len(counters)]
        for counter in counters:
            stats_key = stats_keys.index(shard.stats(counter.loop_id)) + 1
            args += [stats_key, counter.field, counter.by]
        return as_enum(Applied, APPLY, await self.run(APPLY, keys, args))

    async def next_due_ms(self, shard: int = 0) -> int | None:
        """When the shard's first turn is due (or its first lease runs out): one read, what an
        idle worker pays per look."""
        schedule = self.keys.shard(shard).schedule
        first = scored(await self.conn.call("ZRANGE", schedule, 0, 0, "WITHSCORES"))
        return first[0][1] if first else None

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int, shard: int = 0) -> Claim:
        """Take one shard's due turns under one lease, after one read says something is due."""
        due = await self.next_due_ms(shard)
        if due is None or due > now_ms:
            return Claim(job_ids=[], wake_at_ms=due, shard=shard)
        schedule = self.keys.shard(shard).schedule
        wake_at, token, *job_ids = await self.run(CLAIM, [schedule], [now_ms, lease_ms, limit])
        return Claim(
            job_ids=[str(job) for job in job_ids],
            wake_at_ms=_ms_or_none(wake_at),
            token=str(token) if token is not None else "",
            shard=shard,
        )

    async def renew_leases(
        self, claim: Claim, job_ids: Sequence[str], *, now_ms: int, lease_ms: int
    ) -> list[str]:
        """Extend the leases of a claim's turns still in hand; their new token is recorded in
        `claim.tokens`. Returns the turns extended (not those taken over meanwhile)."""
        if not job_ids:
            return []
        expiry = now_ms + lease_ms
        args: list[CommandArg] = [expiry, lease_ms]
        for job_id in job_ids:
            args += [job_id, claim.token_of(job_id)]
        schedule = self.keys.shard(claim.shard).schedule
        renewed = [str(job_id) for job_id in await self.run(RENEW, [schedule], args)]
        claim.tokens.update(dict.fromkeys(renewed, str(expiry)))
        return renewed

    async def settle(
        self,
        job: EmailJob,
        *,
        now_ms: int,
        seq: int,
        outbox_entry: str = "",
        token: str = "",
        lease_ms: int = 0,
        wake_at_ms: int | str | None = KEEP,
        action: str | None = None,
    ) -> Settled:
        """Record the job as it now is (its status says what happened; a queued job is tried
        again at its `due_at`) for its attempt `seq`, then set the user's next turn: `KEEP`
        (more of the turn's emails to settle), None (none) or when.

        A send lands whoever began the attempt (it happened); anything else only for the latest
        attempt, and nothing overwrites a sent job (see settle.lua). `action`: "defer" for an
        attempt that never reached Resend (the job says it was not counted)."""
        uid = job.user_id
        shard = self.keys.of_user(uid)
        keys = [self.keys.user(uid), shard.schedule, shard.dead, shard.outbox]
        keys.append(shard.stats(job.loop_id))
        args: list[CommandArg] = [k.job_field(job.id), encode_job(job)]
        args += [action or settle_action(job), now_ms, outbox_entry, OUTBOX_LENGTH]
        args += [sent_field(job.step, job.kind), utc_day(now_ms), kept_days_from(now_ms), seq]
        args += [job.id, evaluation_id(uid)]
        args += [token, lease_ms]
        args.append("" if wake_at_ms is None else wake_at_ms)
        return as_enum(Settled, SETTLE, await self.run(SETTLE, keys, args))

    async def dead_jobs(self, limit: int = 100) -> list[EmailJob]:
        """Dead-letter jobs, every shard's, oldest first, with their last error."""
        jobs = []
        for shard in self.keys.shards():
            for job_id in await self.conn.call("ZRANGE", shard.dead, 0, limit - 1):
                if (job := await read_job(self.conn, self.keys, str(job_id))) is not None:
                    jobs.append(job)
        return sorted(jobs, key=lambda job: job.due_at)[:limit]

    async def retry_dead(self, job: EmailJob, *, now_ms: int) -> bool:
        """Queue a dead-letter job again, attempts reset; False when it was not dead."""
        uid = job.user_id
        update = {"status": JobStatus.QUEUED, "attempts": 0, "due_at": now_ms, "ended_at": None}
        update |= {"first_attempt_at": None, "started_at": None, "batch": None}
        again = job.model_copy(update=update)
        shard = self.keys.of_user(uid)
        keys = [shard.dead, shard.schedule, self.keys.user(uid)]
        args: list[CommandArg] = [job.id, k.job_field(job.id), encode_job(again), now_ms]
        args.append(evaluation_id(uid))
        return bool(await self.run(RETRY_DEAD, keys, args))


def settle_action(job: EmailJob) -> str:
    """What settle.lua does: record a `sent`, `failed` or `dropped` job, or put a queued one
    back on the schedule (`retry`)."""
    return job.status.value if job.status is not JobStatus.QUEUED else "retry"


def scored(reply: Any) -> list[tuple[str, int]]:
    """ZRANGE ... WITHSCORES, whatever the transport made of it: (member, score) pairs, or a
    flat list of members and scores."""
    items = list(reply or ())
    if items and isinstance(items[0], list | tuple):
        return [(str(member), int(float(score))) for member, score in items]
    return [(str(m), int(float(s))) for m, s in zip(items[::2], items[1::2], strict=True)]


def _ms_or_none(value: object) -> int | None:
    return None if value is None else int(float(str(value)))
