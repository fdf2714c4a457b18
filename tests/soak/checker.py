"""The checker: the stand-in's ledger (every email Resend accepted; replays of a key are not new
deliveries) against the workload's history (what was sent and acknowledged, when). A logical
email is (user, loop, step, kind), as the email's tags say; the shipped loops have five: welcome
(activation/0/action), nudge (activation/0/timeout), tips (activation/1/action, 2 days after
step 0: never in a run), ten_projects and upgraded (the milestones' step 0).

Words: an op is *attempted* once its first request was sent, *acknowledged* at its first 2xx
answer. A user is *stopped* once any stopper (complaint, hard bounce, unsubscribe POST,
`user.deleted`) was attempted; their *stop time* is the first acknowledgement of one that left
them stopped (a Resend event answered anything but "unknown"). T is the nudge timeout, counted
from the signup; *end* is when the ledger was last read, after the settle.

Violations, by type:

- double: a logical email accepted more than once (distinct deliveries, whatever their keys).
- after_stop: an email whose request arrived at the stand-in more than `SLACK_MS` after the
  user's stop time. Excused, and counted apart: one that arrived within `SLACK_MS` after a
  frozen worker was thawed when the stop came while it was frozen (or within `SLACK_MS` before):
  a request that had passed its last look at the user before the freeze (`on_its_way`).
- missing: for a user whose signup was acknowledged and who is not stopped,
  - the welcome, if `first_project_created` was acknowledged before signup sent + T - 1 s;
  - the nudge, if `first_project_created` was never attempted and signup acked + T falls before
    end - `GRACE_MS`;
  - the welcome or the nudge, if `first_project_created` was attempted but not acknowledged in
    time (late, or never answered) and signup acked + T falls before end - `GRACE_MS`;
  - ten_projects, if 10 `project_created` were acknowledged;
  - upgraded, if a `plan_changed` to pro or team was acknowledged.
  Stopped users are exempt: whether an email was due before the stop took effect is not known
  exactly, and `after_stop` covers them.
- unexpected: an email no rule allows: to someone the workload never signed up, or to another
  address than theirs; a welcome without `first_project_created` attempted; a nudge where the
  welcome is required; both the welcome and the nudge; tips; ten_projects with fewer than 10
  `project_created` attempted; upgraded without a pro or team `plan_changed` attempted; an email
  of another loop.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.soak.history import STOPPERS, History, Op
from tests.soak.ledger import Delivery

# A stop is judged by when the email's request arrived at the stand-in. What may rightly arrive
# after the stop's acknowledgement is a request that had passed the sender's last look at the
# user before the stop was written: one request on a loopback connection (milliseconds) plus the
# event-loop and scheduling lag of a loaded 2-core machine. Each run prints how long the web
# process took to answer the workload ("web answers", the same kind of lag): a p99 under 0.2 s
# and a maximum under 0.6 s in runs of 6,000-18,000 users beside another test suite. 1 s covers
# it; a batch retried or re-sent seconds later without a fresh look is still caught.
SLACK_MS = 1_000
# A nudge falls due when its timeout passes and goes out at the worker's next look (WORKER_IDLE_S
# is 1 s), in one request: 5 s is ample once the faults are off (the settle).
GRACE_MS = 5_000
# The service keeps Redis's clock (same host, advanced by the monotonic clock): within
# milliseconds of this one. An action acknowledged 1 s before its deadline was in time.
IN_TIME_MS = 1_000
PAID_PLANS = ("pro", "team")
PROJECTS = 10
EXAMPLES = 3
EXCUSED = "after_stop_across_a_freeze"


@dataclass(frozen=True, slots=True)
class Violation:
    type: str
    user: str
    email: str
    detail: str
    keys: tuple[str | None, ...] = ()
    times_ms: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "user": self.user,
            "email": self.email,
            "detail": self.detail,
            "keys": list(self.keys),
            "times_ms": list(self.times_ms),
        }


@dataclass
class Verdict:
    """The counts and the violations of one run."""

    users: int
    stopped_users: int
    deliveries: int
    by_kind: dict[str, int]
    ops: dict[str, dict[str, int]]
    violations: list[Violation] = field(default_factory=list)
    excused: list[Violation] = field(default_factory=list)  # type EXCUSED: not violations

    @property
    def by_type(self) -> dict[str, int]:
        return dict(Counter(violation.type for violation in self.violations))

    def examples(self, limit: int = EXAMPLES) -> dict[str, list[Violation]]:
        found: dict[str, list[Violation]] = defaultdict(list)
        for violation in self.violations:
            if len(found[violation.type]) < limit:
                found[violation.type].append(violation)
        return dict(found)


@dataclass
class Facts:
    """What one user's ops say."""

    user: str
    address: str | None
    nudge_ms: int
    signup: Op | None = None
    first: Op | None = None
    projects_sent: int = 0
    projects_acked: int = 0
    paid_sent: bool = False
    paid_acked: bool = False
    stopped: bool = False
    stop_ms: int | None = None

    @classmethod
    def of(cls, user: str, ops: Iterable[Op], address: str | None, nudge_ms: int) -> "Facts":
        facts = cls(user, address, nudge_ms)
        for op in ops:
            facts.add(op)
        return facts

    def add(self, op: Op) -> None:
        if op.kind == "signup":
            self.signup = op
        elif op.kind in STOPPERS:
            self.add_stopper(op)
        elif op.name == "first_project_created":
            self.first = op
        elif op.name == "project_created":
            self.projects_sent += 1
            self.projects_acked += op.acked
        elif op.name == "plan_changed" and op.plan in PAID_PLANS:
            self.paid_sent = True
            self.paid_acked = self.paid_acked or op.acked

    def add_stopper(self, op: Op) -> None:
        self.stopped = True
        if op.stops and op.acked_ms is not None:
            self.stop_ms = min(op.acked_ms, self.stop_ms or op.acked_ms)

    @property
    def welcome_required(self) -> bool:
        """`first_project_created` acknowledged in time: the welcome, never the nudge."""
        first, signup = self.first, self.signup
        if first is None or first.acked_ms is None or signup is None:
            return False
        return first.acked_ms <= signup.sent_ms + self.nudge_ms - IN_TIME_MS


@dataclass(frozen=True)
class Timing:
    """What the rules need of the run: the nudge's timeout, the end of the settle, and when
    workers were frozen (frozen, thawed), all in ms (epoch ms for times)."""

    nudge_ms: int
    end_ms: int
    freezes: tuple[tuple[int, int], ...] = ()


def check(deliveries: Iterable[Delivery], history: History, timing: Timing) -> Verdict:
    """Every violation of the rules in the module docstring (and the excused emails)."""
    deliveries = list(deliveries)
    mine: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        mine[delivery.user].append(delivery)
    ops = history.by_user()
    found: list[Violation] = []
    facts_of = {}
    for user in sorted(set(ops) | set(mine)):
        facts = Facts.of(user, ops.get(user, []), history.addresses.get(user), timing.nudge_ms)
        facts_of[user] = facts
        found += user_violations(facts, mine.get(user, []), timing)
    return Verdict(
        users=sum(bool(f.signup and f.signup.acked) for f in facts_of.values()),
        stopped_users=sum(f.stopped for f in facts_of.values()),
        deliveries=len(deliveries),
        by_kind=dict(Counter(delivery.name for delivery in deliveries)),
        ops=history.counts(),
        violations=[v for v in found if v.type != EXCUSED],
        excused=[v for v in found if v.type == EXCUSED],
    )


def user_violations(facts: Facts, deliveries: list[Delivery], timing: Timing) -> list[Violation]:
    return [
        *doubles(facts, deliveries),
        *after_stop(facts, deliveries, timing.freezes),
        *missing(facts, deliveries, timing.end_ms),
        *unexpected(facts, deliveries),
    ]


def doubles(facts: Facts, deliveries: list[Delivery]) -> Iterator[Violation]:
    copies: dict[tuple[str, str, str, str], list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        copies[delivery.logical].append(delivery)
    for same in copies.values():
        if len(same) > 1:
            detail = f"accepted {len(same)} times"
            yield violation("double", facts.user, same, detail)


def after_stop(
    facts: Facts, deliveries: list[Delivery], freezes: tuple[tuple[int, int], ...]
) -> Iterator[Violation]:
    stop_ms = facts.stop_ms
    if stop_ms is None:
        return
    for delivery in deliveries:
        late_ms = delivery.arrived_ms - stop_ms
        if late_ms > SLACK_MS:
            detail = f"arrived {late_ms} ms after the stop was acknowledged at {stop_ms}"
            excused = any(on_its_way(stop_ms, delivery, freeze) for freeze in freezes)
            kind = EXCUSED if excused else "after_stop"
            yield violation(kind, facts.user, [delivery], detail)


def on_its_way(stop_ms: int, delivery: Delivery, freeze: tuple[int, int]) -> bool:
    """The stop came during a freeze (or just before it) and the email right after the thaw: a
    request a frozen worker had passed its last look at the user for, which it sends on waking.
    No sender can fence that (Resend knows nothing of the stop); the slack counts from the thaw."""
    frozen_ms, thawed_ms = freeze
    stopped_then = frozen_ms - SLACK_MS <= stop_ms <= thawed_ms
    return stopped_then and thawed_ms <= delivery.arrived_ms <= thawed_ms + SLACK_MS


def missing(facts: Facts, deliveries: list[Delivery], end_ms: int) -> Iterator[Violation]:
    signup = facts.signup
    if signup is None or signup.acked_ms is None or facts.stopped:
        return
    got = {delivery.name for delivery in deliveries}
    timed_out = signup.acked_ms + facts.nudge_ms <= end_ms - GRACE_MS
    for name, why in due(facts, timed_out):
        if not set(name.split("|")) & got:
            detail = f"due ({why}), never delivered"
            yield Violation("missing", facts.user, name, detail, times_ms=(signup.acked_ms,))


def due(facts: Facts, timed_out: bool) -> Iterator[tuple[str, str]]:
    """The emails the user must have had: (name, or names joined by |; why)."""
    if facts.welcome_required:
        yield "welcome", "first_project_created acknowledged in time"
    elif facts.first is None and timed_out:
        yield "nudge", "no first_project_created and the timeout passed"
    elif timed_out:
        yield "welcome|nudge", "first_project_created late or unanswered, the timeout passed"
    if facts.projects_acked >= PROJECTS:
        yield "ten_projects", f"{facts.projects_acked} project_created acknowledged"
    if facts.paid_acked:
        yield "upgraded", "plan_changed to a paid plan acknowledged"


def unexpected(facts: Facts, deliveries: list[Delivery]) -> Iterator[Violation]:
    names = {delivery.name for delivery in deliveries}
    for delivery in deliveries:
        why = not_allowed(facts, delivery, names)
        if why:
            yield violation("unexpected", facts.user, [delivery], why)


def not_allowed(facts: Facts, delivery: Delivery, names: set[str]) -> str:
    """Why no rule allows this email; empty when one does."""
    if facts.address is None:
        return "not a user of this run"
    if delivery.to != facts.address:
        return f"sent to {delivery.to!r}, not the user's address"
    rules = {
        "welcome": ("" if facts.first else "no first_project_created was sent"),
        "nudge": ("the welcome was due instead" if facts.welcome_required else ""),
        "tips": "tips come 2 days after step 0",
        "ten_projects": (
            "" if facts.projects_sent >= PROJECTS else f"{facts.projects_sent} project_created"
        ),
        "upgraded": ("" if facts.paid_sent else "no plan_changed to a paid plan was sent"),
    }
    if {"welcome", "nudge"} <= names and delivery.name in ("welcome", "nudge"):
        return "both the welcome and the nudge"
    return rules.get(delivery.name, "an email of no loop the soak knows")


def violation(type_: str, user: str, same: list[Delivery], detail: str) -> Violation:
    keys = tuple(delivery.key for delivery in same)
    times = tuple(delivery.arrived_ms for delivery in same)
    return Violation(type_, user, same[0].name, detail, keys, times)
