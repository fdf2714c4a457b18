"""Operator tools of the `activation` command: `preview` (render a template for a sample or stored
user), `simulate` (run one loop on a virtual clock against an embedded store: a dry run) and
`send-test-webhook` (a signed Clerk `user.created`, posted to a URL).
"""

import argparse
import asyncio
import itertools
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from svix.webhooks import Webhook

from app.clock import system_clock_ms
from app.delivery.jobs import RenderedEmail
from app.delivery.outbox import OutboxMailer
from app.delivery.templates import TemplateSet
from app.delivery.unsubscribe import UnsubscribeTokens
from app.delivery.worker import Worker
from app.engine.evaluate import EmailOrder, StepState, tracked_counts
from app.engine.loop_files import Loop, parse_duration
from app.errors import ActivationError, TemplateRenderError
from app.intake.clerk import ClerkUser
from app.ops.samples import SAMPLE_EMAIL, clerk_user_created, new_user_id, sample_profile
from app.runtime import build_composer, build_store, build_worker, load_loop_files, load_settings
from app.settings import Settings
from app.storage.keys import valid_user_id
from app.storage.records import NewAction, UserProfile, UserRecord
from app.storage.store import Store

CommandFactory = Callable[[Any, str, str], argparse.ArgumentParser]

EXAMPLES = {
    "preview": "activation preview activation_welcome\n"
    "  activation preview activation_nudge --user-id user_29w83sxmDNGwOuEthce5gg56FcC\n"
    "  activation preview activation_welcome --user user.json --out preview.html",
    "simulate": "activation simulate --loop activation --actions first_project_created@2m\n"
    "  activation simulate --loop activation --advance 10m           # no action: the nudge\n"
    "  activation simulate --loop milestone_ten_projects --actions project_created*10",
    "send-test-webhook": "activation send-test-webhook --url http://127.0.0.1:8000/webhooks/clerk",
}
SIMULATION_CAP_MS = 30 * 24 * 3600 * 1000


def add_commands(commands: Any, command: CommandFactory) -> None:
    """Register the tools' subcommands; `command` is the CLI's own subparser factory."""
    preview = command(commands, "preview", "render a template's subject, HTML and text")
    preview.add_argument("template", help="a template name (loops/templates/<name>.html)")
    who = preview.add_mutually_exclusive_group()
    who.add_argument("--user", type=Path, help="a JSON file: a Clerk user or a stored profile")
    who.add_argument("--user-id", help="a user from the configured storage")
    preview.add_argument("--loop", help="the loop whose personalization to use")
    preview.add_argument("--out", type=Path, help="write an HTML page to open in a browser")
    preview.set_defaults(handler=run_preview)
    simulate = command(commands, "simulate", "dry-run a loop on a virtual clock; sends nothing")
    simulate.add_argument("--loop", required=True, help="the loop id (its file stem)")
    simulate.add_argument("--user-id", default="user_simulated", help="the simulated user's id")
    simulate.add_argument("--actions", default="", help="name[*count][@offset], comma-separated")
    simulate.add_argument("--advance", help="how long to run the clock (default: until done)")
    simulate.set_defaults(handler=run_simulate)
    webhook = command(commands, "send-test-webhook", "post a signed Clerk user.created to a URL")
    webhook.add_argument("--url", required=True, help="the webhook endpoint")
    webhook.add_argument("--email", default=SAMPLE_EMAIL, help="the new user's email address")
    webhook.set_defaults(handler=run_send_test_webhook)


# --- preview -----------------------------------------------------------------------------------


def email_use(loops: dict[str, Loop], template: str, loop_id: str | None) -> EmailOrder:
    """The first loop step that sends `template` (in `loop_id` if given), as an email order."""
    chosen = [loops[loop_id]] if loop_id in loops else list(loops.values())
    if loop_id is not None and loop_id not in loops:
        raise ActivationError(f"no loop {loop_id!r} (known: {', '.join(loops) or 'none'})")
    for loop in chosen:
        for step in loop.steps:
            for kind, email in (("action", step.action), ("timeout", step.on_timeout)):
                if email is not None and email.template == template:
                    personalization = dict(email.personalization)
                    return EmailOrder(
                        "preview", loop.id, step.index, kind, template, personalization, 0
                    )
    if not chosen:
        raise ActivationError("no loops loaded: a template is rendered for a loop")
    return EmailOrder("preview", chosen[0].id, 0, "action", template, {}, 0)


def read_user_file(path: Path) -> UserProfile:
    """A Clerk event, a Clerk user object or a stored profile, as JSON."""
    try:
        data = json.loads(path.read_text("utf-8"))
        data = data.get("data", data) if isinstance(data, dict) else data
        if isinstance(data, dict) and "email_addresses" in data:
            return ClerkUser.model_validate(data).to_profile()
        return UserProfile.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        reason = str(exc).splitlines()[0]
        raise ActivationError(
            f"{path}: not a user (Clerk user or profile JSON): {reason}"
        ) from None


async def stored_user(settings: Settings, user_id: str) -> UserProfile:
    store = build_store(settings)
    try:
        found = await store.users.get(user_id)
    finally:
        await store.close()
    if found is None:
        raise ActivationError(
            f"no stored user {user_id!r} in {settings.storage_kind.value} storage"
        )
    return found.profile


def preview_tokens(settings: Settings) -> UnsubscribeTokens:
    """Real tokens when a secret is configured; else throwaway ones (no warning for a preview)."""
    configured = (
        settings.unsubscribe_secret,
        settings.activation_api_key,
        settings.clerk_webhook_signing_secret,
    )
    if any(secret is not None for secret in configured):
        return UnsubscribeTokens.from_settings(settings)
    return UnsubscribeTokens(secrets.token_bytes(32))


def render_preview(
    settings: Settings,
    loops: dict[str, Loop],
    templates: TemplateSet,
    order: EmailOrder,
    profile: UserProfile,
) -> RenderedEmail:
    if order.template not in templates:
        known = ", ".join(templates.names) or "none"
        raise ActivationError(f"no template {order.template!r} (known: {known})")
    composer = build_composer(settings, loops, templates, preview_tokens(settings))
    if profile.email is None:
        profile = profile.model_copy(update={"email": SAMPLE_EMAIL})
    try:
        return composer.compose(order, profile)
    except TemplateRenderError as exc:
        raise ActivationError(str(exc)) from None


def run_preview(args: argparse.Namespace) -> int:
    settings = load_settings()
    loops, templates = load_loop_files(settings)
    order = email_use(loops, args.template, args.loop)
    if args.user is not None:
        profile = read_user_file(args.user)
    elif args.user_id is not None:
        profile = asyncio.run(stored_user(settings, args.user_id))
    else:
        profile = sample_profile(created_at_ms=system_clock_ms())
    email = render_preview(settings, loops, templates, order, profile)
    print(f"From:    {email.sender}\nTo:      {email.to}\nSubject: {email.subject}")
    print(
        f"Loop:    {order.loop_id} step {order.step} ({order.kind})\n\n--- text ---\n{email.text}"
    )
    if args.out is None:
        print(f"\n--- html ---\n{email.html}")
        return 0
    write_preview_page(args.out, args.template, email, profile)
    print(f"\nwrote {args.out}: open it in a browser")
    return 0


def write_preview_page(
    path: Path, template: str, email: RenderedEmail, profile: UserProfile
) -> None:
    from app.ops.dashboard import PAGE_ENV  # the pages' templates and styling

    page = PAGE_ENV.get_template("preview.html").render(
        title=f"Preview: {template}",
        template=template,
        email=email.model_dump(),
        who=f"{profile.name} <{profile.email}>",
    )
    try:
        path.write_text(page, "utf-8")
    except OSError as exc:
        raise ActivationError(f"cannot write {path}: {exc.strerror}") from None


# --- simulate ----------------------------------------------------------------------------------

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


async def simulate(
    settings: Settings, loop_id: str, user_id: str, plans: Sequence[Planned], advance_ms: int | None
) -> list[str]:
    """Run the loop for one sample user on a virtual clock; returns the timeline's lines."""
    if not valid_user_id(user_id):
        raise ActivationError(f"--user-id: {user_id!r} is not a user id")
    settings = embedded(settings)
    loop, templates = simulation_parts(settings, loop_id)
    only = {loop.id: loop}
    clock = VirtualClock(system_clock_ms() // 1000 * 1000)
    start = clock.now_ms
    store = build_store(settings)
    composer = build_composer(settings, only, templates, preview_tokens(settings))
    worker = build_worker(settings, store, only, composer, OutboxMailer(), clock)
    try:
        profile = sample_profile(user_id, created_at_ms=start)
        await store.users.record("simulated", profile, created=True, version_ms=start, now_ms=start)
        until = start + (advance_ms if advance_ms is not None else SIMULATION_CAP_MS)
        await run_clock(
            Run(worker, store, clock, user_id, tracked_counts(only.values())), plans, start, until
        )
        record = await store.reads.snapshot(user_id, full=True)
    finally:
        await store.close()
    lines = [
        f"{offset(entry['at'] - start):>8}  {describe(entry, record, start)}"
        for entry in reversed(record.timeline)
    ]
    return collapse(lines)


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

    async def act(self, plans: Sequence[Planned]) -> None:
        now = self.clock()
        actions = [
            NewAction(self.user_id, plan.action, now) for plan in plans for _ in range(plan.times)
        ]
        if actions:
            await self.store.actions.record(actions, now_ms=now, tracked=self.tracked)

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
    seconds, parts = max(elapsed_ms, 0) // 1000, []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "+" + ("".join(parts) or "0s")


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
    return event


def describe_step(status: str, entry: dict[str, Any], record: UserRecord, start: int) -> str:
    name, email = str(entry.get("step")), entry.get("email")
    state: StepState | None = record.steps.get(name)
    text = f"step {name} {status.replace('_', ' ')}"
    if status == "waiting" and state is not None:
        if state.started_at > entry["at"]:
            text += f" (starts at {offset(state.started_at - start)})"
        if state.deadline_at is not None:
            text += f"; deadline {offset(state.deadline_at - start)}"
    job = record.jobs.get(str(email)) if email else None
    return text + (f" -> email {job.template} queued" if job else "")


def describe_email(status: str, entry: dict[str, Any], record: UserRecord) -> str:
    job = record.jobs.get(str(entry.get("email")))
    if job is None or job.rendered is None:
        return f"email {status}: {entry.get('email')} {entry.get('error') or ''}".rstrip()
    shown = "ready, not sent (dry run)" if status == "sent" else status
    text = f'email {shown}: "{job.rendered.subject}" to {job.rendered.to} ({job.template})'
    return text + (f": {job.last_error}" if job.last_error else "")


def run_simulate(args: argparse.Namespace) -> int:
    plans = parse_actions(args.actions)
    try:
        advance_ms = parse_duration(args.advance) if args.advance else None
    except ValueError:
        message = f"--advance: {args.advance!r} is not a duration (30s, 5m, 2h, 3d)"
        raise ActivationError(message) from None
    settings = load_settings()
    lines = asyncio.run(simulate(settings, args.loop, args.user_id, plans, advance_ms))
    print(f"loop {args.loop}, user {args.user_id}, virtual clock (a dry run: nothing is sent)")
    print("\n".join(lines))
    return 0


# --- send-test-webhook -------------------------------------------------------------------------


def signed_request(secret: str, body: str) -> dict[str, str]:
    """Svix headers for `body`, as Clerk sends them."""
    msg_id = f"msg_{secrets.token_hex(14)}"
    now = datetime.now(tz=UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
        "user-agent": "activation send-test-webhook (Svix-compatible)",
    }


def run_send_test_webhook(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.clerk_webhook_signing_secret is None:
        raise ActivationError("CLERK_WEBHOOK_SIGNING_SECRET is not set: nothing to sign with")
    event = clerk_user_created(new_user_id(), args.email, system_clock_ms())
    body = json.dumps(event)
    headers = signed_request(settings.clerk_webhook_signing_secret.get_secret_value(), body)
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ActivationError(f"cannot post to {args.url}: {exc or type(exc).__name__}") from None
    print(f"sent user.created for {event['data']['id']} (svix-id {headers['svix-id']})")
    print(f"{response.status_code} {response.reason_phrase}\n{response.text}")
    return 0 if response.is_success else 1
