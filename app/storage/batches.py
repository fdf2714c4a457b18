"""Batches of emails, recorded before their first request and removed once every member is
settled (`delivery.batch` says why): the shard's `batches` hash and the batch's lease on the
schedule."""

import json
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.email_jobs import EmailJob
from app.engine.job_ids import batch_member, user_of
from app.storage import keys as k
from app.storage.queries import read_job
from app.storage.records import Claim
from app.storage.redis_client import CommandArg
from app.storage.scripts import BATCH_CHECK, BATCH_END, BATCH_RECORD, ScriptRunner

# How each member of a batch ended, once the batch did: sent (with Resend's id), refused alone
# (with Resend's reason), failed with the whole request (with its error, nothing accepted), or
# failed with its outcome unknown (a request may have been accepted; with the last error).
SENT, REFUSED, FAILED, UNKNOWN = "sent", "refused", "failed", "unknown"
Outcome = dict[str, tuple[str, str]]  # email job id -> (SENT | REFUSED | ..., id or why)
OK = "ok"  # batch_check.lua's verdict on a member that still waits for its batch
KEEP_LEASE = "keep"


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A recorded batch: its id (the request's Idempotency-Key), the members still waiting for
    it in the request's order with the attempt each sends, when it was recorded, the failed
    requests that may have reached Resend, the members of the last request (`body`: None before
    the first), the last error, and, once its request ended for good, how each member ended
    (written before any member is settled, so a crash while settling changes nothing)."""

    id: str
    shard: int
    members: tuple[tuple[str, int], ...]
    first: int
    attempts: int = 0
    body: tuple[str, ...] | None = None
    error: str | None = None
    outcome: Outcome | None = None

    @property
    def member(self) -> str:
        """Its member of the schedule."""
        return batch_member(self.id)

    def encode(self) -> str:
        data: dict[str, object] = {"first": self.first, "attempts": self.attempts}
        if self.members:
            data["members"] = self.members
        if self.body is not None:
            data["body"] = self.body
        if self.error is not None:
            data["error"] = self.error
        if self.outcome is not None:
            data["outcome"] = self.outcome
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, batch_id: str, shard: int, value: str) -> "BatchRecord":
        data = json.loads(value)
        # Lua's cjson writes an empty list as {}: `or ()` reads both as none
        members = tuple((str(job_id), int(seq)) for job_id, seq in data.get("members") or ())
        body = data.get("body")
        outcome = data.get("outcome") or None
        if outcome is not None:
            outcome = {job_id: (str(kind), str(text)) for job_id, (kind, text) in outcome.items()}
        return cls(
            batch_id,
            shard,
            members,
            first=int(data["first"]),
            attempts=int(data.get("attempts", 0)),
            body=None if body is None else tuple(str(job_id) for job_id in body or ()),
            error=data.get("error"),
            outcome=outcome,
        )


class Batches(ScriptRunner):
    """The shards' recorded batches."""

    async def record(
        self,
        claim: Claim,
        batch_id: str,
        jobs: Sequence[EmailJob],
        *,
        now_ms: int,
        lease_ms: int,
    ) -> BatchRecord | None:
        """Record `jobs` (begun under `claim`) as the batch `batch_id`, leased to the claim,
        keeping only those that still wait for it (see batch_record.lua); None when none
        does."""
        shard = self.keys.shard(claim.shard)
        keys = [shard.schedule, shard.batches, *(self.keys.user(job.user_id) for job in jobs)]
        args = batch_record_args(
            batch_id, now_ms=now_ms, lease_ms=lease_ms, token=claim.token, jobs=jobs
        )
        recorded = {str(job_id) for job_id in await self.run(BATCH_RECORD, keys, args) or ()}
        if not recorded:
            return None
        members = tuple((job.id, job.seq) for job in jobs if job.id in recorded)
        body = tuple(job_id for job_id, _ in members)
        return BatchRecord(batch_id, claim.shard, members, now_ms, body=body)

    async def check(self, batch: BatchRecord, token: str) -> dict[str, str] | None:
        """Right before a request: each member's verdict (`OK`, or why it no longer waits),
        the record's members and body becoming the `OK` ones; None when the batch's lease is
        not `token`'s, or its members are not `batch.members` any more (read it again)."""
        shard = self.keys.shard(batch.shard)
        keys = [shard.batches]
        keys += [self.keys.user(user_of(job_id)) for job_id, _ in batch.members]
        args = batch_check_args(batch.id, token=token, members=batch.members)
        verdicts = await self.run(BATCH_CHECK, keys, args)
        if not isinstance(verdicts, list):
            return None
        return {job_id: str(v) for (job_id, _), v in zip(batch.members, verdicts, strict=True)}

    async def get(self, shard: int, batch_id: str) -> BatchRecord | None:
        value = await self.conn.call("HGET", self.keys.shard(shard).batches, batch_id)
        return None if value is None else BatchRecord.decode(batch_id, shard, str(value))

    async def members(self, shard: int, batch_ids: Sequence[str]) -> set[tuple[str, int]]:
        """The members (job id, seq) of those of `batch_ids` still recorded."""
        found: set[tuple[str, int]] = set()
        for batch_id in batch_ids:
            batch = await self.get(shard, batch_id)
            found.update(batch.members if batch is not None else ())
        return found

    async def jobs(self, batch: BatchRecord) -> dict[str, EmailJob]:
        """The batch's members as stored now (a deleted user's are gone), by id."""
        return await self.jobs_of([job_id for job_id, _ in batch.members])

    async def jobs_of(self, job_ids: Sequence[str]) -> dict[str, EmailJob]:
        """Email jobs as stored now (a deleted user's are gone), by id."""
        jobs = {}
        for job_id in job_ids:
            if (job := await read_job(self.conn, self.keys, job_id)) is not None:
                jobs[job_id] = job
        return jobs

    async def end(self, batch: BatchRecord, token: str) -> bool:
        """Remove the batch, every member settled, and release its lease; False when its lease
        is not `token`'s."""
        return await self._write(batch, token, "", "")

    async def decide(self, batch: BatchRecord, token: str) -> bool:
        """Record how the batch ended (`batch.outcome`), before its members are settled; False
        when its lease is not `token`'s."""
        return await self._write(batch, token, batch.encode(), KEEP_LEASE)

    async def again(self, batch: BatchRecord, token: str, *, due_ms: int) -> bool:
        """Keep the batch as it now is, to be sent again at `due_ms`; False when the lease is
        not `token`'s."""
        return await self._write(batch, token, batch.encode(), due_ms)

    async def spend(self, batch: BatchRecord, token: str, *, until_ms: int) -> bool:
        """Keep the batch, its members settled, until `until_ms` (when Resend forgets its
        key): an operator's retry of a member whose outcome is unknown sends it under this key
        again; False when its lease is not `token`'s."""
        return await self._write(batch, token, batch.encode(), until_ms)

    async def _write(self, batch: BatchRecord, token: str, kept: str, next_ms: int | str) -> bool:
        shard = self.keys.shard(batch.shard)
        keys = [shard.schedule, shard.batches]
        args = batch_end_args(batch.id, token=token, kept=kept, next_ms=next_ms)
        return bool(await self.run(BATCH_END, keys, args))


# --- the scripts' arguments, each in the order its header gives ---------------------------------


def batch_record_args(
    batch_id: str, *, now_ms: int, lease_ms: int, token: str, jobs: Sequence[EmailJob]
) -> list[CommandArg]:
    """batch_record.lua's ARGV: the candidates `jobs`, each with the attempt it sends."""
    args: list[CommandArg] = [batch_id, batch_member(batch_id), now_ms, lease_ms, token]
    for job in jobs:
        args += [job.id, job.seq, k.job_field(job.id)]
    return args


def batch_check_args(
    batch_id: str, *, token: str, members: Sequence[tuple[str, int]]
) -> list[CommandArg]:
    """batch_check.lua's ARGV: `members` (email job id, seq) as the caller read the record."""
    args: list[CommandArg] = [batch_id, token]
    for job_id, seq in members:
        args += [seq, k.job_field(job_id)]
    return args


def batch_end_args(batch_id: str, *, token: str, kept: str, next_ms: int | str) -> list[CommandArg]:
    """batch_end.lua's ARGV: `kept` the record as kept (JSON) or "" to remove it; `next_ms`
    `KEEP_LEASE`, or the lease released with the batch's next turn (epoch ms, "" for none)."""
    return [batch_id, batch_member(batch_id), token, kept, next_ms]
