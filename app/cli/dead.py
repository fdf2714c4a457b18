"""`activation dead`: list or retry dead-letter emails (a retry keeps the key an email may have gone
under: `EmailJob.requeued`)."""

import argparse
import asyncio
import sys

from app.cli.shared import shared_settings, started
from app.errors import ActivationError
from app.storage.queue import Requeued


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "retry"])
    parser.add_argument("job", nargs="?", help="the job id to retry")
    parser.add_argument("--all", action="store_true", help="retry every dead-letter job")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_dead(args.action, args.job, retry_all=args.all))


async def _dead(action: str, job_id: str | None, *, retry_all: bool) -> int:
    runtime = await started(shared_settings("dead"))
    try:
        jobs = await runtime.store.queue.dead_jobs(limit=10_000)
        if action == "list":
            for job in jobs:
                print(f"{job.id}\tattempts={job.attempts}\t{job.last_error}")
            print(f"{len(jobs)} dead-letter job(s)", file=sys.stderr)
            return 0
        chosen = [job for job in jobs if retry_all or job.id == job_id]
        if retry_all and not chosen:
            print("no dead-letter jobs: nothing to retry")
            return 0
        if not chosen:
            raise ActivationError(f"no dead-letter job {job_id!r} (try: activation dead list)")
        queue, now = runtime.store.queue, runtime.clock()
        outcomes = [await queue.retry_dead(job, now_ms=now) for job in chosen]
        for job, outcome in zip(chosen, outcomes, strict=True):
            if outcome is Requeued.KEY_IN_USE:
                print(
                    f"{job.id}: not queued: it may have gone out in batch {job.batch}, whose key "
                    "Resend keeps 24 h from its first attempt; retry after that"
                )
        queued = sum(outcome is Requeued.QUEUED for outcome in outcomes)
        print(f"{queued} job(s) queued again")
        return 0 if queued == len(chosen) else 1
    finally:
        await runtime.close()
