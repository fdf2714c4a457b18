"""`within:` on an action trigger or condition: only actions that happened (`occurred_at`) within
that long after signup count, whatever order they are reported in; after the window the step can
no longer fire. The engine's rules (pure), the loader's refusals, properties over arrival orders
(through the store, and through HTTP with the worker, on all three transports), and the flow over
HTTP, on every transport and on a Redis Cluster."""

import dataclasses
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import hypothesis
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from app.engine.evaluate import (
    ActionStats,
    Snapshot,
    StepState,
    StepStatus,
    evaluate,
    tracked_counts,
)
from app.engine.funnel import late_activations, step_counters
from app.engine.loop_loading import load_loop, load_loops
from app.engine.loop_schema import loop_json_schema
from app.engine.loops import DURATION_PATTERN, ActionTrigger, Loop
from app.errors import LoopFileError
from app.settings import Settings
from app.storage.records import NewAction
from tests.conftest import AUTH, FakeClock, running, store_of, worker_of
from tests.standins.redis_cluster import LocalCluster
from tests.support.constants import DAY, HOUR, MIN
from tests.support.flow import act, signup, state, step
from tests.support.within import LOOPS, write_loops

T0 = 1_700_000_000_000  # the signup, in the engine's tests


@pytest.fixture
def loops(tmp_path: Path) -> dict[str, Loop]:
    return load_loops(write_loops(tmp_path / "loops"))


def ranked(*times: int) -> ActionStats:
    """An action done at these times, as the store keeps it: every earliest time ranked."""
    ordered = sorted(times)
    reached = dict(enumerate(ordered, 1))
    return ActionStats(len(ordered), ordered[0], ordered[-1], reached)


def snap(
    actions: dict[str, ActionStats],
    steps: dict[str, StepState] | None = None,
    registered_at: int | None = T0,
) -> Snapshot:
    return Snapshot("user_w", registered_at, actions, steps or {})


# --- the engine: a windowed trigger ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "fired_at"),
    [
        ((T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY), T0 + 3 * DAY),
        ((T0 + 7 * DAY, T0 + DAY, T0 + 2 * DAY), T0 + 7 * DAY),  # the window's end counts
        ((T0 - HOUR, T0 - MIN, T0 + DAY), T0 + DAY),  # stamped before the signup: they count
        ((T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY, T0 + 9 * DAY), T0 + 3 * DAY),
    ],
)
def test_a_windowed_trigger_fires_when_the_count_was_reached_within_the_window(
    loops: dict[str, Loop], times: tuple[int, ...], fired_at: int
) -> None:
    loop = loops["three_projects"]
    for now in (fired_at, T0 + 30 * DAY):  # looked at once reached, or long after: the same
        decided = evaluate([loop], snap({"project_created": ranked(*times)}), now)
        fired = decided.transitions["three_projects/0"]
        assert (fired.status, fired.started_at, fired.met_at) == (StepStatus.FIRED, *[fired_at] * 2)
        assert [email.template for email in decided.emails] == ["three_projects"]


def test_before_its_end_a_window_waits_and_wakes_at_its_end(loops: dict[str, Loop]) -> None:
    two = {"project_created": ranked(T0 + DAY, T0 + 2 * DAY)}
    decided = evaluate([loops["three_projects"]], snap(two), T0 + 7 * DAY - 1)
    assert decided.empty
    assert decided.wake_at == T0 + 7 * DAY


@pytest.mark.parametrize(
    "times",
    [
        (T0 + DAY, T0 + 2 * DAY),
        (T0 + DAY, T0 + 2 * DAY, T0 + 7 * DAY + 1),  # the third a millisecond too late
        (T0 + 8 * DAY, T0 + 9 * DAY, T0 + 10 * DAY),
    ],
)
def test_at_the_window_end_without_the_count_the_step_closes_for_good(
    loops: dict[str, Loop], times: tuple[int, ...]
) -> None:
    loop = loops["three_projects"]
    now = max(T0 + 7 * DAY, *times)
    decided = evaluate([loop], snap({"project_created": ranked(*times)}), now)
    closed = decided.transitions["three_projects/0"]
    assert closed == StepState(
        status=StepStatus.CLOSED, started_at=T0, deadline_at=T0 + 7 * DAY, decided_at=now
    )
    assert (decided.emails, decided.wake_at) == ([], None)

    # final: a report arriving later, even of an action inside the window, changes nothing
    late = ranked(*times, T0 + 3 * DAY, T0 + 4 * DAY, T0 + 5 * DAY)
    again = evaluate([loop], snap({"project_created": late}, {"three_projects/0": closed}), now)
    assert again.empty


def test_without_a_known_signup_a_window_has_not_begun(loops: dict[str, Loop]) -> None:
    three = {"project_created": ranked(T0, T0 + MIN, T0 + 2 * MIN)}
    decided = evaluate([loops["three_projects"]], snap(three, registered_at=None), T0 + 30 * DAY)
    assert decided.empty
    assert decided.wake_at is None


def test_a_closed_trigger_enters_nobody_in_the_funnel(loops: dict[str, Loop]) -> None:
    loop = loops["three_projects"]
    decided = evaluate([loop], snap({}), T0 + 7 * DAY)
    assert step_counters([loop], {}, decided.transitions, {}) == []


# --- the engine: a windowed condition -------------------------------------------------------------


def test_a_windowed_condition_without_timeout_waits_until_the_window_end(
    loops: dict[str, Loop],
) -> None:
    loop = loops["first_week"]
    one = {"page_published": ranked(T0 + DAY)}
    waiting = evaluate([loop], snap(one), T0 + DAY)
    state_0 = waiting.transitions["first_week/0"]
    assert (state_0.status, state_0.deadline_at, waiting.wake_at) == (
        StepStatus.WAITING, None, T0 + 7 * DAY,
    )  # fmt: skip

    late_second = {"page_published": ranked(T0 + DAY, T0 + 7 * DAY + 1)}
    ended = evaluate([loop], snap(late_second, {"first_week/0": state_0}), T0 + 8 * DAY)
    timed_out = ended.transitions["first_week/0"]
    assert (timed_out.status, timed_out.met_at, timed_out.email_job) == (
        StepStatus.TIMED_OUT, None, None,
    )  # fmt: skip
    assert ended.emails == []  # nothing to send: on_timeout needs a timeout
    assert "first_week/1" not in ended.transitions  # the loop ends there
    counters = step_counters([loop], {"first_week/0": state_0}, ended.transitions, {})
    assert [counter.field for counter in counters] == ["timed_out"]


def test_a_windowed_condition_met_in_time_fires_even_when_looked_at_late(
    loops: dict[str, Loop],
) -> None:
    two = {"page_published": ranked(T0 + DAY, T0 + 7 * DAY)}
    decided = evaluate([loops["first_week"]], snap(two), T0 + 9 * DAY)
    fired = decided.transitions["first_week/0"]
    assert (fired.status, fired.met_at) == (StepStatus.FIRED, T0 + 7 * DAY)
    assert decided.transitions["first_week/1"].started_at == T0 + 10 * DAY


def test_a_condition_with_a_timeout_times_out_at_it_whatever_the_window(
    loops: dict[str, Loop],
) -> None:
    """`invited`: any of two actions within 1d of signup, timeout 3d, then the nudge."""
    loop = loops["invited"]
    after_the_window = {"invite_sent": ranked(T0 + 2 * DAY)}
    waiting = evaluate([loop], snap(after_the_window), T0 + 2 * DAY)
    assert waiting.transitions["invited/0"].status is StepStatus.WAITING
    assert waiting.wake_at == T0 + 3 * DAY  # its deadline: the window's end decides nothing

    stored = {"invited/0": waiting.transitions["invited/0"]}
    timed_out = evaluate([loop], snap(after_the_window, stored), T0 + 3 * DAY)
    assert timed_out.transitions["invited/0"].status is StepStatus.TIMED_OUT
    assert [(e.kind, e.template) for e in timed_out.emails] == [("timeout", "nudge")]

    in_time = {"invite_sent": ranked(T0 + 2 * DAY), "link_shared": ranked(T0 + 20 * HOUR)}
    fired = evaluate([loop], snap(in_time), T0 + 2 * DAY).transitions["invited/0"]
    assert (fired.status, fired.met_at) == (StepStatus.FIRED, T0 + 20 * HOUR)


def test_a_late_activation_counts_only_within_the_window(tmp_path: Path) -> None:
    folder = write_loops(tmp_path / "loops", {"late": """
        type: activation
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: page_published, within: 7d, timeout: 1d}
            action: {type: email, template: welcome}
            on_timeout: {type: email, template: nudge}
    """})  # fmt: skip
    loop = load_loops(folder)["late"]
    timed_out = evaluate([loop], snap({}), T0 + DAY).transitions
    assert timed_out["late/0"].status is StepStatus.TIMED_OUT

    inside = {"page_published": ranked(T0 + 3 * DAY)}
    late = late_activations([loop], timed_out, inside, T0)
    assert late["late/0"].met_at == T0 + 3 * DAY
    outside = {"page_published": ranked(T0 + 8 * DAY)}
    assert late_activations([loop], timed_out, outside, T0) == {}
    assert late_activations([loop], timed_out, inside, None) == {}  # no signup: no window


def test_windowed_counts_are_tracked_so_their_times_are_kept(loops: dict[str, Loop]) -> None:
    assert tracked_counts(loops.values()) == {
        "project_created": frozenset({3}),
        "page_published": frozenset({2}),
        "invite_sent": frozenset({1}),
        "link_shared": frozenset({1}),
        "task_done": frozenset({3}),
    }


# --- loading --------------------------------------------------------------------------------------


def test_within_is_read_on_action_triggers_and_conditions(loops: dict[str, Loop]) -> None:
    trigger = loops["three_projects"].steps[0].trigger
    assert trigger == ActionTrigger("project_created", 3, None, 7 * DAY)
    first_week, invited = (
        loops["first_week"].steps[0].condition,
        loops["invited"].steps[0].condition,
    )
    assert first_week is not None
    assert invited is not None
    assert (first_week.within_ms, first_week.timeout_ms) == (7 * DAY, None)
    assert (invited.actions, invited.within_ms, invited.timeout_ms) == (
        ("invite_sent", "link_shared"), DAY, 3 * DAY,
    )  # fmt: skip


NOT_A_DURATION = "is not a duration like 30s, 5m, 2h, 3d"
REGISTRATION = "a registration trigger has no window: it is the signup `within` counts from"
THREE = {"type": "action", "action": "project_created", "count": 3}
PAGES = {"type": "action", "action": "page_published", "count": 2}


@pytest.mark.parametrize(
    ("loop_type", "trigger", "condition", "field", "reason"),
    [
        ("milestone", {**THREE, "within": "7 days"}, None, "steps[0].trigger.within",
         f"'7 days' {NOT_A_DURATION}"),
        ("milestone", {**THREE, "within": 7}, None, "steps[0].trigger.within",
         f"7 {NOT_A_DURATION}"),
        ("milestone", {**THREE, "within": "0d"}, None, "steps[0].trigger.within",
         "'0d' is zero: a duration must be longer, like 30s, 5m, 2h, 3d"),
        ("milestone", {**THREE, "within": "6000w"}, None, "steps[0].trigger.within",
         "'6000w' is longer than 100 years"),
        ("milestone", {**THREE, "within": None}, None, "steps[0].trigger.within",
         "empty: give a value or leave the key out"),
        ("milestone", {**THREE, "count": 1001, "within": "7d"}, None, "steps[0].trigger.within",
         "within needs a count of at most 1000 (the service keeps that many earliest times per "
         "action), not 1001"),
        ("activation", {"type": "database", "table": "users", "event": "insert", "within": "7d"},
         PAGES, "steps[0].trigger.within", REGISTRATION),
        ("activation", {"type": "clerk", "event": "user.created", "within": "7d"}, PAGES,
         "steps[0].trigger.within", REGISTRATION),
        ("activation", {"type": "clerk", "event": "user.created"},
         {**PAGES, "within": "1 week"}, "steps[0].condition.within", f"'1 week' {NOT_A_DURATION}"),
        ("activation", {"type": "clerk", "event": "user.created"},
         {**PAGES, "count": 5000, "within": "1w"}, "steps[0].condition.within",
         "within needs a count of at most 1000"),
        ("activation", {"type": "clerk", "event": "user.created"},
         {"type": "query", "within": "7d",
          "query": "SELECT * FROM user_actions WHERE user_id = $1 AND action_type = 'x'"},
         "steps[0].condition.within",
         "within goes on a type: action condition (or an action trigger), not a query"),
    ],
)  # fmt: skip
def test_within_mistakes_are_refused_with_the_reason(
    tmp_path: Path,
    loop_type: str,
    trigger: dict[str, Any],
    condition: dict[str, Any] | None,
    field: str,
    reason: str,
) -> None:
    step_spec: dict[str, Any] = {
        "trigger": trigger,
        "action": {"type": "email", "template": "tips"},
    }
    if condition is not None:
        step_spec["condition"] = condition
    folder = write_loops(tmp_path / "loops", {})
    (folder / "bad.yaml").write_text(json.dumps({"type": loop_type, "steps": [step_spec]}))
    with pytest.raises(LoopFileError) as refused:
        load_loop(folder / "bad.yaml", folder / "templates")
    assert refused.value.field == field
    assert reason in refused.value.reason


def test_a_count_over_the_kept_times_is_fine_without_a_window(tmp_path: Path) -> None:
    loop = dedent("""
        type: milestone
        steps:
          - trigger: {type: action, action: project_created, count: 5000}
            action: {type: email, template: tips}
    """)
    folder = write_loops(tmp_path / "loops", {"many": loop})
    assert load_loops(folder)["many"].steps[0].trigger == ActionTrigger("project_created", 5000)


def test_the_schema_offers_within_where_the_loader_takes_it() -> None:
    defs = loop_json_schema()["$defs"]
    for spec in ("ActionTriggerSpec", "ActionConditionSpec"):
        within = defs[spec]["properties"]["within"]
        assert within["pattern"] == DURATION_PATTERN
        assert "after signup" in within["description"]
    for spec in ("DatabaseTriggerSpec", "ClerkTriggerSpec", "QueryConditionSpec"):
        assert "within" not in defs[spec]["properties"]
        assert defs[spec]["additionalProperties"] is False


# --- properties: the window decides by occurred_at, whatever the arrival order --------------------

PROPERTY = hypothesis.settings(
    deadline=None,
    database=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WINDOW_END = 60 * MIN  # quick_start: task_done x3 within 1h
# occurred-at times around the window's end (from the signup), its very edge often
NEAR_THE_END = st.one_of(
    st.integers(-30 * MIN, 2 * HOUR),
    st.sampled_from([WINDOW_END - 1, WINDOW_END, WINDOW_END + 1]),
)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(loops_dir=write_loops(tmp_path / "loops"))


def expected_fire(occurred: list[int], count: int, end: int) -> int | None:
    """When the count was reached within the window, from the occurred-at times alone."""
    ordered = sorted(occurred)
    return ordered[count - 1] if len(ordered) >= count and ordered[count - 1] <= end else None


@PROPERTY
@given(
    offsets=st.lists(NEAR_THE_END, max_size=8),
    order=st.randoms(use_true_random=False),
    count=st.integers(1, 4),
)
async def test_the_stored_times_decide_the_window_whatever_the_arrival_order(
    app: FastAPI, offsets: list[int], order: Any, count: int
) -> None:
    """The actions recorded one report at a time in a random order; the engine then looks at the
    stored times after the window's end: it fires at the count-th earliest time if that is inside
    the window, else the step closes."""
    quick = app.state.runtime.loops["quick_start"]
    step_0 = dataclasses.replace(
        quick.steps[0], trigger=ActionTrigger("task_done", count, None, HOUR)
    )
    loop = dataclasses.replace(quick, steps=(step_0,))
    store = store_of(app)
    user = f"user_wp{uuid.uuid4().hex[:10]}"
    actions = [
        NewAction(user, "task_done", T0 + offset, id=f"a{i}") for i, offset in enumerate(offsets)
    ]
    order.shuffle(actions)
    for action in actions:
        now = T0 + 3 * HOUR
        await store.actions.record([action], now_ms=now, tracked=tracked_counts([loop]))
    record = await store.queries.snapshot(user)
    snapshot = Snapshot(user, T0, record.actions, {})

    fire_at = expected_fire([T0 + offset for offset in offsets], count, T0 + WINDOW_END)
    decided = evaluate([loop], snapshot, T0 + 3 * HOUR).transitions["quick_start/0"]
    if fire_at is None:
        assert (decided.status, decided.deadline_at) == (StepStatus.CLOSED, T0 + WINDOW_END)
    else:
        assert (decided.status, decided.started_at) == (StepStatus.FIRED, fire_at)


ARRIVAL = st.tuples(
    NEAR_THE_END,  # when it happened, from the signup
    st.integers(0, 40 * MIN),  # how long after that (and after the signup) it is reported
    st.booleans(),  # whether the worker runs right after the report
)


@PROPERTY
@given(arrivals=st.lists(ARRIVAL, max_size=6))
async def test_over_http_the_outcome_depends_only_on_the_times_reported_before_the_close(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, arrivals: list[tuple[int, int, bool]]
) -> None:
    """Reports come in the order they arrive (not the order the actions happened), the worker
    runs after some of them, and once more when the window has ended. The step fired, with one
    email, exactly when the actions reported before the worker's first look past the window's
    end reached the count inside the window; else it closed, with none."""
    user = f"user_wh{uuid.uuid4().hex[:10]}"
    clock.advance(DAY)
    signed_up = clock.now_ms
    await signup(client, user)
    end = signed_up + WINDOW_END
    seen: list[int] = []  # occurred-at times reported before the worker's first look past `end`
    closing = False
    reports = sorted(
        (signed_up + max(at, 0) + delay, signed_up + at, run) for at, delay, run in arrivals
    )
    for arrives, occurred, run in reports:
        clock.now_ms = max(clock.now_ms, arrives)
        await act(client, "task_done", user, occurred_at=occurred)
        seen += [] if closing else [occurred]
        if run:
            await worker_of(app).drain()
            closing = closing or clock.now_ms >= end
    clock.now_ms = max(clock.now_ms, end)
    await worker_of(app).drain()

    body = await state(client, user)
    fire_at = expected_fire(seen, 3, end)
    quick = step(body, "quick_start", 0)
    assert quick["status"] == ("closed" if fire_at is None else "fired")
    assert quick["window_until"] == (end if fire_at is None else None)  # fired: decided nothing
    sent = [email for email in body["emails"] if email["loop"] == "quick_start"]
    assert [email["status"] for email in sent] == ([] if fire_at is None else ["sent"])


# --- end to end, over HTTP ------------------------------------------------------------------------


def loop_emails(body: dict[str, Any], loop_id: str) -> list[tuple[str, str, str]]:
    return [(e["kind"], e["template"], e["status"]) for e in body["emails"] if e["loop"] == loop_id]


async def three_projects_out_of_order(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, user: str
) -> int:
    """A signup, then three projects within 7 days, reported out of order; returns the signup."""
    signed_up = clock.now_ms
    await signup(client, user)
    await worker_of(app).drain()
    clock.now_ms = signed_up + 2 * DAY
    await act(client, "project_created", user)
    clock.now_ms = signed_up + 5 * DAY
    await act(client, "project_created", user, occurred_at=signed_up + DAY)  # reported late
    await worker_of(app).drain()
    waiting = step(await state(client, user), "three_projects", 0)
    assert (waiting["status"], waiting["window_until"]) == ("not_started", signed_up + 7 * DAY)

    clock.now_ms = signed_up + 6 * DAY
    await act(client, "project_created", user, occurred_at=signed_up + 3 * DAY)
    await worker_of(app).drain()
    return signed_up


async def test_three_projects_within_7_days_send_the_milestone_once(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    user = "user_three_in_time"
    signed_up = await three_projects_out_of_order(client, app, clock, user)
    body = await state(client, user)
    fired = step(body, "three_projects", 0)
    assert fired["status"] == "fired"
    assert fired["started_at"] == signed_up + 3 * DAY  # the third by when it happened
    assert loop_emails(body, "three_projects") == [("action", "three_projects", "sent")]

    clock.now_ms = signed_up + 8 * DAY
    await act(client, "project_created", user)
    await worker_of(app).drain()
    body = await state(client, user)
    assert loop_emails(body, "three_projects") == [("action", "three_projects", "sent")]


async def test_projects_after_the_window_send_nothing_and_the_step_closes(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    user = "user_three_too_late"
    signed_up = clock.now_ms
    await signup(client, user)
    for day in (1, 2):
        clock.now_ms = signed_up + day * DAY
        await act(client, "project_created", user)
    await worker_of(app).drain()
    clock.now_ms = signed_up + 7 * DAY - 1
    await worker_of(app).drain()
    assert step(await state(client, user), "three_projects", 0)["status"] == "not_started"

    clock.now_ms = signed_up + 7 * DAY  # the window's end: the worker is woken for it
    await worker_of(app).drain()
    closed = step(await state(client, user), "three_projects", 0)
    assert (closed["status"], closed["decided_at"], closed["window_until"]) == (
        "closed", signed_up + 7 * DAY, signed_up + 7 * DAY,
    )  # fmt: skip

    clock.now_ms = signed_up + 8 * DAY
    await act(client, "project_created", user)  # the third, at day 8
    clock.now_ms = signed_up + 9 * DAY
    await act(client, "project_created", user, occurred_at=signed_up + 3 * DAY)  # after the close
    await worker_of(app).drain()
    body = await state(client, user)
    assert step(body, "three_projects", 0)["status"] == "closed"
    assert loop_emails(body, "three_projects") == []
    events = [(e["event"], e.get("step")) for e in body["timeline"]]
    assert ("step.closed", "three_projects/0") in events
    assert ("step.waiting", "three_projects/0") not in events
    figures = (await client.get("/v1/loops", headers=AUTH)).json()["loops"]
    assert next(loop for loop in figures if loop["id"] == "three_projects")["entered"] == 0


async def test_a_report_arriving_after_the_window_counts_by_when_it_happened(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    """The worker looks after the report: what decides is occurred_at, not arrival."""
    user = "user_three_reported_late"
    signed_up = clock.now_ms
    await signup(client, user)
    await act(client, "project_created", user)
    await act(client, "project_created", user)
    clock.now_ms = signed_up + 7 * DAY + HOUR
    await act(client, "project_created", user, occurred_at=signed_up + 6 * DAY)
    await worker_of(app).drain()
    body = await state(client, user)
    assert step(body, "three_projects", 0)["started_at"] == signed_up + 6 * DAY
    assert loop_emails(body, "three_projects") == [("action", "three_projects", "sent")]


async def test_a_windowed_condition_times_out_at_the_window_end_with_nothing_sent(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    late, keen = "user_pages_late", "user_pages_keen"
    signed_up = clock.now_ms
    for user in (late, keen):
        await signup(client, user)
    await worker_of(app).drain()
    waiting = step(await state(client, late), "first_week", 0)
    assert (waiting["status"], waiting["waiting_until"], waiting["window_until"]) == (
        "waiting", signed_up + 7 * DAY, signed_up + 7 * DAY,
    )  # fmt: skip

    clock.now_ms = signed_up + 6 * DAY
    for user in (late, keen):
        await act(client, "page_published", user)
    await act(client, "page_published", keen, occurred_at=signed_up + DAY)
    await worker_of(app).drain()
    clock.now_ms = signed_up + 7 * DAY
    await worker_of(app).drain()
    clock.now_ms = signed_up + 8 * DAY
    await act(client, "page_published", late)  # the second, a day late
    await worker_of(app).drain()

    late_body, keen_body = await state(client, late), await state(client, keen)
    assert step(late_body, "first_week", 0)["status"] == "timed_out"
    assert step(late_body, "first_week", 0)["decided_at"] == signed_up + 7 * DAY
    assert step(late_body, "first_week", 1)["status"] == "not_started"
    assert loop_emails(late_body, "first_week") == []
    assert step(keen_body, "first_week", 0)["status"] == "fired"
    assert loop_emails(keen_body, "first_week") == [
        ("action", "welcome", "sent"),
        ("action", "tips", "sent"),  # a day after the welcome
    ]
    figures = (await client.get("/v1/loops", headers=AUTH)).json()["loops"]
    first_week = next(loop for loop in figures if loop["id"] == "first_week")
    assert (first_week["entered"], first_week["timed_out"], first_week["waiting"]) == (2, 1, 0)


async def test_a_windowed_condition_with_a_timeout_nudges_at_the_timeout(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    user = "user_invites_late"
    signed_up = clock.now_ms
    await signup(client, user)
    clock.now_ms = signed_up + 2 * DAY
    await act(client, "invite_sent", user)  # after its 1d window: too late to fire
    await worker_of(app).drain()
    assert step(await state(client, user), "invited", 0)["status"] == "waiting"
    clock.now_ms = signed_up + 3 * DAY
    await worker_of(app).drain()
    body = await state(client, user)
    assert step(body, "invited", 0)["status"] == "timed_out"
    assert loop_emails(body, "invited") == [("timeout", "nudge", "sent")]


on_redis = pytest.mark.parametrize("transport", ["redis"], indirect=True)


@on_redis
async def test_three_projects_within_7_days_on_a_redis_cluster(
    make_settings: Callable[..., Settings],
    redis_cluster: LocalCluster,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    folder = write_loops(tmp_path / "cluster_loops", {"three_projects": LOOPS["three_projects"]})
    cluster = make_settings(redis_url=redis_cluster.url, loops_dir=folder)
    async with running(cluster, clock) as (app, http):
        signed_up = await three_projects_out_of_order(http, app, clock, "user_three_cluster")
        body = await state(http, "user_three_cluster")
        assert step(body, "three_projects", 0)["started_at"] == signed_up + 3 * DAY
        assert loop_emails(body, "three_projects") == [("action", "three_projects", "sent")]
