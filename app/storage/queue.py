"""The durable schedule: users' turns claimed under fenced leases (a token per claim, checked by
every write made for it), renewed while in hand, the engine's decisions applied with the
attempts they begin, attempts settled, dead letters listed and retried."""

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from app.clock import utc_day
from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState
from app.engine.funnel import (
    EMAILS_FAILED,
    WEBHOOKS_FAILED,
    Counter,
    kept_days_from,
    sent_field,
    webhook_sent_field,
)
from app.engine.job_ids import batch_member, evaluation_id, is_evaluation, user_of
from app.storage import keys as k
from app.storage.keys import OUTBOX_LENGTH
from app.storage.queries import read_job
from app.storage.records import Applied, Claim, Held, Settled, encode_job, encode_step
from app.storage.redis_client import CommandArg
from app.storage.scripts import (
    APPLY,
    CLAIM,
    RENEW,
    RETRY_DEAD,
    SETTLE,
    ScriptRunner,
    as_enum,
)

KEEP = "keep"  # settle: more of the turn's emails to settle, the lease stays


class Queue(ScriptRunner):
    """The queue aggregate: the shards' `schedule` (its leases drawn from `fence`) and `dead`
    sets."""

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
        begun: bool = False,
    ) -> Applied:
        """Write the engine's decisions and `jobs` (new ones, and those whose attempt begins
        now) unless the user changed meanwhile, was deleted, or the turn's lease is no longer
        the claim's (`token`; "": acting for no claim). `begun`: attempts were begun, so the
        turn stays held until they are settled; otherwise it is released, its next at
        `wake_at_ms` (None: none)."""
        shard = self.keys.of_user(user_id)
        stats_keys = list(dict.fromkeys(shard.stats(counter.loop_id) for counter in counters))
        keys = [self.keys.user(user_id), shard.schedule, *stats_keys]
        fields: list[CommandArg] = []
        for name, state in states.items():
            fields += [k.step_field(name), encode_step(state)]
        for job in jobs:
            fields += [k.job_field(job.id), encode_job(job)]
        increments = [
            (stats_keys.index(shard.stats(counter.loop_id)) + 1, counter.field, counter.by)
            for counter in counters
        ]
        args = apply_args(
            rev=rev, turn=evaluation_id(user_id), token=token, wake_at_ms=wake_at_ms, begun=begun,
            fields=fields, increments=increments,
        )  # fmt: skip
        return as_enum(Applied, APPLY, await self.run(APPLY, keys, args))

    async def next_due_ms(self, shard: int = 0) -> int | None:
        """When the shard's first turn is due (or its first lease runs out): one read, what an
        idle worker pays per look."""
        schedule = self.keys.shard(shard).schedule
        first = scored(await self.conn.call("ZRANGE", schedule, 0, 0, "WITHSCORES"))
        return first[0][1] if first else None

    async def claim_due(self, *, now_ms: int, lease_ms: int, limit: int, shard: int = 0) -> Claim:
        """Take one shard's due members under one lease, after one read says something is due
        and another which: the claim script names every key it writes (each user's hash)."""
        due = await self.next_due_ms(shard)
        if due is None or due > now_ms:
            return Claim(job_ids=[], wake_at_ms=due, shard=shard)
        keys = self.keys.shard(shard)
        found = await self.conn.call(
            "ZRANGEBYSCORE", keys.schedule, "-inf", now_ms, "LIMIT", 0, limit
        )
        candidates = [str(member) for member in found or ()]
        claim_keys = [keys.schedule, keys.fence, keys.batches]
        claim_keys += [self.lease_key(member, shard) for member in candidates]
        args = claim_args(now_ms=now_ms, lease_ms=lease_ms, candidates=candidates)
        wake_at, token, *job_ids = await self.run(CLAIM, claim_keys, args)
        return Claim(
            job_ids=[str(job) for job in job_ids],
            wake_at_ms=_ms_or_none(wake_at),
            token=str(token) if token is not None else "",
            shard=shard,
        )

    async def renew_leases(
        self, claim: Claim, job_ids: Sequence[str], *, now_ms: int, lease_ms: int
    ) -> list[str]:
        """Extend the leases of a claim's members still in hand (their token stays the
        claim's). Returns the members extended (not those taken over or released meanwhile)."""
        if not job_ids:
            return []
        keys = self.keys.shard(claim.shard)
        renew_keys = [keys.schedule, keys.batches]
        renew_keys += [self.lease_key(job_id, claim.shard) for job_id in job_ids]
        args = renew_args(until_ms=now_ms + lease_ms, token=claim.token, members=job_ids)
        return [str(job_id) for job_id in await self.run(RENEW, renew_keys, args)]

    def lease_key(self, member: str, shard: int) -> str:
        """Where a schedule member's lease lives: a user's turn in the user's hash, a batch in
        its record, in the shard's batches hash."""
        if is_evaluation(member):
            return self.keys.user(user_of(member))
        return self.keys.shard(shard).batches

    async def settle(
        self,
        job: EmailJob,
        *,
        now_ms: int,
        seq: int,
        under: Held | None = None,
        turn: Held | None = None,
        outbox_entry: str = "",
        wake_at_ms: int | str | None = KEEP,
        action: str | None = None,
    ) -> Settled:
        """Record the job as it now is (its status says what happened; a queued job is tried
        again at its `due_at`) for its attempt `seq`, made under the lease `under` (the user's
        turn, or the batch it went in; None: no lease, acting for no claim); then, holding the
        user's `turn`, release it with its
        next time (`wake_at_ms`: None for none) or keep it (`KEEP`: more of the turn's emails
        to settle).

        A send lands whoever made the attempt (it happened); anything else only under the
        current lease and for the latest attempt, and nothing overwrites a sent job (see
        settle.lua). `action`: "defer" for an attempt that never reached Resend."""
        shard = self.keys.of_user(job.user_id)
        keys = [self.keys.user(job.user_id), shard.schedule, shard.dead, shard.outbox]
        keys += [shard.stats(job.loop_id), shard.batches]
        args = settle_args(job, now_ms, seq, under, turn, outbox_entry, wake_at_ms, action)
        return as_enum(Settled, SETTLE, await self.run(SETTLE, keys, args))

    async def dead_jobs(self, limit: int = 100) -> list[EmailJob]:
        """Dead-letter jobs, every shard's, oldest first, with their last error."""
        jobs = []
        for shard in self.keys.shards():
            for job_id in await self.conn.call("ZRANGE", shard.dead, 0, limit - 1):
                if (job := await read_job(self.conn, self.keys, str(job_id))) is not None:
                    jobs.append(job)
        return sorted(jobs, key=lambda job: job.due_at)[:limit]

    async def retry_dead(self, job: EmailJob, *, now_ms: int) -> "Requeued":
        """Queue a dead-letter job again, its retries afresh, under the key it may have been
        accepted with (`EmailJob.requeued`): alone, or in the batch it went in, whose outcome is
        unknown, again."""
        again, rejoin = job.requeued(now_ms)
        uid = job.user_id
        shard = self.keys.of_user(uid)
        keys = [shard.dead, shard.schedule, self.keys.user(uid), shard.batches]
        args = retry_dead_args(again, now_ms=now_ms, rejoin=rejoin, seq=job.seq)
        return _REQUEUED[int(await self.run(RETRY_DEAD, keys, args))]


class Requeued(StrEnum):
    """What an operator's retry of a dead letter did (retry_dead.lua's answers)."""

    QUEUED = "queued"
    NOT_DEAD = "not dead"  # not (or no longer) a dead letter, or its user is gone
    # it may have gone out in a batch whose record is gone while Resend still keeps its key
    KEY_IN_USE = "key in use"


_REQUEUED = {1: Requeued.QUEUED, 0: Requeued.NOT_DEAD, -1: Requeued.KEY_IN_USE}


# --- the scripts' arguments, each in the order its header gives ---------------------------------


def apply_args(
    *,
    rev: str,
    turn: str,
    token: str,
    wake_at_ms: int | None,
    begun: bool,
    fields: Sequence[CommandArg],
    increments: Sequence[tuple[int, str, int]],
) -> list[CommandArg]:
    """apply.lua's ARGV: `fields` the user hash's (field, value) pairs flat, `increments`
    (the stats hash's place after the first two KEYS, its field, by how much)."""
    args: list[CommandArg] = [rev, turn, token, wake_at_ms or "", "1" if begun else "0"]
    args += [len(fields) // 2, *fields, len(increments)]
    for place, field, by in increments:
        args += [place, field, by]
    return args


def claim_args(*, now_ms: int, lease_ms: int, candidates: Sequence[str]) -> list[CommandArg]:
    """claim.lua's ARGV."""
    return [now_ms, lease_ms, *candidates]


def renew_args(*, until_ms: int, token: str, members: Sequence[str]) -> list[CommandArg]:
    """renew.lua's ARGV."""
    return [until_ms, token, *members]


def retry_dead_args(
    again: EmailJob, *, now_ms: int, rejoin: str | None, seq: int
) -> list[CommandArg]:
    """retry_dead.lua's ARGV: `again` the job queued again, `rejoin` the batch it goes in
    again (None: none), `seq` the attempt it was dead after."""
    return [again.id, k.job_field(again.id), encode_job(again), now_ms,
            evaluation_id(again.user_id), rejoin or "", batch_member(rejoin) if rejoin else "",
            seq]  # fmt: skip


def settle_args(
    job: EmailJob,
    now_ms: int,
    seq: int,
    under: Held | None,
    turn: Held | None,
    outbox_entry: str,
    wake_at_ms: int | str | None,
    action: str | None,
) -> list[CommandArg]:
    """settle.lua's ARGV, in the order its header gives."""
    turn = turn or Held(evaluation_id(job.user_id))
    under = under or turn
    return [
        k.job_field(job.id),
        encode_job(job),
        action or settle_action(job),
        now_ms,
        outbox_entry,
        OUTBOX_LENGTH,
        (webhook_sent_field if job.is_webhook else sent_field)(job.step, job.kind),
        utc_day(now_ms),
        kept_days_from(now_ms),
        seq,
        job.id,
        under.member,
        under.token,
        turn.member,
        turn.token,
        "" if wake_at_ms is None else wake_at_ms,
        WEBHOOKS_FAILED if job.is_webhook else EMAILS_FAILED,
    ]


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
