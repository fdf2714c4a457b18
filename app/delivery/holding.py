"""The emails a user's turn would begin, past the frequency cap and quiet hours
(`engine.holds`): which go now, which wait (the job keeps why and until when: `held`, its
`due_at`), which are dropped because they could only go later than their step allows.

The cap reads the user's own ledger: the emails of capped loops sent, or begun and maybe sent.
A turn is the only writer of the user's jobs while it holds the lease, and its writes land only
if nothing changed meanwhile (`rev`) and the lease is still its own, so two workers can never
both let an email through the same free place.
"""

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.funnel import HELD, Counter
from app.engine.holds import Candidate, Holds, Verdict, zone_of
from app.engine.loops import DEFAULT_MEASURE_MS, Loop
from app.storage.records import UserRecord


def admit(
    record: UserRecord, ready: list[EmailJob], loops: Mapping[str, Loop], holds: Holds, now: int
) -> Iterator[tuple[EmailJob, Verdict | None]]:
    """Each job due now with its verdict (None: it goes now). A retry, a webhook call, or any
    email when neither a cap nor quiet hours are set, goes at once."""
    first = [job for job in ready if job.first_attempt_at is None and not job.is_webhook]
    verdicts: dict[str, Verdict] = {}
    if holds.active and first:
        profile = record.profile
        zone = zone_of(profile.public_metadata.get("timezone") if profile else None,
                       holds.default_zone)  # fmt: skip
        candidates = [candidate(job, loops, holds) for job in first]
        # the turn's jobs, not the stored ones: a job freed from a batch never recorded
        # (`turns.turn_jobs`) never reached Resend, and must not count against itself
        jobs = {**record.jobs, **{job.id: job for job in ready}}
        verdicts = holds.admit(candidates, counted(jobs.values(), loops), zone, now)
    for job in ready:
        verdict = verdicts.get(job.id)
        yield job, None if verdict is None or verdict.reason is None else verdict


def candidate(job: EmailJob, loops: Mapping[str, Loop], holds: Holds) -> Candidate:
    loop = loops.get(job.loop_id)
    if loop is None:  # a loop removed since: its queued emails keep the service's rules
        return Candidate(job.id, job.due_at, 0, True, holds.quiet, latest_ms(None, job))
    return Candidate(
        job.id, job.due_at, loop.priority, loop.capped, loop.quiet(holds.quiet),
        latest_ms(loop, job),
    )  # fmt: skip


def latest_ms(loop: Loop | None, job: EmailJob) -> int:
    """The last moment an email's step allows it to go: within the loop's measure window
    (`measure`, 7 d unless the loop says) of when it was queued; past that it is no longer the
    email the loop meant to send at that point of the user's journey."""
    measure_ms = loop.measure_ms if loop is not None else DEFAULT_MEASURE_MS
    return job.queued_at + measure_ms


def counted(jobs: Iterable[EmailJob], loops: Mapping[str, Loop]) -> list[int]:
    """When each of the user's emails the cap counts went (or may have gone) out: sent, or
    begun and not ended (it may have reached Resend), of a loop that counts toward the cap."""
    times = []
    for job in jobs:
        loop = loops.get(job.loop_id)
        if (loop is not None and not loop.capped) or job.is_webhook:
            continue  # the cap counts emails to the user; a webhook tells the team
        if job.status is JobStatus.SENT:
            times.append(job.sent_at if job.sent_at is not None else job.queued_at)
        elif job.status is JobStatus.QUEUED and job.first_attempt_at is not None:
            times.append(job.first_attempt_at)
    return times


def held(job: EmailJob, verdict: Verdict, now: int) -> EmailJob:
    """The job waiting for `verdict.reason` until `verdict.until_ms`."""
    since = job.held_at if job.held is not None else now
    update = {"due_at": verdict.until_ms, "held": verdict.reason, "held_at": since}
    return job.model_copy(update=update)


def dropped_reason(verdict: Verdict) -> str:
    """Why a job was dropped rather than held, as the user's timeline says it."""
    return (
        f"the {describe(verdict)} would hold it until {iso(verdict.until_ms)}, later than its "
        f"step allows ({iso(verdict.latest_ms)})"
    )


def describe(verdict: Verdict) -> str:
    return "frequency cap" if verdict.reason == "cap" else "quiet hours"


def iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hold_counters(before: EmailJob, after: EmailJob) -> list[Counter]:
    """The loop's `held:<reason>` count, once per email and reason it waits for."""
    if after.held is None or after.held == before.held:
        return []
    return [Counter(after.loop_id, f"{HELD}{after.held}")]
