"""`activation simulate`: one loop run for a sample user on a virtual clock against an embedded
store with the outbox mailer: a dry run, whatever storage and Resend are configured."""

import argparse
import asyncio
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.cli.preview import preview_tokens
from app.cli.samples import json_object, sample_profile, with_profile
from app.cli.windows import span, step_windows
from app.clock import system_clock_ms
from app.delivery.loop_folder import load_loop_files
from app.delivery.outbox import OutboxMailer
from app.delivery.templates import TemplateSet
from app.delivery.webhook_client import dry_run_client
from app.delivery.worker import Worker
from app.engine.email_jobs import JobStatus
from app.engine.evaluate import StepState, tracked_counts, watched_filters
from app.engine.filters import Filter
from app.engine.loops import Loop, parse_duration
from app.errors import ActivationError
from app.runtime import build_composer, build_store, build_worker
from app.settings import Settings, load_settings
from app.storage.keys import valid_user_id
from app.storage.records import NewAction, UserRecord
from app.storage.store import Store

SIMULATION_CAP_MS = 30 * 24 * 3600 * 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `activation simulate`."""
    parser.add_argument("--loop", required=True, help="the loop id (its file stem)")
    parser.add_argument("--user-id", default="user_simulated", help="the simulated user's id")
    parser.add_argument("--actions", default="", help="name[*count][@offset], comma-separated")
    parser.add_argument("--advance", help="how long to run the clock (default: until done)")
    parser.add_argument("--props", help="the actions' properties, a JSON object")
    parser.add_argument(
        "--profile", help="Clerk profile fields over the sample user's, a JSON object"
    )


_PLANNED = re.compile(r"^(?P<name>[^@*\s]+)(?:\*(?P<times>\d+))?(?:@(?P<at>\S+))?$")


@dataclass(frozen=True, slots=True)
class Planned:
    """An action the simulated user does `times` times, `at_ms` after signing up."""

    action: str
    times: int
    at_ms: int


def parse_actions(text: str) -> list[Planned]:
    """`first_project_created@2m,project_created*10@1h` into planned actions, in time order."""
    planned = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = _PLANNED.fullmatch(part)
        try:
            at_ms = parse_duration(match["at"]) if match and match["at"] else 0
        except ValueError:
            at_ms = -1
        if match is None or at_ms < 0:
            raise ActivationError(f"--actions: {part!r} is not name[*count][@offset], e.g. a*3@5m")
        planned.append(Planned(match["name"], int(match["times"] or 1), at_ms))
    return sorted(planned, key=lambda plan: plan.at_ms)


class VirtualClock:
    """The simulation's clock: it jumps to the next moment something is due."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def embedded(settings: Settings) -> Settings:
    """The same loops and URLs on an in-memory store with the outbox mailer: nothing leaves."""
    return settings.model_copy(
        update={
            "upstash_redis_rest_url": None,
            "upstash_redis_rest_token": None,
            "redis_url": None,
            "resend_api_key": None,
        }
    )


def simulation_parts(settings: Settings, loop_id: str) -> tuple[Loop, TemplateSet]:
    loops, templates = load_loop_files(settings)
    if loop_id not in loops:
        raise ActivationError(f"no loop {loop_id!r} (known: {', '.join(loops) or 'none'})")
    return loops[loop_id], templates


@dataclass(frozen=True, slots=True)
class Sample:
    """Who the simulated user is and what their actions carry."""

    user_id: str = "user_simulated"
    profile: str | None = None  # JSON laid over the sample profile
    properties: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Simulation:
    """What a simulation shows: the timeline's lines, and why each email that failed did (a
    template that broke on the sample user's data)."""

    lines: list[str]
    failed: list[str]


async def simulate(
    settings: Settings,
    loop_id: str,
    user_id: str,
    plans: Sequence[Planned],
    advance_ms: int | None,
    sample: Sample | None = None,
) -> Simulation:
    """Run the loop for one sample user on a virtual clock."""
    if not valid_user_id(user_id):
        raise ActivationError(f"--user-id: {user_id!r} is not a user id")
    settings = embedded(settings)
    loop, templates = simulation_parts(settings, loop_id)
    only = {loop.id: loop}
    clock = VirtualClock(system_clock_ms() // 1000 * 1000)
    start = clock.now_ms
    store = build_store(settings)
    composer = build_composer(settings, only, templates, preview_tokens(settings))
    # nothing leaves: the outbox for emails, an answer in process for webhooks
    webhooks = dry_run_client(settings.webhook_timeout, clock)
    worker = build_worker(settings, store, only, composer, OutboxMailer(), clock, webhooks=webhooks)
    try:
        sample = sample or Sample(user_id)
        profile = with_profile(sample_profile(user_id, created_at_ms=start), sample.profile)
        await store.users.record("simulated", profile, created=True, version_ms=start, now_ms=start)
        until = start + (advance_ms if advance_ms is not None else SIMULATION_CAP_MS)
        watching = (tracked_counts(only.values()), watched_filters(only.values()))
        run = Run(worker, store, clock, user_id, *watching, sample.properties)
        await run_clock(run, plans, start, until)
        record = await store.queries.snapshot(user_id)
    finally:
        await store.close()
        await webhooks.close()
    lines = [
        f"{offset(entry['at'] - start):>8}  {describe(entry, record, start)}"
        for entry in reversed(record.timeline)
    ]
    lines[1:1] = [f"{offset(0):>8}  {line}" for line in window_lines(loop)]  # after the signup
    failed = [
        job.last_error or f"template {job.template!r}"
        for job in record.jobs.values()
        if job.status is JobStatus.FAILED
    ]
    return Simulation(collapse(lines), failed)


def collapse(lines: Sequence[str]) -> list[str]:
    """Repeated lines once, with how many: `+1h  does project_created (x10)`."""
    out: list[str] = []
    for line, group in itertools.groupby(lines):
        times = len(list(group))
        out.append(f"{line} (x{times})" if times > 1 else line)
    return out


@dataclass(frozen=True, slots=True)
class Run:
    worker: Worker
    store: Store
    clock: VirtualClock
    user_id: str
    tracked: dict[str, frozenset[int]]
    filters: dict[str, dict[str, Filter]]
    properties: dict[str, Any] | None = None

    async def act(self, plans: Sequence[Planned]) -> None:
        now = self.clock()
        actions = [
            NewAction(self.user_id, plan.action, now, properties=self.properties)
            for plan in plans
            for _ in range(plan.times)
        ]
        if actions:
            await self.store.actions.record(
                actions, now_ms=now, tracked=self.tracked, filters=self.filters
            )

    async def drain(self) -> int | None:
        """Run everything due now; when the schedule next needs a look (None: never)."""
        for _ in range(1000):
            claim = await self.worker.run_once()
            if not claim.job_ids:
                return claim.wake_at_ms
        return None


async def run_clock(run: Run, plans: Sequence[Planned], start: int, until: int) -> None:
    """Do the planned actions at their times and let the worker run whatever comes due."""
    pending = list(plans)
    for _ in range(10_000):
        due = [plan for plan in pending if start + plan.at_ms <= run.clock()]
        pending = pending[len(due) :]
        await run.act(due)
        wake_at = await run.drain()
        upcoming = [at for at in (wake_at, start + pending[0].at_ms if pending else None) if at]
        if not upcoming or min(upcoming) > until:
            return
        run.clock.now_ms = max(min(upcoming), run.clock() + 1)


def offset(elapsed_ms: int) -> str:
    """`+0s`, `+2m`, `+2d5m`: the time since the simulated sign-up."""
    return "+" + span(elapsed_ms)


def window_lines(loop: Loop) -> list[str]:
    """The loop's `within` windows, from the simulated signup: what counts, and until when."""
    return [
        f"step {loop.id}/{step.index} {window.on} counts {window.counted} within "
        f"{span(window.within_ms)} of signup: until {offset(window.within_ms)}"
        for step in loop.steps
        for window in step_windows(step)
    ]


def describe(entry: dict[str, Any], record: UserRecord, start: int) -> str:
    event = str(entry["event"])
    if event == "user.created":
        return "signs up (Clerk user.created)"
    if event == "action":
        return f"does {entry['action']}"
    if event.startswith("step."):
        return describe_step(event.removeprefix("step."), entry, record, start)
    if event.startswith("email."):
        return describe_email(event.removeprefix("email."), entry, record)
    if event.startswith("webhook."):
        status = event.removeprefix("webhook.")
        shown = "ready, not posted (dry run)" if status == "sent" else status
        return f"webhook {shown}: {entry.get('webhook')} {entry.get('error') or ''}".rstrip()
    return event


def describe_step(status: str, entry: dict[str, Any], record: UserRecord, start: int) -> str:
    name, email = str(entry.get("step")), entry.get("email")
    state: StepState | None = record.steps.get(name)
    text = f"step {name} {status.replace('_', ' ')}"
    if status == "excluded":
        text += " (not in the loop's audience: never entered)"
    if status == "closed":
        text += " (its within window ended before the count was reached: never entered)"
    if state is not None and state.arm:
        text += f" [arm {state.arm}]"
    if state is not None and state.held_out:
        text += " (held out: no email)"
    if status == "waiting" and state is not None:
        if state.started_at > entry["at"]:
            text += f" (starts at {offset(state.started_at - start)})"
        if state.deadline_at is not None:
            text += f"; deadline {offset(state.deadline_at - start)}"
    job = record.jobs.get(str(email)) if email else None
    if job is not None and job.is_webhook:
        return text + " -> webhook queued"
    return text + (f" -> email {job.template} queued" if job else "")


def describe_email(status: str, entry: dict[str, Any], record: UserRecord) -> str:
    job = record.jobs.get(str(entry.get("email")))
    if job is None or job.rendered is None:
        return f"email {status}: {entry.get('email')} {entry.get('error') or ''}".rstrip()
    shown = "ready, not sent (dry run)" if status == "sent" else status
    text = f'email {shown}: "{job.rendered.subject}" to {job.rendered.to} ({job.template})'
    return text + (f": {job.last_error}" if job.last_error else "")


def run(args: argparse.Namespace) -> int:
    plans = parse_actions(args.actions)
    try:
        advance_ms = parse_duration(args.advance) if args.advance else None
    except ValueError:
        message = f"--advance: {args.advance!r} is not a duration (30s, 5m, 2h, 3d)"
        raise ActivationError(message) from None
    settings = load_settings()
    sample = Sample(args.user_id, args.profile, json_object("--props", args.props) or None)
    run = asyncio.run(simulate(settings, args.loop, args.user_id, plans, advance_ms, sample))
    print(f"loop {args.loop}, user {args.user_id}, virtual clock (a dry run: nothing is sent)")
    print("\n".join(run.lines))
    if run.failed:
        raise ActivationError(f"{len(run.failed)} email(s) failed: {'; '.join(run.failed)}")
    return 0
