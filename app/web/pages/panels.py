"""What the dashboard's experiment and action-health parts show (`pages/experiments.html`,
`pages/action_health.html`), worked out from the loops and health JSON shapes: rates and
percentage points as text, the sentences and charts of an uplift against the holdout (which arms
it pools) and of an experiment's arms against each other (`vs_arms`), the action problems.
Pure; `TEMPLATE_GLOBALS` is what a page environment needs to render the two parts.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.clock import utc_time
from app.engine.loops import HOLDOUT, TREATMENT
from app.engine.measure import Uplift
from app.engine.spelling import did_you_mean

MINUS = "\u2212"  # a true minus sign (U+2212), not a hyphen
CHART_WIDTH = 360.0
CHART_HEIGHT = 52.0
CHART_PAD = 24.0  # each side, room for a tick's label
AXIS_Y = 24.0
# the axis runs ± the first of these (points) that holds the interval: round tick labels
SPANS_POINTS = (5, 10, 20, 25, 50, 100)
# arms of a holdout first; an experiment's arms keep their order
ARM_ORDER = (TREATMENT, HOLDOUT)
PROBLEM_STATUSES = ("never_seen", "silent")


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class UpliftView:
    """An uplift in words and as a chart: positions in the chart's own units (`CHART_WIDTH`)."""

    vs: str
    estimate: str
    low: str
    high: str
    direction: str  # "raise", "lower", or "unclear" (the interval holds 0)
    sentence: str
    span_points: int
    x_zero: float
    x_low: float
    x_high: float
    x_estimate: float
    ticks: tuple[Tick, ...]
    width: float = CHART_WIDTH
    height: float = CHART_HEIGHT
    axis_y: float = AXIS_Y


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    entered: int
    activated: int
    rate: str


@dataclass(frozen=True, slots=True)
class ArmsCompared:
    """An experiment's `vs_arms`: which two arms, and the difference as shown (None while one
    of them has nobody: `empty` names it)."""

    a: str
    b: str
    of_arms: int  # how many arms the experiment has: with more than two, these are the largest
    view: UpliftView | None
    empty: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Experiment:
    """One loop with a holdout or an experiment: its arms side by side, the uplift against the
    holdout (`pooled`: the arms it joins) and the experiment's arms against each other."""

    loop_id: str
    loop_type: str
    arms: tuple[Arm, ...]
    uplift: UpliftView | None
    pooled: tuple[str, ...] = ()
    vs_arms: ArmsCompared | None = None


@dataclass(frozen=True, slots=True)
class ActionProblem:
    """One line of the action-health banner."""

    kind: str  # "never_seen", "silent" (a watched action) or "unwatched" (a likely typo)
    action: str
    loops: tuple[str, ...] = ()
    last_seen: str = ""
    count_7d: int = 0
    did_you_mean: str | None = None


def points(fraction: float) -> str:
    """A difference of rates in percentage points, signed (`MINUS`), one decimal: "+5.2"."""
    value = round(fraction * 100, 1)
    if value == 0:
        return "0.0"
    return f"{'+' if value > 0 else MINUS}{abs(value):.1f}"


def rate_text(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def when(at_ms: int | None, *, seconds: bool = False) -> str:
    """A time as the pages show it, UTC, to the minute (or the second); `n/a` for none."""
    return "n/a" if at_ms is None else utc_time(at_ms, seconds=seconds)


def span_points(low: float, high: float) -> int:
    """Half the axis, in points: the first of `SPANS_POINTS` that holds both ends."""
    widest = max(abs(low), abs(high)) * 100
    return next((span for span in SPANS_POINTS if widest <= span), SPANS_POINTS[-1])


def x_of(fraction: float, span: int) -> float:
    """Where a difference sits on an axis running from -span to +span points."""
    inner = CHART_WIDTH - 2 * CHART_PAD
    clamped = min(max(fraction * 100, -span), span)
    return round(CHART_PAD + (clamped + span) / (2 * span) * inner, 1)


def ticks(span: int) -> tuple[Tick, ...]:
    """The axis's ends and its 0, labelled in whole points."""
    labels = ((-span, f"{MINUS}{span}"), (0, "0"), (span, f"+{span}"))
    return tuple(Tick(x_of(value / 100, span), label) for value, label in labels)


def direction(uplift: Uplift) -> str:
    if not uplift.distinguishable:
        return "unclear"
    return "raise" if uplift.low > 0 else "lower"


def sentence(uplift: Uplift, vs: str) -> str:
    """The uplift in words, for someone who does not read intervals."""
    against = "" if vs == HOLDOUT else f" against {vs}"
    low, high = points(uplift.low), points(uplift.high)
    verb = direction(uplift)
    if verb == "unclear":
        return (
            f"Not yet distinguishable from no effect{against}: "
            f"the 95 % interval runs from {low} to {high} points."
        )
    size = points(abs(uplift.estimate)).lstrip("+")
    return f"Emails {verb} activation by {size} points{against} (95 % interval {low} to {high})."


def arms_sentence(uplift: Uplift, a: str, b: str) -> str:
    """An arm against another in words: which one activates more, or that it is not yet told."""
    low, high = points(uplift.low), points(uplift.high)
    verb = direction(uplift)
    if verb == "unclear":
        return (
            f"{a} against {b}: not yet distinguishable, "
            f"the 95 % interval of the difference runs from {low} to {high} points."
        )
    size = points(abs(uplift.estimate)).lstrip("+")
    than = "higher" if verb == "raise" else "lower"
    return f"{a} activates {size} points {than} than {b} (95 % interval {low} to {high})."


def as_uplift(figures: Mapping[str, Any]) -> Uplift:
    return Uplift(float(figures["estimate"]), float(figures["low"]), float(figures["high"]))


def uplift_view(uplift: Mapping[str, Any] | None, span: int | None = None) -> UpliftView | None:
    """The loops endpoint's `uplift` ({"vs", "estimate", "low", "high"}, fractions) as shown."""
    if not uplift:
        return None
    found = as_uplift(uplift)
    vs = str(uplift.get("vs", HOLDOUT))
    return chart(found, vs, sentence(found, vs), span)


def compared_view(
    vs_arms: Mapping[str, Any] | None, arms: tuple[Arm, ...], treated: int, span: int | None = None
) -> ArmsCompared | None:
    """The loops endpoint's `vs_arms` ({"a", "b", "estimate", "low", "high"}) as shown, of an
    experiment of `treated` arms (the holdout not among them)."""
    if not vs_arms:
        return None
    a, b = str(vs_arms["a"]), str(vs_arms["b"])
    if vs_arms.get("estimate") is None:
        empty = tuple(arm.name for arm in arms if arm.name in (a, b) and not arm.entered)
        return ArmsCompared(a, b, treated, None, empty or (a, b))
    found = as_uplift(vs_arms)
    return ArmsCompared(a, b, treated, chart(found, b, arms_sentence(found, a, b), span))


def shared_span(*differences: Mapping[str, Any] | None) -> int | None:
    """One axis for the charts drawn side by side, so their widths compare: the widest's."""
    ends = [
        span_points(float(d["low"]), float(d["high"]))
        for d in differences
        if d and d.get("estimate") is not None
    ]
    return max(ends, default=None)


def chart(found: Uplift, vs: str, words: str, span: int | None = None) -> UpliftView:
    """A difference of rates drawn around zero (± `span` points, else its own), with its
    sentence."""
    span = span or span_points(found.low, found.high)
    return UpliftView(
        vs=vs,
        estimate=points(found.estimate),
        low=points(found.low),
        high=points(found.high),
        direction=direction(found),
        sentence=words,
        span_points=span,
        x_zero=x_of(0.0, span),
        x_low=x_of(found.low, span),
        x_high=x_of(found.high, span),
        x_estimate=x_of(found.estimate, span),
        ticks=ticks(span),
    )


def arm(name: str, counts: Mapping[str, Any]) -> Arm:
    rate = counts.get("activation_rate")
    return Arm(
        name,
        int(counts.get("entered", 0)),
        int(counts.get("activated", 0)),
        rate_text(None if rate is None else float(rate)),
    )


def arms(by_name: Mapping[str, Mapping[str, Any]]) -> tuple[Arm, ...]:
    """A holdout's treatment then holdout; an experiment's arms in the order given."""
    rank = {name: i for i, name in enumerate(ARM_ORDER)}
    names = sorted(by_name, key=lambda name: rank.get(name, -1))
    return tuple(arm(name, by_name[name]) for name in names)


def experiment_view(loop: Mapping[str, Any]) -> Experiment:
    shown = arms(loop["arms"])
    treated = tuple(arm.name for arm in shown if arm.name != HOLDOUT)
    held_out = len(treated) < len(shown)
    span = shared_span(loop.get("uplift"), loop.get("vs_arms"))
    return Experiment(
        str(loop["id"]),
        str(loop.get("type", "")),
        shown,
        uplift_view(loop.get("uplift"), span),
        treated if held_out else (),
        compared_view(loop.get("vs_arms"), shown, len(treated), span),
    )


def experiment_views(loops: Iterable[Mapping[str, Any]]) -> list[Experiment]:
    """The loops that have arms (a holdout or an experiment), as the experiments part shows them."""
    return [experiment_view(loop) for loop in loops if loop.get("arms")]


def watched_problem(watched: Mapping[str, Any], reported: Iterable[str] = ()) -> ActionProblem:
    """A watched action's line; one never seen gets the `reported` name it likely misspells."""
    kind, action = str(watched["status"]), str(watched["action"])
    return ActionProblem(
        kind=kind,
        action=action,
        loops=tuple(str(loop_id) for loop_id in watched.get("loops", ())),
        last_seen=when(watched.get("last_seen_at")),
        count_7d=int(watched.get("count_7d", 0)),
        did_you_mean=did_you_mean(action, reported) if kind == "never_seen" else None,
    )


def reported_names(health: Mapping[str, Any]) -> list[str]:
    """The actions the health shows reported: watched ones seen, and unwatched ones."""
    seen = [item for item in health.get("watched", ()) if item.get("status") != "never_seen"]
    return [str(item["action"]) for item in (*seen, *health.get("unwatched", ()))]


def action_problems(health: Mapping[str, Any] | None) -> list[ActionProblem]:
    """What is wrong with the actions: a watched one never seen (with the reported name it may
    misspell) or gone silent, and a reported one no loop watches that looks like a typo of one
    that does. Empty when all is well."""
    if not health:
        return []
    reported = reported_names(health)
    watched = [
        watched_problem(item, reported)
        for item in health.get("watched", ())
        if item.get("status") in PROBLEM_STATUSES
    ]
    unwatched = [
        ActionProblem(
            "unwatched",
            str(item["action"]),
            count_7d=int(item.get("count_7d", 0)),
            did_you_mean=str(item["did_you_mean"]),
        )
        for item in health.get("unwatched", ())
        if item.get("did_you_mean")
    ]
    return watched + unwatched


TEMPLATE_GLOBALS = {
    "experiment_views": experiment_views,
    "uplift_view": uplift_view,
    "action_problems": action_problems,
}
