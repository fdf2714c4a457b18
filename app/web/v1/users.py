"""`GET /v1/users/{user_id}`: one user's activation state, as a growth engineer wants to read it."""

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState, StepStatus, closes_at, step_field
from app.engine.loops import ActionTrigger, Loop, Step, is_filtered, window_end
from app.storage.keys import USER_ID_PATTERN
from app.storage.records import UserRecord
from app.web import auth
from app.web.auth import OPENAPI_BEARER, Access
from app.web.deps import StoreDep, services_of
from app.web.errors import error_responses

router = APIRouter(prefix="/v1", tags=["users"], dependencies=[OPENAPI_BEARER])


class StepProgress(BaseModel):
    step: int
    # not_started | waiting | fired | timed_out | excluded (not in the audience) | closed (its
    # trigger's `within` window ended before the count was reached)
    status: str
    started_at: int | None = None
    waiting_until: int | None = None
    # the end of the `within` window that decides the step now: its trigger's until step 0
    # fires, then its condition's (None: no window, or no signup known yet)
    window_until: int | None = None
    condition_met_at: int | None = None
    decided_at: int | None = None
    email_job: str | None = None
    arm: str | None = None  # step 0 of a loop with a holdout or an experiment
    held_out: bool = False  # decided, its email not sent: the user is in the loop's holdout


class LoopProgress(BaseModel):
    loop: str
    type: str
    steps: list[StepProgress]


class EmailView(BaseModel):
    id: str
    loop: str
    step: int
    kind: str
    template: str  # "" for a webhook step's call
    channel: str = "email"  # "email" | "webhook"
    status: str
    queued_at: int
    due_at: int
    attempts: int
    last_error: str | None
    sent_at: int | None
    subject: str | None
    # while its first attempt waits for the frequency cap or quiet hours: which, and until when
    held: str | None = None  # "cap" | "quiet_hours"
    until: int | None = None


class UserState(BaseModel):
    user_id: str
    registered_at: int | None
    suppressed_at: int | None = None  # a Resend hard bounce or complaint stopped loop email
    suppression: str | None = None  # "bounced" or "complained"
    profile: dict[str, Any] | None
    actions: dict[str, int]
    # the counts of actions matching a loop's `where`, by `<action>#<filter digest>`
    filtered_actions: dict[str, int] = {}
    loops: list[LoopProgress]
    emails: list[EmailView]
    timeline: list[dict[str, Any]]


@router.get(
    "/users/{user_id}",
    response_model=UserState,
    responses=error_responses(
        {401: "missing or wrong API key", 404: "unknown user", 422: "not a user id"}
    ),
)
@auth.policy(Access.API_KEY)
async def get_user_state(
    request: Request, store: StoreDep, user_id: str = Path(pattern=USER_ID_PATTERN)
) -> UserState:
    """Profile, action counts, every loop's progress per step, emails, and a timeline."""
    record = await store.queries.snapshot(user_id)
    if not record.known:
        raise HTTPException(404, "unknown user")
    return describe(record, services_of(request).loops)


def describe(record: UserRecord, loops: Mapping[str, Loop]) -> UserState:
    profile = record.profile
    return UserState(
        user_id=record.user_id,
        registered_at=record.registered_at_ms,
        suppressed_at=record.suppressed_at_ms,
        suppression=record.suppression,
        profile={**profile.model_dump(), "name": profile.name} if profile else None,
        actions={n: s.count for n, s in sorted(record.actions.items()) if not is_filtered(n)},
        filtered_actions={n: s.count for n, s in sorted(record.actions.items()) if is_filtered(n)},
        loops=[
            loop_progress(loop, record.steps, record.registered_at_ms) for loop in loops.values()
        ],
        emails=sorted((email_view(job) for job in record.jobs.values()), key=lambda e: e.queued_at),
        timeline=record.timeline,
    )


def loop_progress(
    loop: Loop, states: Mapping[str, StepState], registered_at: int | None
) -> LoopProgress:
    steps = [
        step_progress(step, states.get(step_field(loop.id, step.index)), registered_at)
        for step in loop.steps
    ]
    return LoopProgress(loop=loop.id, type=str(loop.type), steps=steps)


def window_until(step: Step, state: StepState | None, registered_at: int | None) -> int | None:
    """The end of the `within` window deciding the step: its trigger's while step 0 has not
    started (or once it closed), else its condition's once the step started."""
    trigger, condition = step.trigger, step.condition
    if isinstance(trigger, ActionTrigger) and (state is None or state.status is StepStatus.CLOSED):
        return window_end(trigger.within_ms, registered_at)
    if state is None or condition is None:
        return None
    return window_end(condition.within_ms, registered_at)


def step_progress(step: Step, state: StepState | None, registered_at: int | None) -> StepProgress:
    window = window_until(step, state, registered_at)
    if state is None:
        return StepProgress(step=step.index, status="not_started", window_until=window)
    waiting_until = None
    if not state.final:  # decided at the latest when it closes (`evaluate.closes_at`)
        waiting_until = closes_at(step.condition, state, registered_at) or state.started_at
    return StepProgress(
        step=step.index,
        status=state.status.value,
        started_at=state.started_at,
        waiting_until=waiting_until,
        window_until=window,
        condition_met_at=state.met_at,
        decided_at=state.decided_at,
        email_job=state.email_job,
        arm=state.arm,
        held_out=state.held_out,
    )


def email_view(job: EmailJob) -> EmailView:
    return EmailView(
        id=job.id,
        loop=job.loop_id,
        step=job.step,
        kind=job.kind,
        template=job.template,
        channel=job.channel.value,
        status=job.status.value,
        queued_at=job.queued_at,
        due_at=job.due_at,
        attempts=job.attempts,
        last_error=job.last_error,
        sent_at=job.sent_at,
        subject=job.rendered.subject if job.rendered else None,
        **held_view(job),
    )


def held_view(job: EmailJob) -> dict[str, Any]:
    """`held` and `until` while a queued job waits for the cap or quiet hours."""
    if job.status is not JobStatus.QUEUED or job.held is None:
        return {}
    return {"held": job.held, "until": job.due_at}
