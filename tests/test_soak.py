"""The soak (tests/soak): its checker finds each kind of violation in a made-up ledger and
history (with a frequency cap, against a made-up ledger of the service's too), and short runs of
the real processes under the nemesis, without a cap and with one, find none."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import redis_binary
from tests.soak.checker import (
    CAP_EXCUSED,
    CLOCK_MS,
    EXCUSED,
    GRACE_MS,
    SLACK_MS,
    Cap,
    Service,
    Timing,
    Verdict,
    check,
)
from tests.soak.history import History, Op
from tests.soak.jobs import Job, parse_job
from tests.soak.ledger import Delivery
from tests.soak.nemesis import STANDIN_FAULTS
from tests.soak.session import Options, run, summary
from tests.soak.workload import CAP_MIX

Freezes = tuple[tuple[int, int], ...]
T0 = 1_800_000_000_000
NUDGE_MS = 10_000
END_MS = T0 + 60_000
USER = "user_soak0_000001"
LOGICAL = {
    "welcome": ("activation", "0", "action"),
    "nudge": ("activation", "0", "timeout"),
    "tips": ("activation", "1", "action"),
    "ten_projects": ("milestone_ten_projects", "0", "action"),
    "upgraded": ("milestone_upgraded", "0", "action"),
}


def delivered(name: str, at_ms: int, key: str | None = None, user: str = USER) -> Delivery:
    loop, step, kind = LOGICAL[name]
    key = key or f"email|{user}|{loop}|{step}|{kind}"
    to = f"{user}@soak.example.org"
    return Delivery(user, loop, step, kind, key, f"id-{at_ms}", to, at_ms, at_ms, None)


def history(*ops: Op, user: str = USER) -> History:
    done = History()
    done.addresses[user] = f"{user}@soak.example.org"
    done.add(Op(user, "signup", sent_ms=T0, acked_ms=T0 + 5, status=200))
    for op in ops:
        done.add(op)
    return done


def acted(at_ms: int = T0 + 10, name: str = "first_project_created", **fields: str) -> Op:
    return Op(USER, "action", name, sent_ms=at_ms, acked_ms=at_ms + 5, status=202, **fields)


def stopped(kind: str, at_ms: int, answer: str = "") -> Op:
    return Op(USER, kind, sent_ms=at_ms - 5, acked_ms=at_ms, status=200, answer=answer)


def verdict(done: History, *deliveries: Delivery, freezes: Freezes = ()) -> Verdict:
    return check(deliveries, done, Timing(NUDGE_MS, END_MS, freezes))


def found(done: History, *deliveries: Delivery, freezes: Freezes = ()) -> list[tuple[str, str]]:
    return [(v.type, v.email) for v in verdict(done, *deliveries, freezes=freezes).violations]


# --- the checker's rules -------------------------------------------------------------------


def test_the_right_emails_once_each_are_no_violation() -> None:
    projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
    done = history(acted(), *projects, acted(T0 + 200, "plan_changed", plan="pro"))
    emails = [delivered(name, T0 + 500) for name in ("welcome", "ten_projects", "upgraded")]

    result = verdict(done, *emails)

    assert result.violations == []
    assert (result.users, result.deliveries) == (1, 3)
    assert result.by_kind == {"welcome": 1, "ten_projects": 1, "upgraded": 1}


def test_the_same_email_accepted_twice_is_a_double_whatever_its_keys() -> None:
    twice = [delivered("welcome", T0 + 500), delivered("welcome", T0 + 900, key="batch-1")]

    [double] = verdict(history(acted()), *twice).violations

    assert (double.type, double.email, double.user) == ("double", "welcome", USER)
    assert double.keys == (f"email|{USER}|activation|0|action", "batch-1")
    assert double.times_ms == (T0 + 500, T0 + 900)


def test_an_email_arriving_past_the_slack_after_a_stop_is_a_violation() -> None:
    stop_ms = T0 + 5_000
    for kind, answer in (("complaint", "suppressed"), ("unsubscribe", ""), ("delete", "deleted")):
        projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
        done = history(acted(), *projects, stopped(kind, stop_ms, answer))
        on_time = delivered("welcome", stop_ms + SLACK_MS)
        late = delivered("ten_projects", stop_ms + SLACK_MS + 1)

        assert found(done, on_time, late) == [("after_stop", "ten_projects")], kind


def test_an_email_sent_on_waking_from_a_freeze_during_the_stop_is_excused_not_passed() -> None:
    projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
    done = history(acted(), *projects, stopped("unsubscribe", T0 + 5_000))
    late = delivered("ten_projects", T0 + 14_500)

    frozen = verdict(done, late, freezes=((T0 + 4_500, T0 + 14_000),))
    assert (frozen.violations, [v.type for v in frozen.excused]) == ([], [EXCUSED])
    for freeze in ((T0 + 6_001, T0 + 14_000), (T0 + 4_500, T0 + 13_499)):
        assert found(done, late, freezes=(freeze,)) == [("after_stop", "ten_projects")]


def test_a_resend_event_for_an_unknown_user_stops_nothing() -> None:
    done = history(acted(), stopped("complaint", T0 + 1_000, "unknown"))

    assert found(done, delivered("welcome", T0 + 9_000)) == []


def test_due_emails_never_delivered_are_missing() -> None:
    projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
    done = history(acted(), *projects, acted(T0 + 200, "plan_changed", plan="team"))

    assert found(done) == [
        ("missing", "welcome"),
        ("missing", "ten_projects"),
        ("missing", "upgraded"),
    ]


def test_the_nudge_is_due_once_its_timeout_passed_before_the_settle_ended() -> None:
    assert found(history()) == [("missing", "nudge")]
    late_signup = History()
    late_signup.addresses[USER] = f"{USER}@soak.example.org"
    signed_ms = END_MS - GRACE_MS - NUDGE_MS + 1
    late_signup.add(Op(USER, "signup", sent_ms=signed_ms, acked_ms=signed_ms, status=200))
    assert found(late_signup) == []


def test_a_late_first_action_allows_either_the_welcome_or_the_nudge() -> None:
    late = acted(T0 + NUDGE_MS)

    assert found(history(late)) == [("missing", "welcome|nudge")]
    assert found(history(late), delivered("nudge", T0 + NUDGE_MS + 100)) == []
    assert found(history(late), delivered("welcome", T0 + NUDGE_MS + 100)) == []


def test_stopped_users_owe_nothing() -> None:
    done = history(acted(), stopped("delete", T0 + 20, "deleted"))

    assert found(done) == []


def test_emails_no_rule_allows_are_unexpected() -> None:
    assert found(history(), delivered("welcome", T0 + 500), delivered("nudge", T0 + 11_000)) == [
        ("unexpected", "welcome"),
        ("unexpected", "nudge"),
    ]
    assert found(history(acted()), delivered("welcome", T0 + 500), delivered("nudge", T0 + 1)) == [
        ("unexpected", "welcome"),
        ("unexpected", "nudge"),
    ]
    free = acted(T0 + 50, "plan_changed", plan="free")
    extra = [delivered("tips", T0 + 600), delivered("ten_projects", T0 + 700)]
    assert found(
        history(acted(), free),
        delivered("welcome", T0 + 500),
        *extra,
        delivered("upgraded", T0 + 800),
    ) == [("unexpected", "tips"), ("unexpected", "ten_projects"), ("unexpected", "upgraded")]
    stranger = delivered("welcome", T0 + 500, user="user_someone_else")
    assert found(history(acted()), delivered("welcome", T0 + 500), stranger) == [
        ("unexpected", "welcome")
    ]
    elsewhere = replace(delivered("welcome", T0 + 500), to="someone@example.org")
    assert found(history(acted()), elsewhere) == [("unexpected", "welcome")]


# --- with a frequency cap: the service's ledger against the stand-in's -----------------------

CAP = Cap.parse("1/20s", ["milestone_ten_projects"])
WINDOW_MS = 20_000
CAP_DROP = "the frequency cap would hold it until 2027-01-15T08:00:20Z, later than its step allows"


def job(name: str, status: str = "sent", **fields: Any) -> Job:
    """The user's job for the email `name`, as the service's ledger keeps it."""
    return Job(name, LOGICAL[name][0], status, **({"queued_at": T0, "due_at": T0} | fields))


def capped(
    done: History, *deliveries: Delivery, jobs: list[Job] | None = None, freezes: Freezes = ()
) -> Verdict:
    """The checker with the cap of 1 per 20 s (ten_projects uncapped); `jobs` the user's ledger
    (None: the user has none, as a deleted one)."""
    service = Service({USER: {j.name: j for j in jobs}} if jobs is not None else {})
    return check(deliveries, done, Timing(NUDGE_MS, END_MS, freezes, CAP), service)


def pairs(result: Verdict) -> list[tuple[str, str]]:
    return [(v.type, v.email) for v in result.violations]


def test_the_cap_is_read_as_frequency_cap_writes_it() -> None:
    assert Cap.parse("1/20s").rules == ((1, 20_000),)
    assert Cap.parse(" 2 / 1m ,4/1d").rules == ((2, 60_000), (4, 86_400_000))
    for wrong in ("0/20s", "1/0s", "1/20", "1/20s,", "off"):
        with pytest.raises(ValueError, match="is not a cap rule"):
            Cap.parse(wrong)


def test_a_job_of_the_users_hash_is_read_with_the_fields_it_leaves_out() -> None:
    sent = parse_job(
        "j:milestone_upgraded|0|action",
        '{"status":"sent","queued_at":5,"attempts":2,"first_attempt_at":7,"sent_at":9}',
    )
    assert sent == Job("upgraded", "milestone_upgraded", "sent", 5, 5, 2, 7, 9)
    held = parse_job(
        "j:activation|0|timeout", '{"status":"queued","queued_at":5,"due_at":8,"held":"cap"}'
    )
    assert (held.name, held.due_at, held.held, held.first_attempt_at) == ("nudge", 8, "cap", None)


def test_capped_emails_closer_than_the_cap_are_over_it_by_the_ledger_and_by_arrival() -> None:
    done = history(acted(), acted(T0 + 200, "plan_changed", plan="pro"))
    emails = [delivered("welcome", T0 + 500), delivered("upgraded", T0 + 5_500)]
    jobs = [job("welcome", first_attempt_at=T0 + 495), job("upgraded", first_attempt_at=T0 + 5_490)]

    result = capped(done, *emails, jobs=jobs)

    assert pairs(result) == [("over_cap", "welcome"), ("over_cap", "welcome")]
    by_ledger, by_arrival = result.violations
    assert by_ledger.detail == "first attempts 4995 ms apart, over the cap of 1 per 20000 ms"
    assert by_arrival.detail == "arrivals 5000 ms apart, over the cap of 1 per 20000 ms"
    assert by_ledger.keys == by_arrival.keys == tuple(email.key for email in emails)
    assert (by_ledger.times_ms, by_arrival.times_ms) == (
        (T0 + 495, T0 + 5_490),
        (T0 + 500, T0 + 5_500),
    )
    # a window apart by both is no violation, and neither is any of it without a cap
    apart = [jobs[0], job("upgraded", first_attempt_at=T0 + 20_495)]
    assert pairs(capped(done, emails[0], delivered("upgraded", T0 + 20_500), jobs=apart)) == []
    assert pairs(verdict(done, *emails)) == []


def test_by_the_ledger_a_window_apart_keeps_the_cap_and_a_ms_less_does_not() -> None:
    done = history(acted(), acted(T0 + 200, "plan_changed", plan="pro"))
    emails = [delivered("welcome", T0 + 500), delivered("upgraded", T0 + 30_000)]
    for apart_ms, found_ in ((WINDOW_MS, []), (WINDOW_MS - 1, [("over_cap", "welcome")])):
        jobs = [
            job("welcome", first_attempt_at=T0 + 495),
            job("upgraded", first_attempt_at=T0 + 495 + apart_ms),
        ]
        assert pairs(capped(done, *emails, jobs=jobs)) == found_, apart_ms


def test_an_uncapped_loops_emails_neither_count_nor_break_the_cap() -> None:
    projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
    emails = [delivered("welcome", T0 + 500), delivered("ten_projects", T0 + 600)]
    jobs = [
        job("welcome", first_attempt_at=T0 + 495),
        job("ten_projects", first_attempt_at=T0 + 595),
    ]

    assert pairs(capped(history(acted(), *projects), *emails, jobs=jobs)) == []


def test_arrivals_too_close_are_excused_when_the_ledger_began_them_a_window_apart() -> None:
    """The cap counts an email from its first attempt's start: the welcome's first attempt
    failed and its retry arrived 9 s later, so the upgrade begun 20.5 s after the welcome's
    first attempt arrives 11.5 s after the welcome. Counted apart, not a violation."""
    done = history(acted(), acted(T0 + 200, "plan_changed", plan="pro"))
    emails = [delivered("welcome", T0 + 9_500), delivered("upgraded", T0 + 21_000)]
    jobs = [
        job("welcome", attempts=2, first_attempt_at=T0 + 500),
        job("upgraded", first_attempt_at=T0 + 20_990),
    ]

    result = capped(done, *emails, jobs=jobs)

    assert result.violations == []
    assert [excuse.type for excuse in result.excused] == [CAP_EXCUSED]
    assert result.excused[0].detail.endswith("their first attempts began 20490 ms apart")


def test_without_a_ledger_only_a_thaw_excuses_arrivals_too_close() -> None:
    """A deleted user's hash keeps no jobs: only the nemesis's thaws say why one was late."""
    done = history(acted(), acted(T0 + 200, "plan_changed", plan="pro"))
    emails = [delivered("welcome", T0 + 9_500), delivered("upgraded", T0 + 21_000)]

    assert pairs(capped(done, *emails)) == [("over_cap", "welcome")]
    thawed = capped(done, *emails, freezes=((T0 + 1_000, T0 + 9_000),))
    assert (thawed.violations, [v.type for v in thawed.excused]) == ([], [CAP_EXCUSED])
    long_before = capped(done, *emails, freezes=((T0 + 1_000, T0 + 9_500 - SLACK_MS - 1),))
    assert pairs(long_before) == [("over_cap", "welcome")]


def test_an_email_arriving_before_the_attempt_its_ledger_counts_it_from_is_over_the_cap() -> None:
    """The exact rule trusts the ledger's first attempts: one recorded later than its email
    arrived would let the cap count it from too late."""
    email, done = delivered("welcome", T0 + 500), history(acted())

    def started(at_ms: int) -> Verdict:
        return capped(done, email, jobs=[job("welcome", first_attempt_at=at_ms)])

    assert pairs(started(T0 + 500 + CLOCK_MS)) == []
    [late] = started(T0 + 501 + CLOCK_MS).violations
    assert (late.type, late.detail) == (
        "over_cap",
        f"arrived {CLOCK_MS + 1} ms before the first attempt its job says it began",
    )


def test_an_email_held_or_dropped_for_the_cap_is_not_missing_but_a_lost_one_still_is() -> None:
    """The upgrade was due (plan_changed acknowledged) and never delivered; the welcome was
    delivered, its first attempt 40 s after T0 (sent 10 ms later). The settle ended at 60 s."""
    done = history(acted(), acted(T0 + 200, "plan_changed", plan="pro"))
    began_ms = T0 + 40_000
    welcome = job("welcome", first_attempt_at=began_ms, sent_at=began_ms + 10)

    def missing(upgraded: Job | None, *, first: Job = welcome, ledger: bool = True) -> bool:
        jobs = [first, *([upgraded] if upgraded else [])] if ledger else None
        found_ = pairs(capped(done, delivered("welcome", began_ms + 5), jobs=jobs))
        return ("missing", "upgraded") in found_

    held_until = began_ms + WINDOW_MS  # past the end of the settle
    held = job("upgraded", "queued", held="cap", due_at=held_until)
    dropped = job("upgraded", "dropped", ended_at=began_ms + 15_000, last_error=CAP_DROP)
    # held for the cap until after the end, one window after the welcome: waiting, not lost
    assert not missing(held)
    # dropped for the cap when the welcome counted within the window
    assert not missing(dropped)
    # ... but held, as the ledger explains, until before the end of the settle: lost
    earlier = replace(welcome, first_attempt_at=END_MS - GRACE_MS - WINDOW_MS)
    assert missing(replace(held, due_at=END_MS - GRACE_MS), first=earlier)
    assert not missing(
        replace(held, due_at=END_MS - GRACE_MS + 1),
        first=replace(earlier, first_attempt_at=END_MS - GRACE_MS - WINDOW_MS + 1),
    )
    # a hold no email of the ledger explains
    assert missing(replace(held, due_at=held_until + 1))
    # dropped for the cap with none counted within the window before
    assert missing(replace(dropped, ended_at=began_ms + 10 + WINDOW_MS))
    assert missing(dropped, first=replace(welcome, status="failed", ended_at=began_ms + 9))
    # dropped or held for another reason, no job, or no ledger at all
    assert missing(replace(dropped, last_error="unsubscribed"))
    assert missing(replace(held, held="quiet_hours"))
    assert missing(None)
    assert missing(held, ledger=False)


def test_an_uncapped_loops_email_is_missing_even_when_its_job_says_the_cap_held_it() -> None:
    projects = [acted(T0 + 100 + n, "project_created") for n in range(10)]
    jobs = [
        job("welcome", first_attempt_at=T0 + 40_000),
        job("ten_projects", "queued", held="cap", due_at=T0 + 40_000 + WINDOW_MS),
    ]

    result = capped(history(acted(), *projects), delivered("welcome", T0 + 40_005), jobs=jobs)

    assert pairs(result) == [("missing", "ten_projects")]


def test_an_uncapped_loop_whose_emails_the_cap_held_is_a_violation() -> None:
    holds = {"milestone_ten_projects": {"cap": 1}, "milestone_upgraded": {"cap": 7}}
    result = check([], History(), Timing(NUDGE_MS, END_MS, cap=CAP), Service(holds=holds))

    assert pairs(result) == [("held_uncapped", "milestone_ten_projects")]
    assert check([], History(), Timing(NUDGE_MS, END_MS, cap=CAP), Service()).violations == []


# --- a short run of the real processes --------------------------------------------------------

SHORT = Options(users=300, seconds=20.0, nudge_s=5.0, fault_every_s=3.0, seed=20)


def test_a_short_soak_under_the_nemesis_delivers_every_due_email_exactly_once(
    tmp_path: Path,
) -> None:
    """The web process with its in-process worker, two `activation worker` processes, a
    redis-server and the Resend stand-in, for 20 s under every kind of fault, then a settle."""
    redis_binary()  # skips (fails under CI=true) without one
    outcome = run(SHORT, tmp_path)

    report = summary(outcome)
    assert outcome.verdict.violations == [], report
    assert outcome.exited == [], report
    kinds = {"freeze", "kill_worker", "kill_web", *STANDIN_FAULTS.values()}
    assert {kind for kind, count in outcome.faults.items() if count} >= kinds, report
    by_kind = outcome.verdict.by_kind
    assert by_kind.get("welcome", 0) > 100, report
    assert by_kind.get("nudge", 0) > 10, report
    assert outcome.verdict.users == SHORT.users, report


SHORT_CAP = Options(
    users=250, seconds=20.0, nudge_s=5.0, fault_every_s=3.0, seed=21, cap="1/10s", mix=CAP_MIX
)


def test_a_short_soak_with_a_frequency_cap_never_lets_a_user_get_more_than_it_allows(
    tmp_path: Path,
) -> None:
    """The same processes and faults with FREQUENCY_CAP=1/10s and more users upgrading (the
    thank-you goes first and waits at most 9 s, the tenth project's is uncapped): the service's
    ledger in Redis and Resend's arrivals keep the cap, every email is delivered once, and every
    one due arrives unless the ledger shows the cap held or dropped it. (With a service that
    did not count attempts in flight, a run of this test found 6 users over the cap.)"""
    redis_binary()  # skips (fails under CI=true) without one
    outcome = run(SHORT_CAP, tmp_path)

    report = summary(outcome)
    assert outcome.verdict.violations == [], report
    assert outcome.exited == [], report
    kinds = {"freeze", "kill_worker", "kill_web"}
    assert {kind for kind, count in outcome.faults.items() if count} >= kinds, report
    cap = outcome.verdict.cap
    assert cap["users_with_a_ledger"] > SHORT_CAP.users * 3 // 4, report
    assert cap["capped_deliveries"] > 100, report
    assert sum(held.get("cap", 0) for held in cap["held_counters"].values()) > 0, report
