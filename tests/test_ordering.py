"""Conditions are decided on the actions sorted by when they happened, whatever order the reports
arrive in and however late the worker looks: end to end on all three transports, and properties
(hypothesis) over random histories, arrival orders and evaluation times, through the real store."""

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

import httpx
import hypothesis
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from app.engine.evaluate import ActionStats, Snapshot, evaluate
from app.settings import Settings
from app.storage.connections import connect
from app.storage.keys import Keys
from app.storage.records import NewAction, UserProfile
from app.storage.store import Store
from tests.conftest import FakeClock, running, store_of, worker_of
from tests.support.constants import DAY, MIN, SEC
from tests.support.flow import act, emails, signup, state, step

PROPERTY = hypothesis.settings(
    deadline=None,
    database=None,
    # one app per test, shared by its examples; each example has users of its own
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], loops_dir: Path) -> Settings:
    """conftest's small loops: `welcome` (first_project_created within 5 m) and `ten`."""
    return make_settings(loops_dir=loops_dir)


# --- the reported defect, end to end ----------------------------------------------------------


async def test_an_early_action_reported_late_sends_the_welcome_not_the_nudge(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    signed_up_at = clock.now_ms
    await signup(client)
    await worker_of(app).drain()
    clock.advance(10 * MIN)  # the worker is late: the 5-minute deadline passed unlooked at

    await act(client, "first_project_created", occurred_at=signed_up_at + 7 * MIN, id="late")
    await act(client, "first_project_created", occurred_at=signed_up_at + SEC, id="early")
    await worker_of(app).drain()

    body = await state(client)
    assert step(body, "welcome", 0)["status"] == "fired"
    assert step(body, "welcome", 0)["condition_met_at"] == signed_up_at + SEC
    assert emails(body) == [("welcome", 0, "action", "sent")]


async def test_a_milestone_reported_out_of_order_is_reached_at_the_tenth_action_by_time(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    signed_up_at = clock.now_ms
    await signup(client)
    clock.advance(20 * MIN)
    # the 10th report to arrive is the 8th action by time; the 10th by time arrives last
    for minute in [12, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]:
        await act(client, "project_created", occurred_at=signed_up_at + minute * MIN)
    await worker_of(app).drain()

    ten = step(await state(client), "ten", 0)
    assert ten["status"] == "fired"
    assert ten["started_at"] == ten["condition_met_at"] == signed_up_at + 10 * MIN


# --- the worker's decisions equal those over the sorted history --------------------------------

ORDERING_LOOPS = {
    "first": """
        type: activation
        opinion: a first `made` within 5 minutes, then three in all within 10 minutes
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: made, count: 1, timeout: 5m}
            action: {type: email, template: t}
            on_timeout: {type: email, template: t}
          - delay: 1m
            condition: {type: action, action: made, count: 3, timeout: 10m}
            action: {type: email, template: t}
            on_timeout: {type: email, template: t}
        """,
    "pair": """
        type: activation
        opinion: two of either action within 8 minutes
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, any_of: [made, invited], count: 2, timeout: 8m}
            action: {type: email, template: t}
            on_timeout: {type: email, template: t}
        """,
    "fifth": """
        type: milestone
        opinion: an invitation within 3 minutes of the fifth `made`
        steps:
          - trigger: {type: action, action: made, count: 5}
            condition: {type: action, action: invited, count: 1, timeout: 3m}
            action: {type: email, template: t}
            on_timeout: {type: email, template: t}
        """,
}


@pytest.fixture
async def ordering_app(
    make_settings: Callable[..., Settings], tmp_path: Path, clock: FakeClock
) -> AsyncIterator[FastAPI]:
    """An app on the test's transport with the loops above (counts 1, 2, 3 and a milestone)."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.html").write_text("---\nsubject: t\n---\n<p>t</p>\n")
    for loop_id, text in ORDERING_LOOPS.items():
        (tmp_path / f"{loop_id}.yaml").write_text(dedent(text))
    async with running(make_settings(loops_dir=tmp_path), clock) as (application, _):
        yield application


@dataclass(frozen=True)
class History:
    """Actions (name, ms after signup), the order they arrive in, and when the worker looks."""

    actions: list[tuple[str, int]]
    order: list[int]
    waits_ms: list[int]  # the clock's move before each arrival
    looks_ms: list[list[int]]  # after signup and after each arrival: a clock move, then a look
    last_look_ms: int  # after everything arrived


seconds = st.integers(0, 8 * 60).map(lambda s: s * SEC)
looks = st.lists(seconds, max_size=2)


@st.composite
def histories(draw: st.DrawFn) -> History:
    # before signup, around the deadlines (5, 8 and 1 + 10 minutes) and well after them
    offsets = st.integers(-10 * 60, 25 * 60).map(lambda s: s * SEC)
    action = st.tuples(st.sampled_from(["made", "invited"]), offsets)
    actions = draw(st.lists(action, max_size=12))
    count = len(actions)
    return History(
        actions=actions,
        order=draw(st.permutations(range(count))),
        waits_ms=draw(st.lists(seconds, min_size=count, max_size=count)),
        looks_ms=draw(st.lists(looks, min_size=count + 1, max_size=count + 1)),
        last_look_ms=draw(st.integers(0, 30 * 60).map(lambda s: s * SEC)),
    )


def by_time(arrived: Sequence[tuple[str, int]]) -> dict[str, ActionStats]:
    """The reference: each action's stats from its times sorted, every count's time known."""
    times: dict[str, list[int]] = {}
    for name, at in arrived:
        times.setdefault(name, []).append(at)
    return {
        name: ActionStats(len(ats), min(ats), max(ats), dict(enumerate(sorted(ats), 1)))
        for name, ats in times.items()
    }


@dataclass
class Play:
    """One history played against the app: reports arrive, the worker looks now and then."""

    app: FastAPI
    clock: FakeClock

    async def check(self, user_id: str, arrived: Sequence[tuple[str, int]]) -> None:
        """The worker's decisions now are the engine's over the sorted history arrived so far."""
        evaluator = worker_of(self.app).evaluator
        record = await store_of(self.app).queries.snapshot(user_id)
        reference = Snapshot(user_id, record.registered_at_ms, by_time(arrived), record.steps)
        expected = evaluate(evaluator.loops.values(), reference, self.clock.now_ms)
        assert await evaluator.run(user_id) == expected

    async def run(self, history: History) -> None:
        store, tracked = store_of(self.app), self.app.state.runtime.tracked_counts
        # `watched` is looked at between arrivals; `once` only after everything arrived
        watched, once = (f"user_{kind}_{uuid.uuid4().hex[:12]}" for kind in ("watched", "once"))
        signed_up_at = await self.sign_up(watched, once)
        arrived: list[tuple[str, int]] = []
        await self.looks(watched, arrived, history.looks_ms[0])
        for index, wait_ms, looks_ms in zip(
            history.order, history.waits_ms, history.looks_ms[1:], strict=True
        ):
            name, offset_ms = history.actions[index]
            at = signed_up_at + offset_ms
            self.clock.now_ms = max(self.clock.now_ms + wait_ms, at)  # reported once it happened
            batch = [NewAction(uid, name, at, id=f"a{index}") for uid in (watched, once)]
            await store.actions.record(batch, now_ms=self.clock.now_ms, tracked=tracked)
            arrived.append((name, at))
            await self.looks(watched, arrived, looks_ms)
        await self.looks(watched, arrived, [history.last_look_ms])
        assert (
            await store.queries.snapshot(once)
        ).steps == {}  # its first look: on the whole history
        await self.check(once, arrived)

    async def sign_up(self, *user_ids: str) -> int:
        """Registers the users a day after the last example's: returns when."""
        self.clock.now_ms += DAY
        for uid in user_ids:
            profile = UserProfile(id=uid, email="ada@example.org")
            await store_of(self.app).users.record(
                f"msg_{uid}", profile, created=True, version_ms=1, now_ms=self.clock.now_ms
            )
        return self.clock.now_ms

    async def looks(
        self, user_id: str, arrived: Sequence[tuple[str, int]], moves_ms: list[int]
    ) -> None:
        for move_ms in moves_ms:
            self.clock.advance(move_ms)
            await self.check(user_id, arrived)


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
@hypothesis.settings(PROPERTY, max_examples=200)
@given(history=histories())
async def test_decisions_are_those_over_the_history_sorted_by_time(
    ordering_app: FastAPI, clock: FakeClock, history: History
) -> None:
    await Play(ordering_app, clock).run(history)


@pytest.mark.parametrize("transport", ["redis", "upstash"], indirect=True)
@hypothesis.settings(PROPERTY, max_examples=25)
@given(history=histories())
async def test_decisions_are_those_over_the_sorted_history_on_a_server(
    ordering_app: FastAPI, clock: FakeClock, history: History
) -> None:
    await Play(ordering_app, clock).run(history)


# --- the stored earliest times: whatever the order, the loops' counts change or the data's age ----


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    instance = Store(connect(settings), Keys(settings.key_prefix), webhook_dedupe_ttl_s=3600)
    yield instance
    await instance.close()


async def stored_times(store: Store, user_id: str) -> list[int]:
    """The earliest times kept of action `x`: the second part of its `a:x` field."""
    raw = await store.conn.call("HGET", store.keys.user(user_id), "a:x")
    head, times = (str(raw) + ";;").split(";")[:2] if raw else ("0,0,0", "")
    first = int(head.split(",")[1])
    return [first + int(offset) for offset in times.split(",") if offset]  # ms after the first


@pytest.mark.parametrize("transport", ["embedded"], indirect=True)
@hypothesis.settings(PROPERTY, max_examples=100)
@given(arrivals=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5)), min_size=1, max_size=12))
async def test_the_stored_times_are_always_the_earliest_whatever_the_counts_tracked(
    store: Store, arrivals: list[tuple[int, int]]
) -> None:
    """Each report carries the loops' counts of that moment (deploys add or drop loops)."""
    uid = f"user_{uuid.uuid4().hex[:12]}"
    arrived: list[int] = []
    for at, largest in arrivals:
        tracked = {"x": range(1, largest + 1)}
        await store.actions.record([NewAction(uid, "x", at)], now_ms=100, tracked=tracked)
        arrived.append(at)
        truth = sorted(arrived)
        kept = await stored_times(store, uid)
        assert kept == truth[: len(kept)]
        if all(keep == largest for _, keep in arrivals[: len(arrived)]):
            assert len(kept) == min(len(arrived), largest)
        stats = (await store.queries.snapshot(uid)).actions["x"]
        for count in range(1, len(arrived) + 1):
            reached = stats.time_count_reached(count)
            assert reached is not None
            assert reached >= truth[count - 1]  # never early
            if count <= len(kept):
                assert reached == truth[count - 1]


async def test_a_count_past_the_cap_is_the_latest_time_when_reached(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.storage.actions.MAX_RANKED_TIMES", 3)
    for at in [50, 10, 40, 20, 30, 5]:  # the 5th to arrive comes when the latest is 50
        await store.actions.record([NewAction("user_c", "x", at)], now_ms=100, tracked={"x": [5]})

    assert await stored_times(store, "user_c") == [5, 10, 20]
    stats = (await store.queries.snapshot("user_c")).actions["x"]
    assert stats.time_count_reached(5) == 50  # an upper bound: by time, the 5th is 40
    assert stats.time_count_reached(3) == 20


async def test_activity_stored_before_the_earliest_times_were_kept_still_reads(
    store: Store,
) -> None:
    """Old data (v1's `at:<a>:<n>`, moved to bounds): when the n-th report arrived; the next
    report keeps what is known."""
    old = {"a:x": "2,100,300;;1=300,2=100", "rev": 2}
    user = store.keys.user("user_old")
    await store.conn.call("HSET", user, *(part for pair in old.items() for part in pair))
    assert (await store.queries.snapshot("user_old")).actions["x"].reached_at == {1: 300, 2: 100}

    await store.actions.record([NewAction("user_old", "x", 50)], now_ms=400, tracked={"x": [1, 3]})

    stats = (await store.queries.snapshot("user_old")).actions["x"]
    assert await stored_times(store, "user_old") == [50, 100]  # the earliest is always known
    assert (stats.count, stats.first_at, stats.last_at) == (3, 50, 300)
    assert stats.reached_at == {1: 50, 2: 100, 3: 300}
