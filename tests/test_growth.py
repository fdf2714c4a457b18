"""Growth features end to end, on all three transports: conditions on what the action was
(`where:`, and the SQL form over `properties`), audiences and variants on the Clerk profile,
holdouts and experiments with their figures (`GET /v1/loops`: the pooled uplift against the
holdout, and an experiment's arms against each other, `vs_arms`); and properties (hypothesis)
that a filtered condition decides as the filter over the whole sorted history would, that the
holdout's share holds over many users, and which arms `vs_arms` compares."""

import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import hypothesis
import pytest
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from app.engine.assign import PLACES, arm_of, place
from app.engine.evaluate import condition_met_at, tracked_counts, watched_filters
from app.engine.funnel import compared_arms, loop_summary
from app.engine.loop_loading import load_loop, load_loops
from app.engine.loops import ActionCondition
from app.engine.measure import Rate, uplift
from app.errors import LoopFileError
from app.settings import Settings
from app.storage.records import NewAction
from tests.conftest import (
    AUTH,
    FakeClock,
    load_fixture,
    post_webhook,
    running,
    store_of,
    worker_of,
)
from tests.support.constants import DAY, MIN
from tests.support.flow import act, state, step
from tests.support.growth import EXPERIMENTS, LOOPS, users_in_arm, write_loops


@pytest.fixture
def growth_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "loops"
    folder.mkdir()
    return write_loops(folder, LOOPS)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], growth_dir: Path) -> Settings:
    return make_settings(loops_dir=growth_dir)


def outside_holdout(loop_id: str, prefix: str, holdout_bp: int, count: int = 1) -> list[str]:
    """User ids whose place puts them in the treatment of a loop with this holdout."""
    found = []
    while len(found) < count:
        user_id = f"user_{prefix}{uuid.uuid4().hex[:12]}"
        if place(loop_id, user_id) >= holdout_bp:
            found.append(user_id)
    return found


def in_holdout(loop_id: str, prefix: str, holdout_bp: int) -> str:
    while True:
        user_id = f"user_{prefix}{uuid.uuid4().hex[:12]}"
        if place(loop_id, user_id) < holdout_bp:
            return user_id


async def signup(
    client: httpx.AsyncClient, user_id: str, email: str = "ada@acme.dev", **profile: Any
) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"]["id"] = user_id
    event["data"]["email_addresses"][0]["email_address"] = email
    event["data"].update(profile)
    response = await post_webhook(client, json.dumps(event).encode())
    assert response.status_code == 200, response.text


async def sent_templates(app: FastAPI, user_id: str) -> list[str]:
    record = await store_of(app).queries.snapshot(user_id)
    return sorted(job.template for job in record.jobs.values())


async def figures(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/loops", headers=AUTH)
    assert response.status_code == 200, response.text
    return {loop["id"]: loop for loop in response.json()["loops"]}


# --- where: only matching actions count --------------------------------------------------------


async def test_only_actions_whose_properties_match_count(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    (user,) = outside_holdout("team", "where", 2000)
    await signup(client, user)
    await worker_of(app).drain()
    await act(client, "project_created", user, properties={"members": 5, "template": "blank"})
    await act(client, "project_created", user, properties={"members": 2, "template": "saas"})
    await act(client, "project_created", user)  # no properties: nothing to match
    await worker_of(app).drain()
    assert step(await state(client, user), "team", 0)["status"] == "waiting"

    clock.advance(MIN)
    await act(client, "project_created", user, properties={"members": 3, "template": "saas"})
    await worker_of(app).drain()
    body = await state(client, user)
    assert step(body, "team", 0)["status"] == "fired"
    assert step(body, "team", 0)["condition_met_at"] == clock.now_ms
    assert body["actions"] == {"project_created": 4}  # the filtered count is not an action
    assert await sent_templates(app, user) == ["welcome"]


async def test_a_matching_action_reported_before_signup_counts(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    (user,) = outside_holdout("team", "early", 2000)
    early = clock.now_ms
    await act(client, "project_created", user, properties={"members": 4, "template": "saas"})
    clock.advance(MIN)
    await signup(client, user)
    await worker_of(app).drain()
    assert step(await state(client, user), "team", 0)["condition_met_at"] == early


async def test_a_filtered_trigger_fires_on_the_first_matching_action(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await signup(client, "user_upgrade1")
    await act(client, "plan_changed", "user_upgrade1", properties={"plan": "hobby"})
    await worker_of(app).drain()
    assert step(await state(client, "user_upgrade1"), "upgrade", 0)["status"] == "not_started"
    await act(client, "plan_changed", "user_upgrade1", properties={"plan": "team"})
    await worker_of(app).drain()
    assert "upgraded" in await sent_templates(app, "user_upgrade1")


async def test_the_sql_form_filters_on_properties(client: httpx.AsyncClient, app: FastAPI) -> None:
    await signup(client, "user_sql1")
    await act(client, "invite_sent", "user_sql1", properties={"count": 1})
    await act(client, "invite_sent", "user_sql1", properties={"count": "x"})  # not a number
    await worker_of(app).drain()
    assert step(await state(client, "user_sql1"), "sql", 0)["status"] == "waiting"
    await act(client, "invite_sent", "user_sql1", properties={"count": "2"})  # text, cast
    await worker_of(app).drain()
    assert step(await state(client, "user_sql1"), "sql", 0)["status"] == "fired"


# --- audience, variants, holdout -----------------------------------------------------------------


async def test_the_audience_is_checked_when_the_trigger_fires(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    (outsider,) = outside_holdout("team", "out", 2000)
    await signup(client, outsider, email="ada@example.org")
    await worker_of(app).drain()
    await act(client, "project_created", outsider, properties={"members": 3, "template": "saas"})
    await worker_of(app).drain()
    assert step(await state(client, outsider), "team", 0)["status"] == "excluded"
    assert "welcome" not in await sent_templates(app, outsider)
    counters = (await store_of(app).queries.read_stats(["team"], [])).loops["team"]
    assert counters.get("excluded") == 1
    assert "entered" not in counters


async def test_a_variant_picks_the_template_by_profile(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    pro, free = outside_holdout("team", "var", 2000, count=2)
    await signup(client, pro, public_metadata={"plan": "pro"})
    await signup(client, free, public_metadata={"plan": "free"})
    for user in (pro, free):
        await act(client, "project_created", user, properties={"members": 3, "template": "saas"})
    await worker_of(app).drain()
    assert await sent_templates(app, pro) == ["welcome_pro"]
    assert await sent_templates(app, free) == ["welcome"]


async def test_the_holdout_gets_no_email_but_is_decided_and_measured(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    held = in_holdout("team", "held", 2000)
    (treated,) = outside_holdout("team", "treated", 2000)
    for user in (held, treated):
        await signup(client, user)
        await act(client, "project_created", user, properties={"members": 3, "template": "saas"})
    await worker_of(app).drain()

    held_step = step(await state(client, held), "team", 0)
    assert (held_step["status"], held_step["held_out"], held_step["arm"]) == (
        "fired", True, "holdout",
    )  # fmt: skip
    assert await sent_templates(app, held) == []
    assert step(await state(client, treated), "team", 0)["arm"] == "treatment"
    assert await sent_templates(app, treated) == ["welcome"]

    team = (await figures(client))["team"]
    assert (team["entered"], team["activated"], team["activation_rate"]) == (2, 2, 1.0)
    assert team["arms"] == {
        "holdout": {"entered": 1, "activated": 1, "activation_rate": 1.0},
        "treatment": {"entered": 1, "activated": 1, "activation_rate": 1.0},
    }
    assert team["uplift"]["vs"] == "holdout"
    assert team["uplift"]["estimate"] == 0
    assert team["uplift"]["low"] < 0 < team["uplift"]["high"]


async def test_loops_without_arms_have_no_uplift_and_an_unknown_key_is_refused(
    client: httpx.AsyncClient,
) -> None:
    loops = await figures(client)
    assert loops["upgrade"]["arms"] == {}
    assert loops["upgrade"]["uplift"] is None
    assert loops["sql"]["waiting"] == 0
    assert (await client.get("/v1/loops")).status_code == 401


async def test_waiting_and_timed_out_are_counted_apart(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client, "user_wait1")
    await signup(client, "user_wait2")
    await worker_of(app).drain()
    assert (await figures(client))["sql"]["waiting"] == 2
    clock.advance(3 * DAY)
    await worker_of(app).drain()
    sql = (await figures(client))["sql"]
    assert (sql["waiting"], sql["timed_out"], sql["activated"]) == (0, 2, 0)
    assert sql["activation_rate"] == 0


# --- the figures, by hand -------------------------------------------------------------------------


def test_the_uplift_interval_matches_a_hand_computed_example(growth_dir: Path) -> None:
    """Newcombe (1998), example (a) of table II: 56/70 against 48/80, difference 0.2000,
    hybrid score interval 0.0524 to 0.3339."""
    loop = load_loops(growth_dir)["team"]
    counters = {
        "entered": 150, "activated": 104, "met": 104,
        "entered:treatment": 70, "activated:treatment": 56,
        "entered:holdout": 80, "activated:holdout": 48,
    }  # fmt: skip
    found = loop_summary(loop, counters)
    uplift = found["uplift"]
    assert math.isclose(uplift["estimate"], 0.2, abs_tol=1e-9)
    assert (round(uplift["low"], 4), round(uplift["high"], 4)) == (0.0524, 0.3339)
    assert found["arms"]["treatment"]["activation_rate"] == 0.8
    assert found["activation_rate"] == pytest.approx(104 / 150)


# --- an experiment's arms against each other (`vs_arms`) ----------------------------------------

VS_ARMS_KEYS = {"a", "b", "estimate", "low", "high"}


async def test_an_experiments_arms_are_compared_arm_against_arm(
    make_settings: Callable[..., Settings], clock: FakeClock, tmp_path: Path
) -> None:
    """Seeded: welcome_a 3 of 4 activated, welcome_b 1 of 5. Before anyone entered both arms
    are empty and the figures null; after, welcome_a's rate minus welcome_b's, 0.55, with
    Newcombe's interval (worked by hand in the next test), and no uplift: there is no holdout."""
    folder = write_loops(tmp_path, EXPERIMENTS)
    async with running(make_settings(loops_dir=folder), clock) as (app, client):
        empty = (await figures(client))["trial"]["vs_arms"]
        assert empty == {"a": "welcome_a", "b": "welcome_b", "estimate": None, "low": None,
                         "high": None}  # fmt: skip
        trial = app.state.runtime.loops["trial"]
        a_users, b_users = users_in_arm(trial, "welcome_a", 4), users_in_arm(trial, "welcome_b", 5)
        for user in a_users + b_users:
            await signup(client, user)
        for user in a_users[:3] + b_users[:1]:
            await act(client, "project_created", user)
        await worker_of(app).drain()
        found = (await figures(client))["trial"]

    assert found["arms"] == {
        "welcome_a": {"entered": 4, "activated": 3, "activation_rate": 0.75},
        "welcome_b": {"entered": 5, "activated": 1, "activation_rate": 0.2},
    }
    assert found["uplift"] is None
    vs_arms = found["vs_arms"]
    assert set(vs_arms) == VS_ARMS_KEYS
    assert (vs_arms["a"], vs_arms["b"]) == ("welcome_a", "welcome_b")
    assert vs_arms["estimate"] == pytest.approx(0.55, abs=1e-12)
    assert (round(vs_arms["low"], 4), round(vs_arms["high"], 4)) == (-0.0681, 0.8119)
    expected = uplift(Rate(4, 3), Rate(5, 1))  # the same method as the holdout's uplift
    assert expected is not None
    assert (vs_arms["low"], vs_arms["high"]) == (expected.low, expected.high)


def test_vs_arms_matches_a_hand_computed_newcombe_interval(tmp_path: Path) -> None:
    """Newcombe (1998), method 10, from the textbook formulas, z = 1.959964 (z² = 3.841459):
    Wilson: l, u = (p + z²/2n ∓ z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
      3/4: p = 0.75, z²/n = 0.9603647, centre = (0.75 + 0.4801824) / 1.9603647 = 0.6275273,
           half = 1.959964 / 1.9603647 · sqrt(0.046875 + 0.0576438) = 0.3268854
           -> l1 = 0.3006418, u1 = 0.9544127
      1/5: p = 0.20, z²/n = 0.7682918, centre = (0.20 + 0.3841459) / 1.7682918 = 0.3303447,
           half = 1.959964 / 1.7682918 · sqrt(0.032 + 0.0384146) = 0.2941206
           -> l2 = 0.0362241, u2 = 0.6244654
    d = 0.75 - 0.20 = 0.55
    low  = d - sqrt((p1 - l1)² + (u2 - p2)²) = 0.55 - sqrt(0.4493582² + 0.4244654²)
         = 0.55 - 0.6181372 = -0.0681372
    high = d + sqrt((u1 - p1)² + (p2 - l2)²) = 0.55 + sqrt(0.2044127² + 0.1637759²)
         = 0.55 + 0.2619296 = 0.8119296"""
    loop = load_loops(write_loops(tmp_path, EXPERIMENTS))["trial"]
    counters = {
        "entered": 9, "activated": 4, "met": 4,
        "entered:welcome_a": 4, "activated:welcome_a": 3,
        "entered:welcome_b": 5, "activated:welcome_b": 1,
    }  # fmt: skip
    vs_arms = loop_summary(loop, counters)["vs_arms"]
    assert vs_arms["estimate"] == pytest.approx(0.55, abs=1e-12)
    assert vs_arms["low"] == pytest.approx(-0.0681372, abs=1e-7)
    assert vs_arms["high"] == pytest.approx(0.8119296, abs=1e-7)


def test_a_holdout_beside_an_experiment_pools_the_arms_and_the_two_largest_are_compared(
    tmp_path: Path,
) -> None:
    """Three arms and a holdout: `uplift` pools all three against the holdout (Newcombe's
    example (a): 56/70 against 48/80); `vs_arms` compares the two arms with the most entrants,
    listed as the file lists them (welcome before welcome_b), whatever their sizes' order."""
    loop = load_loops(write_loops(tmp_path, EXPERIMENTS))["three"]
    counters = {
        "entered": 150, "activated": 104,
        "entered:holdout": 80, "activated:holdout": 48,
        "entered:welcome": 30, "activated:welcome": 20,
        "entered:welcome_a": 5, "activated:welcome_a": 5,
        "entered:welcome_b": 35, "activated:welcome_b": 31,
    }  # fmt: skip
    found = loop_summary(loop, counters)
    assert (round(found["uplift"]["low"], 4), round(found["uplift"]["high"], 4)) == (0.0524, 0.3339)
    vs_arms = found["vs_arms"]
    expected = uplift(Rate(30, 20), Rate(35, 31))
    assert expected is not None
    assert vs_arms == {"a": "welcome", "b": "welcome_b", "estimate": expected.estimate,
                       "low": expected.low, "high": expected.high}  # fmt: skip
    assert vs_arms["estimate"] < 0  # welcome activates less than welcome_b


@pytest.mark.parametrize(
    ("entered", "pair"),
    [
        ({"welcome": 0, "welcome_a": 0, "welcome_b": 0}, ("welcome", "welcome_a")),
        ({"welcome": 0, "welcome_a": 3, "welcome_b": 0}, ("welcome", "welcome_a")),
        ({"welcome": 0, "welcome_a": 3, "welcome_b": 2}, ("welcome_a", "welcome_b")),
    ],
)
def test_an_arm_with_nobody_leaves_the_figures_null(
    tmp_path: Path, entered: dict[str, int], pair: tuple[str, str]
) -> None:
    """An empty arm has no rate (0 of 0, not 0 %), so no difference: the arms are named, the
    figures null. Of three arms, an empty one is compared only when at most one has anybody."""
    loop = load_loops(write_loops(tmp_path, EXPERIMENTS))["three"]
    counters = {f"entered:{arm}": n for arm, n in entered.items()}
    counters |= {f"activated:{arm}": n // 2 for arm, n in entered.items()}
    vs_arms = loop_summary(loop, counters)["vs_arms"]
    assert (vs_arms["a"], vs_arms["b"]) == pair
    figures_known = all(entered[arm] for arm in pair)
    assert (vs_arms["estimate"] is not None) is figures_known
    assert (vs_arms["low"] is None, vs_arms["high"] is None) == (not figures_known,) * 2


def test_loops_without_an_experiment_have_no_vs_arms(growth_dir: Path) -> None:
    loops = load_loops(growth_dir)
    assert loop_summary(loops["team"], {})["vs_arms"] is None  # a holdout alone
    assert loop_summary(loops["upgrade"], {})["vs_arms"] is None


@given(st.lists(st.integers(0, 50), min_size=2, max_size=6), st.randoms(use_true_random=False))
def test_the_compared_arms_are_the_two_largest_in_file_order(sizes: list[int], order: Any) -> None:
    """Order-sensitive twice over: by size, ties to the arm listed first; and `a` is the arm
    listed first. Shuffling the file's order changes which arm wins a tie, never the sizes of
    the two compared."""
    names = [f"arm{i}" for i in range(len(sizes))]
    entered = dict(zip(names, sizes, strict=True))
    a, b = compared_arms(names, entered)
    assert names.index(a) < names.index(b)
    for left_out in (name for name in names if name not in (a, b)):
        for chosen in (a, b):  # smaller, or as large and listed later
            assert entered[left_out] < entered[chosen] or (
                entered[left_out] == entered[chosen] and names.index(left_out) > names.index(chosen)
            )
    shuffled = list(names)
    order.shuffle(shuffled)
    again = compared_arms(shuffled, entered)
    assert sorted(entered[name] for name in again) == sorted((entered[a], entered[b]))
    assert shuffled.index(again[0]) < shuffled.index(again[1])


def test_an_experiment_has_two_arms_to_compare() -> None:
    with pytest.raises(ValueError, match="two arms or more"):
        compared_arms(["alone"], {"alone": 3})


# --- assignment: stable, and the shares hold -----------------------------------------------------


def test_holdout_and_experiment_shares_hold_over_many_users(tmp_path: Path) -> None:
    folder = write_loops(tmp_path, {})
    (folder / "exp.yaml").write_text(
        dedent("""
        type: activation
        holdout: 10%
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: x, timeout: 1d}
            action:
              type: email
              template: welcome
              experiment:
                - {template: welcome_a, weight: 3}
                - {template: welcome_b, weight: 1}
        """)
    )
    loop = load_loop(folder / "exp.yaml", folder / "templates")
    users = [f"user_{i:08d}" for i in range(20_000)]
    arms = [arm_of(loop, user) for user in users]
    assert arms == [arm_of(loop, user) for user in users]  # stable per user
    expected = {"holdout": 0.10, "welcome_a": 0.90 * 0.75, "welcome_b": 0.90 * 0.25}
    for arm, share in expected.items():
        n, seen = len(users), arms.count(arm)
        sigma = math.sqrt(n * share * (1 - share))
        assert abs(seen - n * share) < 4 * sigma, (arm, seen, n * share)
    # another loop draws its own: the same users are not held out together
    other = [place("other", user) < 1000 for user in users]
    both = sum(1 for arm, held in zip(arms, other, strict=True) if arm == "holdout" and held)
    assert abs(both - 200) < 4 * math.sqrt(200)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20))
def test_a_place_is_in_range_and_deterministic(user_id: str, loop_id: str) -> None:
    assert 0 <= place(loop_id, user_id) < PLACES
    assert place(loop_id, user_id) == place(loop_id, user_id)


# --- a filtered count decides as the filter over the whole sorted history ------------------------

PROPERTY = hypothesis.settings(
    deadline=None,
    database=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROPS = st.fixed_dictionaries(
    {}, optional={"members": st.integers(0, 6), "template": st.sampled_from(["saas", "blank"])}
)
HISTORY = st.lists(st.tuples(st.integers(0, 50), PROPS), min_size=1, max_size=12)


@PROPERTY
@given(history=HISTORY, order=st.randoms(use_true_random=False), count=st.integers(1, 4))
async def test_a_filtered_condition_decides_as_the_filter_over_the_sorted_history(
    app: FastAPI, history: list[tuple[int, dict[str, Any]]], order: Any, count: int
) -> None:
    loop = store_of(app)
    team = app.state.runtime.loops["team"].steps[0].condition
    condition = ActionCondition(team.actions, count, None, team.where)
    user = f"user_prop{uuid.uuid4().hex[:10]}"
    base = 1_700_000_000_000
    actions = [
        NewAction(user, "project_created", base + minute * MIN, id=f"a{i}", properties=props)
        for i, (minute, props) in enumerate(history)
    ]
    order.shuffle(actions)
    tracked = tracked_counts([app.state.runtime.loops["team"]]) | {
        name: frozenset({count}) for name in condition.counted
    }
    filters = watched_filters([app.state.runtime.loops["team"]])
    for action in actions:  # one report at a time, in the shuffled order
        await loop.actions.record([action], now_ms=base + DAY, tracked=tracked, filters=filters)
    record = await loop.queries.snapshot(user)

    matching = sorted(
        a.occurred_at_ms for a in actions if condition.where is not None
        and condition.where.matches(a.properties)
    )  # fmt: skip
    expected = matching[count - 1] if len(matching) >= count else None
    assert condition_met_at(condition, record.actions) == expected


def test_the_loop_file_keeps_the_filters_apart(growth_dir: Path) -> None:
    loops = load_loops(growth_dir)
    team = loops["team"].steps[0].condition
    assert team is not None
    assert team.where is not None
    assert team.counted == (f"project_created#{team.where.digest}",)
    assert set(watched_filters(loops.values())) == {
        "project_created",
        "plan_changed",
        "invite_sent",
    }
    assert json.dumps(team.where.to_json())  # shown as JSON by the tools


async def test_the_dashboard_draws_the_arms_and_names_a_misspelt_action(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    (treated,) = outside_holdout("team", "dash", 2000)
    held = in_holdout("team", "dash", 2000)
    for user in (treated, held):
        await signup(client, user)
        await act(client, "project_created", user, properties={"members": 3, "template": "saas"})
    await act(client, "invite_snet", treated)  # a typo of the watched invite_sent
    await worker_of(app).drain()

    page = (await client.get("/dashboard", headers=AUTH)).text
    assert 'id="experiment-team"' in page
    assert page.count('<svg class="uplift"') == 1  # the interval, drawn
    assert "distinguishable" in page  # one of each, too few to tell
    assert "invite_snet" in page
    assert "invite_sent" in page  # did you mean


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"holdout": 10}, "holdout", "10 is not a share like 10% or 2.5%: write the % sign"),
        ({"holdout": "60%"}, "holdout", "60% is over 50%: most users must get the emails"),
        (
            {"audience": {"private_metadata.plan": "pro"}},
            "audience",
            "'private_metadata.plan' is not a profile field a loop can look at",
        ),
        ({"audience": {"email": {"endswith": "x"}}}, "audience", "did you mean 'ends_with'?"),
    ],
)
def test_growth_mistakes_are_refused_with_the_reason(
    tmp_path: Path, change: dict[str, Any], field: str, reason: str
) -> None:
    data = yaml.safe_load(dedent(LOOPS["team"])) | change
    folder = write_loops(tmp_path, {"team": yaml.safe_dump(data)})
    with pytest.raises(LoopFileError) as refused:
        load_loop(folder / "team.yaml", folder / "templates")
    assert refused.value.field == field
    assert reason in refused.value.reason


def test_an_email_with_variants_and_an_experiment_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load(dedent(LOOPS["team"]))
    data["steps"][0]["action"]["experiment"] = [
        {"template": "welcome_a"},
        {"template": "welcome_b"},
    ]
    folder = write_loops(tmp_path, {"team": yaml.safe_dump(data)})
    with pytest.raises(LoopFileError, match="give either variants or experiment, not both"):
        load_loop(folder / "team.yaml", folder / "templates")


def test_a_second_experiment_in_one_loop_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load(dedent(LOOPS["team"]))
    arms = [{"template": "welcome_a"}, {"template": "welcome_b"}]
    del data["steps"][0]["action"]["variants"]
    data["steps"][0]["action"]["experiment"] = arms
    data["steps"][0]["on_timeout"] = {"type": "email", "template": "welcome", "experiment": arms}
    folder = write_loops(tmp_path, {"team": yaml.safe_dump(data)})
    with pytest.raises(LoopFileError, match="one experiment per loop") as refused:
        load_loop(folder / "team.yaml", folder / "templates")
    assert refused.value.field == "steps[0].on_timeout.experiment"
