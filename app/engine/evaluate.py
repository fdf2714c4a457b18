"""The loop engine: a pure function from (loops, one user's snapshot, now) to decisions.

No I/O and no clock of its own. For each loop, steps run in order: a step starts when its trigger
fires (step 0) or when the previous step acted (later steps), plus its `delay`. Then:

- no condition: it acts at once;
- its condition met no later than its deadline (actions done before the start count too): it acts,
  exactly once, even when the deadline has passed by the time we look;
- its deadline passed first: it times out (and sends `on_timeout`, if any); the loop ends there;
- otherwise it waits, and the engine names the moment it must be looked at again.

"Met at" is when the user's count of the action reached the condition's count (the earliest of the
`any_of` actions); a step already decided is final, whatever arrives later.

`within` (a window of that length from the signup, `registered_at`) on an action trigger or
condition: only actions that happened (by `occurred_at`) inside it count, those stamped before the
signup too, so the count is reached within the window iff its n-th earliest time is no later than
the window's end, whatever order the reports came in. Without a known signup nothing counts yet.
When the window ends first, the step can no longer fire: a windowed trigger's step is `closed` for
good (step 0 never started; nothing is sent); a windowed condition without a timeout times out at
the window's end (nothing to send: `on_timeout` needs a timeout), and one with a timeout waits for
it and times out as any other. The engine wakes at the window's end to decide it on time.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.engine.assign import arm_of
from app.engine.email_jobs import Channel
from app.engine.filters import Filter
from app.engine.job_ids import EmailKind, email_id
from app.engine.loops import (
    HOLDOUT,
    Action,
    ActionCondition,
    ActionTrigger,
    EmailAction,
    Loop,
    Step,
    Trigger,
    WebhookAction,
    counted_name,
    window_end,
)


class StepStatus(StrEnum):
    WAITING = "waiting"
    FIRED = "fired"
    TIMED_OUT = "timed_out"
    EXCLUDED = "excluded"  # step 0 only: the user was not in the loop's audience when it began
    CLOSED = "closed"  # step 0 only: its trigger's `within` window ended, the count not reached


class StepState(BaseModel):
    """One (loop, step, user): stored as JSON in the user's `loops` hash."""

    model_config = ConfigDict(frozen=True)

    status: StepStatus
    started_at: int
    deadline_at: int | None = None
    met_at: int | None = None
    decided_at: int | None = None
    email_job: str | None = None
    arm: str | None = None  # step 0 of a loop with a holdout or an experiment: the user's arm
    held_out: bool = False  # decided, but its email not sent: the user is in the holdout

    @property
    def final(self) -> bool:
        return self.status is not StepStatus.WAITING


@dataclass(frozen=True, slots=True)
class ActionStats:
    """What the user did of one action: how often, when, and when each tracked count was reached."""

    count: int = 0
    first_at: int | None = None
    last_at: int | None = None
    reached_at: Mapping[int, int] = field(default_factory=dict)

    def time_count_reached(self, count: int) -> int | None:
        if self.count < count:
            return None
        # Counts no loop tracked when they happened: the last action is the best bound we have.
        return self.reached_at.get(count, self.last_at if count > 1 else self.first_at)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One user's state as the engine sees it."""

    user_id: str
    registered_at: int | None
    actions: Mapping[str, ActionStats]
    steps: Mapping[str, StepState]
    suppressed: bool = False
    # The Clerk profile as audiences and variants see it (`records.profile_view`).
    profile: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class EmailOrder:
    """An email (or, `channel` webhook, a webhook call: no template) the engine decided to
    send: its job id is deterministic, so it is queued once."""

    job_id: str
    loop_id: str
    step: int
    kind: str
    template: str
    personalization: Mapping[str, str]
    due_at: int
    channel: Channel = Channel.EMAIL


@dataclass(frozen=True, slots=True)
class Decisions:
    transitions: dict[str, StepState]
    emails: list[EmailOrder]
    wake_at: int | None

    @property
    def empty(self) -> bool:
        return not self.transitions and not self.emails


def step_field(loop_id: str, step: int) -> str:
    """The field of a step's state in the user's `loops` hash."""
    return f"{loop_id}/{step}"


def evaluate(loops: Iterable[Loop], snapshot: Snapshot, now: int) -> Decisions:
    """Every loop's next move for one user."""
    decisions = Decisions({}, [], None)
    wakes: list[int] = []
    for loop in loops:
        _LoopRun(loop, snapshot, now, decisions, wakes).run()
    return Decisions(decisions.transitions, decisions.emails, min(wakes) if wakes else None)


@dataclass(slots=True)
class _LoopRun:
    """One loop evaluated for one user; collects into the shared decisions."""

    loop: Loop
    snapshot: Snapshot
    now: int
    out: Decisions
    wakes: list[int]
    arm: str | None = None

    def run(self) -> None:
        previous_acted_at: int | None = None
        for step in self.loop.steps:
            key = step_field(self.loop.id, step.index)
            stored = self.snapshot.steps.get(key)
            state = stored or self._start(step, previous_acted_at)
            if state is None:
                return
            if step.index == 0:
                self.arm = state.arm
            decided = self._advance(step, state)
            if decided != stored:
                self.out.transitions[key] = decided
            if decided.status is not StepStatus.FIRED:
                return
            previous_acted_at = decided.decided_at

    def _start(self, step: Step, previous_acted_at: int | None) -> StepState | None:
        began = self._began_at(step, previous_acted_at)
        if began is None:
            return self._closed(step.trigger) if step.index == 0 else None
        started_at = began + step.delay_ms
        condition = step.condition
        timeout_ms = condition.timeout_ms if condition is not None else None
        deadline_at = started_at + timeout_ms if timeout_ms is not None else None
        if step.index > 0:
            return StepState(
                status=StepStatus.WAITING, started_at=started_at, deadline_at=deadline_at
            )
        audience = self.loop.audience
        if audience is not None and not audience.matches(self.snapshot.profile):
            return StepState(status=StepStatus.EXCLUDED, started_at=began, decided_at=self.now)
        arm = arm_of(self.loop, self.snapshot.user_id)
        return StepState(
            status=StepStatus.WAITING, started_at=started_at, deadline_at=deadline_at, arm=arm
        )

    def _began_at(self, step: Step, previous_acted_at: int | None) -> int | None:
        """When the step's clock starts: its trigger fired (step 0) or the previous step acted."""
        if step.index > 0:
            return previous_acted_at
        trigger = step.trigger
        if isinstance(trigger, ActionTrigger):
            reached = self._stats(trigger.counted).time_count_reached(trigger.count)
            return in_window(reached, trigger.within_ms, self.snapshot.registered_at)
        return self.snapshot.registered_at

    def _closed(self, trigger: Trigger | None) -> StepState | None:
        """Step 0 whose trigger's `within` window ended before the count was reached: closed for
        good, as of the signup (its window's start); None (with a wake at the window's end)
        while the window is open, or without one."""
        signup = self.snapshot.registered_at
        if not isinstance(trigger, ActionTrigger) or trigger.within_ms is None or signup is None:
            return None
        ends_at = signup + trigger.within_ms
        if self.now < ends_at:
            self.wakes.append(ends_at)
            return None
        return StepState(
            status=StepStatus.CLOSED, started_at=signup, deadline_at=ends_at, decided_at=self.now
        )

    def _advance(self, step: Step, state: StepState) -> StepState:
        if state.final:
            return state
        if self.now < state.started_at:
            self.wakes.append(state.started_at)
            return state
        met_at = self._met_at(step.condition) if step.condition else state.started_at
        if met_at is not None and (state.deadline_at is None or met_at <= state.deadline_at):
            return self._decide(step, state, StepStatus.FIRED, met_at)
        closes_at = self._closes_at(step.condition, state)
        if closes_at is not None and self.now >= closes_at:
            return self._decide(step, state, StepStatus.TIMED_OUT, None)
        if closes_at is not None:
            self.wakes.append(closes_at)
        return state

    def _met_at(self, condition: ActionCondition) -> int | None:
        return condition_met_at(condition, self.snapshot.actions, self.snapshot.registered_at)

    def _closes_at(self, condition: ActionCondition | None, state: StepState) -> int | None:
        return closes_at(condition, state, self.snapshot.registered_at)

    def _stats(self, action: str) -> ActionStats:
        return self.snapshot.actions.get(action, ActionStats())

    def _decide(
        self, step: Step, state: StepState, status: StepStatus, met_at: int | None
    ) -> StepState:
        fired = status is StepStatus.FIRED
        action = step.action if fired else step.on_timeout
        job_id = None
        # A webhook tells the team, not the user: the holdout and a stop of loop email skip it.
        email = isinstance(action, EmailAction)
        held_out = email and self.arm == HOLDOUT
        if action is not None and not held_out and not (email and self.snapshot.suppressed):
            reason = EmailKind.ACTION if fired else EmailKind.TIMEOUT
            job_id = self._order(step, reason, action)
        update = {
            "status": status,
            "met_at": met_at,
            "decided_at": self.now,
            "email_job": job_id,
            "held_out": held_out,
        }
        return state.model_copy(update=update)

    def _order(self, step: Step, kind: str, action: Action) -> str:
        job_id = email_id(self.snapshot.user_id, self.loop.id, step.index, kind)
        where = (job_id, self.loop.id, step.index, kind)
        if isinstance(action, WebhookAction):  # a call: no template
            order = EmailOrder(*where, "", {}, self.now, Channel.WEBHOOK)
        else:
            template = choose_template(action, self.snapshot.profile, self.arm)
            order = EmailOrder(*where, template, dict(action.personalization), self.now)
        self.out.emails.append(order)
        return job_id


def choose_template(email: EmailAction, profile: Mapping[str, Any], arm: str | None) -> str:
    """The template for one user: their experiment arm's, else the first variant whose `when`
    matches their profile, else the email's own."""
    if email.experiment:
        templates = {option.template for option in email.experiment}
        if arm in templates:
            return arm
    for variant in email.variants:
        if variant.when.matches(profile):
            return variant.template
    return email.template


def condition_met_at(
    condition: ActionCondition,
    actions: Mapping[str, ActionStats],
    registered_at: int | None = None,
) -> int | None:
    """When the condition first held (the earliest of its actions to reach the count), or None;
    with `within`, only if that was within its window after the signup (`registered_at`)."""
    empty = ActionStats()
    times = [
        actions.get(action, empty).time_count_reached(condition.count)
        for action in condition.counted
    ]
    reached = [at for at in times if at is not None]
    return in_window(min(reached) if reached else None, condition.within_ms, registered_at)


def in_window(at: int | None, within_ms: int | None, registered_at: int | None) -> int | None:
    """`at` if it counts: there is no window, or `at` is no later than the window's end
    (`within_ms` after the signup, `registered_at`: unknown, the window has not begun)."""
    if at is None or within_ms is None:
        return at
    ends_at = window_end(within_ms, registered_at)
    return at if ends_at is not None and at <= ends_at else None


@dataclass(frozen=True, slots=True)
class Wait:
    """An action a loop's trigger or condition waits for: how many, and which (`where`)."""

    loop_id: str
    action: str
    count: int
    where: Filter | None

    @property
    def counted(self) -> str:
        """The name its count is kept under (`loops.counted_name`)."""
        return counted_name(self.action, self.where)


def waits(loops: Iterable[Loop]) -> Iterator[Wait]:
    """Every action each loop waits for, trigger and conditions, step by step."""
    for loop in loops:
        for step in loop.steps:
            trigger, condition = step.trigger, step.condition
            if isinstance(trigger, ActionTrigger):
                yield Wait(loop.id, trigger.action, trigger.count, trigger.where)
            if condition is not None:
                for action in condition.actions:
                    yield Wait(loop.id, action, condition.count, condition.where)


def tracked_counts(loops: Iterable[Loop]) -> dict[str, frozenset[int]]:
    """For each action, the counts some loop waits for: when each is reached gets recorded."""
    counts: dict[str, set[int]] = {}
    for wait in waits(loops):
        counts.setdefault(wait.counted, set()).add(wait.count)
    return {action: frozenset(values) for action, values in counts.items()}


def watched_filters(loops: Iterable[Loop]) -> dict[str, dict[str, Filter]]:
    """For each action, the filters loops count it by: {action: {counted name: filter}}."""
    found: dict[str, dict[str, Filter]] = {}
    for wait in waits(loops):
        if wait.where is not None:
            found.setdefault(wait.action, {})[wait.counted] = wait.where
    return found


def watched_actions(loops: Iterable[Loop]) -> dict[str, list[str]]:
    """Every action some loop waits for (a trigger or a condition), with those loops' ids."""
    watched: dict[str, list[str]] = {}
    for wait in waits(loops):
        if wait.loop_id not in watched.setdefault(wait.action, []):
            watched[wait.action].append(wait.loop_id)
    return watched


def closes_at(
    condition: ActionCondition | None, state: StepState, registered_at: int | None
) -> int | None:
    """When a waiting step times out: its deadline, else its condition's window's end."""
    if state.deadline_at is not None or condition is None:
        return state.deadline_at
    return window_end(condition.within_ms, registered_at)
