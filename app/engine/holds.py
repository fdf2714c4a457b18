"""Why an email due now waits, and until when: the frequency cap across every loop
(FREQUENCY_CAP, `"2/1d,4/7d"`) and quiet hours in the user's time zone (QUIET_HOURS, a loop's
`quiet_hours`). Pure: the worker's turn asks `Holds.admit` with the user's ledger and the clock.

- The cap counts an email from its first attempt (it may have reached Resend from then on) and
  keeps counting it once sent; a failed or dropped one never counts. Only a first attempt waits
  for the cap or quiet hours: a retry goes out as soon as it is due (it may already have been
  accepted under its key, which Resend keeps 24 h).
- When the cap lets only some of the emails due through, higher `priority` goes first, then the
  earlier due, then the job id: the same order on every worker.
- An email that could only go later than its step allows (`Holds.latest_ms`) is dropped instead,
  and says why.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.clock import OFF, TIME_WINDOW_PATTERN, parse_time_window

UTC_ZONE = ZoneInfo("UTC")
QUIET_HOURS_PATTERN = f"{TIME_WINDOW_PATTERN}|^{OFF}$"


class HoldReason(StrEnum):
    CAP = "cap"
    QUIET_HOURS = "quiet_hours"


@dataclass(frozen=True, slots=True)
class CapRule:
    """At most `emails` loop emails per user in any `window_ms`."""

    emails: int
    window_ms: int

    def free_at(self, counted: Sequence[int], at_ms: int) -> int:
        """The first moment from `at_ms` when one more email keeps this rule: `counted` are the
        times (epoch ms) of the emails already counted, in any order."""
        inside = sorted(t for t in counted if t > at_ms - self.window_ms)
        over = len(inside) - self.emails + 1
        return at_ms if over <= 0 else inside[over - 1] + self.window_ms


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """FREQUENCY_CAP (`Settings.cap_rules`): every rule holds at once; no rule, no cap."""

    rules: tuple[CapRule, ...] = ()

    def free_at(self, counted: Sequence[int], at_ms: int) -> int:
        """The first moment from `at_ms` when one more email keeps every rule (counts only
        fall as time passes, so the latest of the rules' answers keeps them all)."""
        return max((rule.free_at(counted, at_ms) for rule in self.rules), default=at_ms)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window of local time (`start` to `end`, minutes after midnight; past midnight when
    `end` < `start`) in which no loop email goes out."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, text: str) -> "QuietHours":
        """`"21:00-08:00"`; ValueError naming what is wrong."""
        return cls(*parse_time_window(text))

    def inside(self, minute_of_day: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def end_after(self, at_ms: int, zone: ZoneInfo) -> int:
        """When the window `at_ms` falls in ends (epoch ms), or `at_ms` itself when outside it.
        Local dates and times through zoneinfo: right across daylight-saving changes (an end
        that a change skips is the first moment after it)."""
        local = datetime.fromtimestamp(at_ms / 1000, zone)
        if not self.inside(local.hour * 60 + local.minute):
            return at_ms
        end = time(self.end_min // 60, self.end_min % 60)
        day = local.date() if local.time() < end else local.date() + timedelta(days=1)
        ends = datetime.combine(day, end, zone).astimezone(UTC)
        return max(int(ends.timestamp() * 1000), at_ms + 1)


def zone_of(name: object, default: ZoneInfo) -> ZoneInfo:
    """The IANA zone `name` names (a profile's `public_metadata.timezone`), else `default`."""
    if not isinstance(name, str) or not name or len(name) > 64 or ".." in name:
        return default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class Candidate:
    """An email due now whose first attempt would begin: what its loop says about waiting."""

    job_id: str
    due_at: int
    priority: int  # higher goes first when the cap lets only some through
    capped: bool  # counts against, and waits for, the cap (a loop's `cap: true`)
    quiet: QuietHours | None  # the quiet hours it keeps (its loop's, else the service's)
    latest_ms: int  # the last moment its step allows it to go

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.priority, self.due_at, self.job_id)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of a candidate now: go (`reason` None), wait until `until_ms` for `reason`,
    or be dropped (`dropped`: it could only go after `latest_ms`)."""

    reason: HoldReason | None = None
    until_ms: int = 0
    dropped: bool = False
    latest_ms: int = 0  # the last moment its step allows


GO = Verdict()


@dataclass(frozen=True, slots=True)
class Holds:
    """The service's cap and quiet hours, and the zone of a user without one."""

    cap: FrequencyCap = FrequencyCap()
    quiet: QuietHours | None = None
    default_zone: ZoneInfo = UTC_ZONE

    @property
    def active(self) -> bool:
        return bool(self.cap.rules) or self.quiet is not None

    def admit(
        self, candidates: Iterable[Candidate], counted: Iterable[int], zone: ZoneInfo, now_ms: int
    ) -> dict[str, Verdict]:
        """Each candidate's verdict, the higher priority first; `counted` the times of the user's
        emails the cap counts already (each one let through now counts from now)."""
        taken = list(counted)
        verdicts = {}
        for candidate in sorted(candidates, key=lambda c: c.order):
            verdict = self._verdict(candidate, taken, zone, now_ms)
            if verdict.reason is None and not verdict.dropped and candidate.capped:
                taken.append(now_ms)
            verdicts[candidate.job_id] = verdict
        return verdicts

    def _verdict(
        self, candidate: Candidate, taken: Sequence[int], zone: ZoneInfo, now_ms: int
    ) -> Verdict:
        at, reason = now_ms, None
        if candidate.capped and (free := self.cap.free_at(taken, now_ms)) > now_ms:
            at, reason = free, HoldReason.CAP
        if candidate.quiet is not None and (end := candidate.quiet.end_after(at, zone)) > at:
            at, reason = end, HoldReason.QUIET_HOURS
        if reason is None:
            return GO
        return Verdict(reason, at, at > candidate.latest_ms, candidate.latest_ms)
