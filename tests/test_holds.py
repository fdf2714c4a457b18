"""The frequency cap and quiet hours (`engine.holds`, `delivery.holding`): the rules as pure
functions (with properties: the first free moment is free and none earlier is), then end to end
on every transport: an email over the cap waits (`"held": "cap"`, `"until"`) and goes once when
the cap allows, the higher priority first, a `cap: false` loop neither counts nor waits, one that
could only go too late is dropped and says why, quiet hours in the user's own zone across a DST
change; and the cap holds when a frozen worker's attempt is taken over, and under workers racing."""

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from app.clock import parse_duration
from app.engine.email_jobs import JobStatus
from app.engine.holds import Candidate, CapRule, FrequencyCap, HoldReason, Holds, QuietHours
from app.engine.loop_loading import load_loops
from app.errors import LoopFolderError
from app.runtime import build_store, build_worker
from app.settings import Settings, parse_cap_rules
from tests.conftest import (
    AUTH,
    FakeClock,
    clerk_event,
    post_webhook,
    store_of,
    worker_of,
    write_files,
)
from tests.support.constants import DAY, HOUR, MIN
from tests.support.flow import act, freeze_mid_turn, state
from tests.support.pages import card, funnel

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")


def ms(text: str, zone: ZoneInfo = UTC_ZONE) -> int:
    """`2026-10-31 23:00` in `zone`, as epoch ms."""
    local = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=zone)
    return int(local.timestamp() * 1000)


# --- the rules --------------------------------------------------------------------------------


def test_the_cap_setting_is_rules_of_emails_per_window() -> None:
    assert parse_cap_rules("2/1d,4/7d") == ((2, DAY), (4, 7 * DAY))
    assert parse_cap_rules(" 1 / 12h ") == ((1, 12 * HOUR),)
    assert parse_cap_rules("off") == ()
    for wrong in ("2", "0/1d", "2/1x", "2/1d,", "two/1d"):
        with pytest.raises(ValueError, match="is not a cap like 2/1d"):
            parse_cap_rules(wrong)


def test_settings_refuse_a_bad_cap_window_or_zone(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(frequency_cap="2/1d").cap_rules == ((2, DAY),)
    assert make_settings(quiet_hours="off").quiet_hours is None
    for name, value, message in (
        ("frequency_cap", "3 a day", "is not a cap like 2/1d"),
        ("quiet_hours", "21-08", "is not a window of local time"),
        ("quiet_hours", "25:00-08:00", "not on a clock"),
        ("quiet_hours", "08:00-08:00", "starts when it ends"),
        ("default_timezone", "Mars/Olympus", "is not an IANA time zone"),
    ):
        with pytest.raises(ValueError, match=message):
            make_settings(**{name: value})


@given(
    st.lists(st.integers(0, 10 * DAY), max_size=12),
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 7 * DAY)), min_size=1, max_size=3),
    st.integers(0, 10 * DAY),
)
def test_the_first_free_moment_keeps_every_rule_and_none_earlier_does(
    counted: list[int], rules: list[tuple[int, int]], at: int
) -> None:
    cap = FrequencyCap(tuple(CapRule(n, window) for n, window in rules))
    past = [t for t in counted if t <= at]

    def keeps(moment: int) -> bool:
        return all(
            sum(1 for t in past if moment - window < t) < n for n, window in rules
        )  # fmt: skip

    free = cap.free_at(past, at)
    assert free >= at
    assert keeps(free)
    assert free == at or not keeps(free - 1)


def test_quiet_hours_past_midnight_end_on_the_local_clock_across_a_dst_change() -> None:
    quiet = QuietHours.parse("21:00-08:00")
    assert [quiet.inside(minute) for minute in (21 * 60, 7 * 60 + 59, 8 * 60)] == [
        True,
        True,
        False,
    ]
    # New York leaves daylight time on 2026-11-01 at 02:00: the night is 25 hours long
    evening = ms("2026-10-31 23:00", NEW_YORK)
    assert quiet.end_after(evening, NEW_YORK) == ms("2026-11-01 08:00", NEW_YORK)
    assert ms("2026-11-01 08:00", NEW_YORK) - evening == 10 * HOUR  # not 9: the clock went back
    early = ms("2026-11-01 06:30", NEW_YORK)
    assert quiet.end_after(early, NEW_YORK) == ms("2026-11-01 08:00", NEW_YORK)
    noon = ms("2026-11-01 12:00", NEW_YORK)
    assert quiet.end_after(noon, NEW_YORK) == noon
    day = QuietHours.parse("12:00-13:30")
    assert day.end_after(ms("2026-03-08 12:10", NEW_YORK), NEW_YORK) == ms(
        "2026-03-08 13:30", NEW_YORK
    )


@given(st.integers(ms("2026-01-01 00:00"), ms("2027-01-01 00:00")), st.sampled_from(
    ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
))  # fmt: skip
def test_the_end_of_quiet_hours_is_outside_them_and_nothing_between_is(at: int, name: str) -> None:
    zone, quiet = ZoneInfo(name), QuietHours.parse("22:30-07:15")

    def local_minute(moment: int) -> int:
        local = datetime.fromtimestamp(moment / 1000, zone)
        return local.hour * 60 + local.minute

    end = quiet.end_after(at, zone)
    assert not quiet.inside(local_minute(end))
    assert end - at <= 9 * HOUR + 45 * MIN + HOUR  # the window, and an hour a clock change adds
    step = max((end - at) // 20, 1)
    assert all(quiet.inside(local_minute(t)) for t in range(at, end, step))


def candidate(job_id: str, *, priority: int = 0, capped: bool = True, latest: int = 10**15) -> Any:
    return Candidate(job_id, 0, priority, capped, None, latest)


def test_the_higher_priority_goes_first_and_an_uncapped_loop_neither_counts_nor_waits() -> None:
    holds = Holds(FrequencyCap((CapRule(1, DAY),)))
    now = ms("2026-06-01 12:00")
    verdicts = holds.admit(
        [candidate("low"), candidate("high", priority=5), candidate("free", capped=False)],
        [],
        UTC_ZONE,
        now,
    )
    assert (verdicts["high"].reason, verdicts["free"].reason) == (None, None)
    assert (verdicts["low"].reason, verdicts["low"].until_ms) == (HoldReason.CAP, now + DAY)
    again = holds.admit([candidate("low")], [now - HOUR], UTC_ZONE, now)
    assert again["low"].until_ms == now + DAY - HOUR
    late = holds.admit([candidate("low", latest=now + HOUR)], [now], UTC_ZONE, now)["low"]
    assert (late.dropped, late.latest_ms) == (True, now + HOUR)


# --- end to end -------------------------------------------------------------------------------

LOOPS = {
    "welcome.yaml": """
        type: activation
        steps:
          - trigger: {type: database, table: users, event: insert}
            action: {type: email, template: welcome}
    """,
    "vip.yaml": """
        type: activation
        priority: 10
        steps:
          - trigger: {type: database, table: users, event: insert}
            action: {type: email, template: vip}
    """,
    "news.yaml": """
        type: activation
        cap: false
        quiet_hours: "off"
        steps:
          - trigger: {type: database, table: users, event: insert}
            action: {type: email, template: news}
    """,
    "upgrade.yaml": """
        type: milestone
        measure: 1h
        steps:
          - trigger: {type: action, action: plan_changed}
            action: {type: email, template: upgraded}
    """,
    **{
        f"templates/{name}.html": f"---\nsubject: {name}\n---\n<p>{name}</p>\n"
        for name in ("welcome", "vip", "news", "upgraded")
    },
}


@pytest.fixture
def holds_dir(tmp_path: Path) -> Path:
    return write_files(tmp_path / "loops", LOOPS)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], holds_dir: Path) -> Settings:
    return make_settings(loops_dir=holds_dir, frequency_cap="1/1d", quiet_hours="21:00-08:00")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ms("2026-06-01 12:00"))  # noon UTC: outside the quiet hours


async def signup(client: httpx.AsyncClient, user_id: str, **profile: Any) -> None:
    body = json.dumps(clerk_event("created", user_id, **profile)).encode()
    response = await post_webhook(client, body)
    assert response.status_code == 200, response.text


def by_loop(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {email["loop"]: email for email in body["emails"]}


async def test_an_email_over_the_cap_waits_and_goes_once_when_the_cap_allows(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client, "user_cap1")
    await worker_of(app).drain()
    emails = by_loop(await state(client, "user_cap1"))
    # vip (priority 10) took the one place of the day; news is not capped
    assert (emails["vip"]["status"], emails["news"]["status"]) == ("sent", "sent")
    assert emails["welcome"]["status"] == "queued"
    assert emails["welcome"]["held"] == "cap"
    assert emails["welcome"]["until"] == clock() + DAY
    body = await state(client, "user_cap1")
    assert any(e["event"] == "email.held" and e["reason"] == "cap" for e in body["timeline"])

    clock.advance(DAY - MIN)
    await worker_of(app).drain()
    assert by_loop(await state(client, "user_cap1"))["welcome"]["status"] == "queued"
    clock.advance(MIN)
    await worker_of(app).drain()
    welcome = by_loop(await state(client, "user_cap1"))["welcome"]
    assert (welcome["status"], welcome["held"], welcome["attempts"]) == ("sent", None, 1)
    record = await store_of(app).queries.snapshot("user_cap1")
    assert sorted(job.loop_id for job in record.jobs.values() if job.status is JobStatus.SENT) == [
        "news",
        "vip",
        "welcome",
    ]


async def test_an_email_that_could_only_go_too_late_is_dropped_and_says_why(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client, "user_cap2")
    await worker_of(app).drain()
    clock.advance(HOUR)
    await act(client, "plan_changed", "user_cap2")
    await worker_of(app).drain()
    # the day's place went to vip; `upgrade` measures 1 h, so a wait of most of a day is too long
    upgraded = by_loop(await state(client, "user_cap2"))["upgrade"]
    assert upgraded["status"] == "dropped"
    assert "frequency cap would hold it until" in upgraded["last_error"]
    assert "later than its step allows" in upgraded["last_error"]
    timeline = (await state(client, "user_cap2"))["timeline"]
    assert any(e["event"] == "email.dropped" and "cap" in e["error"] for e in timeline)


async def test_quiet_hours_keep_the_users_own_zone_across_a_dst_change(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    clock.now_ms = ms("2026-10-31 23:00", NEW_YORK)  # 03:00 UTC: the small hours in New York
    await signup(client, "user_ny", public_metadata={"timezone": "America/New_York"})
    await worker_of(app).drain()
    emails = by_loop(await state(client, "user_ny"))
    assert emails["news"]["status"] == "sent"  # its loop turns quiet hours off
    assert emails["vip"]["held"] == "quiet_hours"
    assert emails["vip"]["until"] == ms("2026-11-01 08:00", NEW_YORK)  # 13:00 UTC, not 12:00

    clock.now_ms = ms("2026-11-01 08:00", NEW_YORK)
    await worker_of(app).drain()
    emails = by_loop(await state(client, "user_ny"))
    assert emails["vip"]["status"] == "sent"
    assert emails["welcome"]["held"] == "cap"  # and then the cap: one a day


async def test_a_user_without_a_zone_keeps_the_default_one(
    make_settings: Callable[..., Settings], holds_dir: Path, clock: FakeClock
) -> None:
    from tests.conftest import running

    settings = make_settings(
        loops_dir=holds_dir, quiet_hours="21:00-08:00", default_timezone="Asia/Tokyo"
    )
    clock.now_ms = ms("2026-06-01 12:00")  # 21:00 in Tokyo
    async with running(settings, clock) as (app, client):
        await signup(client, "user_tokyo", public_metadata={"timezone": "Not/AZone"})
        await worker_of(app).drain()
        vip = by_loop(await state(client, "user_tokyo"))["vip"]
    tokyo_morning = ms("2026-06-02 08:00", ZoneInfo("Asia/Tokyo"))
    assert (vip["held"], vip["until"]) == ("quiet_hours", tokyo_morning)


async def test_the_held_counts_are_kept_per_loop(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await signup(client, "user_cap3")
    await worker_of(app).drain()
    clock.advance(HOUR)  # the welcome is looked at again, still held: counted once
    await worker_of(app).drain()
    stats = await store_of(app).queries.read_stats(["welcome", "vip"], [])
    assert stats.loops["welcome"].get("held:cap") == 1
    assert "held:cap" not in stats.loops["vip"]
    page = (await client.get("/dashboard", headers=AUTH)).text
    assert funnel(page, "welcome")["held:cap"] == 1
    assert "Held by the frequency cap" in card(page, "welcome")
    assert "held:cap" not in funnel(page, "vip")  # a row shown once it counted any


async def test_a_frozen_workers_attempt_still_counts_when_another_takes_over(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, settings: Settings
) -> None:
    """A worker begins the day's one email and freezes before it sends; its lease runs out and
    another worker takes the user's turn while a new email is due: the attempt in flight counts
    (it may have reached Resend), so only it goes, again under its key."""
    await signup(client, "user_frozen")
    assert await freeze_mid_turn(app, "user_frozen", clock, MIN) is not None
    clock.advance(int(2 * settings.worker_lease_s * 1000))  # the turn is anyone's to claim
    await act(client, "plan_changed", "user_frozen")  # and a new email is due with it
    await worker_of(app).drain()
    emails = by_loop(await state(client, "user_frozen"))
    assert (emails["vip"]["status"], emails["vip"]["attempts"]) == ("sent", 2)
    assert (emails["upgrade"]["status"], emails["upgrade"]["attempts"]) == ("dropped", 0)
    assert (emails["welcome"]["status"], emails["welcome"]["held"]) == ("queued", "cap")


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_racing_workers_never_let_more_through_than_the_cap(
    make_settings: Callable[..., Settings], holds_dir: Path, clock: FakeClock
) -> None:
    """Three workers, each with its own connection, drain 40 users at once, every user with
    three capped emails due (cap 1 a day): each user gets exactly one, the highest priority."""
    from tests.conftest import running

    settings = make_settings(loops_dir=holds_dir, frequency_cap="1/1d")
    async with running(settings, clock) as (app, client):
        users = [f"user_race{i}" for i in range(40)]
        for user_id in users:
            await signup(client, user_id)
        runtime = app.state.runtime
        parts = (runtime.loops, runtime.worker.evaluator.composer, runtime.mailer, clock)
        workers = [build_worker(settings, build_store(settings), *parts) for _ in range(3)]
        for worker in workers:
            await worker.store.open()
        try:
            await asyncio.gather(*(worker.drain() for worker in workers))
        finally:
            for worker in workers:
                await worker.store.close()
        for user_id in users:
            record = await store_of(app).queries.snapshot(user_id)
            going = sorted(
                job.loop_id
                for job in record.jobs.values()
                if job.loop_id != "news"
                and (job.status is JobStatus.SENT or job.first_attempt_at is not None)
            )
            assert going == ["vip"], (user_id, going)


def test_a_loops_priority_cap_and_quiet_hours_are_checked_when_it_loads(tmp_path: Path) -> None:
    files = dict(LOOPS)
    files["vip.yaml"] = files["vip.yaml"].replace("priority: 10", 'quiet_hours: "9pm-8am"')
    folder = write_files(tmp_path / "bad", files)
    with pytest.raises(LoopFolderError, match="is not a window of local time like 21:00-08:00"):
        load_loops(folder)
    loops = load_loops(write_files(tmp_path / "good", LOOPS))
    assert (loops["vip"].priority, loops["news"].capped) == (10, False)
    assert loops["news"].quiet(QuietHours(0, 60)) is None
    assert loops["welcome"].quiet(QuietHours(0, 60)) == QuietHours(0, 60)
    assert parse_duration("1d") == DAY
