"""Loop counters kept as events happen (never a scan of users): what a worker's decisions add,
what a sent email adds (on its day), time-to-activation buckets (keys.py: `stats`). The
dashboard reads them (`app.web.pages.dashboard`).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.clock import DAY_MS, utc_day
from app.engine.evaluate import ActionStats, StepState, StepStatus, condition_met_at, step_field
from app.engine.job_ids import EmailKind, JobId
from app.engine.loops import HOLDOUT, Loop, LoopType
from app.engine.measure import Rate, uplift

# The stored counters (a loop's `stats` hash, storage.keys): whole names, then the two families.
ENTERED, TIMED_OUT, AFTER_NUDGE = "entered", "timed_out", "activated_after_nudge"
EMAILS_FAILED, WEBHOOKS_FAILED = "emails_failed", "webhooks_failed"
TTA, SENT, HELD = "tta:", "sent:", "held:"  # `tta:<bucket>`, `sent:<step>:<kind>`, `held:<why>`
WEBHOOK_SENT = "webhook_sent:"  # `webhook_sent:<step>:<kind>`: a webhook step's calls answered 2xx
STORED_COUNTERS = (ENTERED, TIMED_OUT, AFTER_NUDGE, EMAILS_FAILED, WEBHOOKS_FAILED)
WEBHOOKS_SENT = "webhooks_sent"  # their sum, as the dashboard reads it

# Time-to-activation buckets: (field suffix, label, upper bound in ms; None = unbounded).
TTA_BUCKETS: tuple[tuple[str, str, int | None], ...] = (
    ("1m", "< 1 min", 60_000),
    ("5m", "< 5 min", 5 * 60_000),
    ("1h", "< 1 hour", 3600_000),
    ("1d", "< 1 day", DAY_MS),
    ("1w", "< 1 week", 7 * DAY_MS),
    ("more", "1 week +", None),
)
# The rows of a loop's card on the dashboard, by its type: (a counter as `funnel_view` names it,
# its label). A milestone's step 0 starts and fires at once, when the milestone is reached: it has
# no deadline, so nothing times out, nobody is nudged and there is no rate to activate.
# A new per-loop row (held emails, say) is one more counter of the loop's stats hash, named here.
FUNNEL: tuple[tuple[str, str], ...] = (
    (ENTERED, "Entered (step 0 started)"),
    ("met", "Condition met (fired)"),
    ("sent", "Email sent"),
    (TIMED_OUT, "Timed out"),
    ("nudged", "Nudged (on_timeout sent)"),
    (AFTER_NUDGE, "Activated after timing out"),
)
MILESTONE_ROWS: tuple[tuple[str, str], ...] = (
    (ENTERED, "Reached (milestone hit)"),
    ("sent", "Email sent"),
    (EMAILS_FAILED, "Emails failed for good"),
)
# emails that waited for the frequency cap or quiet hours (`engine.holds`): shown once any did
HELD_ROWS: tuple[tuple[str, str], ...] = (
    (f"{HELD}cap", "Held by the frequency cap"),
    (f"{HELD}quiet_hours", "Held for quiet hours"),
)
# a loop's webhook steps' calls: shown once any was made
WEBHOOK_ROWS: tuple[tuple[str, str], ...] = (
    (WEBHOOKS_SENT, "Webhooks sent"),
    (WEBHOOKS_FAILED, "Webhooks failed for good"),
)
CARD_ROWS: Mapping[LoopType, tuple[tuple[str, str], ...]] = {
    LoopType.ACTIVATION: FUNNEL + HELD_ROWS + WEBHOOK_ROWS,
    LoopType.MILESTONE: MILESTONE_ROWS + HELD_ROWS + WEBHOOK_ROWS,
}
OPTIONAL_ROWS = frozenset(name for name, _ in HELD_ROWS + WEBHOOK_ROWS)
EMAIL_ROWS = frozenset({"sent", EMAILS_FAILED})  # what only an email step counts


def card_rows(loop: Loop, counters: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """A loop's card rows (name, label, value) by its type (`CARD_ROWS`): an optional row once
    it counted any, its webhook rows always when it has webhook steps; no email rows for a loop
    whose steps only call webhooks (an "Email sent 0 %" there would read as a failure)."""
    emails, webhooks = any(loop.emails()), any(loop.webhooks())
    rows = []
    for name, label in CARD_ROWS[loop.type]:
        value = counters.get(name, 0)
        if name in EMAIL_ROWS and not emails and not value:
            continue
        if name in OPTIONAL_ROWS and not value and not (webhooks and (name, label) in WEBHOOK_ROWS):
            continue
        rows.append((name, label, value))
    return rows


@dataclass(frozen=True, slots=True)
class Counter:
    """One increment of a loop's `stats` hash."""

    loop_id: str
    field: str
    by: int = 1


def tta_bucket(elapsed_ms: int) -> str:
    """The histogram field for a time to activation: `tta:1m` ... `tta:more`."""
    for suffix, _, upper_ms in TTA_BUCKETS:
        if upper_ms is None or elapsed_ms < upper_ms:
            return f"{TTA}{suffix}"
    raise AssertionError("the last bucket is unbounded")


KEPT_DAYS = 90  # emails counted per day for this long, then only in their totals


def sent_field(step: int, reason: str) -> str:
    """The stored counter of a loop's emails sent for one step and reason."""
    return f"{SENT}{step}:{reason}"


def webhook_sent_field(step: int, reason: str) -> str:
    """The stored counter of a loop's webhook calls answered 2xx for one step and reason."""
    return f"{WEBHOOK_SENT}{step}:{reason}"


def kept_days_from(now_ms: int) -> str:
    """The oldest UTC day whose email counts are kept apart (`<counter>@<day>`)."""
    return utc_day(now_ms - KEPT_DAYS * DAY_MS)


def split_days(stored: Mapping[str, int]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """A loop's stored counters as totals (each `<counter>@<day>` added to its `<counter>`) and
    per day: `{day: {"sent": n, "failed": n}}`."""
    totals: dict[str, int] = {}
    days: dict[str, dict[str, int]] = {}
    for name, value in stored.items():
        counter, _, day = name.partition("@")
        totals[counter] = totals.get(counter, 0) + value
        if day and not is_webhook_counter(counter):  # the days count emails
            event = "failed" if counter == EMAILS_FAILED else "sent"
            per_day = days.setdefault(day, {})
            per_day[event] = per_day.get(event, 0) + value
    return totals, days


def funnel_view(stored: Mapping[str, int]) -> dict[str, int]:
    """A loop's counters as the dashboard reads them, from its totals (`split_days`): `met` is
    the sum of the time-to-activation buckets, `sent` and `nudged` step 0's emails
    (`sent:0:action`, `sent:0:timeout`), `emails_sent` all of them. Counters never bumped are
    left out."""
    view = {
        name: value
        for name, value in stored.items()
        if not name.startswith(SENT) and not name.startswith(WEBHOOK_SENT)
    }
    derived = {
        "met": sum(value for name, value in stored.items() if name.startswith(TTA)),
        "sent": stored.get(sent_field(0, EmailKind.ACTION), 0),
        "nudged": stored.get(sent_field(0, EmailKind.TIMEOUT), 0),
        "emails_sent": sum(value for name, value in stored.items() if name.startswith(SENT)),
        WEBHOOKS_SENT: sum(v for name, v in stored.items() if name.startswith(WEBHOOK_SENT)),
    }
    return view | {name: value for name, value in derived.items() if value}


def is_webhook_counter(counter: str) -> bool:
    return counter == WEBHOOKS_FAILED or counter.startswith(WEBHOOK_SENT)


def late_activations(
    loops: Iterable[Loop],
    steps: Mapping[str, StepState],
    actions: Mapping[str, ActionStats],
    registered_at: int | None,
) -> dict[str, StepState]:
    """Step 0 states that timed out and whose condition has been met since: `met_at` recorded
    (a condition with `within` only within its window after the signup, `registered_at`).

    Written with the worker's next decisions, so each is counted once (`activated_after_nudge`).
    """
    late: dict[str, StepState] = {}
    for loop in loops:
        name, condition = step_field(loop.id, 0), loop.steps[0].condition
        state = steps.get(name)
        if state is None or condition is None or state.status is not StepStatus.TIMED_OUT:
            continue
        if state.met_at is not None:  # counted once: met_at is then kept
            continue
        met_at = condition_met_at(condition, actions, registered_at)
        if met_at is not None:
            late[name] = state.model_copy(update={"met_at": met_at})
    return late


def step_counters(
    loops: Iterable[Loop],
    stored: Mapping[str, StepState],
    transitions: Mapping[str, StepState],
    late: Mapping[str, StepState],
) -> list[Counter]:
    """The funnel increments of one user's decisions (step 0 of each loop)."""
    counters: list[Counter] = []
    for loop in loops:
        name = step_field(loop.id, 0)
        fields: list[str] = []
        if name in late:
            fields.append(AFTER_NUDGE)
            fields += _activated(loop, late[name])
        new = transitions.get(name)
        if new is not None:
            fields += _transition_fields(loop, stored.get(name), new)
        counters += [Counter(loop.id, f) for f in fields]
    return counters


def _transition_fields(loop: Loop, before: StepState | None, after: StepState) -> list[str]:
    if after.status is StepStatus.EXCLUDED:
        return ["excluded"]
    if after.status is StepStatus.CLOSED:
        return []  # its trigger never fired: the user never entered
    fields = [ENTERED] if before is None else []
    if before is None and after.arm is not None:
        fields.append(f"entered:{after.arm}")
    if after.status is StepStatus.FIRED:
        met_at = after.met_at if after.met_at is not None else after.started_at
        fields.append(tta_bucket(max(met_at - after.started_at, 0)))  # counts `met` too
        fields += _activated(loop, after)
    elif after.status is StepStatus.TIMED_OUT:
        fields.append(TIMED_OUT)
    return fields


def _activated(loop: Loop, state: StepState) -> list[str]:
    """`activated` (and per arm) when step 0's condition was met within the loop's `measure`."""
    met_at = state.met_at if state.met_at is not None else state.started_at
    if met_at - state.started_at > loop.measure_ms:
        return []
    return ["activated", f"activated:{state.arm}"] if state.arm else ["activated"]


def parse_counters(flat: Iterable[str]) -> dict[str, int]:
    items = list(flat)
    return {name: int(value) for name, value in zip(items[::2], items[1::2], strict=True)}


def dead_loop(job_id: str) -> str:
    """The loop a dead-letter job belongs to ("" for what is not an email job id)."""
    try:
        return JobId.parse(job_id).loop_id or ""
    except ValueError:
        return ""


def loop_summary(loop: Loop, counters: Mapping[str, int]) -> dict[str, Any]:
    """One loop's figures as `GET /v1/loops` answers them, from its counters (`funnel_view`).

    `activated`: step 0's condition met within the loop's `measure` of its start (before or
    after its timeout); `waiting`: entered, neither met nor timed out yet. Per arm for a loop
    with a holdout or an experiment, with the uplift (treatment minus holdout activation rate,
    Newcombe's 95 % interval) when there is a holdout, and `vs_arms` (one experiment arm's rate
    minus another's, the same interval) when there is an experiment."""
    entered = counters.get("entered", 0)
    met, timed_out = counters.get("met", 0), counters.get("timed_out", 0)
    arms = {
        arm: _arm_figures(counters.get(f"entered:{arm}", 0), counters.get(f"activated:{arm}", 0))
        for arm in loop.arms
    }
    return {
        "id": loop.id,
        "type": loop.type.value,
        "entered": entered,
        "activated": counters.get("activated", 0),
        "timed_out": timed_out,
        "waiting": max(entered - met - timed_out, 0),
        "activation_rate": _rate(entered, counters.get("activated", 0)),
        "arms": arms,
        "uplift": _uplift(arms) if loop.holdout_bp else None,
        "vs_arms": _vs_arms(loop, arms),
    }


def _rate(entered: int, activated: int) -> float | None:
    return activated / entered if entered else None


def _arm_figures(entered: int, activated: int) -> dict[str, Any]:
    activated = min(activated, entered)
    rate = _rate(entered, activated)
    return {"entered": entered, "activated": activated, "activation_rate": rate}


def _arm_rate(figures: Mapping[str, Any]) -> Rate:
    return Rate(figures["entered"], figures["activated"])


def _uplift(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Every arm but the holdout together (the treatment) against the holdout."""
    treated = [figures for arm, figures in arms.items() if arm != HOLDOUT]
    treatment = Rate(sum(f["entered"] for f in treated), sum(f["activated"] for f in treated))
    found = uplift(treatment, _arm_rate(arms[HOLDOUT]))
    if found is None:
        return None
    return {"vs": HOLDOUT, "estimate": found.estimate, "low": found.low, "high": found.high}


def _vs_arms(loop: Loop, arms: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """An experiment's arms against each other (`compared_arms`): `a`'s activation rate minus
    `b`'s, with the interval the holdout's uplift has (`measure.uplift`), so the two agree.
    The figures are null while either arm has nobody: an empty arm has no rate (0 of 0), and
    0 would claim one. None for a loop without an experiment."""
    names = [arm.template for arm in loop.experiment]
    if not names:
        return None
    a, b = compared_arms(names, {name: arms[name]["entered"] for name in names})
    found = uplift(_arm_rate(arms[a]), _arm_rate(arms[b]))
    if found is None:
        return {"a": a, "b": b, "estimate": None, "low": None, "high": None}
    return {"a": a, "b": b, "estimate": found.estimate, "low": found.low, "high": found.high}


def compared_arms(names: Sequence[str], entered: Mapping[str, int]) -> tuple[str, str]:
    """The two arms of an experiment that `vs_arms` compares, in the order the loop file lists
    them: with two arms, both; with more, the two with the most entrants (the narrowest
    interval), a tie going to the arm listed first. Chosen by entrants, never by outcomes, so
    the one interval shown keeps its 95 %."""
    if len(names) < 2:
        raise ValueError(f"an experiment has two arms or more, got {list(names)}")
    by_size = sorted(range(len(names)), key=lambda at: (-entered.get(names[at], 0), at))
    first, second = sorted(by_size[:2])
    return names[first], names[second]
