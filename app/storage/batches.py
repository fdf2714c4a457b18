"""Batches of emails, recorded before their request and removed once every member is settled
(`delivery.batch` says why): the shard's `batches` hash and the batch's place on the schedule."""

import json
from collections.abc import Sequence
from dataclasses import dataclass

from app.delivery.jobs import EmailJob
from app.engine.job_ids import batch_member, evaluation_id
from app.storage.reads import read_job
from app.storage.records import Claim
from app.storage.scripts import BATCH_END, BATCH_RECORD, ScriptRunner
from app.storage.wire import CommandArg

# How each member of a batch ended, once the batch did: sent (with Resend's id), refused alone
# (with Resend's reason), or failed with the whole request (with its error).
SENT, REFUSED, FAILED = "sent", "refused", "failed"
Outcome = dict[str, tuple[str, str]]  # email job id -> (SENT | REFUSED | FAILED, id or why)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A recorded batch: its id (the request's Idempotency-Key), its members in the request's
    order with the attempt each sends, when it was recorded, the failed requests that may have
    reached Resend, the last error, and, once its request ended for good, how each member
    ended (written before any member is settled, so a crash while settling changes nothing)."""

    id: str
    shard: int
    members: tuple[tuple[str, int], ...]
    first: int
    attempts: int = 0
    error: str | None = None
    outcome: Outcome | None = None

    @property
    def member(self) -> str:
        """Its member of the schedule."""
        return batch_member(self.id)

    def encode(self) -> str:
        data = {"members": self.members, "first": self.first, "attempts": self.attempts}
        if self.error is not None:
            data["error"] = self.error
        if self.outcome is not None:
            data["outcome"] = self.outcome
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, batch_id: str, shard: int, value: str) -> "BatchRecord":
        data = json.loads(value)
        members = tuple((str(job_id), int(seq)) for job_id, seq in data["members"])
        outcome = data.get("outcome")
        if outcome is not None:
            outcome = {job_id: (str(kind), str(text)) for job_id, (kind, text) in outcome.items()}
        first, attempts, error = int(data["first"]), int(data["attempts"]), data.get("error")
        return cls(batch_id, shard, members, first, attempts, error, outcome)


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
        """Record `jobs` (begun under `claim`) as the batch `batch_id`, leased to the claim's
        worker, keeping only the jobs whose user's turn the claim still holds; None when it holds
        none of them. The batch's lease token joins `claim.tokens`."""
        shard = self.keys.shard(claim.shard)
        args: list[CommandArg] = [batch_id, batch_member(batch_id), now_ms, lease_ms]
        for job in jobs:
            turn = evaluation_id(job.user_id)
            args += [job.id, job.seq, turn, claim.token_of(turn)]
        token, *recorded = await self.run(BATCH_RECORD, [shard.schedule, shard.batches], args)
        if token is None:
            return None
        kept = {str(job_id) for job_id in recorded}
        members = tuple((job.id, job.seq) for job in jobs if job.id in kept)
        claim.tokens[batch_member(batch_id)] = str(token)
        return BatchRecord(batch_id, claim.shard, members, now_ms)

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
        jobs = {}
        for job_id, _ in batch.members:
            if (job := await read_job(self.conn, self.keys, job_id)) is not None:
                jobs[job_id] = job
        return jobs

    async def end(self, batch: BatchRecord, *, token: str, lease_ms: int) -> bool:
        """Remove the batch, every member settled; False when another worker holds it."""
        return await self._end(batch, token, lease_ms, "", "")

    async def decide(self, batch: BatchRecord, *, token: str, lease_ms: int) -> bool:
        """Record how the batch ended (`batch.outcome`), before its members are settled;
        False when another worker holds it."""
        return await self._end(batch, token, lease_ms, batch.encode(), "")

    async def again(self, batch: BatchRecord, *, token: str, lease_ms: int, due_ms: int) -> bool:
        """Keep the batch as it now is, to be sent again at `due_ms`; False when another worker
        holds it."""
        return await self._end(batch, token, lease_ms, batch.encode(), due_ms)

    async def _end(
        self, batch: BatchRecord, token: str, lease_ms: int, kept: str, due_ms: int | str
    ) -> bool:
        shard = self.keys.shard(batch.shard)
        args: list[CommandArg] = [batch.id, batch.member, token, lease_ms, kept, due_ms]
        return bool(await self.run(BATCH_END, [shard.schedule, shard.batches], args))
