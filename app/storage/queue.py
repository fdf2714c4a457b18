"""The durable schedule: jobs claimed under fenced leases, renewed while in hand, the engine's
decisions applied, email attempts begun and settled, dead letters listed and retried."""

from collections.abc import Mapping, Sequence

from app.delivery.jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState
from app.engine.funnel import Counter, send_counter, utc_day
from app.engine.job_ids import evaluation_id, user_of
from app.storage.keys import DAILY_TTL_S, OUTBOX_LENGTH, TIMELINE_LENGTH
from app.storage.records import Applied, Attempt, Claim, Settled, timeline_entry
from app.storage.scripts import (
    APPLY,
    BEGIN_ATTEMPT,
    CLAIM,
    RENEW,
    RETRY_DEAD,
    SETTLE,
    ScriptRunner,
    as_enum,
    int_or_none,
)
from app.storage.wire import CommandArg


class Queue(ScriptRunner):
    """The queue aggregate: `schedule`, `leases` and their tokens, `dead`, each job's attempts."""

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
        shard = self.keys.of_user(user_id)
        keys = [
            self.keys.activity(user_id),
            self.keys.loops(user_id),
            self.keys.jobs(user_id),
            self.keys.timeline(user_id),
            shard.schedule,
            shard.leases,
            self.keys.tombstone(user_id),
            shard.lease_tokens,
        ]
        stats_keys = list(dict.fromkeys(shard.stats(counter.loop_id) for counter in counters))
        keys += stats_keys
        args: list[CommandArg] = [rev, evaluation_id(user_id), wake_at_ms or "", TIMELINE_LENGTH]
        args += [token, *decision_args(states, jobs, timeline)]
        args.append(len(counters))
        for counter in counters:
            stats_key = stats_keys.index(shard.stats(counter.loop_id)) + 1
            args += [stats_key, counter.field, counter.by]
        return as_enum(Applied, APPLY, await self.run(APPLY, keys, args))

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int, shard: int = 0) -> Claim:
        """Take one shard's due jobs under one fenced lease (expired leases first go back on the
        schedule)."""
        keys = self.keys.shard(shard)
        lease_keys = [keys.schedule, keys.leases, keys.lease_tokens, keys.lease_seq]
        args: list[CommandArg] = [now_ms, lease_ms, limit]
        wake_at, token, *job_ids = await self.run(CLAIM, lease_keys, args)
        return Claim(
            job_ids=[str(job) for job in job_ids],
            wake_at_ms=int_or_none(wake_at),
            token=str(token) if token is not None else "",
            shard=shard,
        )

    async def renew_leases(
        self, job_ids: Sequence[str], *, token: str, now_ms: int, lease_ms: int, shard: int = 0
    ) -> int:
        """Extend the leases of a claim's jobs still in hand; returns how many were extended."""
        if not job_ids:
            return 0
        keys = [self.keys.shard(shard).leases, self.keys.shard(shard).lease_tokens]
        args: list[CommandArg] = [now_ms + lease_ms, token, *job_ids]
        return int(await self.run(RENEW, keys, args))

    async def begin_attempt(self, job_id: str, *, token: str, now_ms: int) -> Attempt | None:
        """Count one send attempt under the lease `token`; None when another worker holds the job
        now (do nothing), an `Attempt` without a job when its user was deleted."""
        uid = user_of(job_id)
        shard = self.keys.of_user(uid)
        keys = [
            self.keys.jobs(uid),
            self.keys.attempts(uid),
            self.keys.user(uid),
            shard.leases,
            shard.lease_tokens,
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
            first_reached_at_ms=int_or_none(first),
            unsubscribed=unsubscribed is not None,
            suppressed=suppressed is not None,
        )

    async def settle(
        self,
        job: EmailJob,
        *,
        now_ms: int,
        retry_at_ms: int | None = None,
        outbox_entry: str = "",
        token: str = "",
        deferred_attempt_ms: int | None = None,
    ) -> Settled:
        """Record the job as it now is (its status says what happened) under the lease `token`
        ("" = none held) and release it; a queued job goes back on the schedule at `retry_at_ms`.

        A send lands whatever the lease (it happened); anything else only from the lease's holder,
        and nothing overwrites a sent job (see settle.lua). `deferred_attempt_ms`: when the
        attempt began that never reached Resend, which is then not counted."""
        uid = job.user_id
        shard = self.keys.of_user(uid)
        keys = [
            self.keys.jobs(uid),
            shard.leases,
            shard.schedule,
            shard.dead,
            self.keys.timeline(uid),
            shard.outbox,
            shard.stats(job.loop_id),
            shard.daily(utc_day(now_ms)),
            shard.lease_tokens,
            self.keys.attempts(uid),
        ]
        action = settle_action(job, deferred=deferred_attempt_ms is not None)
        args: list[CommandArg] = [job.id, job.model_dump_json(), action, retry_at_ms or "", now_ms]
        args += [email_entry(job, now_ms), TIMELINE_LENGTH, outbox_entry, OUTBOX_LENGTH]
        args += [job.loop_id, send_counter(job.step, job.kind), DAILY_TTL_S, token]
        args.append(deferred_attempt_ms if deferred_attempt_ms is not None else "")
        return as_enum(Settled, SETTLE, await self.run(SETTLE, keys, args))

    async def dead_jobs(self, limit: int = 100) -> list[EmailJob]:
        """Dead-letter jobs, every shard's, oldest first, with their last error."""
        jobs = []
        for shard in self.keys.shards():
            for job_id in await self.conn.call("ZRANGE", shard.dead, 0, limit - 1):
                raw = await self.conn.call("HGET", self.keys.jobs(user_of(job_id)), job_id)
                if raw is not None:
                    jobs.append(EmailJob.model_validate_json(raw))
        return sorted(jobs, key=lambda job: job.due_at)[:limit]

    async def retry_dead(self, job: EmailJob, *, now_ms: int) -> bool:
        """Queue a dead-letter job again, attempts reset; False when it was not dead."""
        uid = job.user_id
        again = job.model_copy(update={"status": JobStatus.QUEUED, "attempts": 0, "due_at": now_ms})
        shard = self.keys.of_user(uid)
        keys = [shard.dead, shard.schedule, self.keys.jobs(uid), self.keys.attempts(uid)]
        return bool(await self.run(RETRY_DEAD, keys, [job.id, again.model_dump_json(), now_ms]))


def decision_args(
    states: Mapping[str, StepState], jobs: Sequence[EmailJob], timeline: Sequence[str]
) -> list[CommandArg]:
    """apply.lua's counted lists: the step states, the email jobs, the timeline entries."""
    args: list[CommandArg] = [len(states)]
    for name, state in states.items():
        args += [name, state.model_dump_json()]
    args.append(len(jobs))
    for job in jobs:
        args += [job.id, job.model_dump_json(), job.due_at]
    return [*args, len(timeline), *timeline]


def settle_action(job: EmailJob, *, deferred: bool) -> str:
    """What settle.lua does: record a `sent`, `failed` or `dropped` job, or put a queued one
    back on the schedule (`retry`, or `defer`: the attempt is not counted)."""
    if job.status is not JobStatus.QUEUED:
        return job.status.value
    return "defer" if deferred else "retry"


def email_entry(job: EmailJob, now_ms: int) -> str:
    """The timeline line of an email job's settling."""
    details = {"email": job.id, "attempts": job.attempts, "error": job.last_error}
    return timeline_entry(now_ms, f"email.{job.status.value}", **details)
