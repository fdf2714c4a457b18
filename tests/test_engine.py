"""The engine's rules, table-driven, with no Redis: (loops, snapshot, now) -> decisions."""

from pathlib import Path
from textwrap import dedent

import pytest

from app.engine.evaluate import (
    ActionStats,
    Decisions,
    Snapshot,
    StepState,
    StepStatus,
    evaluate,
    tracked_counts,
)
from app.engine.job_ids import email_id
from app.engine.loop_loading import load_loop
from app.engine.loops import Loop
from tests.support.constants import DAY, MIN

T0 = 1_700_000_000_000  # registration time

WELCOME = """
type: activation
opinion: welcome on the first project, nudge after 5 minutes
steps:
  - trigger: {type: database, table: users, event: insert}
    condition: {type: action, action: first_project_created, count: 1, timeout: 5m}
    action: {type: email, provider: resend, template: welcome}
    on_timeout: {type: email, template: nudge}
  - delay: 2d
    action: {type: email, template: tips}
"""

MILESTONE = """
type: milestone
opinion: celebrate the tenth project
steps:
  - trigger: {type: action, action: project_created, count: 10}
    action: {type: email, template: ten}
"""

ANY_OF = """
type: activation
opinion: any of two actions, three times, no nudge
steps:
  - trigger: {type: clerk, event: user.created}
    condition: {type: action, any_of: [invited, shared], count: 3, timeout: 1d}
    action: {type: email, template: welcome}
"""


def make_loop(tmp_path: Path, loop_id: str, text: str) -> Loop:
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    for name in ("welcome", "nudge", "tips", "ten"):
        (templates / f"{name}.html").write_text(f"---\nsubject: {name}\n---\n<p>{name}</p>\n")
    path = tmp_path / f"{loop_id}.yaml"
    path.write_text(dedent(text))
    return load_loop(path, templates)


@pytest.fixture
def welcome(tmp_path: Path) -> Loop:
    return make_loop(tmp_path, "welcome", WELCOME)


@pytest.fixture
def milestone(tmp_path: Path) -> Loop:
    return make_loop(tmp_path, "ten", MILESTONE)


@pytest.fixture
def any_of(tmp_path: Path) -> Loop:
    return make_loop(tmp_path, "either", ANY_OF)


def stats(count: int, first_at: int, last_at: int | None = None, **reached: int) -> ActionStats:
    reached_at = {int(k.removeprefix("n")): v for k, v in reached.items()}
    return ActionStats(count, first_at, last_at or first_at, reached_at)


def snap(
    registered_at: int | None = T0,
    actions: dict[str, ActionStats] | None = None,
    steps: dict[str, StepState] | None = None,
    suppressed: bool = False,
) -> Snapshot:
    return Snapshot("user_1", registered_at, actions or {}, steps or {}, suppressed)


def status_of(decisions: Decisions, field: str) -> StepStatus | None:
    state = decisions.transitions.get(field)
    return state.status if state else None


def kinds(decisions: Decisions) -> list[tuple[str, int, str, str]]:
    return [(e.loop_id, e.step, e.kind, e.template) for e in decisions.emails]


# --- the activation step: condition, timeout, race --------------------------------------------


def test_registered_user_waits_until_the_deadline(welcome: Loop) -> None:
    decisions = evaluate([welcome], snap(), T0 + MIN)
    assert status_of(decisions, "welcome/0") is StepStatus.WAITING
    assert decisions.transitions["welcome/0"].deadline_at == T0 + 5 * MIN
    assert decisions.emails == []
    assert decisions.wake_at == T0 + 5 * MIN


def test_unregistered_user_starts_nothing(welcome: Loop) -> None:
    actions = {"first_project_created": stats(1, T0)}
    decisions = evaluate([welcome], snap(registered_at=None, actions=actions), T0)
    assert decisions.empty
    assert decisions.wake_at is None


def test_action_before_registration_satisfies_the_condition_at_once(welcome: Loop) -> None:
    actions = {"first_project_created": stats(1, T0 - 10 * MIN)}
    decisions = evaluate([welcome], snap(actions=actions), T0 + 1)
    assert status_of(decisions, "welcome/0") is StepStatus.FIRED
    assert kinds(decisions) == [("welcome", 0, "action", "welcome")]


def test_action_within_the_timeout_fires_the_action_not_the_nudge(welcome: Loop) -> None:
    actions = {"first_project_created": stats(1, T0 + 2 * MIN)}
    decisions = evaluate([welcome], snap(actions=actions), T0 + 2 * MIN)
    state = decisions.transitions["welcome/0"]
    assert (state.status, state.met_at, state.decided_at) == (
        StepStatus.FIRED,
        T0 + 2 * MIN,
        T0 + 2 * MIN,
    )
    assert state.email_job == email_id("user_1", "welcome", 0, "action")


def test_deadline_passed_without_the_action_sends_the_nudge(welcome: Loop) -> None:
    decisions = evaluate([welcome], snap(), T0 + 5 * MIN)
    assert status_of(decisions, "welcome/0") is StepStatus.TIMED_OUT
    assert kinds(decisions) == [("welcome", 0, "timeout", "nudge")]
    assert decisions.wake_at is None  # a timed-out step ends the loop


@pytest.mark.parametrize(
    ("met_offset_ms", "expected"),
    [
        pytest.param(5 * MIN - 1, StepStatus.FIRED, id="a-moment-before-the-deadline"),
        pytest.param(5 * MIN, StepStatus.FIRED, id="at-the-deadline"),
        pytest.param(5 * MIN + 1, StepStatus.TIMED_OUT, id="a-moment-after"),
    ],
)
def test_condition_met_near_the_deadline_is_judged_by_when_it_happened(
    welcome: Loop, met_offset_ms: int, expected: StepStatus
) -> None:
    # the worker looks late (deadline + 1 minute): what counts is when the action happened
    actions = {"first_project_created": stats(1, T0 + met_offset_ms)}
    decisions = evaluate([welcome], snap(actions=actions), T0 + 6 * MIN)
    assert status_of(decisions, "welcome/0") is expected
    assert len(decisions.emails) == 1


def test_a_decided_step_is_final_whatever_arrives_later(welcome: Loop) -> None:
    timed_out = StepState(
        status=StepStatus.TIMED_OUT,
        started_at=T0,
        deadline_at=T0 + 5 * MIN,
        decided_at=T0 + 5 * MIN,
    )
    actions = {"first_project_created": stats(1, T0 + MIN)}
    decisions = evaluate([welcome], snap(actions=actions, steps={"welcome/0": timed_out}), T0 + DAY)
    assert decisions.empty


def test_evaluating_twice_changes_nothing_the_second_time(welcome: Loop) -> None:
    actions = {"first_project_created": stats(1, T0 + MIN)}
    first = evaluate([welcome], snap(actions=actions), T0 + MIN)
    second = evaluate([welcome], snap(actions=actions, steps=first.transitions), T0 + MIN)
    assert second.emails == []
    assert "welcome/0" not in second.transitions


def test_suppressed_user_gets_the_decision_but_no_email(welcome: Loop) -> None:
    decisions = evaluate([welcome], snap(suppressed=True), T0 + 5 * MIN)
    assert status_of(decisions, "welcome/0") is StepStatus.TIMED_OUT
    assert decisions.emails == []
    assert decisions.transitions["welcome/0"].email_job is None


# --- sequences ------------------------------------------------------------------------------


def test_next_step_starts_after_its_delay_from_when_the_previous_acted(welcome: Loop) -> None:
    fired = StepState(status=StepStatus.FIRED, started_at=T0, decided_at=T0 + MIN, met_at=T0 + MIN)
    decisions = evaluate([welcome], snap(steps={"welcome/0": fired}), T0 + MIN)
    tips = decisions.transitions["welcome/1"]
    assert (tips.status, tips.started_at) == (StepStatus.WAITING, T0 + MIN + 2 * DAY)
    assert decisions.wake_at == T0 + MIN + 2 * DAY

    later = evaluate(
        [welcome], snap(steps={"welcome/0": fired, "welcome/1": tips}), tips.started_at
    )
    assert status_of(later, "welcome/1") is StepStatus.FIRED
    assert kinds(later) == [("welcome", 1, "action", "tips")]


def test_first_action_fires_the_step_and_the_sequence_continues_in_one_look(welcome: Loop) -> None:
    actions = {"first_project_created": stats(1, T0 + MIN)}
    decisions = evaluate([welcome], snap(actions=actions), T0 + MIN)
    assert status_of(decisions, "welcome/0") is StepStatus.FIRED
    assert status_of(decisions, "welcome/1") is StepStatus.WAITING


def test_a_timed_out_step_ends_the_sequence(welcome: Loop) -> None:
    decisions = evaluate([welcome], snap(), T0 + 3 * DAY)
    assert status_of(decisions, "welcome/0") is StepStatus.TIMED_OUT
    assert "welcome/1" not in decisions.transitions


# --- milestones and any_of -----------------------------------------------------------------------


@pytest.mark.parametrize(("count", "fires"), [(9, False), (10, True), (11, True)])
def test_milestone_fires_when_the_count_is_reached(
    milestone: Loop, count: int, fires: bool
) -> None:
    actions = {"project_created": stats(count, T0, T0 + count, n10=T0 + 10)}
    decisions = evaluate([milestone], snap(actions=actions), T0 + DAY)
    assert (status_of(decisions, "ten/0") is StepStatus.FIRED) is fires
    assert len(decisions.emails) == int(fires)


def test_milestone_fires_once(milestone: Loop) -> None:
    actions = {"project_created": stats(10, T0, T0 + 10, n10=T0 + 10)}
    first = evaluate([milestone], snap(actions=actions), T0 + DAY)
    more = {"project_created": stats(12, T0, T0 + 12, n10=T0 + 10)}
    again = evaluate([milestone], snap(actions=more, steps=first.transitions), T0 + 2 * DAY)
    assert again.empty


def test_milestone_needs_no_registration(milestone: Loop) -> None:
    actions = {"project_created": stats(10, T0, T0 + 10, n10=T0 + 10)}
    decisions = evaluate([milestone], snap(registered_at=None, actions=actions), T0 + DAY)
    assert status_of(decisions, "ten/0") is StepStatus.FIRED


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        pytest.param({"shared": stats(3, T0, T0 + 3, n3=T0 + 3)}, StepStatus.FIRED, id="second"),
        pytest.param({"invited": stats(3, T0, T0 + 3, n3=T0 + 3)}, StepStatus.FIRED, id="first"),
        pytest.param(
            {"invited": stats(2, T0), "shared": stats(2, T0)}, StepStatus.WAITING, id="2+2-is-not-3"
        ),
    ],
)
def test_any_of_is_met_by_one_action_reaching_the_count(
    any_of: Loop, actions: dict[str, ActionStats], expected: StepStatus
) -> None:
    decisions = evaluate([any_of], snap(actions=actions), T0 + MIN)
    assert status_of(decisions, "either/0") is expected


def test_any_of_uses_the_earliest_action_to_reach_the_count(any_of: Loop) -> None:
    actions = {
        "invited": stats(3, T0, T0 + 3 * MIN, n3=T0 + 3 * MIN),
        "shared": stats(3, T0, T0 + 2 * MIN, n3=T0 + 2 * MIN),
    }
    decisions = evaluate([any_of], snap(actions=actions), T0 + 4 * MIN)
    assert decisions.transitions["either/0"].met_at == T0 + 2 * MIN


def test_timeout_without_on_timeout_ends_quietly(any_of: Loop) -> None:
    decisions = evaluate([any_of], snap(), T0 + DAY)
    assert status_of(decisions, "either/0") is StepStatus.TIMED_OUT
    assert decisions.emails == []


def test_several_loops_wake_at_the_earliest_moment(welcome: Loop, any_of: Loop) -> None:
    decisions = evaluate([welcome, any_of], snap(), T0)
    assert decisions.wake_at == T0 + 5 * MIN


def test_tracked_counts_are_what_loops_wait_for(
    welcome: Loop, milestone: Loop, any_of: Loop
) -> None:
    assert tracked_counts([welcome, milestone, any_of]) == {
        "first_project_created": frozenset({1}),
        "project_created": frozenset({10}),
        "invited": frozenset({3}),
        "shared": frozenset({3}),
    }


def test_job_ids_are_deterministic() -> None:
    assert email_id("user_1", "welcome", 0, "action") == "email|user_1|welcome|0|action"
