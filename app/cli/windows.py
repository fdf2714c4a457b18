"""How `preview` and `simulate` say a step's `within` windows: what counts, within how long of
the signup, and until when."""

from collections.abc import Iterator
from dataclasses import dataclass

from app.clock import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, utc_time
from app.engine.loops import ActionTrigger, Step

_UNITS = (("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS))


@dataclass(frozen=True, slots=True)
class Window:
    """One `within` of a step: on its trigger or its condition."""

    on: str  # "trigger" or "condition"
    counted: str  # `project_created x3`, `invited or shared`
    within_ms: int

    def said(self, signup_ms: int | None) -> str:
        """`project_created x3 within 7d of signup: until 2026-01-08 09:00 UTC`."""
        text = f"{self.counted} within {span(self.within_ms)} of signup"
        if signup_ms is None:
            return f"{text} (no signup known: nothing counts yet)"
        return f"{text}: until {utc_time(signup_ms + self.within_ms)}"


def step_windows(step: Step) -> Iterator[Window]:
    trigger, condition = step.trigger, step.condition
    if isinstance(trigger, ActionTrigger) and trigger.within_ms is not None:
        yield Window("trigger", counted((trigger.action,), trigger.count), trigger.within_ms)
    if condition is not None and condition.within_ms is not None:
        yield Window("condition", counted(condition.actions, condition.count), condition.within_ms)


def counted(actions: tuple[str, ...], count: int) -> str:
    """What a trigger or condition counts: `project_created x3`, `invited or shared`."""
    named = " or ".join(actions)
    return f"{named} x{count}" if count > 1 else named


def span(ms: int) -> str:
    """`7d`, `2d5m`, `0s`: a span of time in the largest units that say it exactly."""
    rest_ms, parts = max(ms, 0), []
    for unit, size in _UNITS:
        if rest_ms >= size:
            parts.append(f"{rest_ms // size}{unit}")
            rest_ms %= size
    return "".join(parts) or "0s"
